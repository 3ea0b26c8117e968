"""The ONNX side of the conversion: values by name (MIL vars or numpy constants), strict attribute reading, and
errors that name the op type, the node and the attribute."""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.errors import ConversionError

# Planted-bug variants of the converter, used only by tests to prove the parity check can fail.
BUGS = frozenset({"ignore_ceil_mode", "softmax_axis_opset13", "slice_swap_hw", "drop_softmax",
                  # detector pipelines: boxes in a convention Vision does not use
                  "box_corners", "box_bottom_left", "box_pixels"})


def node_label(node) -> str:
    return f"{node.op_type} node {node.name or '(unnamed, output ' + (node.output[0] if node.output else '?') + ')'!r}"


class Attrs:
    """A node's attributes. Every attribute must be read by the op's converter: one left unread is unsupported,
    so a converter can never silently ignore an attribute that changes the result."""

    def __init__(self, node) -> None:
        import onnx

        self.node = node
        self.values: dict[str, Any] = {}
        for a in node.attribute:
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                v = [x.decode("utf-8", "replace") for x in v]
            self.values[a.name] = v
        self.read: set[str] = set()

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return self.values.get(name, default)

    def has(self, name: str) -> bool:
        return name in self.values

    def unsupported(self, name: str, why: str) -> ConversionError:
        value = self.values.get(name, "(absent)")
        return ConversionError(f"unsupported attribute: {node_label(self.node)} attribute {name}={value!r}: {why}")

    def done(self) -> None:
        left = sorted(set(self.values) - self.read)
        if left:
            raise ConversionError(f"unsupported attribute: {node_label(self.node)} attribute {left[0]}="
                                  f"{self.values[left[0]]!r} is not handled by the Core ML converter")


class Graph:
    """Values of the ONNX graph while it is being converted: numpy arrays for constants, MIL vars otherwise."""

    def __init__(self, opset: int, bugs: frozenset[str] = frozenset()) -> None:
        unknown = set(bugs) - BUGS
        if unknown:
            raise ValueError(f"unknown planted bugs {sorted(unknown)}")
        self.opset = opset
        self.bugs = frozenset(bugs)
        self.values: dict[str, Any] = {}
        self.consumed: set[str] = set()  # names read by some node or returned by the graph

    def used(self, node, index: int) -> bool:
        return index < len(node.output) and bool(node.output[index]) and node.output[index] in self.consumed

    def set(self, name: str, value: Any) -> None:
        self.values[name] = value

    def get(self, node, index: int) -> Any:
        """Input `index` of `node` (None when the optional input is absent)."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.values:
            raise ConversionError(f"{node_label(node)}: input {name!r} is not produced by any earlier node")
        return self.values[name]

    def const(self, node, index: int, what: str) -> np.ndarray | None:
        """Input `index` as a numpy constant; the converter needs it at conversion time (shapes, axes, scales)."""
        v = self.get(node, index)
        if v is None or isinstance(v, np.ndarray):
            return v
        raise ConversionError(f"unsupported input: {node_label(node)} input {index} ({what}, {node.input[index]!r}) "
                              "must be a constant (computed shapes are not supported)")

    def required(self, node, index: int, what: str) -> np.ndarray:
        """Input `index` as a numpy constant that must be present."""
        v = self.const(node, index, what)
        if v is None:
            raise ConversionError(f"{node_label(node)}: required input {index} ({what}) is missing")
        return v

    def var(self, node, index: int):
        """Input `index` as a MIL var (constants become const ops)."""
        from coremltools.converters.mil import Builder as mb

        v = self.get(node, index)
        if v is None:
            raise ConversionError(f"{node_label(node)}: required input {index} is missing")
        if isinstance(v, np.ndarray):
            return mb.const(val=v.astype(np.float32) if v.dtype.kind == "f" else v)
        return v


def shape_of(value) -> tuple:
    """Shape of a var or constant; dynamic dimensions are MIL symbols."""
    return tuple(value.shape)


def is_static(dim) -> bool:
    return isinstance(dim, (int, np.integer))
