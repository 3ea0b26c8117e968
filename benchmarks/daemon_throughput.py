"""Daemon throughput on a folder of the real images, side by side in one run against (goals in brackets):

- the bare sequential loop: read file, decode, preprocess, ONNX Runtime, decode outputs [daemon >= 1.2x]. It runs
  three times per round: at `--threads` intra-op threads with ORT's defaults, at `--threads` with the daemon's
  session options (idle spinning off), and at the daemon's own intra-op thread count (1 by default) without
  spinning; the fastest of the three is the baseline, so the daemon gains nothing from a setting;
- the CPU limit: cores / CPU time per frame of decode + preprocess + inference, each measured alone on the same
  frames, inference at whichever of the two thread counts costs less CPU [daemon >= 0.85x];
- the inference-only limit: ONNX Runtime alone on already preprocessed inputs, at the same thread count (reported);
- the same stages side by side: one bare loop per core on threads sharing the frames, at one intra-op thread
  (reported): what the stages give when they run at once on this machine, with no queue, hand-off or records. The
  CPU limit measures each stage alone; beside another busy core each one costs more CPU (shared caches, memory
  bandwidth, the host's neighbours), and this line shows how much.

The daemon is the real `shadowline edge run --config ...` process with a watched folder, with its default thread
settings (intra-op threads, lanes or decode workers) unless `--daemon-threads` / `--workers` / `--lanes` say otherwise:
everything it does per frame counts (queue, decoding, inference, SQLite group commit with outbox rows, retention, moving the file to
done/). It is started and ready (/readyz), then warmed up (one frame of each image, then three of its watchdog
ticks: what loads with the first frame and its one-off start-up chores are done; `--cold` skips this) before the
clock starts; the files are renamed into the watched folder at
t=0 and the clock stops when the last record is committed (polled in its SQLite file through one read-only
connection). Its CPU time is read from /proc. Rounds alternate; each figure is the median of the per-round ratios.
The load average during each round is printed (the machine may be shared). Prints the figures last; writes
benchmarks/results/daemon_throughput.json. `--baseline DIR` runs another checkout's daemon (e.g. the code before a
change) in every round too, in alternating order, on the same bundle and files, and prints the paired ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REALDATA = ROOT.parent / "shared" / "realdata"
IMAGES = REALDATA / "images"
MODELS = {"squeezenet": "squeezenet1.0_fp32.onnx", "pcb-aoi": "pcb-aoi_opset11.onnx", "yolox-nano": "yolox_nano.onnx"}
NO_SPIN = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
WARMUP_IDLE_S = 3.2  # after the warm-up frames: three of the daemon's watchdog ticks (1 s each)


def export(preset: str, out: Path) -> Path:
    from export.exporter import export_model
    from export.options import build_options, load_preset

    model = REALDATA / "models" / MODELS[preset]
    path, _, _ = export_model(model, build_options(load_preset(preset, model), {}), out, None)
    return path


def image_files() -> list[Path]:
    return sorted(p for d in ("pcb_winml", "photos") for p in (IMAGES / d).iterdir())


def session(model: Path, threads: int, spin: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    if not spin:
        for k, v in NO_SPIN.items():
            opts.add_session_config_entry(k, v)
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def bare_loop(bundle: Path, files: list[Path], threads: int, spin: bool) -> tuple[float, float]:
    """(frames per second, CPU ms per frame) of: read file, decode, preprocess, ORT run, decode outputs."""
    from runtime.bundle import load_bundle
    from runtime.processing.decode import decode_classification
    from runtime.processing.image import decode_image
    from runtime.processing.preprocess import preprocess

    with load_bundle(bundle) as b:
        m = b.manifest
        sess = session(b.model_path, threads, spin)
        t0, c0 = time.perf_counter(), time.process_time()
        for f in files:
            x, _ = preprocess(decode_image(f.read_bytes()), m.input)
            out = sess.run(None, {m.input.name: x[None]})[0]
            if m.task == "classify":
                decode_classification(out, m.output.decoder)
        return len(files) / (time.perf_counter() - t0), (time.process_time() - c0) * 1000 / len(files)


def parallel_loops(bundle: Path, files: list[Path], workers: int) -> tuple[float, float]:
    """(frames per second, CPU ms per frame) of `workers` threads each running the bare loop at one intra-op thread
    without spinning, on a shared list of the frames: the same stages side by side with no queue, no hand-off, no
    records. What two threads get from these stages at once on this machine (the cores share caches, memory
    bandwidth and the host's own neighbours), which the CPU limit, measured one stage at a time, does not see."""
    import threading

    from runtime.bundle import load_bundle
    from runtime.processing.image import decode_image
    from runtime.processing.preprocess import preprocess

    with load_bundle(bundle) as b:
        m = b.manifest
        sess = session(b.model_path, 1, spin=False)
        sess.run(None, {m.input.name: preprocess(decode_image(files[0].read_bytes()), m.input)[0][None]})
        todo = iter(files)
        lock = threading.Lock()

        def loop() -> None:
            while True:
                with lock:
                    f = next(todo, None)
                if f is None:
                    return
                x, _ = preprocess(decode_image(f.read_bytes()), m.input)
                sess.run(None, {m.input.name: x[None]})

        t0, c0 = time.perf_counter(), time.process_time()
        threads = [threading.Thread(target=loop) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(files) / (time.perf_counter() - t0), (time.process_time() - c0) * 1000 / len(files)


def limits(bundle: Path, files: list[Path], threads: int, daemon_threads: int) -> dict[str, float]:
    """CPU ms per frame of decode, preprocess and inference, each alone (inference at the thread count that costs
    less CPU: the higher limit); and inference-only frames per second at `threads`."""
    from runtime.bundle import load_bundle
    from runtime.processing.image import decode_image
    from runtime.processing.preprocess import preprocess

    with load_bundle(bundle) as b:
        m = b.manifest
        data = [f.read_bytes() for f in files]
        c0 = time.process_time()
        images = [decode_image(d) for d in data]
        c1 = time.process_time()
        xs = [preprocess(im, m.input)[0][None] for im in images]
        c2 = time.process_time()
        inference: dict[int, tuple[float, float]] = {}  # threads -> (CPU s, wall s) over the frames
        for t in dict.fromkeys((threads, daemon_threads)):
            sess = session(b.model_path, t, spin=False)  # the daemon's setting; spinning only adds CPU time
            sess.run(None, {m.input.name: xs[0]})
            c3, t3 = time.process_time(), time.perf_counter()
            for x in xs:
                sess.run(None, {m.input.name: x})
            inference[t] = (time.process_time() - c3, time.perf_counter() - t3)
    n = len(files)
    return {"decode_cpu_ms": (c1 - c0) * 1000 / n, "preprocess_cpu_ms": (c2 - c1) * 1000 / n,
            "inference_cpu_ms": min(c for c, _ in inference.values()) * 1000 / n,
            "inference_cpu_ms_by_threads": {t: c * 1000 / n for t, (c, _) in inference.items()},
            "inference_only_fps": n / inference[threads][1]}


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (/proc/<pid>/task/*/comm: the frame path names its threads at the OS level;
    ONNX Runtime's pool threads and the main thread keep the interpreter's name)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        name = "decode" if name.startswith("decode_") else "inference" if name.startswith("inference_") else name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def sched_s(pid: int) -> tuple[float, float]:
    """Seconds the process's threads ran, and waited runnable for a CPU (/proc/<pid>/task/*/schedstat)."""
    ran = waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            a, b, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        ran, waited = ran + int(a), waited + int(b)
    return ran / 1e9, waited / 1e9


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_committed(db: Path, n: int, t0: float, timeout: float = 300.0) -> None:
    """Return when `n` active records are committed in the daemon's SQLite file (the stop condition). One read-only
    connection for the whole wait, asked only when `PRAGMA data_version` says another connection committed since
    the last look: the benchmark shares the cores with the daemon it measures, and a new connection per poll (opening
    the file, reading the schema) cost about 0.23 CPU ms, every 5 ms (4-5% of a core); a look now costs ~2 us."""
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1, isolation_level=None)
    try:
        seen = None
        while True:
            version = c.execute("PRAGMA data_version").fetchone()[0]
            if version != seen:
                seen = version
                if c.execute("SELECT COUNT(*) FROM predictions WHERE role = 'active'").fetchone()[0] >= n:
                    return
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError("daemon did not finish the folder")
            time.sleep(0.005)
    finally:
        c.close()


def daemon_run(bundle: Path, files: list[Path], threads: int | None, work: Path, workers: int | None,
               inference_workers: int | None = None, root: Path = ROOT, warmup: bool = True,
               lanes: bool | None = None) -> tuple[float, float, dict[str, float], float]:
    """The real daemon process: (frames per second, CPU ms per frame, CPU ms per frame by thread, threads running or
    runnable on average) from the first rename to the last commit. The last says whether the daemon stalled (below
    the cores) or had work ready for every core and waited for the CPU (other processes on a shared machine).
    `root`: the checkout whose daemon runs (another one with --baseline), with this interpreter; `lanes`: its
    `pipeline.lanes` (None: not set, the daemon's own choice)."""
    import yaml

    from tests.conftest import free_port

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    staging, inbox = work / "staging", work / "inbox"
    staging.mkdir()
    inbox.mkdir()
    names = []
    for i, f in enumerate(files):
        name = f"{i:05d}{f.suffix}"
        shutil.copy(f, staging / name)
        names.append(name)
    env = {**os.environ, "PYTHONPATH": str(root)}
    for attempt in range(3):  # another process on the machine may take the free port first: try another one
        port = free_port()
        cfg = {"device_id": "bench", "api": {"port": port}, "runner": {} if threads is None else {"threads": threads},
               "release": {"name": "bench", "mode": "shadow", "stages": [{"role": "screen", "bundle": str(bundle)}]},
               "sources": [{"type": "folder", "path": "inbox", "poll_s": 0.05, "settle_s": 0.0}],
               "pipeline": {k: v for k, v in (("decode_workers", workers), ("inference_workers", inference_workers),
                                              ("lanes", lanes)) if v is not None}, "queue": {"max_size": 64}}
        (work / "device.yaml").write_text(yaml.safe_dump(cfg))
        p = subprocess.Popen([sys.executable, "-m", "shadowline.cli", "edge", "run", "--config",
                              str(work / "device.yaml"), "--log-level", "warning"], cwd=root, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        else:
            err = p.stderr.read() if p.poll() is not None and p.stderr else ""
            if p.poll() is None:
                p.kill()
                p.wait()
            if "cannot listen" in err and attempt < 2:
                continue
            raise RuntimeError(f"daemon did not become ready: {err}")
        break
    try:
        db = work / "shadowline.db"
        warm = 0
        if warmup:
            # steady state, as a daemon on a line runs for hours: one frame of each image first (what loads with the
            # first frame: Pillow, OpenCV, ONNX Runtime's first run), then three watchdog ticks (its one-off start-up
            # chores: the start-up tick's release of library pages, the idle trim, start-up's garbage)
            for i, f in enumerate(dict.fromkeys(files)):
                shutil.copy(f, staging / f"warm{i:03d}{f.suffix}")
                os.replace(staging / f"warm{i:03d}{f.suffix}", inbox / f"warm{i:03d}{f.suffix}")
                warm += 1
            wait_committed(db, warm, time.perf_counter())
            time.sleep(WARMUP_IDLE_S)
        t0, c0, th0, s0 = time.perf_counter(), proc_cpu_s(p.pid), thread_cpu_s(p.pid), sched_s(p.pid)
        for n in names:
            os.replace(staging / n, inbox / n)
        wait_committed(db, warm + len(files), t0)
        elapsed, cpu, th1, s1 = time.perf_counter() - t0, proc_cpu_s(p.pid) - c0, thread_cpu_s(p.pid), sched_s(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    by_thread = {k: (v - th0.get(k, 0.0)) * 1000 / len(files) for k, v in th1.items()}
    runnable = (s1[0] - s0[0] + s1[1] - s0[1]) / elapsed
    return len(files) / elapsed, cpu * 1000 / len(files), {k: v for k, v in by_thread.items() if v >= 0.05}, runnable


def compile_bytecode(root: Path = ROOT) -> None:
    """Byte-compile the project as `pip install` does for an installed package (an editable checkout run with
    PYTHONDONTWRITEBYTECODE would recompile every module at each start; the libraries have their .pyc)."""
    import compileall

    for pkg in ("runtime", "edge", "fleet", "shadowline"):
        compileall.compile_dir(str(root / pkg), quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="squeezenet", choices=sorted(MODELS))
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads of the bare loop and the "
                    "inference-only limit (the bare loop also runs at the daemon's thread count)")
    ap.add_argument("--daemon-threads", type=int, default=None, help="the daemon's intra-op threads per model "
                    "(default: the daemon's own default, 1)")
    ap.add_argument("--workers", type=int, default=None, help="the daemon's decode workers (default: the daemon's "
                    "own default, the cores)")
    ap.add_argument("--inference-workers", type=int, default=None, help="the daemon's inference workers (default: "
                    "the daemon's own default, the cores)")
    ap.add_argument("--lanes", choices=["auto", "on", "off"], default="auto", help="the daemon's pipeline.lanes "
                    "(auto: not set, the daemon's own choice: lanes on a CPU with 2+ cores unless --workers is given)")
    ap.add_argument("--baseline-lanes", choices=["auto", "on", "off"], default="auto", help="the same for the "
                    "--baseline daemon (e.g. --baseline . --lanes on --baseline-lanes off: lanes against decode "
                    "workers in one checkout)")
    ap.add_argument("--copies", type=int, default=16, help="copies of the 13 real images per round (16: 208 frames)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of bare/daemon/limits")
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout (e.g. the code before a change): "
                    "its daemon runs in every round beside this one, in alternating order, on the same bundle and "
                    "files with this interpreter, and the paired ratios are printed")
    ap.add_argument("--cold", action="store_true", help="no warm-up: the clock starts right after /readyz, so the "
                    "round includes what loads with the first frame and the daemon's one-off start-up chores (by "
                    "default one frame of each image and three watchdog ticks come first: the steady state)")
    ap.add_argument("--quick", action="store_true", help="short run (CI)")
    args = ap.parse_args()
    if args.quick or os.environ.get("SHADOWLINE_BENCH_QUICK"):
        args.copies, args.rounds = 4, 2
    cores = len(os.sched_getaffinity(0))
    lanes_opt = {"auto": None, "on": True, "off": False}
    lanes, base_lanes = lanes_opt[args.lanes], lanes_opt[args.baseline_lanes]
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    rounds: list[dict] = []
    try:
        bundle = export(args.model, tmp)
        files = image_files() * args.copies
        compile_bytecode()
        if args.baseline is not None:
            compile_bytecode(args.baseline)
        bare_loop(bundle, files[:5], args.threads, True)  # warm-up (page cache, ORT arenas)
        from edge.config import OnnxRuntimeRunnerConfig

        daemon_threads = args.daemon_threads or OnnxRuntimeRunnerConfig().threads or args.threads
        for r in range(args.rounds):
            load0 = os.getloadavg()[0]
            bare = {"spin": bare_loop(bundle, files, args.threads, spin=True),
                    "nospin": bare_loop(bundle, files, args.threads, spin=False)}
            if daemon_threads != args.threads:
                bare["daemon_threads"] = bare_loop(bundle, files, daemon_threads, spin=False)
            best = max(bare, key=lambda k: bare[k][0])
            base: tuple[float, float, dict[str, float], float] | None = None
            if args.baseline is not None and r % 2:  # alternate which daemon runs first
                base = daemon_run(bundle, files, args.daemon_threads, tmp / "daemon", args.workers,
                                  args.inference_workers, root=args.baseline, warmup=not args.cold, lanes=base_lanes)
            fps, cpu, by_thread, runnable = daemon_run(bundle, files, args.daemon_threads, tmp / "daemon", args.workers,
                                                       args.inference_workers, warmup=not args.cold,
                                                       lanes=lanes)
            if args.baseline is not None and base is None:
                base = daemon_run(bundle, files, args.daemon_threads, tmp / "daemon", args.workers,
                                  args.inference_workers, root=args.baseline, warmup=not args.cold, lanes=base_lanes)
            lim = limits(bundle, files, args.threads, daemon_threads)
            side = parallel_loops(bundle, files, cores)
            cpu_ms = lim["decode_cpu_ms"] + lim["preprocess_cpu_ms"] + lim["inference_cpu_ms"]
            rd = {**{f"bare_fps_{k}": v[0] for k, v in bare.items()}, "bare_best": best, "bare_fps": bare[best][0],
                  "bare_cpu_ms": bare[best][1], "daemon_fps": fps,
                  "daemon_cpu_ms": cpu, "daemon_cpu_ms_by_thread": by_thread, "daemon_runnable_threads": runnable,
                  **lim,
                  "stage_cpu_ms": cpu_ms, "cpu_limit_fps": cores * 1000 / cpu_ms,
                  "side_by_side_fps": side[0], "side_by_side_cpu_ms": side[1],
                  "load_avg": round((load0 + os.getloadavg()[0]) / 2, 2)}
            if base is not None:
                rd.update({"baseline_fps": base[0], "baseline_cpu_ms": base[1], "baseline_cpu_ms_by_thread": base[2],
                           "baseline_runnable_threads": base[3]})
            rounds.append(rd)
            variants = ", ".join(f"{k.replace('daemon_threads', f'{daemon_threads} thread(s) no spin')} {v[0]:.1f}"
                                 for k, v in bare.items()).replace("nospin", "no spin")
            print(f"round {r + 1}: bare {rd['bare_fps']:.1f} fps ({variants}; "
                  f"{rd['bare_cpu_ms']:.1f} CPU ms/frame), daemon {fps:.1f} fps ({cpu:.1f} CPU ms/frame), "
                  f"CPU limit {rd['cpu_limit_fps']:.1f} fps (decode {lim['decode_cpu_ms']:.2f} + preprocess "
                  f"{lim['preprocess_cpu_ms']:.2f} + inference {lim['inference_cpu_ms']:.2f} CPU ms on {cores} cores; "
                  "inference CPU ms by threads " + ", ".join(f"{t}: {c:.2f}" for t, c in
                                                             lim["inference_cpu_ms_by_threads"].items()) + "), "
                  f"inference only {lim['inference_only_fps']:.1f} fps; {cores} bare loops side by side "
                  f"{side[0]:.1f} fps ({side[1]:.1f} CPU ms/frame); load avg {rd['load_avg']}", flush=True)
            print("  daemon CPU ms/frame by thread: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                 sorted(by_thread.items(), key=lambda kv: -kv[1]))
                  + f"; daemon threads running or runnable on average {runnable:.2f} (cores {cores})", flush=True)
            if base is not None:
                print(f"  baseline {args.baseline}: {base[0]:.1f} fps ({base[0] / rd['cpu_limit_fps']:.2f}x the CPU "
                      f"limit), {base[1]:.1f} CPU ms/frame; by thread: " + ", ".join(
                          f"{k} {v:.2f}" for k, v in sorted(base[2].items(), key=lambda kv: -kv[1])), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = lambda k: statistics.median(x[k] for x in rounds)  # noqa: E731
    ratio = lambda a, b: statistics.median(x[a] / x[b] for x in rounds)  # noqa: E731
    from edge.config import OnnxRuntimeRunnerConfig, PipelineConfig
    from edge.processor import use_lanes

    workers = args.workers or PipelineConfig().workers
    inference_workers = args.inference_workers or PipelineConfig.default_workers()
    in_lanes = use_lanes(PipelineConfig(lanes=lanes, decode_workers=args.workers), OnnxRuntimeRunnerConfig(),
                         inference_workers)  # the mode the daemon ran in, from its own rule
    result = {"model": args.model, "threads": args.threads, "daemon_threads": daemon_threads,
              "decode_workers": 0 if in_lanes else workers, "inference_workers": inference_workers,
              "lanes": in_lanes, "cores": cores,
              "frames_per_round": len(files), "rounds": rounds, "daemon_warmed_up": not args.cold,
              "bare_fps_median": round(med("bare_fps"), 2), "daemon_fps_median": round(med("daemon_fps"), 2),
              "cpu_limit_fps_median": round(med("cpu_limit_fps"), 2),
              "inference_only_fps_median": round(med("inference_only_fps"), 2),
              "ratio_vs_bare": round(ratio("daemon_fps", "bare_fps"), 3),
              "ratio_vs_cpu_limit": round(ratio("daemon_fps", "cpu_limit_fps"), 3),
              "ratio_vs_inference_only": round(ratio("daemon_fps", "inference_only_fps"), 3),
              "side_by_side_fps_median": round(med("side_by_side_fps"), 2),
              "side_by_side_cpu_ms_median": round(med("side_by_side_cpu_ms"), 2),
              "side_by_side_ratio_vs_cpu_limit": round(ratio("side_by_side_fps", "cpu_limit_fps"), 3),
              "ratio_vs_side_by_side": round(ratio("daemon_fps", "side_by_side_fps"), 3),
              "daemon_cpu_ms_median": round(med("daemon_cpu_ms"), 2), "bare_cpu_ms_median": round(med("bare_cpu_ms"), 2),
              "stage_cpu_ms_median": round(med("stage_cpu_ms"), 2),
              # CPU-time figures, far less sensitive to other processes on the machine than the wall-time ratios:
              # the work each side spends per frame, and the cores each side got while it ran
              "cpu_ratio_bare_over_daemon": round(ratio("bare_cpu_ms", "daemon_cpu_ms"), 3),
              "cpu_ratio_stages_over_daemon": round(ratio("stage_cpu_ms", "daemon_cpu_ms"), 3),
              "daemon_cores_used_median": round(statistics.median(x["daemon_fps"] * x["daemon_cpu_ms"] / 1000
                                                                  for x in rounds), 2),
              "bare_cores_used_median": round(statistics.median(x["bare_fps"] * x["bare_cpu_ms"] / 1000
                                                                for x in rounds), 2),
              "daemon_runnable_threads_median": round(med("daemon_runnable_threads"), 2),
              "load_avg_median": round(med("load_avg"), 2), "goals": {"vs_bare": 1.2, "vs_cpu_limit": 0.85}}
    if args.baseline is not None:
        result.update({"baseline": str(args.baseline), "baseline_fps_median": round(med("baseline_fps"), 2),
                       "baseline_cpu_ms_median": round(med("baseline_cpu_ms"), 2),
                       "baseline_ratio_vs_cpu_limit": round(ratio("baseline_fps", "cpu_limit_fps"), 3),
                       "fps_over_baseline": round(ratio("daemon_fps", "baseline_fps"), 3),
                       "cpu_ms_over_baseline": round(ratio("daemon_cpu_ms", "baseline_cpu_ms"), 3)})
    out = ROOT / "benchmarks" / "results" / "daemon_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"CPU per frame: daemon {result['daemon_cpu_ms_median']:.1f} ms, bare {result['bare_cpu_ms_median']:.1f} ms, "
          f"decode + preprocess + inference alone {result['stage_cpu_ms_median']:.1f} ms (CPU-time ratios, less "
          f"load-sensitive: bare/daemon {result['cpu_ratio_bare_over_daemon']:.2f}x, stages alone/daemon "
          f"{result['cpu_ratio_stages_over_daemon']:.2f}x); cores used while running: daemon "
          f"{result['daemon_cores_used_median']:.2f}, bare {result['bare_cores_used_median']:.2f} of {cores} (daemon "
          f"threads running or runnable {result['daemon_runnable_threads_median']:.2f} on average); "
          f"inference-only limit {result['inference_only_fps_median']:.1f} fps: daemon "
          f"{result['ratio_vs_inference_only']:.2f}x")
    print(f"{cores} bare loops side by side (threads with no queue, hand-off or records; what these stages give at "
          f"once on this machine): {result['side_by_side_fps_median']:.1f} fps, "
          f"{result['side_by_side_cpu_ms_median']:.1f} CPU ms/frame, {result['side_by_side_ratio_vs_cpu_limit']:.2f}x "
          f"the CPU limit; the daemon {result['ratio_vs_side_by_side']:.2f}x of it")
    print(f"daemon throughput {result['daemon_fps_median']:.1f} fps ({args.model}, {daemon_threads} intra-op "
          f"thread(s), " + (f"{inference_workers} lanes (inference workers decoding their own frames)" if in_lanes
                            else f"{workers} decode and {inference_workers} inference workers")
          + f"; bare loop best of {sorted({args.threads, daemon_threads})} "
          f"thread(s), {len(files)} frames, {'cold daemon' if args.cold else 'daemon warmed up'}, median of "
          f"{args.rounds} rounds, load avg "
          f"{result['load_avg_median']}): {result['ratio_vs_bare']:.2f}x the bare loop "
          f"({result['bare_fps_median']:.1f} fps; goal >= 1.2x), {result['ratio_vs_cpu_limit']:.2f}x the CPU limit "
          f"({result['cpu_limit_fps_median']:.1f} fps; goal >= 0.85x)")
    if args.baseline is not None:
        print(f"baseline {args.baseline} in the same rounds: {result['baseline_fps_median']:.1f} fps, "
              f"{result['baseline_ratio_vs_cpu_limit']:.2f}x the CPU limit, {result['baseline_cpu_ms_median']:.1f} CPU "
              f"ms/frame; this daemon over the baseline, paired per round: {result['fps_over_baseline']:.2f}x the "
              f"frames per second, {result['cpu_ms_over_baseline']:.2f}x the CPU per frame")


if __name__ == "__main__":
    main()
