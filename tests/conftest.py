"""Shared fixtures: the real models and images of ../shared/realdata, signing keys, exported bundles, and a real
Mosquitto process on a free port with its own config."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
MODELS = REALDATA / "models"
IMAGES = REALDATA / "images"
EXPECTED = REALDATA / "expected" / "results_onnxruntime_cpu.json"
PRESETS = {"pcb-aoi": "pcb-aoi_opset11.onnx", "squeezenet": "squeezenet1.0_fp32.onnx", "yolox-nano": "yolox_nano.onnx"}


# Under pytest-xdist (the README's `-n 2`) the workers run side by side; a test marked `exclusive` runs with no other
# test alongside it. The lock lives in the run's shared temp folder: one worker holds it shared per test, an exclusive
# test holds it alone; a gate taken first makes a waiting exclusive test block new shared holders (no starvation).
_LOCKS: dict[str, Any] = {}


def _lock_dir(config: pytest.Config) -> Path | None:
    if not hasattr(config, "workerinput"):  # not an xdist worker: one process, nothing runs alongside
        return None
    return config._tmp_path_factory.getbasetemp().parent  # type: ignore[attr-defined]  # shared by the workers


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    import fcntl

    where = _lock_dir(item.config)
    if where is None:
        yield
        return
    if not _LOCKS:
        _LOCKS["gate"] = open(where / "exclusive.gate", "a+")
        _LOCKS["main"] = open(where / "exclusive.lock", "a+")
    gate, main = _LOCKS["gate"], _LOCKS["main"]
    alone = item.get_closest_marker("exclusive") is not None
    fcntl.flock(gate, fcntl.LOCK_EX)
    fcntl.flock(main, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
    if not alone:
        fcntl.flock(gate, fcntl.LOCK_UN)
    try:
        yield
    finally:
        fcntl.flock(main, fcntl.LOCK_UN)
        if alone:
            fcntl.flock(gate, fcntl.LOCK_UN)


def shared_once(tmp_path_factory: pytest.TempPathFactory, name: str,
                build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """What `build(folder)` makes, made once for the whole run. Under pytest-xdist the first worker builds it in the
    run's shared temp folder (the others wait on a lock) and every worker copies the folder into its own temp folder,
    to use as it likes; the Paths `build` returned (inside its folder) come back pointing into the copy."""
    import fcntl

    own = tmp_path_factory.mktemp(name)
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build(own)
    shared = tmp_path_factory.getbasetemp().parent
    root = shared / f"shared-{name}"
    done = shared / f"shared-{name}.json"
    with open(shared / f"shared-{name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            made = build(root)
            done.write_text(json.dumps({k: {"path": str(v.relative_to(root))} if isinstance(v, Path) else v
                                        for k, v in made.items()}))
    shutil.copytree(root, own, dirs_exist_ok=True)
    return {k: own / v["path"] if isinstance(v, dict) and set(v) == {"path"} else v
            for k, v in json.loads(done.read_text()).items()}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import importlib.util
    import sys

    has_trt = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None
    for item in items:
        if "gpu" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and pycuda on an NVIDIA GPU"))
        if "macos" in item.keywords and sys.platform != "darwin":
            item.add_marker(pytest.mark.skip(reason="Core ML prediction needs macOS"))


@pytest.fixture(scope="session")
def expected() -> dict:
    return json.loads(EXPECTED.read_text())


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Signing keys for the session (one set for the whole run, so the workers share `bundles`)."""
    return shared_once(tmp_path_factory, "keys", make_keys)


def make_keys(d: Path) -> dict[str, Any]:
    from runtime.signing import generate_keys

    priv, pub, kid = generate_keys(d, "signer")
    (d / "other").mkdir()
    other_priv, _, other_kid = generate_keys(d / "other", "intruder")
    trust = d / "trust"
    trust.mkdir()
    shutil.copy(pub, trust / "signer.pub")
    # the fleet's control key (signs desired states and commands; devices get `control_public` as fleet_keys)
    (d / "control").mkdir()
    control_priv, control_pub, _ = generate_keys(d / "control", "control")
    return {"private": priv, "public": pub, "key_id": kid, "trust": trust, "other_private": other_priv,
            "other_key_id": other_kid, "control_private": control_priv, "control_public": control_pub}


def export_preset(preset: str, out: Path, private_key: Path | None, **overrides) -> Path:
    from export.exporter import export_model
    from export.options import build_options, load_preset
    from runtime.signing import load_private_key

    model = MODELS / PRESETS[preset]
    opts = build_options(load_preset(preset, model), overrides)
    path, _, _ = export_model(model, opts, out, load_private_key(private_key) if private_key else None)
    return path


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> dict[str, Path]:
    """The three shipped models exported once per session, signed, with FP16 variants."""
    return shared_once(tmp_path_factory, "bundles",
                       lambda out: {p: export_preset(p, out, keys["private"], fp16=True) for p in PRESETS})


class CoremlBundles:
    """(preset, precision) -> signed bundle directory exported through the real exporter with coreml=True, once per
    run (shared by the pytest-xdist workers like `bundles`): the Core ML tests and the Core ML runner's use the same."""

    def __init__(self, factory: pytest.TempPathFactory, key: Path) -> None:
        self.factory, self.key = factory, key
        self.done: dict[tuple[str, str], Path] = {}

    def __getitem__(self, item: tuple[str, str]) -> Path:
        preset, precision = item
        if preset not in PRESETS or precision not in ("fp32", "fp16"):
            raise KeyError(item)
        if item not in self.done:
            self.done[item] = shared_once(self.factory, f"coreml-{preset}-{precision}", lambda out: {
                "path": export_preset(preset, out, self.key, coreml=True, coreml_precision=precision)})["path"]
        return self.done[item]


@pytest.fixture(scope="session")
def coreml_bundles(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> CoremlBundles:
    pytest.importorskip("coremltools")
    return CoremlBundles(tmp_path_factory, keys["private"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll `cond` until it returns something true and return that; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


class Mosquitto:
    """A Mosquitto broker process with its own config on a free port; restartable (for kill -9 tests)."""

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None) -> None:
        self.workdir, self.extra_conf = workdir, extra_conf
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.conf = workdir / "mosquitto.conf"

    def start(self) -> Mosquitto:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"persistence true\npersistence_location {self.workdir}/\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
            "max_queued_messages 100000\n"
            # Started as root, Mosquitto drops to the `mosquitto` user, which cannot write pytest's private
            # temp folders: its persistence and password files would silently not work.
            + ("user root\n" if os.geteuid() == 0 and "user " not in (self.extra_conf or "") else "")
            + (self.extra_conf or "allow_anonymous true\n"))
        return self.spawn()

    def spawn(self) -> Mosquitto:
        """Run mosquitto on `self.conf` as it is and wait until it listens on `self.port`."""
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    log = (self.workdir / "mosquitto.log")
                    raise RuntimeError(f"mosquitto exited: {log.read_text() if log.exists() else ''}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()
