"""hwbench on this machine's CPU (ONNX Runtime) for the three shipped models, side by side with a bare ONNX Runtime
loop on the same model and input: the device's figures, and the overhead of hwbench's harness (goal: ratio ~1).

Prints one line per model and the figure last; writes benchmarks/results/hwbench_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = ROOT.parent / "shared" / "realdata" / "models"
PRESETS = {"pcb-aoi": "pcb-aoi_opset11.onnx", "squeezenet": "squeezenet1.0_fp32.onnx", "yolox-nano": "yolox_nano.onnx"}


def bare_loop_ms(model: Path, x, runs: int) -> list[float]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(3):
        sess.run(None, feed)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    ap.add_argument("--rounds", type=int, default=3, help="alternating hwbench / bare rounds per model")
    args = ap.parse_args()
    from export.exporter import export_model
    from export.options import build_options, load_preset
    from hwbench.bench import BenchOptions
    from hwbench.run import benchmark
    from hwbench.verdict import DEFAULT_TARGETS
    from runtime.bundle import load_bundle

    rounds = 1 if args.quick else args.rounds
    calls = 20 if args.quick else 100
    options = BenchOptions(warmup=3, min_iterations=calls, max_iterations=calls, min_seconds=0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="hwbench-bench-") as tmp:
        for name, file in PRESETS.items():
            opts = build_options(load_preset(name, MODELS / file), {"fp16": True})
            path, _, _ = export_model(MODELS / file, opts, Path(tmp))
            hw, bare, full = [], [], None
            with load_bundle(path) as b:
                x = b.reference()["input"][:1]
                for _ in range(rounds):  # alternate so load from other processes hits both sides alike
                    report = benchmark(b, options, DEFAULT_TARGETS, backends=["onnxruntime"], batches=[1])
                    fp32 = next(c for c in report.ok() if c.precision == "fp32")
                    hw.append(fp32.latency_ms.p50)
                    bare.append(statistics.median(bare_loop_ms(b.model_path, x, calls)))
                    full = report
            assert full is not None
            by_prec = {c.precision: c for c in full.ok()}
            r = {"hwbench_p50_ms": round(statistics.median(hw), 3), "bare_ort_p50_ms": round(statistics.median(bare), 3),
                 "fp16_p50_ms": by_prec["fp16"].latency_ms.p50 if "fp16" in by_prec else None,
                 "fp32_throughput_ips": by_prec["fp32"].throughput_ips, "fp32_peak_rss_mb": by_prec["fp32"].peak_rss_mb,
                 "fp32_load_ms": by_prec["fp32"].load_ms,
                 "verdicts": {v.target: v.status for v in full.verdicts}, "rounds": rounds, "calls": calls}
            r["ratio_vs_bare"] = round(r["hwbench_p50_ms"] / r["bare_ort_p50_ms"], 3)
            results[name] = r
            print(f"{name:11s} hwbench P50 {r['hwbench_p50_ms']:.2f} ms vs bare ORT {r['bare_ort_p50_ms']:.2f} ms "
                  f"({r['ratio_vs_bare']:.2f}x); fp16 {r['fp16_p50_ms'] or float('nan'):.2f} ms; {r['fp32_throughput_ips']:.1f} images/s; "
                  f"load {r['fp32_load_ms']:.0f} ms; peak RSS {r['fp32_peak_rss_mb']:.0f} MB", flush=True)
    summary = {"cpu_count": os.cpu_count(), "models": results,
               "median_ratio_vs_bare": round(statistics.median(r["ratio_vs_bare"] for r in results.values()), 3)}
    out = ROOT / "benchmarks" / "results" / "hwbench_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp_out, out)
    print("hwbench CPU fp32 batch 1 P50: " + ", ".join(f"{k} {v['hwbench_p50_ms']:.1f} ms" for k, v in results.items())
          + f"; harness vs bare ONNX Runtime loop: {summary['median_ratio_vs_bare']:.2f}x (median)")


if __name__ == "__main__":
    main()
