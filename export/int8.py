"""INT8 variants, calibrated with ONNX Runtime's quantization tools on the bundle's calibration images and checked at
task level on images held out of the calibration:

- `model.int8.onnx` for TensorRT: Q/DQ with signed INT8 activations and weights, zero points 0, per-channel weights,
  which TensorRT 10 and 11 build as a strongly typed network (runtime/loaders/tensorrt/versions.py picks it).
- `model.int8.cpu.onnx` for ONNX Runtime's CPU kernels: unsigned activations (its integer kernels are U8S8; with
  signed activations it keeps most convolutions in FP32 between Q/DQ pairs and runs slower than FP32). Written only
  where it is faster than FP32 on this CPU, measured side by side, unless asked for always or never.

Both leave the graph's tail after its last weighted layer (decoding, concatenation of boxes and scores) in FP32: one
INT8 scale cannot hold box coordinates in pixels and class scores in 0..1 at once.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.fp16 import drop_initializer_inputs
from runtime.errors import ConfigError, ModelRejected
from runtime.manifest import Manifest, ParityCheck
from runtime.parity import Reference, compare, tolerances_for
from runtime.runners.base import run_batched
from runtime.runners.onnxrt import OnnxRuntimeRunner
from runtime.variants import BY_NAME, median_latency_ms

TENSORRT_FILE = BY_NAME["int8"].file
CPU_FILE = BY_NAME["int8-cpu"].file
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) needs opset 13
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
MIN_CPU_SPEEDUP = 1.1  # below this the CPU variant is not worth a second model on the device
Progress = Callable[[str], None]


@dataclass
class Int8Result:
    checks: list[ParityCheck]
    extras: dict[str, Any]


def split(reference: Reference) -> tuple[Reference, Reference]:
    """(calibration, held out): every second image is held out, so both halves span the folder's variety."""
    n = len(reference.names)
    if n < 2:
        raise ConfigError(f"--int8 needs at least 2 calibration images (half calibrate, half are held out for the "
                          f"parity check); the calibration folder gave {n}")
    return _subset(reference, list(range(0, n, 2))), _subset(reference, list(range(1, n, 2)))


def _subset(reference: Reference, idx: list[int]) -> Reference:
    return Reference(reference.inputs[idx], {k: v[idx] for k, v in reference.outputs.items()},
                     [reference.names[i] for i in idx], [reference.transforms[i] for i in idx])


def float_model(src: Path, dst: Path) -> dict[str, Any]:
    """The FP32 model as the quantizer needs it: initializers no longer listed as inputs (IR < 4 did that), opset
    13 or newer, shapes inferred and ONNX Runtime's basic fusions applied (`quant_pre_process`), every node named."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    notes: dict[str, Any] = {"opset_before": _opset(model)}
    drop_initializer_inputs(model)
    if notes["opset_before"] < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as err:  # onnx raises its own converter errors
            raise ModelRejected(f"INT8: cannot upgrade the model from opset {notes['opset_before']} to {MIN_OPSET} "
                                f"(per-channel quantization needs it): {str(err).splitlines()[0][:300]}") from err
    notes["opset"] = _opset(model)
    upgraded = dst.with_name("upgraded.onnx")
    onnx.save(model, str(upgraded))
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(upgraded), str(dst), skip_symbolic_shape=False)
    except Exception as err:  # symbolic shape inference fails on some graphs; the quantizer still works without
        notes["pre_process"] = f"skipped: {type(err).__name__}: {str(err)[:200]}"
        shutil.copyfile(upgraded, dst)
    model = onnx.load(str(dst))
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    onnx.save(model, str(dst))
    return notes


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def tail_nodes(model_path: Path) -> list[str]:
    """Nodes after the graph's last weighted layer: no Conv, Gemm or MatMul depends on them. The detector heads'
    decoding and concatenation live here; quantizing them would put pixels and probabilities on one INT8 scale."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_weighted: dict[str, bool] = {}

    def feeds(node: Any) -> bool:  # does this node, or anything downstream of it, do a weighted op?
        key = node.name
        if key not in feeds_weighted:
            feeds_weighted[key] = False  # cycles cannot happen in a valid ONNX graph; this guards recursion
            feeds_weighted[key] = node.op_type in WEIGHTED or any(
                feeds(c) for out in node.output for c in consumers.get(out, []))
        return feeds_weighted[key]

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph.node) + 100))
    try:
        return [n.name for n in graph.node if not feeds(n)]
    finally:
        sys.setrecursionlimit(limit)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over the calibration half of reference.npz, one image a time
    (a static-batch model takes nothing else)."""

    def __init__(self, name: str, inputs: np.ndarray) -> None:
        self.name, self.inputs, self.i = name, inputs, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.inputs):
            return None
        self.i += 1
        return {self.name: self.inputs[self.i - 1 : self.i]}

    def rewind(self) -> None:
        self.i = 0


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs advice through the root logger (pre-processing, opset); the export reports what it did."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize(src: Path, dst: Path, input_name: str, calibration: np.ndarray, *, signed: bool,
             exclude: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if signed:
        # ONNX Runtime's recipe for TensorRT: symmetric (zero point 0) signed INT8, a Q/DQ pair per consumer, Q/DQ
        # on the FP32 weights (TensorRT folds them), per-channel MatMul weights along their output axis, and biases
        # left in FP32 (TensorRT's Q/DQ are INT8; it fuses the bias itself, an INT32 DequantizeLinear is not its).
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "AddQDQPairToWeight": True,
                 "DedicatedQDQPair": True, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                 "QuantizeBias": False}
        activations = QuantType.QInt8
    else:
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
        activations = QuantType.QUInt8
    try:
        with _quiet_quantizer():
            quantize_static(str(src), str(dst), _Reader(input_name, calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=activations, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                            extra_options=extra)
    except Exception as err:  # the quantizer raises plain exceptions with its own messages
        raise ModelRejected(f"INT8 quantization failed ({'TensorRT' if signed else 'CPU'} variant): "
                            f"{type(err).__name__}: {str(err).splitlines()[0][:300]}") from err


def tensorrt_problems(path: Path) -> list[str]:
    """What in a Q/DQ model TensorRT's explicit quantization would not take: a zero point that is not INT8 0 (or
    missing: ONNX then means UINT8), a scale that is not a positive constant, weights quantized per tensor where
    per-channel was asked for, an opset below 13."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    init = {i.name: i for i in graph.initializer}
    problems: list[str] = []
    if _opset(model) < MIN_OPSET:
        problems.append(f"opset {_opset(model)} < {MIN_OPSET}")
    weight_users = {n.input[1]: n for n in graph.node if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1}
    produced = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{node.op_type} {node.name or node.output[0]!r}"
        if len(node.input) < 3 or node.input[2] not in init:
            problems.append(f"{where}: no constant zero point (ONNX then means UINT8)")
        else:
            zp = init[node.input[2]]
            if zp.data_type != onnx.TensorProto.INT8 or np.any(numpy_helper.to_array(zp) != 0):
                problems.append(f"{where}: zero point is not INT8 0")
        scale = init.get(node.input[1])
        if scale is None:
            problems.append(f"{where}: scale is not a constant")
        elif np.any(numpy_helper.to_array(scale) <= 0):
            problems.append(f"{where}: scale is not positive")
        # a weight's DequantizeLinear feeds a convolution's weight input: it must be per output channel
        if node.op_type == "DequantizeLinear" and node.output[0] in weight_users and scale is not None:
            conv = weight_users[node.output[0]]
            source = produced.get(node.input[0])
            weight = init.get(source.input[0]) if source is not None else init.get(node.input[0])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            want = 1 if conv.op_type == "ConvTranspose" else 0
            channels = weight.dims[want] if weight is not None else None
            if channels and channels > 1 and (numpy_helper.to_array(scale).size != channels or axis != want):
                problems.append(f"{where}: weights of {conv.name!r} not quantized per channel (axis {want})")
    return problems


def _check(draft: Manifest, held: Reference, path: Path, max_batch: int) -> ParityCheck:
    elementwise, task = tolerances_for("int8")
    start = time.perf_counter()
    with OnnxRuntimeRunner(path) as runner:
        outputs = run_batched(runner, draft.input.name, held.inputs, max_batch)
    return compare(draft, held, outputs, artifact=path.name, kind="onnx-int8", precision="int8",
                   elementwise=elementwise, task=task, seconds=time.perf_counter() - start)


def cpu_speed(fp32: Path, int8: Path, input_name: str, x: np.ndarray) -> dict[str, float]:
    """FP32 and INT8 on ONNX Runtime's CPU provider, one image, side by side in interleaved rounds (median ms)."""
    with OnnxRuntimeRunner(fp32) as a, OnnxRuntimeRunner(int8) as b:
        ms = median_latency_ms({"fp32": a, "int8": b}, input_name, x, budget_s=4.0, rounds=25)
    return {"fp32_ms": round(ms["fp32"], 3), "int8_ms": round(ms["int8"], 3),
            "speedup": round(ms["fp32"] / ms["int8"], 3)}


def add_int8(staging: Path, draft: Manifest, reference: Reference, max_batch: int, cpu_mode: str,
             progress: Progress) -> Int8Result:
    """Write and check the INT8 variants into `staging`; raise ParityError-worthy checks to the caller."""
    calibration, held = split(reference)
    work = staging / ".int8-work"  # inside the staging folder, so every way out of the export removes it
    work.mkdir()
    try:
        prepared = work / "float.onnx"
        notes = float_model(staging / "model.onnx", prepared)
        exclude = tail_nodes(prepared)
        extras: dict[str, Any] = {
            "calibration_images": calibration.names, "held_out_images": held.names, "calibration": "minmax",
            "opset": notes["opset"], "upgraded_from_opset": notes["opset_before"]
            if notes["opset_before"] != notes["opset"] else None,
            "fp32_tail_nodes": exclude, **({"pre_process": notes["pre_process"]} if "pre_process" in notes else {})}
        checks: list[ParityCheck] = []

        quantize(prepared, staging / TENSORRT_FILE, draft.input.name, calibration.inputs, signed=True,
                 exclude=exclude)
        problems = tensorrt_problems(staging / TENSORRT_FILE)
        if problems:
            raise ModelRejected(f"{TENSORRT_FILE} is not what TensorRT's explicit quantization takes: "
                                + "; ".join(problems[:5]))
        check = _check(draft, held, staging / TENSORRT_FILE, max_batch)
        checks.append(check)
        progress(f"[int8] {TENSORRT_FILE} (TensorRT Q/DQ) parity {'passed' if check.passed else 'FAILED'} on "
                 f"{check.samples} held-out image(s): {check.stats}")
        extras["tensorrt"] = {"file": TENSORRT_FILE, "activations": "int8, symmetric (zero point 0)",
                              "weights": "int8, symmetric, per channel"}

        cpu: dict[str, Any] = {"file": None, "mode": cpu_mode}
        if cpu_mode != "never" and check.passed:
            quantize(prepared, staging / CPU_FILE, draft.input.name, calibration.inputs, signed=False,
                     exclude=exclude)
            cpu.update(cpu_speed(staging / "model.onnx", staging / CPU_FILE, draft.input.name,
                                 reference.inputs[:1]))
            faster = cpu["speedup"] >= MIN_CPU_SPEEDUP
            if cpu_mode == "always" or faster:
                cpu_check = _check(draft, held, staging / CPU_FILE, max_batch)
                checks.append(cpu_check)
                cpu["file"] = CPU_FILE
                progress(f"[int8] {CPU_FILE} (ONNX Runtime CPU) {cpu['speedup']:.2f}x FP32 here; parity "
                         f"{'passed' if cpu_check.passed else 'FAILED'}: {cpu_check.stats}")
            else:
                (staging / CPU_FILE).unlink()
                cpu["reason"] = (f"{cpu['speedup']:.2f}x FP32 on this CPU ({cpu['int8_ms']:.2f} ms vs "
                                 f"{cpu['fp32_ms']:.2f} ms), below {MIN_CPU_SPEEDUP}x: not written")
                progress(f"[int8] {CPU_FILE}: {cpu['reason']}")
        elif cpu_mode != "never":
            cpu["reason"] = f"not made: {TENSORRT_FILE} failed parity"
        extras["cpu"] = cpu
        return Int8Result(checks, extras)
    finally:
        shutil.rmtree(work, ignore_errors=True)
