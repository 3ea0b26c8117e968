"""Fold constant computations out of an ONNX graph before it is converted.

Exporters write shape arithmetic into the graph (PyTorch's `x.view(x.size(0), -1)`, `torch.chunk` in the YOLOv8
head, Paddle's flatten): Shape -> Gather -> Unsqueeze -> Concat -> Reshape chains whose result is known as soon as
the tensor shapes are. Core ML needs such shapes as constants, so they are computed here, with ONNX's own
reference implementation of each op (`onnx.reference`), and replaced by initializers.

Only what is truly constant is folded: a node whose inputs are all constants, or a Shape whose dimensions are all
static after ONNX shape inference. A shape with a dynamic dimension (the batch) stays symbolic; the one rewrite
made with it is a Reshape target whose dynamic entry is the same dimension of the same position of its own input,
which ONNX writes as 0 ("copy this dimension"). Everything else that depends on a dynamic dimension is left in
the graph, and the converter refuses it naming the op.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Ops whose output is not a function of their inputs, or that carry subgraphs: never evaluated here.
NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
              "If", "Loop", "Scan", "SequenceMap"}
MAX_FOLDED_ELEMENTS = 1 << 22  # a folded value becomes a weight of the package: no silent blow-up
Dim = int | str  # a static size, or the name of a dynamic dimension ("N")


@dataclass
class FoldReport:
    folded: Counter = field(default_factory=Counter)  # op type -> nodes replaced by constants
    rewritten: list[str] = field(default_factory=list)  # Reshape nodes whose target now copies a dynamic dim

    def as_dict(self) -> dict[str, Any]:
        return {"folded": dict(sorted(self.folded.items())), "reshape_targets_rewritten": list(self.rewritten)}


def tensor_shapes(model) -> dict[str, list[Dim | None]]:
    """Every tensor's shape after ONNX shape inference (None for an unknown dimension)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is best effort: without it, only constant inputs fold
        inferred = model
    shapes: dict[str, list[Dim | None]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return shapes


def evaluate(node, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """One node run by ONNX's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    feeds = {name: value for name, value in zip(node.input, inputs) if name}
    return [np.asarray(v) for v in ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)]


@dataclass
class Partial:
    """A 1-D (or scalar) integer shape value with some dynamic entries, e.g. Shape(x) = [N, 3, 224, 224]."""

    dims: list[Dim]
    scalar: bool = False

    @property
    def known(self) -> np.ndarray | None:
        if all(isinstance(d, int) for d in self.dims):
            arr = np.asarray(self.dims, dtype=np.int64)
            return arr.reshape(()) if self.scalar else arr
        return None


class Folder:
    def __init__(self, model) -> None:
        import onnx

        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.shapes = tensor_shapes(model)
        self.known: dict[str, np.ndarray] = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        self.partial: dict[str, Partial] = {}
        self.report = FoldReport()

    def value(self, name: str) -> np.ndarray | Partial | None:
        if not name:
            return None
        if name in self.known:
            return self.known[name]
        return self.partial.get(name)

    def fold(self) -> Any:
        import onnx

        kept = []
        for node in self.model.graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type in NOT_FOLDED:
                kept.append(node)
            elif self._constant(node) or self._shape(node):
                self.report.folded[node.op_type] += 1
            else:
                kept.append(self._rewrite_reshape(node) if node.op_type == "Reshape" else node)
        kept = self._live(kept)
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        needed = {i for n in kept for i in n.input} | {o.name for o in out.graph.output}
        present = {i.name for i in out.graph.initializer}
        del out.graph.node[:]
        out.graph.node.extend(kept)
        out.graph.initializer.extend(onnx.numpy_helper.from_array(v, name) for name, v in self.known.items()
                                     if name in needed and name not in present)
        return out

    def _constant(self, node) -> bool:
        """All inputs constant: evaluate the node (Constant in all its forms included)."""
        values = [self.known.get(i) if i else None for i in node.input]
        if any(v is None for i, v in zip(node.input, values) if i):
            return False
        try:
            results = evaluate(node, values, self.opset)
        except Exception:  # let the converter refuse it by name, with its own message
            return False
        if any(r.size > MAX_FOLDED_ELEMENTS for r in results):
            return False
        self.known.update(zip(node.output, results))
        return True

    def _shape(self, node) -> bool:
        """Shape arithmetic on static or partly dynamic shapes; True when the node's output became a constant."""
        op = node.op_type
        result: Partial | None = None
        if op == "Shape":
            shape = self.shapes.get(node.input[0])
            if shape is None:
                return False
            # an unknown dimension gets a name of its own: it can be sliced away, never matched or folded
            dims: list[Dim] = [f"?{node.output[0]}:{i}" if d is None else d for i, d in enumerate(shape)]
            attrs = {a.name: a.i for a in node.attribute}
            result = Partial(dims[slice(attrs.get("start", 0), attrs.get("end", len(dims)))])
        elif op in ("Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice", "Identity"):
            result = self._partial_op(node)
        if result is None:
            return False
        value = result.known
        if value is not None:
            self.known[node.output[0]] = value
            return True
        self.partial[node.output[0]] = result
        return False

    def _partial_op(self, node) -> Partial | None:
        vals = [self.value(i) for i in node.input]
        if not any(isinstance(v, Partial) for v in vals) or any(v is None for i, v in zip(node.input, vals) if i):
            return None
        attrs = {a.name: a for a in node.attribute}

        def ints(v: Any) -> list[int]:
            return [int(x) for x in np.asarray(v).reshape(-1)]

        x = vals[0]
        op = node.op_type
        if op in ("Identity", "Cast") and isinstance(x, Partial):
            return x
        if op == "Gather" and isinstance(x, Partial) and not x.scalar and isinstance(vals[1], np.ndarray):
            if "axis" in attrs and attrs["axis"].i != 0:
                return None
            idx = np.asarray(vals[1])
            picked = [x.dims[int(i)] for i in idx.reshape(-1)]
            return Partial(picked, scalar=idx.ndim == 0)
        if op == "Unsqueeze" and isinstance(x, Partial) and x.scalar:
            return Partial(list(x.dims))
        if op == "Squeeze" and isinstance(x, Partial) and len(x.dims) == 1 and not x.scalar:
            return Partial(list(x.dims), scalar=True)
        if op == "Concat":
            dims: list[Dim] = []
            for v in vals:
                if isinstance(v, Partial):
                    dims.extend(v.dims)
                elif isinstance(v, np.ndarray) and v.ndim == 1:
                    dims.extend(ints(v))
                else:
                    return None
            return Partial(dims)
        if op == "Slice" and isinstance(x, Partial) and not x.scalar and all(isinstance(v, np.ndarray)
                                                                             for v in vals[1:] if v is not None):
            starts, ends = ints(vals[1]), ints(vals[2])
            axes = ints(vals[3]) if len(vals) > 3 and vals[3] is not None else [0]
            steps = ints(vals[4]) if len(vals) > 4 and vals[4] is not None else [1]
            if axes != [0] or len(starts) != 1:
                return None
            n = len(x.dims)
            clamp = lambda v: max(-1, min(n, v + n if v < 0 else v))  # noqa: E731
            return Partial(x.dims[clamp(starts[0]):clamp(ends[0]):steps[0]])
        return None

    def _rewrite_reshape(self, node):
        """A Reshape to [N, -1] where N is its own input's dynamic dimension at the same position: target [0, -1]."""
        import onnx

        target = self.partial.get(node.input[1]) if len(node.input) > 1 else None
        if target is None or any(a.name == "allowzero" and a.i for a in node.attribute):
            return node
        dims = self.shapes.get(node.input[0]) or []
        resolved = []
        for i, d in enumerate(target.dims):
            if isinstance(d, int):
                resolved.append(d)
            elif i < len(dims) and dims[i] == d:
                resolved.append(0)
            else:
                return node
        name = f"{node.output[0]}__folded_shape"
        self.known[name] = np.asarray(resolved, dtype=np.int64)
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.input[1] = name
        self.report.rewritten.append(node.name or node.output[0])
        return new

    def _live(self, nodes: list) -> list:
        """Drop nodes whose outputs nothing uses any more (a partly dynamic Shape whose static part was folded, or
        that fed a rewritten Reshape); they count as folded."""
        outputs = {o.name for o in self.model.graph.output}
        while True:
            used = {i for n in nodes for i in n.input} | outputs
            live = [n for n in nodes if any(o in used for o in n.output)]
            if len(live) == len(nodes):
                return nodes
            self.report.folded.update(n.op_type for n in nodes if not any(o in used for o in n.output))
            nodes = live


def fold_constants(model, max_rounds: int = 8) -> tuple[Any, FoldReport]:
    """A copy of `model` with its constant computations replaced by initializers, and what was folded. Shapes are
    inferred again after each round: a Reshape to a folded target has a static shape only from then on."""
    report = FoldReport()
    for _ in range(max_rounds):
        folder = Folder(model)
        model = folder.fold()
        report.folded.update(folder.report.folded)
        report.rewritten.extend(folder.report.rewritten)
        if not folder.report.folded and not folder.report.rewritten:
            break
    return model, report
