"""The daemon's footprint: resident memory above a bare ONNX Runtime process running the same model, and cold
start to ready, both measured in fresh subprocesses side by side in one run (median of --repeat).

- bare: `python` + onnxruntime + numpy, one InferenceSession on the bundle's model.onnx, one inference -> ready.
- daemon: when edge/daemon.py is committed, the real daemon (`shadowline edge run --config ...`, ready when it
  sends systemd's READY=1 to the NOTIFY_SOCKET the benchmark gives it, then /readyz checked 200: the bare process
  says READY on stdout, neither side is polled; a --baseline daemon without sd_notify: the first /readyz 200 of a
  poll every 20 ms; memory read after one real image through POST /v1/infer); otherwise the daemon-equivalent process: the daemon's imports (Starlette, uvicorn, paho,
  SQLite, the outbox, the agent seams), a verified signed bundle, runtime.predictor.BundleModel and one prediction on a
  real image -> ready.

Fair to both sides: the project is byte-compiled first (as an installed package is; the libraries have their
.pyc), and one uncounted round warms the page cache. RSS includes the shared libraries' file-backed pages; the
private (anonymous) memory is printed beside it, and CPU time to ready beside the wall time (less sensitive to
other processes on a shared machine). The file-backed part depends on how the kernel holds the library files in the
page cache, not only on the code: with byte-identical files on the same kernel (6.18), cv2.abi3.so was 6.6 MB
resident when its pages had come in through faults and 21.9 MB after the file had been read sequentially (large
folios are mapped whole at a fault). Compare RSS figures taken in one run, side by side; the private figure does not
move this way.

The real daemon loads some libraries lazily (OpenCV with the first PNG or JPEG it decodes): what the first request
pays is printed too, as the time until the first POST /v1/infer answered and the RSS at /readyz beside the RSS after
that request.

After that first answer the daemon gets SETTLE_FRAMES more images and SETTLE_IDLE_S idle, and its RSS is read
again ("settled": what the running daemon holds, after it has handed freed memory back).

`--baseline DIR` runs another checkout's real daemon (e.g. the code before a change, in its own virtual environment,
on bundles made by its own exporter) in the same interleaved rounds, and prints its figures and the differences
paired per round: the side-by-side comparison in one run that RSS figures need.

Prints one line per model and the figure last; writes benchmarks/results/footprint.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
MODELS = REALDATA / "models"
IMAGES = REALDATA / "images"
PRESETS = {"pcb-aoi": "pcb-aoi_opset11.onnx", "squeezenet": "squeezenet1.0_fp32.onnx", "yolox-nano": "yolox_nano.onnx"}
IMAGE_FOR = {"pcb-aoi": IMAGES / "pcb_winml" / "Defective_02.png", "squeezenet": IMAGES / "photos" / "chelsea.png",
             "yolox-nano": IMAGES / "photos" / "astronaut.png"}

# after the first answer, this many more images and this long idle before the settled reading (the daemon trims
# its heap within two watchdog ticks, 2 s, of its last frame: a whole tick without one, then the next)
SETTLE_FRAMES = 20
SETTLE_IDLE_S = 3.5
RUNNING_S = 3.0  # frames flow this long before the "running" reading (the watchdog ticks every second)

RSS_CODE = """
def rss():
    out = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('VmRSS', 'VmHWM', 'RssAnon'):
            out[k] = int(v.split()[0]) / 1024
    return out
"""

BARE = RSS_CODE + """
import json, sys
import numpy as np
import onnxruntime as ort
model, ref = sys.argv[1], sys.argv[2]
x = np.load(ref)['input'][:1]
sess = ort.InferenceSession(model, providers=['CPUExecutionProvider'])
sess.run(None, {sess.get_inputs()[0].name: x})
if len(sys.argv) > 3 and sys.argv[3] == 'release':
    from edge.memory import release_library_pages  # what the daemon does (ctypes and the standard library)
    release_library_pages()
print('READY ' + json.dumps(rss()), flush=True)
sys.stdin.read()
"""

# --floor: the named stack without the project's code, for where the floor is: the bare process plus the libraries
# the daemon runs on (pydantic, cryptography's ed25519, PyYAML, click, prometheus_client, Pillow, OpenCV with one PNG
# decoded, SQLite) and a Starlette app served by uvicorn on a thread (as the daemon serves its API); ready when its
# /readyz answers (sys.argv[4] is the port).
FLOOR = RSS_CODE + """
import json, sys, sqlite3, threading, time, urllib.request
import numpy as np
import onnxruntime as ort
import click, yaml, prometheus_client, pydantic, cv2
from PIL import Image
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
model, ref, image, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
app = Starlette(routes=[Route('/readyz', lambda request: JSONResponse({'ready': True}))])
server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=port, log_level='warning', access_log=False,
                                       http='h11', ws='none', lifespan='off', loop='asyncio'))
threading.Thread(target=server.run, daemon=True).start()
x = np.load(ref)['input'][:1]
sess = ort.InferenceSession(model, providers=['CPUExecutionProvider'])
sess.run(None, {sess.get_inputs()[0].name: x})
cv2.imdecode(np.fromfile(image, np.uint8), cv2.IMREAD_COLOR)
Image.open(image).load()
sqlite3.connect(':memory:').execute('create table t (x)')
while True:
    try:
        urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=1).read()
        break
    except OSError:
        time.sleep(0.005)
print('READY ' + json.dumps(rss()), flush=True)
sys.stdin.read()
"""

# What edge/daemon.py imports, for the equivalent process when the daemon is not committed yet.
EQUIVALENT = RSS_CODE + """
import json, sys, sqlite3
import starlette.applications, uvicorn, paho.mqtt.client
from pathlib import Path
import edge.outbox, edge.agent.host, edge.agent.config, fleet.protocol
from runtime.predictor import BundleModel
from runtime.processing.image import read_image
from runtime.bundle import load_bundle
from runtime.signing import TrustStore
bundle = load_bundle(Path(sys.argv[1]), TrustStore.load(Path(sys.argv[2])))
model = BundleModel(bundle).load()
model.predict([read_image(sys.argv[3])])
db = sqlite3.connect(sys.argv[4])
db.execute('pragma journal_mode=wal')
print('READY ' + json.dumps(rss()), flush=True)
sys.stdin.read()
"""


def proc_rss(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon"):
            out[k] = int(v.split()[0]) / 1024
    return out


def proc_cpu_ms(pid: int) -> float:
    """CPU time (user + system, all threads) the process has used: on a shared machine it moves less than wall
    time, so it is reported beside the cold start."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def env(root: Path = ROOT) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(root) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["OMP_NUM_THREADS"] = e.get("OMP_NUM_THREADS", "")  # same threading for both processes
    if not e["OMP_NUM_THREADS"]:
        del e["OMP_NUM_THREADS"]
    return e


def run_until_ready(args: list[str], timeout: float = 120) -> tuple[float, dict[str, float]]:
    """Cold start: from spawning the interpreter to the READY line; the process is ended afterwards."""
    start = time.perf_counter()
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env(), cwd=ROOT)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        ready_ms = (time.perf_counter() - start) * 1000
        cpu = proc_cpu_ms(p.pid)
        if not line.startswith("READY "):
            raise RuntimeError(f"{args[:3]} did not become ready: {line!r} {p.stderr.read() if p.stderr else ''}")
        return ready_ms, {**json.loads(line[6:]), "cpu_ms": cpu}
    finally:
        p.kill()
        p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_committed() -> bool:
    r = subprocess.run(["git", "ls-files", "--error-unmatch", "edge/daemon.py"], cwd=ROOT, capture_output=True)
    return r.returncode == 0


def daemon_config(work: Path, bundles_dir: Path, trust: Path, bundle_id: str, port: int,
                  decoder: str | None = None, keep_library_pages: bool = False) -> Path:
    import yaml

    cfg = {"device_id": "footprint-1", "bundles_dir": str(bundles_dir), "trust_store": str(trust),
           "release": {"name": "footprint", "mode": "shadow", "stages": [{"role": "verify", "bundle": bundle_id}]},
           "store": {"path": str(work / "device.db")}, "retention": {"dir": str(work / "images")},
           "api": {"host": "127.0.0.1", "port": port}}
    if decoder is not None:
        cfg["pipeline"] = {"decoder": decoder}
    if keep_library_pages:
        cfg["watchdog"] = {"release_library_pages": False}
    path = work / "device.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def post_image(port: int, data: bytes) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/infer", data=data,
                                 headers={"content-type": "image/png"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        if r.status != 200:
            raise RuntimeError(f"POST /v1/infer answered {r.status}")


def wait_notified(sock: socket.socket, p: subprocess.Popen, deadline: float) -> None:
    """Return when READY=1 arrives on the daemon's NOTIFY_SOCKET (edge/sdnotify.py, as systemd's Type=notify waits
    for it); raise if the daemon exits or the deadline passes first."""
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"daemon exited with {p.returncode}: {p.stderr.read() if p.stderr else ''}")
        try:
            if "READY=1" in sock.recv(4096).decode().splitlines():
                return
        except TimeoutError:
            continue  # the socket's 50 ms timeout: look at the process again
    raise RuntimeError("daemon did not notify READY=1")


def run_real_daemon(config: Path, port: int, image: Path, timeout: float = 120, settle: int = SETTLE_FRAMES,
                    python: str = sys.executable, root: Path = ROOT,
                    notify: bool = True) -> tuple[float, dict[str, float]]:
    """Cold start of `shadowline edge run` to ready: the instant it sends READY=1 to its NOTIFY_SOCKET (what
    systemd waits for; like the bare process's READY line, no polling that would add its interval and the daemon's
    answers to 503s to the figure), then /readyz checked 200; with `notify=False` (a daemon without sd_notify: the
    --baseline) the first /readyz 200 of a poll every 20 ms. Then one real image through POST /v1/infer (the bare
    side has run one inference too, so both hold their inference buffers) and RSS read from /proc; then `settle`
    more images and SETTLE_IDLE_S idle, and RSS read again (what the running daemon holds, not the instant after
    its first frame). `python` and `root`: another checkout's daemon in its own environment (--baseline)."""
    sock_dir = tempfile.mkdtemp(prefix="notify-")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(sock_dir, "n"))
    sock.settimeout(0.05)
    start = time.perf_counter()
    p = subprocess.Popen([python, "-m", "shadowline.cli", "edge", "run", "--config", str(config),
                          "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**env(root), "NOTIFY_SOCKET": os.path.join(sock_dir, "n")}, cwd=root)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if notify:
                wait_notified(sock, p, deadline)
                notified_ms = (time.perf_counter() - start) * 1000
                cpu_notified = proc_cpu_ms(p.pid)
            if p.poll() is not None:
                raise RuntimeError(f"daemon exited with {p.returncode}: {p.stderr.read() if p.stderr else ''}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    ready = r.status == 200
            except OSError:
                ready = False
            if notify and not ready:
                raise RuntimeError("the daemon notified READY=1 but /readyz did not answer 200")
            if ready:
                ready_ms = notified_ms if notify else (time.perf_counter() - start) * 1000
                cpu = cpu_notified if notify else proc_cpu_ms(p.pid)
                at_ready = proc_rss(p.pid)["VmRSS"]
                data = image.read_bytes()
                post_image(port, data)
                # what loads lazily (OpenCV with the first PNG) is paid here: reported beside the cold start
                first_ms = (time.perf_counter() - start) * 1000
                first = {**proc_rss(p.pid), "cpu_ms": cpu, "first_answer_ms": first_ms,
                         "cpu_first_answer_ms": proc_cpu_ms(p.pid), "rss_at_ready_mb": at_ready}
                # frames for RUNNING_S at least (the daemon's watchdog has released the first frames' library
                # pages by then), RSS read while they flow; then idle, and RSS read again
                sent, t_first = 0, time.monotonic()
                while sent < settle or time.monotonic() - t_first < RUNNING_S:
                    post_image(port, data)
                    sent += 1
                running = proc_rss(p.pid)
                time.sleep(SETTLE_IDLE_S)
                settled = proc_rss(p.pid)
                return ready_ms, {**first, "running_rss_mb": running["VmRSS"], "running_frames": sent,
                                  "settled_rss_mb": settled["VmRSS"], "settled_private_mb": settled["RssAnon"]}
            time.sleep(0.02)
        raise RuntimeError("daemon did not become ready")
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        sock.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def export_baseline_bundles(python: str, root: Path, out: Path, names: list[str]) -> tuple[dict[str, Path], Path]:
    """The bundles of another checkout (--baseline), made by its own exporter in its own environment (the bundle
    format may differ between the two), through its own benchmarks/footprint.py."""
    code = ("import json, sys\nfrom pathlib import Path\nsys.path[:0] = [sys.argv[1] + '/benchmarks', sys.argv[1]]\n"
            "import footprint\nb, t = footprint.export_bundles(Path(sys.argv[2]), sys.argv[3].split(','))\n"
            "print('BUNDLES ' + json.dumps({'bundles': {k: str(v) for k, v in b.items()}, 'trust': str(t)}))")
    r = subprocess.run([python, "-c", code, str(root), str(out), ",".join(names)], capture_output=True, text=True,
                       env=env(root), cwd=root)
    line = next((x for x in r.stdout.splitlines() if x.startswith("BUNDLES ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"the baseline's export failed ({r.returncode}): {r.stderr[-2000:]}")
    got = json.loads(line[8:])
    return {k: Path(v) for k, v in got["bundles"].items()}, Path(got["trust"])


def export_bundles(out: Path, names: list[str]) -> tuple[dict[str, Path], Path]:
    from export.exporter import export_model
    from export.options import build_options, load_preset
    from runtime.signing import generate_keys, load_private_key

    priv, pub, _ = generate_keys(out / "keys", "bench")
    trust = out / "trust"
    trust.mkdir()
    (trust / pub.name).write_bytes(pub.read_bytes())
    bundles = {}
    for n in names:
        opts = build_options(load_preset(n, MODELS / PRESETS[n]), {})
        bundles[n], _, _ = export_model(MODELS / PRESETS[n], opts, out / "bundles", load_private_key(priv))
    return bundles, trust


def compile_bytecode(root: Path = ROOT, python: str = sys.executable) -> None:
    """Byte-compile the project as `pip install` does for an installed package: the libraries both sides import
    have their .pyc, and an editable checkout run with PYTHONDONTWRITEBYTECODE would otherwise recompile every
    project module at each daemon start (measured here: about a third of its CPU time to ready). `python`: the
    interpreter that will run that checkout (the .pyc files are per Python version)."""
    dirs = [str(root / p) for p in ("runtime", "edge", "export", "fleet", "shadowline") if (root / p).is_dir()]
    subprocess.run([python, "-m", "compileall", "-q", *dirs], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per side and model (median reported)")
    ap.add_argument("--quick", action="store_true", help="one model (pcb-aoi), one repeat")
    ap.add_argument("--daemon", choices=["auto", "real", "equivalent"], default="auto",
                    help="auto: the real daemon when edge/daemon.py is committed, else the equivalent process")
    ap.add_argument("--keep-library-pages", action="store_true",
                    help="run the real daemon with watchdog.release_library_pages: false (what it holds without "
                         "edge/memory.py's release)")
    ap.add_argument("--decoder", choices=["opencv", "pillow"], default=None,
                    help="the real daemon's pipeline.decoder (default: the daemon's own default)")
    ap.add_argument("--floor", action="store_true",
                    help="also run the named stack without the project's code (Starlette app on uvicorn, OpenCV, "
                         "pydantic, cryptography, ...) side by side: where the floor is")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout (e.g. the code before a change) whose real daemon runs in the same rounds, "
                         "interleaved, on bundles made by its own exporter: the side-by-side comparison")
    ap.add_argument("--baseline-python", default=None,
                    help="the baseline's interpreter (default: BASELINE/.venv/bin/python)")
    args = ap.parse_args()
    base_python = args.baseline_python or (str(args.baseline / ".venv" / "bin" / "python") if args.baseline else None)
    names = ["pcb-aoi"] if args.quick else list(PRESETS)
    repeat = 1 if args.quick else args.repeat
    mode = args.daemon if args.daemon != "auto" else ("real" if daemon_committed() else "equivalent")
    results: dict[str, dict] = {}
    if args.baseline is not None and mode != "real":
        ap.error("--baseline runs both real daemons: it needs --daemon real")
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        work = Path(tmp)
        bundles, trust = export_bundles(work, names)
        base_bundles: dict[str, Path] = {}
        if args.baseline is not None and base_python is not None:
            compile_bytecode(args.baseline, base_python)
            base_bundles, base_trust = export_baseline_bundles(base_python, args.baseline, work / "baseline", names)
        for n in names:
            b = bundles[n]
            bare, bare_released, daemon, floor, base = [], [], [], [], []
            for i in range(-1, repeat):  # interleaved so drift hits both sides alike;
                # round -1 warms the page cache for both sides and is not counted
                side_bare = run_until_ready([sys.executable, "-c", BARE, str(b / "model.onnx"),
                                             str(b / "reference.npz")])
                side_released = run_until_ready([sys.executable, "-c", BARE, str(b / "model.onnx"),
                                                 str(b / "reference.npz"), "release"])
                if args.floor:
                    side_floor = run_until_ready([sys.executable, "-c", FLOOR, str(b / "model.onnx"),
                                                  str(b / "reference.npz"), str(IMAGE_FOR[n]), str(free_port())])
                    if i >= 0:
                        floor.append(side_floor)
                if mode == "real":
                    port = free_port()
                    rundir = work / f"run-{n}-{i}"
                    rundir.mkdir()
                    side = run_real_daemon(daemon_config(rundir, b.parent, trust, b.name, port, args.decoder,
                                                         args.keep_library_pages), port,
                                           IMAGE_FOR[n])
                else:
                    side = run_until_ready([sys.executable, "-c", EQUIVALENT, str(b), str(trust),
                                            str(IMAGE_FOR[n]), str(work / f"{n}-{i}.db")])
                if base_bundles and base_python is not None and args.baseline is not None:
                    bb, port = base_bundles[n], free_port()
                    rundir = work / f"base-{n}-{i}"
                    rundir.mkdir()
                    side_base = run_real_daemon(daemon_config(rundir, bb.parent, base_trust, bb.name, port), port,
                                                IMAGE_FOR[n], python=base_python, root=args.baseline,
                                                notify=False)
                    if i >= 0:
                        base.append(side_base)
                if i >= 0:
                    bare.append(side_bare)
                    bare_released.append(side_released)
                    daemon.append(side)
            med = lambda xs: round(statistics.median(xs), 1)  # noqa: E731
            r = {"bare_rss_mb": med([x[1]["VmRSS"] for x in bare]),
                 "daemon_rss_mb": med([x[1]["VmRSS"] for x in daemon]),
                 "bare_private_mb": med([x[1]["RssAnon"] for x in bare]),
                 "bare_released_rss_mb": med([x[1]["VmRSS"] for x in bare_released]),
                 "daemon_private_mb": med([x[1]["RssAnon"] for x in daemon]),
                 "bare_peak_rss_mb": med([x[1]["VmHWM"] for x in bare]),
                 "daemon_peak_rss_mb": med([x[1]["VmHWM"] for x in daemon]),
                 "bare_cold_start_ms": med([x[0] for x in bare]),
                 "daemon_cold_start_ms": med([x[0] for x in daemon]), "repeat": repeat,
                 "bare_cpu_to_ready_ms": med([x[1]["cpu_ms"] for x in bare]),
                 "daemon_cpu_to_ready_ms": med([x[1]["cpu_ms"] for x in daemon]),
                 "load_avg": round(os.getloadavg()[0], 2)}
            if mode == "real":
                r["daemon_first_answer_ms"] = med([x[1]["first_answer_ms"] for x in daemon])
                r["daemon_cpu_first_answer_ms"] = med([x[1]["cpu_first_answer_ms"] for x in daemon])
                r["daemon_rss_at_ready_mb"] = med([x[1]["rss_at_ready_mb"] for x in daemon])
                r["daemon_running_rss_mb"] = med([x[1]["running_rss_mb"] for x in daemon])
                r["daemon_settled_rss_mb"] = med([x[1]["settled_rss_mb"] for x in daemon])
                r["daemon_settled_private_mb"] = med([x[1]["settled_private_mb"] for x in daemon])
            if base:
                for key, vals in (("rss_mb", [x[1]["VmRSS"] for x in base]),
                                  ("private_mb", [x[1]["RssAnon"] for x in base]),
                                  ("settled_rss_mb", [x[1]["settled_rss_mb"] for x in base]),
                                  ("settled_private_mb", [x[1]["settled_private_mb"] for x in base]),
                                  ("cold_start_ms", [x[0] for x in base]),
                                  ("cpu_to_ready_ms", [x[1]["cpu_ms"] for x in base])):
                    r["baseline_" + key] = med(vals)
                # paired per round (the same round's bare process and machine state), then the median
                r["rss_vs_baseline_mb"] = med([d[1]["VmRSS"] - x[1]["VmRSS"] for d, x in zip(daemon, base)])
                r["settled_rss_vs_baseline_mb"] = med([d[1]["settled_rss_mb"] - x[1]["settled_rss_mb"]
                                                       for d, x in zip(daemon, base)])
                r["baseline_cold_start_ratio"] = round(r["baseline_cold_start_ms"] / r["bare_cold_start_ms"], 2)
                r["baseline_cpu_to_ready_ratio"] = round(r["baseline_cpu_to_ready_ms"] / r["bare_cpu_to_ready_ms"],
                                                         2)
            if floor:
                r["floor_rss_mb"] = med([x[1]["VmRSS"] for x in floor])
                r["floor_private_mb"] = med([x[1]["RssAnon"] for x in floor])
                r["floor_cold_start_ms"] = med([x[0] for x in floor])
                r["floor_cpu_to_ready_ms"] = med([x[1]["cpu_ms"] for x in floor])
            r["rss_above_bare_mb"] = round(r["daemon_rss_mb"] - r["bare_rss_mb"], 1)
            # RSS counts the shared libraries' file-backed pages too (OpenCV's alone are ~45 MB); the private part
            # is what a second process could not share
            r["private_above_bare_mb"] = round(r["daemon_private_mb"] - r["bare_private_mb"], 1)
            r["cold_start_ratio"] = round(r["daemon_cold_start_ms"] / r["bare_cold_start_ms"], 2)
            r["cpu_to_ready_ratio"] = round(r["daemon_cpu_to_ready_ms"] / r["bare_cpu_to_ready_ms"], 2)
            results[n] = r
            print(f"{n:11s} RSS daemon {r['daemon_rss_mb']:.0f} MB vs bare ORT {r['bare_rss_mb']:.0f} MB "
                  f"(+{r['rss_above_bare_mb']:.0f} MB; private +{r['private_above_bare_mb']:.0f} MB); cold start to ready {r['daemon_cold_start_ms']:.0f} ms "
                  f"vs {r['bare_cold_start_ms']:.0f} ms ({r['cold_start_ratio']:.2f}x); CPU to ready "
                  f"{r['daemon_cpu_to_ready_ms']:.0f} ms vs {r['bare_cpu_to_ready_ms']:.0f} ms "
                  f"({r['cpu_to_ready_ratio']:.2f}x); load avg {r['load_avg']}", flush=True)
            if floor:
                print(f"{'':11s} floor (the named stack, no project code): RSS {r['floor_rss_mb']:.0f} MB "
                      f"(+{r['floor_rss_mb'] - r['bare_rss_mb']:.0f} MB above bare; private "
                      f"+{r['floor_private_mb'] - r['bare_private_mb']:.0f} MB); cold start {r['floor_cold_start_ms']:.0f} ms "
                      f"({r['floor_cold_start_ms'] / r['bare_cold_start_ms']:.2f}x); CPU to ready "
                      f"{r['floor_cpu_to_ready_ms']:.0f} ms ({r['floor_cpu_to_ready_ms'] / r['bare_cpu_to_ready_ms']:.2f}x)",
                      flush=True)
            if mode == "real":
                print(f"{'':11s} first POST /v1/infer answered at {r['daemon_first_answer_ms']:.0f} ms "
                      f"(CPU {r['daemon_cpu_first_answer_ms']:.0f} ms; the bare process's ready includes its "
                      f"inference); RSS at /readyz {r['daemon_rss_at_ready_mb']:.0f} MB; running ({RUNNING_S} s of "
                      f"frames) {r['daemon_running_rss_mb']:.0f} MB (+{r['daemon_running_rss_mb'] - r['bare_rss_mb']:.0f} MB "
                      f"above bare); settled ({SETTLE_IDLE_S} s idle after them) {r['daemon_settled_rss_mb']:.0f} MB (private "
                      f"{r['daemon_settled_private_mb']:.0f} MB): +{r['daemon_settled_rss_mb'] - r['bare_rss_mb']:.0f} MB "
                      f"above bare, +{r['daemon_settled_rss_mb'] - r['bare_released_rss_mb']:.0f} MB above a bare process "
                      f"that released its library pages the same way ({r['bare_released_rss_mb']:.0f} MB)", flush=True)
            if base:
                print(f"{'':11s} baseline {args.baseline}: RSS {r['baseline_rss_mb']:.0f} MB (+"
                      f"{r['baseline_rss_mb'] - r['bare_rss_mb']:.0f} MB above bare; private "
                      f"+{r['baseline_private_mb'] - r['bare_private_mb']:.0f} MB), settled {r['baseline_settled_rss_mb']:.0f} MB "
                      f"(private {r['baseline_settled_private_mb']:.0f} MB); cold start {r['baseline_cold_start_ratio']:.2f}x, "
                      f"CPU to ready {r['baseline_cpu_to_ready_ratio']:.2f}x; this daemon minus the baseline, paired "
                      f"per round: RSS {r['rss_vs_baseline_mb']:+.1f} MB, settled {r['settled_rss_vs_baseline_mb']:+.1f} MB",
                      flush=True)
    summary = {"mode": mode, "decoder": args.decoder, "python": sys.version.split()[0], "models": results,
               "median_rss_above_bare_mb": round(statistics.median(r["rss_above_bare_mb"] for r in results.values()), 1),
               "median_private_above_bare_mb": round(statistics.median(r["private_above_bare_mb"]
                                                                       for r in results.values()), 1),
               "median_cold_start_ratio": round(statistics.median(r["cold_start_ratio"] for r in results.values()), 2),
               "median_cpu_to_ready_ratio": round(statistics.median(r["cpu_to_ready_ratio"] for r in results.values()), 2),
               "load_avg": round(os.getloadavg()[0], 2), "goals": {"rss_above_bare_mb": 50, "cold_start_ratio": 2.0}}
    if mode == "real":
        summary["median_running_rss_above_bare_mb"] = round(statistics.median(
            r["daemon_running_rss_mb"] - r["bare_rss_mb"] for r in results.values()), 1)
        summary["median_settled_rss_above_bare_mb"] = round(statistics.median(
            r["daemon_settled_rss_mb"] - r["bare_rss_mb"] for r in results.values()), 1)
        summary["median_settled_rss_above_released_bare_mb"] = round(statistics.median(
            r["daemon_settled_rss_mb"] - r["bare_released_rss_mb"] for r in results.values()), 1)
    if args.baseline is not None:
        summary["baseline"] = str(args.baseline)
        for key in ("rss_vs_baseline_mb", "settled_rss_vs_baseline_mb", "baseline_cold_start_ratio",
                    "baseline_cpu_to_ready_ratio"):
            summary["median_" + key] = round(statistics.median(r[key] for r in results.values()), 2)
        summary["median_baseline_rss_above_bare_mb"] = round(statistics.median(
            r["baseline_rss_mb"] - r["bare_rss_mb"] for r in results.values()), 1)
    out = ROOT / "benchmarks" / "results" / "footprint.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"daemon footprint ({mode}{', decoder ' + args.decoder if args.decoder else ''}): +{summary['median_rss_above_bare_mb']:.0f} MB RSS above bare ONNX Runtime "
          f"right after the first answer (median over {len(results)} models; goal <= 50 MB"
          f"{', the running and idle readings below' if mode == 'real' else ''}; private memory "
          f"+{summary['median_private_above_bare_mb']:.0f} MB); cold start to ready "
          f"{summary['median_cold_start_ratio']:.2f}x the bare process (goal <= 2x; CPU to ready "
          f"{summary['median_cpu_to_ready_ratio']:.2f}x); load avg {summary['load_avg']}")
    if mode == "real":
        print(f"running ({RUNNING_S} s of frames after the first answer): "
              f"{summary['median_running_rss_above_bare_mb']:+.0f} MB RSS above bare (median over {len(results)} models)")
        print(f"settled ({SETTLE_IDLE_S} s idle after them): "
              f"{summary['median_settled_rss_above_bare_mb']:+.0f} MB RSS above bare, "
              f"{summary['median_settled_rss_above_released_bare_mb']:+.0f} MB above a bare process that released its "
              f"library pages the same way (median over {len(results)} models; the daemon releases them at its first "
              f"watchdog tick, once frames flow and when idle: edge/memory.py)")
    if args.baseline is not None:
        print(f"baseline {args.baseline}: +{summary['median_baseline_rss_above_bare_mb']:.0f} MB RSS above bare, cold "
              f"start {summary['median_baseline_cold_start_ratio']:.2f}x (CPU to ready "
              f"{summary['median_baseline_cpu_to_ready_ratio']:.2f}x); this daemon minus the baseline, paired per round "
              f"(median over models): RSS {summary['median_rss_vs_baseline_mb']:+.1f} MB after the first answer, "
              f"{summary['median_settled_rss_vs_baseline_mb']:+.1f} MB settled")
    # the last line (benchmarks/run_all.py keeps it): every figure at once
    rss = f"RSS above bare {summary['median_rss_above_bare_mb']:+.0f} MB after the first answer"
    if mode == "real":
        rss += (f", {summary['median_running_rss_above_bare_mb']:+.0f} MB while frames flow, "
                f"{summary['median_settled_rss_above_bare_mb']:+.0f} MB idle "
                f"({summary['median_settled_rss_above_released_bare_mb']:+.0f} MB like-for-like)")
    print(f"footprint ({mode}): cold start {summary['median_cold_start_ratio']:.2f}x the bare process (goal <= 2x; "
          f"CPU {summary['median_cpu_to_ready_ratio']:.2f}x); {rss} (goal <= 50 MB; private "
          f"{summary['median_private_above_bare_mb']:+.0f} MB); median over {len(results)} models; load avg "
          f"{summary['load_avg']}")


if __name__ == "__main__":
    main()
