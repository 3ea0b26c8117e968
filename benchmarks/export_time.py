"""Time to export each shipped real model from its preset into a signed bundle with an FP16 variant (median of 3).

Prints one line per model and a summary line last; writes benchmarks/results/export_time.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from export.exporter import export_model
from export.options import build_options, load_preset
from runtime.signing import generate_keys, load_private_key

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT.parent / "shared" / "realdata" / "models"
PRESETS = {"pcb-aoi": "pcb-aoi_opset11.onnx", "squeezenet": "squeezenet1.0_fp32.onnx", "yolox-nano": "yolox_nano.onnx"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="exports per model (median reported)")
    ap.add_argument("--coreml", action="store_true", help="also convert and check a Core ML package")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        priv, _, _ = generate_keys(Path(tmp), "bench")
        key = load_private_key(priv)
        for preset, file in PRESETS.items():
            model = MODELS / file
            opts = build_options(load_preset(preset, model), {"fp16": True, "coreml": args.coreml or None})
            times, steps = [], []
            for i in range(args.repeat):
                start = time.perf_counter()
                _, _, timings = export_model(model, opts, Path(tmp) / f"out{i}", key, force=True)
                times.append(time.perf_counter() - start)
                steps.append(timings)
            results[preset] = {"median_s": statistics.median(times), "runs_s": times,
                               "steps_median_s": {k: statistics.median(s[k] for s in steps) for k in steps[0]}}
            print(f"{preset:12s} median {results[preset]['median_s']:.2f} s  runs {[round(t, 2) for t in times]}  "
                  f"steps {({k: round(v, 2) for k, v in results[preset]['steps_median_s'].items()})}")
    out = ROOT / "benchmarks" / "results" / "export_time.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"export time (median of {args.repeat}, signed, with FP16): "
          + ", ".join(f"{k} {v['median_s']:.2f} s" for k, v in results.items()))


if __name__ == "__main__":
    main()
