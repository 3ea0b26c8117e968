"""Core ML parity and conversion time, per model and precision, through the real exporter (`--coreml`).

Models: the three shipped ones with their presets, the YOLOv8/YOLO11 architecture files with the `yolov8` preset
(when this checkout has it), and a classifier with a constant shape subgraph (tests/coreml/onnx_cases.py). For each
model and precision (FP32, FP16) it prints what the export recorded: the tolerance applied and which side limits
it, the raw output's max abs / max relative error, the probabilities' max abs error (classifiers), top-1 and
classify-label agreement, matched detections of the network and of the Vision pipeline (detectors), the seconds to
convert and to check, and the 1-minute load average before and after; or the refusal, by name. There is no
baseline to divide by: these are correctness figures and absolute times (2 cores shared: read them with the load).

Writes benchmarks/results/coreml_parity.json; the last line is the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT.parent / "shared" / "realdata" / "models"
IMAGES = ROOT.parent / "shared" / "realdata" / "images"
SHIPPED = {"pcb-aoi": "pcb-aoi_opset11.onnx", "squeezenet": "squeezenet1.0_fp32.onnx", "yolox-nano": "yolox_nano.onnx"}
YOLO = {"yolov8n-arch": "yolov8n_arch_320.onnx", "yolo11n-arch": "yolo11n_arch_320.onnx"}
FIGURES = ("tolerance", "max_abs", "max_rel_to_peak", "probs_max_abs", "top1_agree", "top1_of", "class_label_agree",
           "detections_matched", "detections_reference", "vision_detections_matched", "vision_detections_reference")


def cases(work: Path) -> list[tuple[str, Path, dict]]:
    """(label, model file, export options) for every model this checkout can export."""
    import onnx

    from export.options import PRESET_DIR, load_preset
    from tests.coreml.onnx_cases import shape_classifier

    out = [(name, MODELS / f, load_preset(name, MODELS / f)) for name, f in SHIPPED.items()]
    if (PRESET_DIR / "yolov8.yaml").exists():
        out += [(name, MODELS / f, {**load_preset("yolov8", MODELS / f), "name": name}) for name, f in YOLO.items()]
    path = work / "shape_classifier.onnx"
    onnx.save(shape_classifier("N"), str(path))
    out.append(("shape-classifier", path, dict(name="shape-classifier", task="classify", labels=["a", "b", "c"],
                                               color_order="RGB", resize="stretch", scale=1 / 255,
                                               decoder="softmax", calibration=str(IMAGES / "photos"))))
    return out


def run(label: str, model: Path, preset: dict, precision: str, work: Path) -> dict:
    from export.exporter import export_model
    from export.options import build_options
    from runtime.errors import ShadowlineError

    opts = build_options(preset, {"coreml": True, "coreml_precision": precision})
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        _, manifest, _ = export_model(model, opts, work / f"{label}-{precision}")
    except ShadowlineError as err:
        return {"model": label, "precision": precision, "refused": f"{type(err).__name__}: {err}",
                "load_before": load_before, "load_after": os.getloadavg()[0]}
    check = next(c for c in manifest.parity if c.kind == "coreml")
    extras = manifest.extras["coreml"]
    return {"model": label, "precision": precision, "passed": check.passed,
            **{k: check.stats[k] for k in FIGURES if k in check.stats},
            "convert_s": extras["seconds"]["convert"], "check_s": extras["seconds"]["check"],
            "export_s": round(time.perf_counter() - start, 2), "samples": check.samples,
            "folded": extras.get("folded", {}).get("folded", {}), "stages": extras.get("stages"),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def line(r: dict) -> str:
    head = f"{r['model']:16s} {r['precision']}"
    if "refused" in r:
        return f"{head}  REFUSED {r['refused']}  load {r['load_before']:.1f}->{r['load_after']:.1f}"
    parts = [f"max_abs {r['max_abs']:.3g}", f"max_rel {r['max_rel_to_peak']:.3g}"]
    if "probs_max_abs" in r:
        parts += [f"probs_max_abs {r['probs_max_abs']:.3g}", f"top1 {r['top1_agree']}/{r['top1_of']}",
                  f"label {r['class_label_agree']}/{r['samples']}"]
    else:
        parts += [f"net dets {r['detections_matched']}/{r['detections_reference']}",
                  f"vision dets {r['vision_detections_matched']}/{r['vision_detections_reference']}"]
    return (f"{head}  {'pass' if r['passed'] else 'FAIL'}  " + "  ".join(parts)
            + f"  convert {r['convert_s']:.2f} s  check {r['check_s']:.2f} s  load {r['load_before']:.1f}->"
            f"{r['load_after']:.1f}  [{r['tolerance']}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="FP32 only")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, model, preset in cases(work):
            for precision in ("fp32",) if args.quick else ("fp32", "fp16"):
                results.append(run(label, model, preset, precision, work))
                print(line(results[-1]), flush=True)
    out = ROOT / "benchmarks" / "results" / "coreml_parity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    passed = sum(1 for r in results if r.get("passed"))
    refused = sum(1 for r in results if "refused" in r)
    print(f"coreml parity: {passed}/{len(results)} exports passed, {refused} refused by name; "
          f"conversion {min(r.get('convert_s', 0) for r in results):.2f}-"
          f"{max(r.get('convert_s', 0) for r in results):.2f} s; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
