"""The edge daemon: sources -> bounded queue -> one inference worker -> store (+ outbox, kept images, actions).

It implements edge.agent.host.AgentHost: the fleet agent (when `fleet:` is configured) activates releases through
`activate`, which swaps the pipeline atomically between two frames.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import cv2

from edge.actions import ActionDispatcher, work_order
from edge.config import CaptureSource, DeviceConfig, FolderSource
from edge.metrics import Metrics
from edge.pipeline import FrameResult, Pipeline, PipelineSlot, build_pipeline, resolver_for
from edge.retention import Retention
from edge.sources import Frame, Outcome
from edge.sources.capture import CaptureReader
from edge.sources.folder import FolderWatcher
from edge.sources.queue import FrameQueue
from edge.store import Store
from fleet.protocol import PredictionRecord, ReleaseSpec
from runtime.errors import ConfigError, ImageError, ShadowlineError
from runtime.processing.image import decode_image
from runtime.signing import TrustStore

log = logging.getLogger("shadowline.edge.daemon")


def build_local_pipeline(config: DeviceConfig, bundles: dict[str, Path] | None = None) -> Pipeline:
    """The pipeline of the config's `release:` section (its candidate included)."""
    if config.release is None:
        raise ConfigError("the config has no release section")
    rel = config.release
    spec = ReleaseSpec.model_validate(rel.model_dump(exclude={"candidate"}))
    return build_pipeline_for(config, spec, rel.candidate, bundles)


def build_pipeline_for(config: DeviceConfig, release: ReleaseSpec, candidate: ReleaseSpec | None,
                       bundles: dict[str, Path] | None = None) -> Pipeline:
    r = config.runner
    opts = r.runner_options()
    trust = TrustStore.load(config.trust_store) if config.trust_store else None
    return build_pipeline(release, candidate, resolver_for(config.bundles_dir, bundles), trust, r.backend, opts,
                          config.retention.band)


class QueueFull(ShadowlineError):
    """The inference queue is full; the caller should retry later."""

    exit_code = 12
    http_status = 503


class Daemon:
    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.device_id = config.device_id
        self.stop_event = threading.Event()
        self.store = Store(config.store.path)
        self.metrics = Metrics()
        self.queue = FrameQueue(config.queue.max_size)
        self.slot = PipelineSlot()
        self.retention = Retention(config.retention, self.store)
        self.actions = ActionDispatcher(config.actions, self.store, self.device_id, self.stop_event)
        self.watchers: list[FolderWatcher] = []
        self.captures: list[CaptureReader] = []
        self.started_at = time.time()
        self.last_error: str | None = None
        self.stalled = False
        self._busy_since: float | None = None
        self._worker: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self.agent: Any = None
        self.worker_restarts = 0

    # -- AgentHost ----------------------------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return Path(self.config.store.path)

    def activate(self, release: ReleaseSpec, candidate: ReleaseSpec | None, bundles: dict[str, Path]) -> None:
        """Build the new pipeline completely, then swap it in between two frames; on failure keep the old one."""
        self._check_actions(release)
        pipeline = self._build(release, candidate, bundles)
        old = self.slot.swap(pipeline)
        if old is not None:
            old.close()
        self.store.event(self.device_id, "activated", {"release": release.ref,
                                                      "candidate": candidate.ref if candidate else None})
        log.info("active release %s%s", release.ref, f" (candidate {candidate.ref})" if candidate else "")

    def current(self) -> tuple[ReleaseSpec | None, ReleaseSpec | None]:
        p = self.slot.current
        if p is None:
            return None, None
        return p.active.spec, (p.candidate.spec if p.candidate else None)

    def recent_images(self, limit: int) -> list[Path]:
        paths = [Path(r["path"]) for r in self.store.query(
            "SELECT path FROM kept_images ORDER BY created_at DESC LIMIT ?", (limit,))]
        paths = [p for p in paths if p.is_file()]
        for w in self.watchers:
            if len(paths) >= limit:
                break
            done = sorted((p for p in w.done.iterdir() if p.is_file() and not p.name.endswith(".reason.txt")),
                          key=lambda p: p.stat().st_mtime, reverse=True)
            paths += done[: limit - len(paths)]
        return paths[:limit]

    def status(self) -> dict:
        active, cand = self.current()
        p = self.slot.current
        return {
            "device": self.device_id,
            "ready": self.ready,
            "uptime_s": round(time.time() - self.started_at, 1),
            "release": active.ref if active else None,
            "mode": active.mode if active else None,
            "candidate": cand.ref if cand else None,
            "frames": int(self.metrics.value("frames_total")),
            "errors": int(self.metrics.value("errors_total")),
            "decisions": {d: int(self.metrics.value("decisions_total", decision=d)) for d in ("pass", "flag", "error")},
            "queue": {"depth": self.queue.depth, "max": self.queue.max_size, "high_water": self.queue.high_water,
                      "dropped": self.queue.dropped, "rejected": self.queue.rejected},
            "latency_ms_median": self.metrics.medians(),
            "retention": self.retention.stats(),
            "actions": {"delivered": self.actions.delivered, "failed": self.actions.failed,
                        "pending": self.actions.pending()},
            "backends": self.backends(),
            "pipeline": p.describe() if p else None,
            "stalled": self.stalled,
            "worker_restarts": self.worker_restarts,
            "last_error": self.last_error,
        }

    def backends(self) -> list[str]:
        """What really runs, e.g. ["onnxruntime:CPUExecutionProvider"] (the agent reports this list)."""
        p = self.slot.current
        if p is None:
            return [self.config.runner.backend]
        found: list[str] = []
        for c in (p.active, p.candidate):
            for r in (c.describe()["runners"] if c else []):
                names = r.get("active_providers") or []
                for n in names or [None]:
                    key = f"{r['backend']}:{n}" if n else r["backend"]
                    if key not in found:
                        found.append(key)
        return found

    # -- pipeline -----------------------------------------------------------------------------------------------
    def _check_actions(self, release: ReleaseSpec) -> None:
        for a in release.actions:
            if a not in self.actions.channels([]):
                raise ConfigError(f"release {release.ref} uses action {a!r}, which this device has not configured")

    def _build(self, release: ReleaseSpec, candidate: ReleaseSpec | None,
               bundles: dict[str, Path] | None = None) -> Pipeline:
        return build_pipeline_for(self.config, release, candidate, bundles)

    @property
    def ready(self) -> bool:
        return (self.slot.current is not None and self._worker is not None and self._worker.is_alive()
                and not self.stalled)

    # -- frames -------------------------------------------------------------------------------------------------
    def committed_decision(self, key: str) -> str | None:
        rows = self.store.query("SELECT decision FROM predictions WHERE frame_key = ? AND role = 'active'", (key,))
        return rows[0]["decision"] if rows else None

    def _record(self, p: Pipeline, frame: Frame, result: FrameResult | None, error: str | None,
                decode_ms: float) -> tuple[PredictionRecord, PredictionRecord | None]:
        spec = p.active.spec
        if result is None:
            return PredictionRecord(device=self.device_id, source=frame.source, release=spec.name,
                                    revision=spec.revision, mode=spec.mode, models=p.active.models,
                                    thresholds=p.active.thresholds, decision="error", error=error,
                                    latency_ms={"decode": round(decode_ms, 3)}), None

        def rec(d, role: str, disagrees: str | None = None) -> PredictionRecord:
            top_label, top_score = d.top
            return PredictionRecord(
                device=self.device_id, source=frame.source, release=d.release, revision=d.revision,
                mode="shadow" if role == "candidate" else d.mode, role=role, models=d.models,
                thresholds=d.thresholds, stages=[s.to_protocol() for s in d.stages], decision=d.decision,
                flagged=[(c, round(s, 6)) for c, s in d.flagged], top_label=top_label,
                top_score=None if top_score is None else round(top_score, 6),
                latency_ms={"decode": round(decode_ms, 3), **d.latency_ms}, disagrees_with=disagrees)

        active = rec(result.active, "active")
        cand = rec(result.candidate, "candidate", active.id if result.disagree else None) if result.candidate else None
        if result.candidate_error is not None and p.candidate is not None:
            c = p.candidate.spec
            cand = PredictionRecord(device=self.device_id, source=frame.source, release=c.name, revision=c.revision,
                                    mode="shadow", role="candidate", models=p.candidate.models,
                                    thresholds=p.candidate.thresholds, decision="error", error=result.candidate_error)
        return active, cand

    def process(self, frame: Frame) -> Outcome:
        """Decide one frame and commit its records; only then is the frame done."""
        with self.slot.use() as p:
            if p is None:
                raise ShadowlineError("no active release")
            result: FrameResult | None = None
            error: str | None = None
            t0 = time.perf_counter()
            decode_ms = 0.0
            try:
                image = frame.image if frame.image is not None else decode_image(
                    frame.data or b"", self.config.limits.max_pixels, frame.source)
                decode_ms = (time.perf_counter() - t0) * 1000
                result = p.run(image)
            except ImageError as err:
                error = str(err)
                self.metrics.inc("errors_total", reason="image")
            except Exception as err:  # a model failing on one frame must not stop the daemon
                error = f"{frame.source}: inference failed: {type(err).__name__}: {err}"
                self.metrics.inc("errors_total", reason="inference")
                log.exception("inference failed on %s", frame.source)
            active, cand = self._record(p, frame, result, error, decode_ms)
            reasons = self.retention.reasons(result, error is not None)
            kept: dict[str, tuple[Path, int, list[str]]] = {}
            if reasons:
                data = frame.data
                if data is None and frame.image is not None:
                    data = cv2.imencode(".jpg", frame.image)[1].tobytes()
                if data:
                    path, size = self.retention.save(active.id, data, frame.suffix)
                    kept[active.id] = (path, size, reasons)
                    active.image_kept = True
            deliveries = []
            if result is not None and active.decision == "flag" and active.mode == "production":
                payload = work_order(active.model_dump(mode="json"))
                deliveries = [(active.id, ch, payload) for ch in self.actions.channels(p.active.spec.actions)]
            records = [active] + ([cand] if cand else [])
            if not self.store.commit_frame(records, frame.key, kept, deliveries):
                for path, _, _ in kept.values():
                    path.unlink(missing_ok=True)
                decision = self.committed_decision(frame.key or "") or "pass"
                return Outcome(None, decision, None)
        total_ms = (time.perf_counter() - t0) * 1000
        self._count(frame, active, cand, result, decode_ms, total_ms)
        if deliveries:
            self.actions.wake.set()
        if kept and self.retention.used_bytes() > self.retention.budget_bytes:
            self.retention.enforce()
        return Outcome(active.id, active.decision, error, active.model_dump(mode="json"),
                       cand.model_dump(mode="json") if cand else None)

    def _count(self, frame: Frame, active: PredictionRecord, cand: PredictionRecord | None,
               result: FrameResult | None, decode_ms: float, total_ms: float) -> None:
        m = self.metrics
        m.inc("frames_total", source=frame.source.split(":", 1)[0])
        m.inc("decisions_total", decision=active.decision)
        for cls, _ in active.flagged:
            m.inc("flags_total", **{"class": cls})
        if cand is not None:
            m.inc("candidate_decisions_total", decision=cand.decision)
            if cand.decision == "error":
                m.inc("errors_total", reason="candidate")
            if cand.disagrees_with:
                m.inc("candidate_disagreements_total")
        if result is not None:
            m.observe("decode", decode_ms)
            for s in result.active.stages:
                m.observe(s.role, s.latency_ms)
            if result.candidate is not None:
                for s in result.candidate.stages:
                    m.observe(f"candidate_{s.role}", s.latency_ms)
        m.observe("total", total_ms)
        m.observe("queue_wait", (time.monotonic() - frame.enqueued_at) * 1000 - total_ms)

    def submit(self, data: bytes, suffix: str = ".jpg", timeout: float = 30.0) -> Outcome:
        """POST /v1/infer: queue an uploaded image and wait for its committed decision."""
        if self.slot.current is None:
            raise QueueFull("no active release yet")
        done = threading.Event()
        box: list[Outcome] = []

        def on_done(out: Outcome) -> None:
            box.append(out)
            done.set()

        if not self.queue.put_nowait(Frame(source="http", data=data, suffix=suffix, on_done=on_done)):
            raise QueueFull(f"inference queue full ({self.queue.max_size} frames); retry later")
        if not done.wait(timeout):
            raise QueueFull(f"no decision within {timeout}s (queue depth {self.queue.depth})")
        return box[0]

    # -- threads ------------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self.stop_event.is_set():
            if self.slot.current is None:
                self.stop_event.wait(0.1)  # nothing to run yet (the agent has not activated a release)
                continue
            frame = self.queue.get(0.2)
            if frame is None:
                continue
            self._busy_since = time.monotonic()
            try:
                out = self.process(frame)
            except Exception as err:  # e.g. the disk is full: the frame stays unprocessed and is retried
                log.exception("frame %s could not be committed", frame.source)
                self.last_error = f"{type(err).__name__}: {err}"
                self.metrics.inc("errors_total", reason="store")
                out = Outcome(None, "retry", str(err))
            finally:
                self._busy_since = None
                self.stalled = False
            if frame.on_done is not None:
                try:
                    frame.on_done(out)
                except Exception:
                    log.exception("source callback failed for %s", frame.source)

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._work, name="inference", daemon=True)
        self._worker.start()

    def _watch(self) -> None:
        while not self.stop_event.wait(1.0):
            if self._worker is not None and not self._worker.is_alive():
                self.worker_restarts += 1
                log.error("inference worker died; restarting it")
                self._start_worker()
            busy = self._busy_since
            if busy is not None and time.monotonic() - busy > self.config.watchdog.stall_s:
                if not self.stalled:
                    log.error("a frame has been in inference for over %.0fs; not ready", self.config.watchdog.stall_s)
                self.stalled = True

    def start(self) -> Daemon:
        swept = self.retention.sweep_orphans()
        if swept:
            log.info("removed %d kept-image files without a committed record", swept)
        if self.config.release is not None:
            rel = self.config.release
            spec = ReleaseSpec.model_validate(rel.model_dump(exclude={"candidate"}))
            self.activate(spec, rel.candidate, {})
        self._start_worker()
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._watchdog.start()
        self.actions.start()
        for s in self.config.sources:
            if isinstance(s, FolderSource):
                self.watchers.append(FolderWatcher(s, self.queue, self.committed_decision, self.stop_event).start())
            elif isinstance(s, CaptureSource):
                block = self.config.queue.capture_policy == "block"
                self.captures.append(CaptureReader(s, self.queue, self.stop_event, block).start())
        if self.config.api.enabled:
            self._start_api()
        if self.config.fleet is not None:
            self._start_agent()
        return self

    def _start_api(self) -> None:
        import uvicorn

        from edge.api import create_app

        cfg = uvicorn.Config(create_app(self), host=self.config.api.host, port=self.config.api.port,
                             log_level="warning", access_log=False)
        self._server = uvicorn.Server(cfg)
        self._server.install_signal_handlers = lambda: None  # the daemon owns SIGTERM/SIGINT
        self._server_thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self._server_thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._server_thread.is_alive() or time.monotonic() > deadline:
                # uvicorn logs the cause (address in use, permission) and ends its thread
                raise ConfigError(f"api: cannot listen on {self.config.api.host}:{self.config.api.port}")
            time.sleep(0.02)

    def _start_agent(self) -> None:
        try:
            from edge.agent.runtime import Agent
        except ImportError as err:
            raise ConfigError(f"fleet: the device agent (edge.agent.runtime) is not available here ({err})") from err
        self.agent = Agent(self.config.fleet, host=self)
        self.agent.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.agent is not None and hasattr(self.agent, "stop"):
            self.agent.stop()
        if self._server is not None:
            self._server.should_exit = True
        for t in [self._worker, self._server_thread, self.actions.thread, *(w.thread for w in self.watchers),
                  *(c.thread for c in self.captures)]:
            if t is not None and t.is_alive():
                t.join(10)
        for w in self.watchers:
            w.close()
        self.actions.close()
        old = self.slot.swap(None)
        if old is not None:
            old.close()
        self.store.close()

    def run(self) -> None:
        """Start, then block until SIGTERM/SIGINT, then stop cleanly (the frame in flight is finished)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        log.info("device %s running; API %s", self.device_id,
                 f"http://{self.config.api.host}:{self.config.api.port}" if self.config.api.enabled else "off")
        while not self.stop_event.wait(0.5):
            pass
        self.stop()
