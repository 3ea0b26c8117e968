"""Lean start: what the daemon imports before its first frame, and the frame path's threads visible by name to the
operating system (top -H, py-spy, the throughput benchmark's per-stage CPU times)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.edge.conftest import PCB, fill_inbox, pcb_release, write_config
from tests.edge.test_daemon_inprocess import make_daemon

ROOT = Path(__file__).resolve().parents[2]

# Libraries the running daemon does not need at start: the uploader's HTTP client (and the CLI extras httpx pulls
# in), the exporter's and the fleet's libraries, plotting, and the local API's server (loaded on the API's thread,
# only when the API is enabled). Each would cost start time and resident memory.
# OpenCV (36 MB resident) loads with the first PNG or JPEG decoded (or a capture source, or a resize the presets do not
# use), Pillow (20 ms of import) with the first image decoded, prometheus_client (15 ms) with the first frame counted or
# the first scrape, paho with the first MQTT client made (the agent, an MQTT action), not with the modules.
NOT_AT_START = ("httpx", "rich", "pygments", "coremltools", "matplotlib", "onnx", "sqlalchemy", "alembic", "jinja2",
                "export", "hwbench", "fastapi", "starlette", "uvicorn", "cv2", "paho", "PIL", "prometheus_client")


def test_daemon_start_imports_nothing_it_does_not_use() -> None:
    code = ("import json, sys\nimport edge.cli, edge.daemon\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    tops = {m.split(".")[0] for m in loaded}
    assert not tops & set(NOT_AT_START), sorted(tops & set(NOT_AT_START))
    assert [m for m in loaded if m.startswith("fleet.")] == ["fleet.protocol"]
    assert "edge.agent.runtime" not in loaded  # the agent (state machine, downloads) loads only with fleet:


@pytest.mark.parametrize("setting", [None, ""])
def test_edge_run_skips_pydantic_plugin_discovery_unless_the_environment_asks(tmp_path: Path, keys,
                                                                             setting: str | None) -> None:
    """`shadowline edge run` sets PYDANTIC_DISABLE_PLUGINS before its first model is built, so pydantic never scans
    every installed distribution's entry points; an explicit setting (empty: load plugins) is kept."""
    cfg = write_config(tmp_path, keys, {"name": "r", "mode": "shadow", "stages": [{"role": "verify", "bundle": "x"}]})
    code = ("import json, os, sys, types\n"
            "fake = types.ModuleType('edge.daemon')\n"
            "class Daemon:\n"
            "    def __init__(self, cfg): pass\n"
            "    def run(self):\n"
            "        import pydantic.plugin._loader as loader\n"
            "        print(json.dumps([os.environ.get('PYDANTIC_DISABLE_PLUGINS'), loader._plugins is None]))\n"
            "fake.Daemon = Daemon\n"
            "sys.modules['edge.daemon'] = fake\n"
            "from edge.cli import run_command\n"
            "run_command.main(['--config', sys.argv[1]], standalone_mode=False)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    if setting is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = setting
    out = subprocess.run([sys.executable, "-c", code, str(cfg)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    value, never_scanned = json.loads(out.stdout.strip().splitlines()[-1])
    if setting is None:
        assert value == "__all__" and never_scanned
    else:
        assert value == "" and not never_scanned  # the config's models were built with plugin discovery


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names at the OS level: Linux prctl")
@pytest.mark.parametrize("lanes", [True, False], ids=["lanes", "decode-workers"])
def test_frame_path_threads_carry_their_names_at_the_os_level(tmp_path: Path, bundles, keys, lanes: bool) -> None:
    d = make_daemon(tmp_path, keys, pcb_release(bundles), pipeline={"lanes": lanes, "inference_workers": 2}).start()
    try:
        image = sorted(PCB.iterdir())[0]
        out = d.submit(image.read_bytes(), image.suffix, timeout=60)
        assert out.prediction_id is not None
        names = {p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm")}
    finally:
        d.stop()
    assert {"inference", "inference_1", "commit"} <= names, sorted(names)
    # lanes take their frames from the queue and decode them on their own threads: no reader, no decode workers
    assert ("decode_0" in names) is not lanes and ("reader" in names) is not lanes, sorted(names)


def test_local_api_app_loads_the_review_templates_on_the_first_page_request(tmp_path: Path, bundles, keys) -> None:
    """Building the local API (what the daemon does before /readyz answers) does not import Jinja2: the review
    page's first request does."""
    code = f"""
import json, sys
from pathlib import Path
from edge.config import DeviceConfig
from edge.daemon import Daemon
from edge.api import create_app
cfg = DeviceConfig.model_validate({{"device_id": "dev-1", "trust_store": {str(keys["trust"])!r},
                                   "release": json.loads({json.dumps(pcb_release(bundles), default=str)!r}),
                                   "api": {{"enabled": True}}}}).resolve(Path({str(tmp_path)!r}))
create_app(Daemon(cfg))
print(json.dumps(sorted(sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = {m.split(".")[0] for m in json.loads(out.stdout)}
    assert "starlette" in loaded  # the app was built, on Starlette: FastAPI is the fleet service's
    assert not loaded & {"jinja2", "cv2", "fastapi"}, sorted(loaded & {"jinja2", "cv2", "fastapi"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process's mappings from /proc")
def test_running_daemon_maps_opencv_only_once_it_decodes_an_image(tmp_path: Path, bundles, keys, daemons) -> None:
    """The real `shadowline edge run`: ready (model loaded, API up) without OpenCV's shared libraries mapped; the
    first PNG through POST /v1/infer loads them and is decided; the review page renders (its templates load then)."""
    d = daemons(write_config(tmp_path, keys, pcb_release(bundles)))
    assert d.proc is not None

    def opencv_mapped() -> bool:
        return any("/cv2/" in line for line in Path(f"/proc/{d.proc.pid}/maps").read_text().splitlines())

    assert httpx.get(d.url + "/readyz", timeout=10).status_code == 200
    assert not opencv_mapped()
    image = PCB / "Defective_02.png"
    r = httpx.post(d.url + "/v1/infer", content=image.read_bytes(), headers={"content-type": "image/png"},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["record"]["decision"] in ("flag", "pass")
    assert opencv_mapped()
    page = httpx.get(d.url + "/review", timeout=30)
    assert page.status_code == 200 and "dev-1" in page.text
    # the CLI started it with the garbage collector off; at the watchdog's first tick without frames it is on again
    deadline = time.monotonic() + 10
    while not d.get("/v1/status")["gc_enabled"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert d.get("/v1/status")["gc_enabled"] is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process's mappings from /proc")
def test_pillow_decoder_daemon_never_maps_opencv(tmp_path: Path, bundles, keys, daemons) -> None:
    """`pipeline.decoder: pillow` with a preset that resizes with Pillow (the PCB model's): the real daemon decides
    PNG files, through POST /v1/infer and from its watched folder, without ever loading OpenCV."""
    d = daemons(write_config(tmp_path, keys, pcb_release(bundles), pipeline={"decoder": "pillow"}))
    assert d.proc is not None
    image = PCB / "Defective_02.png"
    r = httpx.post(d.url + "/v1/infer", content=image.read_bytes(), headers={"content-type": "image/png"},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["record"]["decision"] in ("flag", "pass")
    names = fill_inbox(tmp_path / "inbox", PCB)
    st = d.wait_frames(1 + len(names))
    assert st["errors"] == 0
    maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
    assert "/cv2/" not in maps


def _rss_anon_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/<pid>/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim, RSS read from /proc")
def test_release_free_memory_hands_freed_heap_pages_back() -> None:
    """Buffers freed in the middle of the heap (below one still in use, so the heap's top cannot shrink) stay
    resident until malloc_trim hands their pages back: what the daemon does at start and when its frame path is idle."""
    code = """
import json, sys
import numpy as np
from edge.health import release_free_memory
def anon():
    for line in open('/proc/self/status'):
        if line.startswith('RssAnon:'):
            return int(line.split()[1]) / 1024
bufs = [np.ones(100_000, np.uint8) for _ in range(600)]  # 60 MB of malloc'd (not mmapped) blocks
last = bufs[-1]
del bufs
before = anon()
ok = release_free_memory()
print(json.dumps({"ok": ok, "before": before, "after": anon()}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["ok"] is True
    assert got["before"] - got["after"] > 40, got


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt, faults read from getrusage")
def test_keep_freed_buffers_reuses_them_until_the_idle_trim() -> None:
    """Bursts of frame-sized buffers (24 x 1 MB alive at once, then freed, as frames in flight are): with glibc's
    defaults the heap's free top is trimmed after each burst and the next one faults every page in again; once
    the daemon's setting is made, the second burst onwards reuses the pages (no fault), and malloc_trim (the idle
    trim) still hands them back."""
    code = """
import json, resource, sys
import numpy as np
from edge.health import keep_freed_buffers, release_free_memory
def anon():
    for line in open('/proc/self/status'):
        if line.startswith('RssAnon:'):
            return int(line.split()[1]) / 1024
ok = keep_freed_buffers() if sys.argv[1] == "keep" else None
def burst():
    bufs = [np.ones(1 << 20, np.uint8) for _ in range(24)]
    del bufs
burst()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    burst()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
before = anon()
release_free_memory()
print(json.dumps({"ok": ok, "faults": faults, "before": before, "after": anon()}))
"""
    got = {}
    for mode in ("keep", "default"):
        out = subprocess.run([sys.executable, "-c", code, mode], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        got[mode] = json.loads(out.stdout)
    assert got["keep"]["ok"] is True
    assert got["default"]["faults"] > 10 * 24 * 256 // 2, got  # each burst faulted (most of) its 24 MB in again
    assert got["keep"]["faults"] < 24 * 256 // 4, got  # reused: at most a quarter of one burst's pages
    assert got["keep"]["before"] - got["keep"]["after"] > 16, got  # the idle trim hands the kept pages back


def test_daemon_hands_memory_back_at_start_and_when_idle_after_frames(tmp_path: Path, bundles, keys) -> None:
    """The heap: once when started, then once per idle spell (a whole watchdog tick without a frame) that followed
    frames; never between the frames of a stream, never again while no frame comes. Library pages: at the first
    tick (start-up's code), right after the first decode (OpenCV's and Pillow's start-up), and with every idle
    trim."""
    d = make_daemon(tmp_path, keys, pcb_release(bundles)).start()
    try:
        assert d.memory_trims == 1  # at the end of start()
        assert d.library_releases == 0  # not in start(): at the watchdog's first tick
        time.sleep(2.5)  # two watchdog ticks without frames: nothing to hand back
        assert d.memory_trims == 1
        assert d.library_releases == 1 and d.library_pages_released_kb > 0
        image = sorted(PCB.iterdir())[0]
        # a slow stream (a frame every 0.2 s, idle in between, over three ticks): no heap trim while it lasts, one
        # release of library pages (after its first decode)
        for _ in range(15):
            assert d.submit(image.read_bytes(), image.suffix, timeout=60).prediction_id is not None
            time.sleep(0.2)
        assert d.memory_trims == 1
        assert d.library_releases == 2
        deadline = time.monotonic() + 30
        while d.memory_trims < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = d.memory_trims
        assert after >= 2  # (a tick may fall between two of the submits: one call per idle spell)
        assert d.library_releases == 2 + after - 1
        time.sleep(2.5)
        assert d.memory_trims == after
        assert d.library_releases == 2 + after - 1
    finally:
        d.stop()


SMAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 11   /usr/bin/python3.11
Rss:                   4 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd mr mw me sd
7f0000000000-7f0000100000 r-xp 00001000 fd:01 12   /venv/cv2/cv2.abi3.so
Size:               1024 kB
Rss:                 800 kB
Pss:                 800 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd ex mr mw me sd
7f0000100000-7f0000110000 r--p 00100000 fd:01 12   /venv/cv2/cv2.abi3.so
Rss:                  64 kB
Anonymous:            64 kB
Locked:                0 kB
7f0000110000-7f0000118000 rw-p 00110000 fd:01 12   /venv/cv2/cv2.abi3.so
Rss:                  32 kB
Anonymous:            32 kB
Locked:                0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Rss:                 512 kB
Anonymous:           512 kB
Locked:                0 kB
7f0000300000-7f0000310000 rw-s 00000000 fd:01 13   /data/device.db-shm
Rss:                  64 kB
Anonymous:             0 kB
Locked:                0 kB
7f0000400000-7f0000410000 r-xp 00000000 fd:01 14   /venv/old lib.so (deleted)
Rss:                  64 kB
Anonymous:             0 kB
Locked:                0 kB
7f0000500000-7f0000510000 r-xp 00000000 fd:01 15   /venv/locked.so
Rss:                  64 kB
Anonymous:             0 kB
Locked:               64 kB
7f0000600000-7f0000610000 r--p 00000000 fd:01 16   /venv/untouched.so
Rss:                   0 kB
Anonymous:             0 kB
Locked:                0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0    [vdso]
Rss:                   8 kB
Anonymous:             0 kB
Locked:                0 kB
7f0000700000-7f0000710000 r--p 00000000 00:05 17   /dev/nvhost-ctrl-gpu
Rss:                  64 kB
Anonymous:             0 kB
Locked:                0 kB
7f0000800000-7f0000a00000 r--p 00000000 00:2a 18   /dev/hugepages/weights
KernelPageSize:     2048 kB
Rss:                2048 kB
Anonymous:             0 kB
Locked:                0 kB
"""


def test_only_clean_private_read_only_file_mappings_are_released() -> None:
    """The text of a library and its headers: yes. Its RELRO (relocated, so copy-on-write pages of its own), its
    data, anonymous memory, shared file mappings, deleted and locked files, untouched mappings, [vdso], a device's
    mapping (a GPU driver's on a Jetson) and huge pages: no."""
    from edge.memory import parse_smaps

    maps = parse_smaps(SMAPS)
    assert len(maps) == 12
    assert maps[11].page_kb == 2048 and maps[1].page_kb == 4
    picked = [(m.path, m.perms, m.rss_kb) for m in maps if m.clean_library_pages]
    assert picked == [("/usr/bin/python3.11", "r--p", 4), ("/venv/cv2/cv2.abi3.so", "r-xp", 800)]
    assert maps[1].start == 0x7F0000000000 and maps[1].end == 0x7F0000100000
    assert maps[6].path == "/venv/old lib.so (deleted)" and maps[7].locked_kb == 64


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise, RSS read from /proc")
def test_release_library_pages_unmaps_code_pages_and_the_process_computes_the_same() -> None:
    """A real OpenCV decode and a real ONNX Runtime inference, then the release: the file-backed resident memory
    drops, the process's own (anonymous) memory is untouched, and the same decode and inference after it give
    bit-identical results (the pages come back from the page cache)."""
    code = """
import json, sys
import numpy as np, onnxruntime as ort, cv2
from edge.memory import release_library_pages
def status():
    out = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('RssFile', 'RssAnon'):
            out[k] = int(v.split()[0]) / 1024
    return out
data = open(sys.argv[1], 'rb').read()
sess = ort.InferenceSession(sys.argv[2], providers=['CPUExecutionProvider'])
name = sess.get_inputs()[0].name
def work():
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    x = cv2.resize(bgr, (224, 224))[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32)
    return bgr, sess.run(None, {name: x})[0]
img0, out0 = work()
before = status()
kb = release_library_pages()
released = status()
img1, out1 = work()
print(json.dumps({"kb": kb, "before": before, "released": released, "after": status(),
                  "same_image": bool(np.array_equal(img0, img1)), "same_output": bool(np.array_equal(out0, out1))}))
"""
    image = ROOT.parent / "shared" / "realdata" / "images" / "photos" / "chelsea.png"
    model = ROOT.parent / "shared" / "realdata" / "models" / "squeezenet1.0_fp32.onnx"
    out = subprocess.run([sys.executable, "-c", code, str(image), str(model)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["same_image"] and got["same_output"], got
    assert got["kb"] > 10 * 1024, got  # OpenCV's, ONNX Runtime's and the interpreter's code: tens of MB
    assert got["before"]["RssFile"] - got["released"]["RssFile"] > 10, got
    assert abs(got["released"]["RssAnon"] - got["before"]["RssAnon"]) < 2, got  # nothing of the process's own
    assert got["after"]["RssFile"] < got["before"]["RssFile"], got  # what ran again came back, not all of it


def test_settling_start_up_garbage_collects_the_cycles_and_turns_the_collector_on(tmp_path: Path, bundles,
                                                                                   keys) -> None:
    """What the watchdog of `shadowline edge run` does at its first tick without frames: start-up ran with the
    collector off, so objects in reference cycles stayed; settling collects them and turns the collector on. With it
    on already: no-op."""
    import gc
    import weakref

    class Node:
        pass

    d = make_daemon(tmp_path, keys, pcb_release(bundles)).start()
    try:
        gc.disable()
        try:
            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle: only the collector frees it
            ref = weakref.ref(a)
            del a, b
            assert ref() is not None
            assert d.settle_start_up_garbage() is True
            assert gc.isenabled()
            assert ref() is None
        finally:
            gc.enable()
        calls: list[int] = []
        real_collect = gc.collect
        gc.collect = lambda *a: calls.append(1) or real_collect(*a)  # type: ignore[assignment]
        try:
            assert d.settle_start_up_garbage() is False  # collector on (an in-process daemon, the tests)
        finally:
            gc.collect = real_collect  # type: ignore[assignment]
        assert calls == [] and gc.isenabled()
    finally:
        d.stop()


def test_sd_notify_sends_to_a_path_or_an_abstract_socket_and_never_fails_the_daemon(tmp_path: Path) -> None:
    import socket

    from edge import sdnotify

    assert sdnotify.notify("READY=1", {}) is False  # not run by systemd: nothing to send to
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(tmp_path / "n.sock"))
        s.settimeout(5)
        assert sdnotify.notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": str(tmp_path / "n.sock")}) is True
        assert s.recv(100) == b"READY=1\nSTATUS=x"
    name = f"shadowline-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        assert sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert s.recv(100) == b"STOPPING=1"
    # a socket that is gone, or an address family it does not speak: False, logged, no exception
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_the_first_decode_calls_its_hook_once_and_a_failing_hook_costs_no_frame(tmp_path: Path, bundles,
                                                                                 keys) -> None:
    """FrameProcessor.after_first_decode (the daemon releases the library pages the first decode's imports mapped):
    called once, by the first decode, however many follow; if it raises, the frame is still decided."""
    d = make_daemon(tmp_path, keys, pcb_release(bundles))
    assert d.frames.after_first_decode is not None  # the daemon's own, on by default
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise RuntimeError("planted")

    d.frames.after_first_decode = failing
    d.start()
    try:
        images = sorted(PCB.iterdir())[:3]
        outcomes = [d.submit(i.read_bytes(), i.suffix, timeout=60) for i in images]
        assert all(o.prediction_id is not None for o in outcomes)
        assert d.status()["errors"] == 0
        assert calls == [1]
    finally:
        d.stop()
