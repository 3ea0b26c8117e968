"""Refuse what cannot run: not ONNX, ops ONNX Runtime does not register, a failing checker or shape inference."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ModelRejected

_UNREGISTERED = re.compile(r"([\w.]+):(\w+)\((-?\d+)\) is not a registered function/op")
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


@dataclass
class ModelInfo:
    path: Path
    ir_version: int
    opsets: dict[str, int]
    inputs: list[tuple[str, list[int | str], str]]
    outputs: list[tuple[str, list[int | str], str]]
    op_types: set[str] = field(default_factory=set)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.inputs) and not isinstance(self.inputs[0][1][0], int)


def _dims(vi) -> list[int | str]:
    t = vi.type.tensor_type
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]


def _opsets(model) -> dict[str, int]:
    return {(o.domain or "ai.onnx"): o.version for o in model.opset_import}


def check_model(path: Path | str) -> ModelInfo:
    """Load, check, infer shapes and open `path` with ONNX Runtime; raise ModelRejected naming op and opset."""
    import onnx
    import onnxruntime as ort
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelRejected(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as err:
        raise ModelRejected(f"{path}: not an ONNX model ({type(err).__name__}: {err})") from err
    if not model.graph.node:
        raise ModelRejected(f"{path}: not an ONNX model (no graph nodes)")
    opsets = _opsets(model)
    opset_text = ", ".join(f"{d} {v}" for d, v in opsets.items())
    custom = sorted({(n.domain, n.op_type) for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types (Fail, InvalidGraph, NotImplemented)
        text = str(err)
        m = _UNREGISTERED.search(text)
        if m:
            domain, op, _ = m.groups()
            version = opsets.get(domain, opsets.get("ai.onnx"))
            others = [f"{d}:{o}" for d, o in custom if o != op]
            raise ModelRejected(
                f"{path}: operator {op} (domain {domain}, opset {version}) is not supported by ONNX Runtime "
                f"{ort.__version__}; model ir_version {model.ir_version}, opsets: {opset_text}"
                + (f"; other non-standard ops: {', '.join(others)}" if others else "")
                + ". Re-export the model with a current exporter (opset >= 11)."
            ) from err
        raise ModelRejected(f"{path}: ONNX Runtime {ort.__version__} cannot load it (opsets: {opset_text}): "
                            f"{text.splitlines()[0][:400]}") from err
    if custom:
        raise ModelRejected(f"{path}: non-standard operators {', '.join(f'{d}:{o}' for d, o in custom)} "
                            f"(opsets: {opset_text}) are not portable to TensorRT or Core ML")
    try:
        onnx.checker.check_model(model)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as err:  # onnx raises ValidationError / InferenceError
        raise ModelRejected(f"{path}: ONNX checker or shape inference failed (opsets: {opset_text}): "
                            f"{str(err).splitlines()[0][:400]}") from err
    init_names = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in inferred.graph.input if i.name not in init_names]
    dtype = lambda vi: onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name  # noqa: E731
    return ModelInfo(
        path=path,
        ir_version=model.ir_version,
        opsets=opsets,
        inputs=[(i.name, _dims(i), dtype(i)) for i in graph_inputs],
        outputs=[(o.name, _dims(o), dtype(o)) for o in inferred.graph.output],
        op_types={n.op_type for n in model.graph.node},
        metadata={p.key: p.value for p in model.metadata_props},
    )
