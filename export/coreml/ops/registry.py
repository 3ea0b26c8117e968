"""The op registry: `@converts("Relu", ...)` registers a function (graph, node, attrs) -> None."""

from __future__ import annotations

from collections.abc import Callable

CONVERTERS: dict[str, Callable] = {}


def converts(*op_types: str) -> Callable[[Callable], Callable]:
    def register(fn: Callable) -> Callable:
        for op in op_types:
            CONVERTERS[op] = fn
        return fn
    return register
