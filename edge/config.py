"""The device config (`shadowline edge run --config device.yaml`): pydantic models with extra="forbid", loaded
from YAML so that every error names the key path and the line it came from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from edge.agent.config import AgentConfig
from fleet.protocol import ReleaseSpec
from runtime.errors import ConfigError
from runtime.mqtt import MqttSettings, TLSSettings
from runtime.yamlconf import parse_yaml_model, read_config_text


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalRelease(ReleaseSpec):
    """A release for standalone use: stages name bundle directories/tars (relative to `bundles_dir` or the config
    file) or bundle ids found in `bundles_dir`; `candidate` runs in shadow beside it on the same frames."""

    candidate: ReleaseSpec | None = Field(None, description="a second release run in shadow on the same frames")


class FolderSource(_Cfg):
    type: Literal["folder"] = "folder"
    path: Path = Field(description="watched folder; writers should write to a dot-name or *.tmp then rename in")
    done_dir: Path | None = Field(None, description="processed files go here (default <path>/done)")
    failed_dir: Path | None = Field(None, description="files that could not be used go here (default <path>/failed)")
    poll_s: float = Field(0.2, gt=0, description="seconds between scans of the folder at most (on Linux a file "
                          "renamed or written into it wakes a scan at once)")
    settle_s: float = Field(0.3, ge=0, description="a file must be unchanged this long before it is read")


class CaptureSource(_Cfg):
    type: Literal["capture"] = "capture"
    url: str | int = Field(description="camera index (0), RTSP/HTTP URL, or a video file path")
    sample_fps: float | None = Field(None, gt=0, description="frames per second to process (None: every frame)")
    every_n: int = Field(1, ge=1, description="process one frame in N (used when sample_fps is not set)")
    reconnect_s: float = Field(2.0, gt=0, description="wait before reopening a camera/stream that failed")
    loop: bool = Field(False, description="restart a video file at its end (demos)")
    name: str | None = Field(None, description="source name in records (default: the url)")
    backend: Literal["opencv", "gstreamer"] = Field(
        "opencv", description="opencv: OpenCV's FFmpeg (or V4L2 for a camera index); gstreamer: a gst-launch-1.0 "
                              "pipeline in its own process, for the Jetson's hardware decoder (docs/jetson.md)")
    decoder: Literal["software", "nvv4l2decoder"] = Field(
        "software", description="gstreamer: avdec (CPU) or nvv4l2decoder (Jetson hardware, rtsp:// URLs)")
    codec: Literal["h264", "h265"] = Field("h264", description="gstreamer + rtsp://: the stream's video codec")
    transport: Literal["tcp", "udp"] = Field(
        "tcp", description="RTSP transport: tcp (interleaved, no lost packets on a busy network) or udp")
    latency_ms: int = Field(200, ge=0, description="gstreamer + rtsp://: jitter buffer of rtspsrc")
    open_timeout_s: float = Field(10.0, gt=0, description="a stream that does not open within this is retried")
    read_timeout_s: float = Field(10.0, gt=0, description="no frame for this long: the stream counts as lost and "
                                                          "is reopened after reconnect_s")

    @model_validator(mode="after")
    def _check_backend(self) -> CaptureSource:
        if self.backend == "opencv":
            for key, default in (("decoder", "software"), ("codec", "h264"), ("latency_ms", 200)):
                if getattr(self, key) != default:
                    raise ValueError(f"{key} applies to backend: gstreamer only")
        elif isinstance(self.url, int):
            raise ValueError("backend gstreamer takes a URL or a file, not a camera index")
        return self


Source = Annotated[FolderSource | CaptureSource, Field(discriminator="type")]


class OnnxRuntimeRunnerConfig(_Cfg):
    """`backend: onnxruntime` (the default): runtime.runners.onnxrt.OnnxRuntimeRunner."""

    backend: Literal["onnxruntime"] = "onnxruntime"
    providers: list[str] = Field(default_factory=lambda: ["cpu"],
                                 description="onnxruntime execution providers in order (tensorrt, cuda, cpu)")
    threads: int | None = Field(
        1, ge=1, description="intra-op threads of each model (null: ONNX Runtime's default, all cores). 1: the daemon "
                             "uses the other cores for the next frames (lanes or decode workers), which on a small CPU gives "
                             "more frames per second than splitting each small model run across threads")
    require_providers: bool = Field(False, description="fail at start-up if a listed provider is missing")
    spinning: bool = Field(
        False, description="let idle intra-op threads spin waiting for work. Off by default: on a small CPU the "
                           "spinning threads take cores from decoding and from the other stage's model")
    session_config: dict[str, str] = Field(
        default_factory=dict,
        description="more onnxruntime session config entries (they override `spinning`)")

    def runner_options(self) -> dict[str, Any]:
        """Keyword arguments for the runner."""
        spin = "1" if self.spinning else "0"
        session = {"session.intra_op.allow_spinning": spin, "session.inter_op.allow_spinning": spin,
                   **self.session_config}
        return {"providers": self.providers, "threads": self.threads, "require_providers": self.require_providers,
                "session_config": session}


class TensorRTRunnerConfig(_Cfg):
    """`backend: tensorrt`: runtime.runners.tensorrt.TensorRTRunner; the engine is built on the device and cached."""

    backend: Literal["tensorrt"]
    cache_dir: Path | None = Field(None, description="engine cache directory (default: the runner's)")
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field("auto", description="engine precision")
    workspace_mb: int = Field(1024, ge=16, description="builder workspace limit, MiB")
    rebuild: bool = Field(False, description="ignore cached engines and build again")

    def runner_options(self) -> dict[str, Any]:
        return self.model_dump(exclude={"backend"}, exclude_none=True)


class CoreMLRunnerConfig(_Cfg):
    """`backend: coreml` (macOS): runtime.runners.coreml.CoreMLRunner."""

    backend: Literal["coreml"]
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"] = Field("ALL", description="Core ML units")

    def runner_options(self) -> dict[str, Any]:
        return self.model_dump(exclude={"backend"})


def _default_backend(value: Any) -> Any:
    # `backend` may be left out for ONNX Runtime (the default); a discriminated union needs its tag.
    if isinstance(value, dict) and "backend" not in value:
        return {"backend": "onnxruntime", **value}
    return value


# One model per backend, chosen by `backend`: a key of another backend is an error, not silently ignored.
RunnerConfig = Annotated[OnnxRuntimeRunnerConfig | TensorRTRunnerConfig | CoreMLRunnerConfig,
                         Field(discriminator="backend"), BeforeValidator(_default_backend)]


class QueueConfig(_Cfg):
    max_size: int = Field(32, ge=1, description="frames waiting for inference; see docs/daemon.md backpressure")
    capture_policy: Literal["drop_oldest", "block"] = Field(
        "drop_oldest", description="live capture when the queue is full: drop the oldest frame (counted) or wait")


class StoreConfig(_Cfg):
    path: Path = Field(Path("shadowline.db"), description="SQLite database (WAL); also holds the outbox")


class RetentionConfig(_Cfg):
    dir: Path = Field(Path("images"), description="where kept images are stored")
    budget_mb: float = Field(1024.0, gt=0, description="disk budget of kept images; oldest evicted first")
    band: float = Field(0.1, ge=0, le=1, description="keep images whose score is within ±band×threshold of a threshold (0.1 = 10%)")
    sample_pct: float = Field(1.0, ge=0, le=100, description="keep this percentage of all other frames")
    flagged: bool = Field(True, description="keep every flagged image")
    disagreements: bool = Field(True, description="keep every image where the candidate disagrees")
    errors: bool = Field(False, description="keep images that failed (their bytes, for diagnosis)")


class WebhookConfig(_Cfg):
    url: str = Field(description="HTTP(S) URL that receives a JSON work order per flag")
    timeout_s: float = Field(5.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict, description="extra headers (e.g. Authorization)")


class MqttActionConfig(_Cfg):
    broker_url: str = Field(description="mqtt://host:port or mqtts://host:port of the work-order broker")
    topic: str = Field(description="topic of the work-order messages (QoS 1)")
    username: str | None = None
    password: str | None = None
    tls: TLSSettings | None = Field(None, description="TLS options for mqtts:// (unset: the system's CAs)")
    client_id: str | None = Field(None, description="default: shadowline-<device>-actions")

    @model_validator(mode="after")
    def _settings(self) -> MqttActionConfig:
        try:  # the URL, TLS and the rest checked as the client will get them
            self.settings("check")
        except ValueError as err:
            raise ValueError(err.errors()[0]["msg"] if hasattr(err, "errors") else str(err)) from None
        return self

    def settings(self, client_id: str) -> MqttSettings:
        return MqttSettings(url=self.broker_url, client_id=self.client_id or client_id, username=self.username,
                            password=self.password, tls=self.tls, reconnect_min_s=0.5, reconnect_max_s=10)


class RetryConfig(_Cfg):
    max_attempts: int = Field(8, ge=1, description="attempts per delivery before it is marked failed")
    backoff_s: float = Field(0.5, gt=0, description="first wait; doubles after each failure")
    max_backoff_s: float = Field(30.0, gt=0)


class ActionsConfig(_Cfg):
    webhook: WebhookConfig | None = None
    mqtt: MqttActionConfig | None = None
    retry: RetryConfig = Field(default_factory=RetryConfig)


class ApiConfig(_Cfg):
    enabled: bool = True
    host: str = Field("127.0.0.1", description="bind address of the local API and review page")
    port: int = Field(8080, ge=0, le=65535)
    infer_timeout_s: float = Field(30.0, gt=0, description="POST /v1/infer waits this long for its decision")
    inspectors_file: Path | None = Field(None, description="inspector token hashes the review page and review API "
                                                           "accept; none: no one can review (edge/review_auth.py)")
    inspectors_sync_url: str | None = Field(None, description="fleet API base URL to fetch inspector hashes from "
                                                              "into inspectors_file (with fleet.http_token)")
    inspectors_sync_s: float = Field(60.0, gt=0, description="how often the inspector hashes are fetched")


class LimitsConfig(_Cfg):
    max_pixels: int = Field(50_000_000, ge=1, description="images over this many pixels are refused (bombs)")
    max_upload_mb: float = Field(50.0, gt=0, description="largest accepted POST /v1/infer body")


class PipelineConfig(_Cfg):
    """The frame path's threads and bounds (docs/daemon.md "The frame path")."""

    decode_workers: int | None = Field(
        None, ge=1, le=16, description="threads decoding and preprocessing frames ahead of inference (OpenCV, Pillow "
                                       "and ONNX Runtime release the GIL, so they overlap); null: the cores, at "
                                       "most 4 (decoding is the heaviest stage; the inference thread takes its turn "
                                       "on the same cores, its intra-op threads do not spin)")

    inference_workers: int | None = Field(
        None, ge=1, le=16, description="threads running batches through the pipeline at once, each with its own frames "
                                       "(a model's intra-op threads split one frame instead); null: the cores, at "
                                       "most 4, with ONNX Runtime, and 1 with TensorRT and Core ML (their runners "
                                       "take one call at a time)")

    @staticmethod
    def default_workers() -> int:
        """The cores this process may run on, 1 to 4."""
        return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))

    lanes: bool | None = Field(
        None, description="true: each inference worker decodes and preprocesses the frames it takes itself (a lane: "
                          "the frame's image and tensor stay in that core's caches, no hand-off between threads, "
                          "half the busy threads; the decode workers are not started); false: the decode workers "
                          "decode ahead of the inference workers (what an accelerator wants: the CPU decodes while "
                          "the GPU runs); null: lanes when the models run on the CPU (ONNX Runtime with only its "
                          "`cpu` provider) with 2 or more inference workers and `decode_workers` is not set, else "
                          "decode workers")

    @property
    def workers(self) -> int:
        return self.decode_workers if self.decode_workers is not None else self.default_workers()

    prefetch: int = Field(4, ge=1, le=256, description="frames decoded ahead of inference at most (memory bound)")
    max_batch: int = Field(8, ge=1, le=64, description="frames decided together when that many are ready; stage 2 "
                           "runs once over their candidates (batched where the model has a dynamic batch)")
    commit_batch: int = Field(32, ge=1, le=1024, description="frames committed in one SQLite transaction at most")
    commit_linger_ms: float = Field(
        20.0, ge=0, le=1000, description="while more frames are in flight behind those decided, the commit thread "
                                         "waits up to this long for them, to commit up to commit_batch frames in "
                                         "one transaction (fewer, longer runs of the commit thread cost less CPU "
                                         "per frame); a frame with nothing behind it is committed at once; 0: "
                                         "commit whatever is decided at once")
    decoder: Literal["opencv", "pillow"] = Field(
        "opencv", description="opencv: plain PNG/JPEG files decoded by OpenCV (faster; the same pixels as Pillow's), "
                              "the rest by Pillow; pillow: every file by Pillow (about 1.2 to 1.4 times the decode + "
                              "preprocess CPU), so a daemon whose presets resize with Pillow never loads OpenCV "
                              "(13 to 17 MB less resident memory after the first image, docs/daemon.md)")


class DegradeConfig(_Cfg):
    """What happens when a part of the frame path falls behind or fails (never a silent pass)."""

    verify_timeout_s: float | None = Field(
        10.0, gt=0, description="a verify call taking longer flags its frames for review (`degraded: "
                                "verify_timeout`), and frames that need verify while it is still stuck are flagged "
                                "at once (`verify_stalled`); a verify that raises flags them (`verify_failed`). "
                                "null: verify runs inline and a failure makes the frame an error")


class StandbyConfig(_Cfg):
    """The previous release kept loaded after an activation, so a rollback to it swaps without loading a model."""

    enabled: bool = Field(True, description="keep the previous pipeline warm when memory allows")
    min_available_mb: float = Field(
        512.0, ge=0, description="keep it only while MemAvailable stays above this much after keeping it "
                                 "(otherwise it is closed and a rollback loads from the release cache)")


class MetricsConfig(_Cfg):
    window_s: float = Field(60.0, gt=0, description="seconds per windowed metrics record sent to the fleet")
    sample_s: float = Field(1.0, gt=0, description="seconds between samples of queue depth and platform readings")
    tegrastats: bool = Field(True, description="read power and temperatures from tegrastats where it exists")


class WatchdogConfig(_Cfg):
    stall_s: float = Field(60.0, gt=0, description="a frame taking longer than this marks the daemon not ready")
    release_library_pages: bool = Field(
        True, description="unmap resident clean library pages at the first tick, once frames flow and when idle "
                          "(edge/memory.py; the pages stay in the page cache)")


UploadCase = Literal["override", "near_threshold", "flagged", "disagreement", "degraded"]
DEFAULT_UPLOAD_CASES: list[UploadCase] = ["override", "near_threshold"]


class UploadsConfig(_Cfg):
    """Images of the inspectors' cases to the fleet (edge.uploads): over HTTP(S) with the device token, within a
    bandwidth and a disk budget."""

    url: str = Field(description="the fleet's HTTP(S) base URL, e.g. https://fleet.plant.example:8443")
    token: str | None = Field(None, description="device token (default: fleet.http_token)")
    token_file: Path | None = Field(None, description="file holding the device token (preferred over token)")
    ca_file: Path | None = Field(None, description="CA that signed the fleet's HTTPS certificate")
    cases: list[UploadCase] = Field(
        default_factory=lambda: list(DEFAULT_UPLOAD_CASES),
        description="which kept images go to the fleet: overridden by an inspector, near a threshold, ...")
    bandwidth_bps: int = Field(250_000, gt=0, description="upload rate limit, bytes per second")
    disk_budget_mb: float = Field(256.0, gt=0, description="images waiting to be uploaded take at most this; "
                                                           "over it the oldest non-override ones are dropped")
    spool_dir: Path = Field(Path("uploads"), description="where images wait for their upload")
    poll_s: float = Field(2.0, gt=0, description="how often new cases are looked for")
    timeout_s: float = Field(60.0, gt=0, description="HTTP timeout per upload")
    retry_backoff_s: float = Field(2.0, gt=0, description="first wait after a failed upload; doubles")
    max_backoff_s: float = Field(300.0, gt=0)

    def read_token(self) -> str | None:
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip() or None
            except OSError as err:
                raise ConfigError(f"uploads.token_file {self.token_file}: {err.strerror}") from err
        return self.token


class DeviceConfig(_Cfg):
    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="this device's id")
    release: LocalRelease | None = Field(None, description="standalone release (the fleet agent may replace it)")
    bundles_dir: Path | None = Field(None, description="where stage bundle ids are looked up")
    trust_store: Path | None = Field(None, description="directory of public keys; bundles must be signed by one")
    runner: RunnerConfig = Field(default_factory=OnnxRuntimeRunnerConfig,
                                 description="inference backend and its options (by `backend`)")
    sources: list[Source] = Field(default_factory=list, description="folder watchers and captures")
    queue: QueueConfig = Field(default_factory=QueueConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    actions: ActionsConfig = Field(default_factory=ActionsConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    degrade: DegradeConfig = Field(default_factory=DegradeConfig)
    standby: StandbyConfig = Field(default_factory=StandbyConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    fleet: AgentConfig | None = Field(None, description="the fleet agent section (edge.agent.config)")
    uploads: UploadsConfig | None = Field(None, description="images of inspectors' cases to the fleet (edge.uploads)")

    @model_validator(mode="after")
    def _check(self) -> DeviceConfig:
        for rel in [self.release] + ([self.release.candidate] if self.release and self.release.candidate else []):
            if rel is None:
                continue
            for action in rel.actions:
                if action == "webhook" and self.actions.webhook is None:
                    raise ValueError(f"release {rel.name!r} uses action 'webhook' but actions.webhook is not set")
                if action == "work_order_mqtt" and self.actions.mqtt is None:
                    raise ValueError(f"release {rel.name!r} uses action 'work_order_mqtt' but actions.mqtt is not set")
        if self.release is None and self.fleet is None:
            raise ValueError("set `release` (standalone) or `fleet` (managed device), or both")
        return self

    def resolve(self, base: Path) -> DeviceConfig:
        """Make every relative path relative to `base` (the config file's folder)."""

        def fix_keep(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else base / p

        upd: dict[str, Any] = {
            "bundles_dir": fix_keep(self.bundles_dir) if self.bundles_dir else None,
            "trust_store": fix_keep(self.trust_store),
            "store": self.store.model_copy(update={"path": fix_keep(self.store.path)}),
            "retention": self.retention.model_copy(update={"dir": fix_keep(self.retention.dir)}),
            "api": self.api.model_copy(update={"inspectors_file": fix_keep(self.api.inspectors_file)}),
        }
        srcs: list[FolderSource | CaptureSource] = []
        for s in self.sources:
            if isinstance(s, FolderSource):
                srcs.append(s.model_copy(update={"path": fix_keep(s.path), "done_dir": fix_keep(s.done_dir),
                                                 "failed_dir": fix_keep(s.failed_dir)}))
            else:
                srcs.append(s)
        upd["sources"] = srcs
        if self.uploads is not None:
            upd["uploads"] = self.uploads.model_copy(update={
                "spool_dir": fix_keep(self.uploads.spool_dir), "token_file": fix_keep(self.uploads.token_file),
                "ca_file": fix_keep(self.uploads.ca_file),
                "token": self.uploads.token or (self.fleet.http_token if self.fleet else None)})
        if self.fleet is not None:
            upd["fleet"] = self.fleet.model_copy(update={
                "releases_dir": fix_keep(self.fleet.releases_dir), "trust_store": fix_keep(self.fleet.trust_store),
                "fleet_keys": [fix_keep(k) for k in self.fleet.fleet_keys],
                "password_file": fix_keep(self.fleet.password_file),
                "tls": self.fleet.tls.model_copy(update={
                    "ca_file": fix_keep(self.fleet.tls.ca_file), "cert_file": fix_keep(self.fleet.tls.cert_file),
                    "key_file": fix_keep(self.fleet.tls.key_file)}) if self.fleet.tls is not None else None})
        return self.model_copy(update=upd)


# -- loading with line numbers -----------------------------------------------------------------------------------
# pydantic puts a discriminated union's tag into an error's location right after the field (`runner.tensorrt.x`,
# `sources.1.capture.fps`); the tag is a value in the document, not a key, so it is dropped from the path shown.
_UNION_TAGS: dict[str, set[str]] = {"runner": {"onnxruntime", "tensorrt", "coreml"},
                                    "sources": {"folder", "capture"}}


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    out: list[Any] = []
    for i, key in enumerate(loc):
        if i >= 1 and loc[0] in _UNION_TAGS and key in _UNION_TAGS[loc[0]]:
            at_tag = i == 1 if loc[0] == "runner" else (i == 2 and isinstance(loc[1], int))
            if at_tag:
                continue
        out.append(key)
    return tuple(out)


def parse_config(text: str, where: str = "config", base: Path | None = None) -> DeviceConfig:
    """Validate YAML text; a ConfigError lists every problem as `file:line: key.path: message`."""
    cfg = parse_yaml_model(text, DeviceConfig, where, clean_loc=_clean_loc)
    return cfg.resolve(base) if base is not None else cfg


def load_config(path: Path | str) -> DeviceConfig:
    path = Path(path)
    return parse_config(read_config_text(path), str(path), path.resolve().parent)
