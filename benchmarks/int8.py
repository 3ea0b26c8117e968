"""INT8 vs FP32 on ONNX Runtime's CPU provider, per model, side by side in one run.

For each real model the exporter's own INT8 steps make both variants from the preset's calibration images (half
calibrate, half are held out): the TensorRT-ready Q/DQ model (signed INT8, zero points 0) and the ORT-CPU model
(unsigned activations). The FP32 model and both variants then run the same preprocessed image in interleaved rounds
(one run of each per round, so a burst of load on the shared CPU hits all three alike); the figure per variant is the
median over rounds of the paired ratio FP32 time / INT8 time (above 1: INT8 is faster). The parity verdict on the
held-out images, which decides whether the exporter keeps the variant, is printed beside it, with the load average.

Prints one line per model and variant and a summary line last; writes benchmarks/results/int8.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from export.int8 import float_model, quantize, split, tail_nodes
from export.labels import check_labels, read_labels
from export.model_check import check_model
from export.options import build_options, load_preset
from export.reference import build_reference
from export.specs import input_spec, output_spec
from runtime.manifest import BatchInfo, Manifest, Provenance, Thresholds
from runtime.parity import compare, tolerances_for
from runtime.runners.base import run_batched
from runtime.runners.onnxrt import OnnxRuntimeRunner

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT.parent / "shared" / "realdata" / "models"
CASES = [("pcb-aoi", "pcb-aoi_opset11.onnx"), ("squeezenet", "squeezenet1.0_fp32.onnx"),
         ("yolox-nano", "yolox_nano.onnx"), ("yolov8", "yolov8n_arch_320.onnx"), ("yolov8", "yolo11n_arch_320.onnx")]
VARIANTS = {"int8 (TensorRT Q/DQ, signed)": True, "int8-cpu (unsigned activations)": False}


def manifest_for(model: Path, preset: str) -> tuple[Manifest, str, int]:
    opts = build_options(load_preset(preset, model), {})
    info = check_model(model)
    spec, out = input_spec(info, opts), output_spec(info, opts)
    assert opts.task is not None and opts.labels is not None and opts.calibration is not None
    manifest = Manifest(name="bench", version="1.0", task=opts.task, labels=check_labels(read_labels(opts.labels, info.metadata), None, opts.dedupe_labels)[0],
                        input=spec, output=out, batch=BatchInfo(dynamic=spec.dynamic_batch),
                        thresholds=Thresholds(default=opts.threshold), files={},
                        provenance=Provenance(source_model=model.name, source_model_sha256="", shadowline_version="",
                                              onnx_version="", onnxruntime_version="", python_version="",
                                              created_at=""))
    return manifest, opts.calibration, opts.max_calibration


def paired(runners: dict[str, OnnxRuntimeRunner], name: str, x: np.ndarray, rounds: int) -> dict[str, list[float]]:
    for r in runners.values():
        r.infer({name: x})
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r.infer({name: x})
            times[k].append((time.perf_counter() - t0) * 1000)
    return times


def bench(preset: str, file: str, rounds: int, work: Path) -> dict:
    model = MODELS / file
    manifest, calibration, max_images = manifest_for(model, preset)
    with OnnxRuntimeRunner(model) as fp32:
        reference, _ = build_reference(Path(calibration), manifest.input, fp32, max_images, 1, 50_000_000)
    calib, held = split(reference)
    prepared = work / f"{model.stem}.float.onnx"
    float_model(model, prepared)
    exclude = tail_nodes(prepared)
    paths = {"fp32": model}
    parity: dict[str, dict] = {}
    for label, signed in VARIANTS.items():
        paths[label] = work / f"{model.stem}.{'s8' if signed else 'u8'}.onnx"
        quantize(prepared, paths[label], manifest.input.name, calib.inputs, signed=signed, exclude=exclude)
        with OnnxRuntimeRunner(paths[label]) as r:
            outs = run_batched(r, manifest.input.name, held.inputs, 1)
        elementwise, task = tolerances_for("int8")
        check = compare(manifest, held, outs, artifact=label, kind="onnx-int8", precision="int8",
                        elementwise=elementwise, task=task)
        parity[label] = {"passed": check.passed, "stats": check.stats, "detail": check.detail[:200]}
    runners = {k: OnnxRuntimeRunner(p).load() for k, p in paths.items()}
    load_before = os.getloadavg()[0]
    times = paired(runners, manifest.input.name, reference.inputs[:1], rounds)
    load_after = os.getloadavg()[0]
    for r in runners.values():
        r.close()
    result = {"model": file, "fp32_median_ms": statistics.median(times["fp32"]), "load_avg_1m": [load_before,
                                                                                                 load_after],
              "variants": {}}
    for label in VARIANTS:
        ratios = [a / b for a, b in zip(times["fp32"], times[label])]
        result["variants"][label] = {"median_ms": statistics.median(times[label]),
                                     "ratio_fp32_over_int8": statistics.median(ratios), "parity": parity[label]}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds per model")
    ap.add_argument("--quick", action="store_true", help="PCB and SqueezeNet only, 10 rounds")
    args = ap.parse_args()
    cases = CASES[:2] if args.quick or os.environ.get("SHADOWLINE_BENCH_QUICK") else CASES
    rounds = 10 if args.quick else args.rounds
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset, file in cases:
            r = bench(preset, file, rounds, Path(tmp))
            results.append(r)
            for label, v in r["variants"].items():
                verdict = "parity passed" if v["parity"]["passed"] else "parity FAILED (the exporter refuses it)"
                print(f"{file:26s} {label:32s} {v['ratio_fp32_over_int8']:.2f}x FP32  ({v['median_ms']:.2f} ms vs "
                      f"{r['fp32_median_ms']:.2f} ms, {rounds} paired rounds, load {r['load_avg_1m'][0]:.2f}->"
                      f"{r['load_avg_1m'][1]:.2f})  {verdict}")
    out = ROOT / "benchmarks" / "results" / "int8.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print("INT8 / FP32 speed on ORT CPU (median paired ratio, >1 = faster): " + "; ".join(
        f"{r['model'].split('_')[0]} " + ", ".join(f"{k.split(' ')[0]} {v['ratio_fp32_over_int8']:.2f}x"
                                                   for k, v in r["variants"].items()) for r in results)
          + f"; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
