"""Helpers for the daemon tests: device configs over the session's real bundles, the daemon as a real process,
and hand-computed expectations from the models' own scores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import IMAGES, ROOT, free_port

PHOTOS = IMAGES / "photos"
PCB = IMAGES / "pcb_winml"
SCREEN_CLASSES = ["tabby, tabby cat", "tiger cat", "Egyptian cat", "golden retriever"]
SCREEN_T = 0.1
VERIFY_T = {"default": 0.5, "cat": 0.4, "dog": 0.7}


def photo_release(bundles: dict[str, Path], mode: str = "shadow", revision: int = 1,
                  verify: dict[str, float] | None = None, actions: list[str] | None = None) -> dict[str, Any]:
    """Screen: SqueezeNet on cat/dog classes at 0.1; verify: YOLOX with class thresholds."""
    return {"name": "photos", "revision": revision, "mode": mode, "actions": actions or [],
            "stages": [{"role": "screen", "bundle": str(bundles["squeezenet"]), "candidate_classes": SCREEN_CLASSES,
                        "threshold": SCREEN_T},
                       {"role": "verify", "bundle": str(bundles["yolox-nano"]), "thresholds": verify or VERIFY_T}]}


def pcb_release(bundles: dict[str, Path], mode: str = "shadow") -> dict[str, Any]:
    return {"name": "pcb", "revision": 1, "mode": mode,
            "stages": [{"role": "screen", "bundle": str(bundles["pcb-aoi"]), "candidate_classes": ["Defective"],
                        "threshold": 0.5}]}


# The review routes want an inspector: the tests' daemons accept this token (its hash in inspectors.json).
INSPECTOR_TOKEN = "edge-tests-inspector-" + "x" * 32
INSPECTOR = {"Authorization": f"Bearer {INSPECTOR_TOKEN}"}


def inspectors_file(workdir: Path, tokens: dict[str, str] | None = None) -> Path:
    """A device's inspectors file accepting `tokens` (name -> token; default: the tests' inspector)."""
    import hashlib
    import json

    tokens = tokens or {"inspector-1": INSPECTOR_TOKEN}
    path = workdir / "inspectors.json"
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"inspectors": [{"name": n, "sha256": hashlib.sha256(t.encode()).hexdigest()}
                                               for n, t in tokens.items()]}))
    return path


def write_config(workdir: Path, keys: dict[str, Path], release: dict[str, Any], **extra: Any) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {"device_id": "dev-1", "trust_store": str(keys["trust"]), "release": release,
                           "sources": [{"type": "folder", "path": "inbox", "poll_s": 0.05, "settle_s": 0.0}],
                           "api": {"port": free_port()}, "runner": {"threads": 1},
                           "retention": {"sample_pct": 0.0}}
    for k, v in extra.items():
        cfg[k] = v
    if "fleet" in cfg and "fleet_keys" not in cfg["fleet"]:  # the fleet's control key, as provisioning gives it
        cfg["fleet"] = {**cfg["fleet"], "fleet_keys": [str(keys["control_public"])]}
    if cfg["api"].get("enabled", True) and "inspectors_file" not in cfg["api"]:
        cfg["api"] = {**cfg["api"], "inspectors_file": str(inspectors_file(workdir))}
    path = workdir / "device.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class DaemonProcess:
    """`shadowline edge run --config FILE` as a real subprocess."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.cfg = yaml.safe_load(config.read_text())
        self.url = f"http://127.0.0.1:{self.cfg['api']['port']}"
        self.proc: subprocess.Popen | None = None
        self.log = config.parent / "daemon.log"

    def start(self, wait_ready: bool = True) -> DaemonProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "shadowline.cli", "edge", "run", "--config",
                                      str(self.config)], cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"daemon not ready: {self.log.read_text()[-3000:]}")

    def get(self, path: str, **kw: Any) -> Any:
        r = httpx.get(self.url + path, timeout=30, headers=INSPECTOR, **kw)
        r.raise_for_status()
        return r.json()

    def wait_frames(self, n: int, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.get("/v1/status")
            if st["frames"] >= n and st["queue"]["depth"] == 0:
                return st
            time.sleep(0.1)
        raise TimeoutError(f"{n} frames not processed: {self.get('/v1/status')}")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_fh", None):
            self._fh.close()
        return self.proc.returncode if self.proc else None


@pytest.fixture
def daemons():
    started: list[DaemonProcess] = []

    def start(config: Path, wait_ready: bool = True) -> DaemonProcess:
        d = DaemonProcess(config).start(wait_ready)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def fill_inbox(inbox: Path, *folders: Path) -> list[str]:
    inbox.mkdir(parents=True, exist_ok=True)
    names = []
    for folder in folders:
        for f in sorted(folder.iterdir()):
            # as the docs ask writers to: under a dot-name, then renamed (a daemon already watching the folder with
            # settle_s 0 is woken by inotify and could otherwise read a file half-copied)
            shutil.copy(f, inbox / f".{f.name}")
            (inbox / f".{f.name}").replace(inbox / f.name)
            names.append(f.name)
    return names


class WebhookServer:
    """A local HTTP server that records every POST body."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.hits += 1
                if outer.hits <= fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> WebhookServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class MqttListener:
    """A paho subscriber on the work-order topic of a real Mosquitto."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[dict] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"listener-{port}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(json.loads(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscriber did not subscribe"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


_RAW: dict[tuple[Path, Path], dict[str, tuple[dict[str, float], list[tuple[str, float]] | None]]] = {}


def _raw_outputs(bundles: dict[str, Path]) -> dict[str, tuple[dict[str, float], list[tuple[str, float]] | None]]:
    """Each photo's SqueezeNet scores and (for screen candidates) YOLOX detections, computed once per session."""
    from runtime.bundle import load_bundle
    from runtime.predictor import BundleModel
    from runtime.processing.image import read_image

    key = (bundles["squeezenet"], bundles["yolox-nano"])
    if key not in _RAW:
        raw = {}
        with load_bundle(bundles["squeezenet"]) as sb, load_bundle(bundles["yolox-nano"]) as yb:
            sq, yo = BundleModel(sb).load(), BundleModel(yb).load()
            for f in sorted(PHOTOS.iterdir()):
                im = read_image(f)
                scores = sq.predict([im])[0].scores
                assert scores is not None
                dets = None
                if any(scores[c] >= SCREEN_T for c in SCREEN_CLASSES):
                    dets = [(d.label, d.score) for d in yo.predict([im])[0].detections]
                raw[f.name] = (scores, dets)
            sq.close()
            yo.close()
        _RAW[key] = raw
    return _RAW[key]


def expected_photo_decisions(bundles: dict[str, Path], verify: dict[str, float]) -> dict[str, tuple[str, list[str]]]:
    """By hand from the models' scores: screen hit = a screen class >= 0.1; then flag = a YOLOX detection at or
    over its class threshold. Returns file name -> (decision, flagged classes)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for name, (_, dets) in _raw_outputs(bundles).items():
        if dets is None:
            out[name] = ("pass", [])
            continue
        hit = sorted({label for label, score in dets if score >= verify.get(label, verify["default"])})
        out[name] = ("flag" if hit else "pass", hit)
    return out
from tests.edge.fleet_process import fleet_process  # noqa: E402,F401  (a real fleet service process, for uploads)
