"""Time to export each shipped real model from its preset into a signed bundle with an FP16 variant (median of 3),
and, with --matrix, what the exporter does with every test model and the variants asked for (--int8, --coreml).

Default: one line per shipped model and a summary line last; writes benchmarks/results/export_time.json.
--matrix: the three shipped models, the two YOLO architecture files, a classifier with a constant shape subgraph, a
model with an NHWC input, and two models no decoder reads (a text detector's probability map [N,1,96,96], asked for
as a classifier and as a YOLOX detector; a CRNN recogniser's sequence [1,50,6625] asked for as a 6625-class
classifier), all made with onnx.helper by the tests' builders; each exported once with --fp16 plus the flags given; one line per model: exported (steps and seconds, parity of every
variant) or refused (the error class, exit code and message); writes benchmarks/results/export_matrix.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from export.exporter import export_model
from export.options import build_options, load_preset
from runtime.errors import ShadowlineError
from runtime.signing import generate_keys, load_private_key

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT.parent / "shared" / "realdata" / "models"
IMAGES = ROOT.parent / "shared" / "realdata" / "images"
PRESETS = {"pcb-aoi": "pcb-aoi_opset11.onnx", "squeezenet": "squeezenet1.0_fp32.onnx", "yolox-nano": "yolox_nano.onnx"}
YOLO = {"yolov8n-arch": "yolov8n_arch_320.onnx", "yolo11n-arch": "yolo11n_arch_320.onnx"}


def _test_builders() -> None:
    """The test helpers that build models with onnx.helper are not installed; run from a checkout."""
    import sys

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def shape_classifier(path: Path) -> Path:
    """The Core ML converter's constant-fold case (tests/coreml/onnx_cases.py): a classifier whose flatten is a
    Shape -> Gather -> Unsqueeze -> Concat -> Reshape chain, as PyTorch exports `x.view(x.size(0), -1)`."""
    import onnx

    _test_builders()
    from tests.coreml.onnx_cases import shape_classifier as build

    onnx.save(build(), str(path))
    return path


def matrix_cases(work: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    cases: list[tuple[str, Path, dict[str, Any]]] = []
    for preset, file in PRESETS.items():
        cases.append((preset, MODELS / file, load_preset(preset, MODELS / file)))
    for name, file in YOLO.items():
        cases.append((name, MODELS / file, {**load_preset("yolov8", MODELS / file), "name": name}))
    cases.append(("shape-classifier", shape_classifier(work / "shape_classifier.onnx"),
                  dict(name="shape-classifier", task="classify", labels=["scratch", "dent", "ok"], color_order="RGB",
                       resize="stretch", scale=1 / 255, decoder="softmax", calibration=str(IMAGES / "photos"))))
    _test_builders()
    from tests.export import onnx_models

    cases.append(("pcb-nhwc", onnx_models.nhwc_pcb(work / "pcb_nhwc.onnx"),
                  dict(name="pcb-nhwc", task="classify", decoder="probabilities", labels="model-metadata",
                       color_order="BGR", resize="short_side_center_crop", resize_short=227,
                       interpolation="bilinear_antialias", calibration=str(IMAGES / "pcb_winml"))))
    common = dict(color_order="RGB", resize="stretch", scale=1 / 255, calibration=str(IMAGES / "photos"))
    db = onnx_models.probability_map(work / "text_det_db.onnx")
    cases.append(("probmap-as-cls", db, dict(common, name="text-det", task="classify", decoder="sigmoid",
                                             labels=["text"])))
    cases.append(("probmap-as-yolox", db, dict(common, name="text-det", task="detect", decoder="yolox",
                                               labels=["text"])))
    cases.append(("crnn-as-cls", onnx_models.sequence_recogniser(work / "crnn_rec.onnx"),
                  dict(common, name="text-rec", task="classify", decoder="probabilities",
                       labels=[f"c{i}" for i in range(6625)])))
    return cases


def run_matrix(flags: dict[str, Any], key: Any, work: Path) -> list[dict[str, Any]]:
    rows = []
    for name, model, preset in matrix_cases(work):
        opts = build_options(preset, {"fp16": True, **flags})
        start = time.perf_counter()
        try:
            _, manifest, timings = export_model(model, opts, work / "out", key, force=True)
        except ShadowlineError as err:
            row = {"model": name, "outcome": "refused", "error": type(err).__name__, "exit_code": err.exit_code,
                   "message": str(err)[:400], "seconds": round(time.perf_counter() - start, 2)}
        else:
            row = {"model": name, "outcome": "exported", "seconds": round(time.perf_counter() - start, 2),
                   "steps": {k: round(v, 2) for k, v in timings.items()},
                   "variants": {c.artifact: ("passed" if c.passed else "FAILED") for c in manifest.parity},
                   "int8_cpu": (manifest.extras.get("int8") or {}).get("cpu")}
        rows.append(row)
        print(f"{name:17s} {row['outcome']:8s} {row['seconds']:7.1f} s  "
              + (f"{row['error']} (exit {row['exit_code']}): {row['message'][:300]}" if row["outcome"] == "refused"
                 else f"variants {row['variants']}"), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="exports per model (median reported)")
    ap.add_argument("--coreml", action="store_true", help="also convert and check a Core ML package")
    ap.add_argument("--int8", action="store_true", help="also make and check the INT8 variants")
    ap.add_argument("--matrix", action="store_true", help="every test model once, outcome per model")
    args = ap.parse_args()
    flags = {"coreml": args.coreml or None, "int8": args.int8 or None}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        priv, _, _ = generate_keys(Path(tmp), "bench")
        key = load_private_key(priv)
        if args.matrix:
            load = os.getloadavg()[0]
            rows = run_matrix({k: v for k, v in flags.items() if v}, key, Path(tmp))
            out = ROOT / "benchmarks" / "results" / "export_matrix.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(rows, indent=2))
            wanted = "+".join(["fp16"] + [k for k, v in flags.items() if v])
            print(f"export matrix ({wanted}): "
                  + ", ".join(f"{r['model']} {r['outcome']}" for r in rows)
                  + f"; load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
            return
        for preset, file in PRESETS.items():
            model = MODELS / file
            opts = build_options(load_preset(preset, model), {"fp16": True, **flags})
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
          + ", ".join(f"{k} {v['median_s']:.2f} s" for k, v in results.items())
          + f"; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
