"""Hot swap under load: frames dropped while the daemon swaps its release, and P99 frame latency during the swap
against P99 just before it, side by side in one run. Goals: 0 frames dropped; P99 during <= 2x P99 before.

The daemon is the real edge.daemon.Daemon in this process, with signed bundles of the shipped models (exported
into a temp dir) and a trust store. A feeder thread streams the shipped real images open-loop at a steady rate
(a fraction of the measured capacity) into the same queue POST /v1/infer uses, without the HTTP layer; a frame's
latency runs from submission to the commit of its record (its source's on_done). While the stream runs, the main
thread calls `Daemon.activate` (what the device agent calls on a new desired state), alternating a
threshold-only revision and a swap to a different model, several times per repeat, a fresh daemon per repeat.

Windows per swap, of equal length: "during" = frames that finished after activate() started and were submitted
before it returned plus `--tail-s` (the backlog the swap left behind); "before" = frames submitted in as many
seconds before activate() started that finished before it. Swaps are `--gap-s` apart. Dropped = submitted frames
without exactly one active record in the daemon's SQLite store (counted there, by each frame's unique source),
queue rejections included. The figure is the median over all swaps of the per-swap ratio P99 during / P99 before.
Prints it last; writes benchmarks/results/hot_swap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REALDATA = ROOT.parent / "shared" / "realdata"
IMAGES = REALDATA / "images"
CAT_CLASSES = ["tabby, tabby cat", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat, Siamese"]


def export_bundles(out: Path) -> tuple[dict[str, Path], Path]:
    """Signed bundles of the two classification models and a trust store holding the signer's public key."""
    from runtime.signing import generate_keys
    from tests.conftest import export_preset

    priv, pub, _ = generate_keys(out / "keys", "bench")
    trust = out / "trust"
    trust.mkdir()
    shutil.copy(pub, trust / "bench.pub")
    return {p: export_preset(p, out / "bundles", priv) for p in ("squeezenet", "pcb-aoi")}, trust


def releases(bundles: dict[str, Path]) -> list[tuple[str, dict]]:
    """(kind of swap that leads to it, release) in cycle order: thresholds only, other model, back, thresholds."""
    def sq(t: float) -> list[dict]:
        return [{"role": "screen", "bundle": str(bundles["squeezenet"]), "candidate_classes": CAT_CLASSES,
                 "threshold": t}]

    pcb = [{"role": "screen", "bundle": str(bundles["pcb-aoi"]), "candidate_classes": ["Defective"],
            "threshold": 0.5}]
    return [("start", {"stages": sq(0.1)}), ("thresholds", {"stages": sq(0.3)}), ("model", {"stages": pcb}),
            ("model", {"stages": sq(0.1)})]


@dataclass
class Sent:
    index: int
    submitted: float
    accepted: bool
    done: float | None = None
    revision: int | None = None
    decision: str | None = None


@dataclass
class Feeder:
    """Open-loop stream: frame k is queued at t0 + k * interval whatever the daemon is doing."""

    daemon: object
    images: list[tuple[bytes, str]]
    interval: float
    prefix: str
    sent: list[Sent] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Feeder:
        self.thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        from edge.sources import Frame

        t0 = time.monotonic()
        k = 0
        while not self.stop.is_set():
            delay = t0 + k * self.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            data, suffix = self.images[k % len(self.images)]
            s = Sent(k, time.monotonic(), False)

            def on_done(out, s=s) -> None:
                s.done = time.monotonic()
                s.decision = out.decision
                s.revision = (out.record or {}).get("revision")

            self.sent.append(s)
            s.accepted = self.daemon.queue.put_nowait(
                Frame(source=f"http:{self.prefix}-{k}", data=data, suffix=suffix, on_done=on_done))
            k += 1

    def finish(self, timeout: float = 60) -> None:
        self.stop.set()
        self.thread.join()
        deadline = time.monotonic() + timeout
        while any(s.accepted and s.done is None for s in self.sent) and time.monotonic() < deadline:
            time.sleep(0.01)


def p99(values: list[float]) -> float:
    from runtime.stats import percentile

    return percentile(values, 99) if values else float("nan")


def make_daemon(work: Path, trust: Path, release: dict, threads: int | None):
    from edge.config import DeviceConfig
    from edge.daemon import Daemon

    cfg = DeviceConfig.model_validate({
        "device_id": "bench", "trust_store": str(trust), "api": {"enabled": False},
        "runner": {"threads": threads}, "retention": {"sample_pct": 0.0}, "queue": {"max_size": 64},
        "release": {"name": "line", "revision": 1, "mode": "production", **release}}).resolve(work)
    return Daemon(cfg).start()


def capacity(d, images: list[tuple[bytes, str]]) -> float:
    """Seconds per frame, frames one at a time through the same queue (after a warm-up pass)."""
    for data, suffix in images:
        d.submit(data, suffix)
    t0 = time.perf_counter()
    for data, suffix in images * 2:
        d.submit(data, suffix)
    return (time.perf_counter() - t0) / (2 * len(images))


def one_repeat(rep: int, work: Path, trust: Path, rels: list[tuple[str, dict]], images, args) -> dict:
    from fleet.protocol import ReleaseSpec

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    d = make_daemon(work, trust, rels[0][1], args.threads)
    swaps = []
    try:
        service = capacity(d, images)
        feeder = Feeder(d, images, service / args.load, f"r{rep}").start()
        time.sleep(args.gap_s)  # the queue reaches its steady state before the first window
        revision = 1
        for i in range(args.swaps):
            kind, rel = rels[1 + i % (len(rels) - 1)]
            spec = ReleaseSpec.model_validate({"name": "line", "revision": revision + 1, "mode": "production", **rel})
            s0 = time.monotonic()
            d.activate(spec, None, {})
            s1 = time.monotonic()
            swaps.append({"kind": kind, "from": revision, "to": revision + 1, "start": s0, "end": s1,
                          "activate_ms": round((s1 - s0) * 1000, 1)})
            revision += 1
            # the next before-window must not reach back into this swap's during-window
            time.sleep(max(args.gap_s, 2 * (args.tail_s + s1 - s0)) + 0.2)
        feeder.finish()
        sent = feeder.sent
        rows = d.store.query("SELECT source, COUNT(*) AS n, MIN(revision) AS rev FROM predictions "
                             "WHERE role = 'active' AND source LIKE ? GROUP BY source", (f"http:r{rep}-%",))
    finally:
        d.stop()
    counts = {r["source"]: (r["n"], r["rev"]) for r in rows}
    missing = [s.index for s in sent if counts.get(f"http:r{rep}-{s.index}", (0, None))[0] == 0]
    doubled = [s.index for s in sent if counts.get(f"http:r{rep}-{s.index}", (0, None))[0] > 1]
    rejected = sum(not s.accepted for s in sent)
    wrong_rev = 0
    for sw in swaps:
        # windows of equal length, so both P99s come from samples of about the same size and image mix
        span = sw["end"] - sw["start"] + args.tail_s
        before = [s for s in sent if s.done is not None and sw["start"] - span <= s.submitted
                  and s.done < sw["start"]]
        during = [s for s in sent if s.done is not None and s.done >= sw["start"]
                  and s.submitted <= sw["end"] + args.tail_s]
        # a frame committed before the swap began carries the old revision, one submitted after it ended the new
        wrong_rev += sum(counts.get(f"http:r{rep}-{s.index}", (0, None))[1] != sw["from"] for s in before)
        wrong_rev += sum(s.revision != sw["to"] for s in during if s.submitted > sw["end"])
        lat_b = [(s.done - s.submitted) * 1000 for s in before]
        lat_d = [(s.done - s.submitted) * 1000 for s in during]
        sw.update({"frames_before": len(lat_b), "frames_during": len(lat_d), "p99_before_ms": round(p99(lat_b), 2),
                   "p99_during_ms": round(p99(lat_d), 2), "max_during_ms": round(max(lat_d, default=0.0), 2),
                   "ratio": round(p99(lat_d) / p99(lat_b), 3)})
        del sw["start"], sw["end"]
    return {"repeat": rep + 1, "service_ms": round(service * 1000, 2), "rate_fps": round(args.load / service, 2),
            "submitted": len(sent), "dropped": len(missing), "rejected_by_queue": rejected,
            "processed_twice": len(doubled), "wrong_revision": wrong_rev,
            "errors": sum(s.decision == "error" for s in sent), "swaps": swaps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="fresh daemons, one after the other")
    ap.add_argument("--swaps", type=int, default=6, help="swaps per repeat (thresholds, model, model, ...)")
    ap.add_argument("--load", type=float, default=0.35, help="stream rate as a fraction of the measured capacity")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads of the daemon")
    ap.add_argument("--gap-s", type=float, default=4.0, help="seconds of steady stream between two swaps")
    ap.add_argument("--tail-s", type=float, default=2.0, help="seconds after activate() returns counted as during")
    ap.add_argument("--quick", action="store_true", help="short run (CI)")
    args = ap.parse_args()
    if args.quick or os.environ.get("SHADOWLINE_BENCH_QUICK"):
        args.repeats, args.swaps, args.gap_s, args.tail_s = 2, 3, 3.0, 1.5
    files = sorted(p for d in ("pcb_winml", "photos") for p in (IMAGES / d).iterdir())
    images = [(f.read_bytes(), f.suffix) for f in files]
    tmp = Path(tempfile.mkdtemp(prefix="bench-hotswap-"))
    try:
        bundles, trust = export_bundles(tmp)
        rels = releases(bundles)
        runs = []
        for rep in range(args.repeats):
            runs.append(one_repeat(rep, tmp / "daemon", trust, rels, images, args))
            r = runs[-1]
            print(f"repeat {rep + 1}: {r['submitted']} frames at {r['rate_fps']} fps, dropped {r['dropped']}, "
                  f"twice {r['processed_twice']}, wrong revision {r['wrong_revision']}; swaps (P99 before -> during "
                  "ms, activate ms): " + ", ".join(
                      f"{s['kind']} {s['p99_before_ms']:.0f}->{s['p99_during_ms']:.0f} ({s['activate_ms']:.0f})"
                      for s in r["swaps"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    swaps = [s for r in runs for s in r["swaps"]]
    ratio = statistics.median(s["ratio"] for s in swaps)
    by_kind = {k: round(statistics.median(s["ratio"] for s in swaps if s["kind"] == k), 3)
               for k in sorted({s["kind"] for s in swaps})}
    dropped = sum(r["dropped"] for r in runs)
    twice = sum(r["processed_twice"] for r in runs)
    result = {"repeats": args.repeats, "swaps_per_repeat": args.swaps, "load": args.load, "threads": args.threads,
              "gap_s": args.gap_s, "tail_s": args.tail_s, "runs": runs,
              "frames_submitted": sum(r["submitted"] for r in runs), "frames_dropped": dropped,
              "frames_processed_twice": twice, "wrong_revision": sum(r["wrong_revision"] for r in runs),
              "p99_before_ms_median": round(statistics.median(s["p99_before_ms"] for s in swaps), 2),
              "p99_during_ms_median": round(statistics.median(s["p99_during_ms"] for s in swaps), 2),
              "activate_ms_median": round(statistics.median(s["activate_ms"] for s in swaps), 1),
              "ratio": round(ratio, 3), "ratio_max": max(s["ratio"] for s in swaps), "ratio_by_kind": by_kind,
              "goal_dropped": 0, "goal_ratio": 2.0,
              "cpu_count": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)}
    out = ROOT / "benchmarks" / "results" / "hot_swap.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"ratio by swap kind: {by_kind}, worst swap {result['ratio_max']:.2f}x; "
          f"activate() median {result['activate_ms_median']} ms")
    print(f"hot swap under load: {dropped} frames dropped (goal 0), {twice} processed twice, of "
          f"{result['frames_submitted']} over {len(swaps)} swaps; "
          f"P99 during swap {result['p99_during_ms_median']:.1f} ms "
          f"vs before {result['p99_before_ms_median']:.1f} ms: {ratio:.2f}x (median of {len(swaps)} per-swap "
          f"ratios; goal <= 2x)")


if __name__ == "__main__":
    main()
