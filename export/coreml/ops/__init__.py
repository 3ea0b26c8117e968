"""ONNX op converters, one module per family; `CONVERTERS` maps an ONNX op type to its converter."""

from __future__ import annotations

from export.coreml.ops import activation, conv, elementwise, math, pool, resize, shape  # noqa: F401  (registration)
from export.coreml.ops.registry import CONVERTERS

__all__ = ["CONVERTERS"]
