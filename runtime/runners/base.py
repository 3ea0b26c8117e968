"""The shape every backend shares (after Polygraphy's runners): load, infer, close, I/O metadata, last latency.

The public methods check state and inputs once, here; a backend implements only `_load`, `_infer`, `_close`
and reports its tensors' metadata.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from runtime.errors import ShadowlineError


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


class RunnerError(ShadowlineError):
    """A runner was used out of order or given inputs that do not fit."""

    exit_code = 20


class Runner(ABC):
    backend: str = "base"

    def __init__(self) -> None:
        self._loaded = False
        self.last_inference_time: float | None = None  # seconds, of the last `infer`
        self._expected: dict[str, TensorMeta] | None = None  # the inputs, read once per load (every frame checks)

    # -- public API -------------------------------------------------------------------------------------------
    def load(self) -> Runner:
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._loaded:
            raise RunnerError(f"{self.backend} runner: infer() before load()")
        expected = self._expected
        if expected is None:
            expected = self._expected = {m.name: m for m in self.input_metadata()}
        missing = set(expected) - set(feeds)
        extra = set(feeds) - set(expected)
        if missing or extra:
            raise RunnerError(f"{self.backend} runner: inputs missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, arr in feeds.items():
            want = expected[name].shape
            if len(want) != arr.ndim or any(isinstance(w, int) and w > 0 and w != g for w, g in zip(want, arr.shape)):
                raise RunnerError(f"{self.backend} runner: input {name!r} has shape {arr.shape}, model wants {want}")
        start = time.perf_counter()
        out = self._infer(feeds)
        self.last_inference_time = time.perf_counter() - start
        return out

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False
            self._expected = None

    @property
    def is_loaded(self) -> bool:
        return self._loaded

    def __enter__(self) -> Runner:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict:
        """What is actually running (providers, device), for /v1/status and reports."""
        return {"backend": self.backend}

    # -- backend part ------------------------------------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:
        return None

    @abstractmethod
    def input_metadata(self) -> list[TensorMeta]: ...

    @abstractmethod
    def output_metadata(self) -> list[TensorMeta]: ...


def run_batched(runner: Runner, input_name: str, x: np.ndarray, max_batch: int) -> dict[str, np.ndarray]:
    """Run `x` through the runner in chunks the model accepts (batch 1 for a static-batch model)."""
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), max_batch):
        for k, v in runner.infer({input_name: x[i : i + max_batch]}).items():
            outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}
