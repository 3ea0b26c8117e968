"""The optimisation profile (min/opt/max input shapes) of an engine, from the bundle manifest."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runtime.errors import ConfigError
from runtime.manifest import Manifest


class Profile(BaseModel):
    """One optimisation profile for the single image input; a static-batch model has min = opt = max."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input: str = Field(description="input tensor name")
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @model_validator(mode="after")
    def _order(self) -> Profile:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise ValueError("min, opt and max shapes must have the same rank")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not 1 <= lo <= mid <= hi:
                raise ValueError(f"profile needs 1 <= min <= opt <= max per dimension, got {self.min} "
                                 f"{self.opt} {self.max}")
        return self

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    @property
    def batch(self) -> tuple[int, int, int]:
        return self.min[0], self.opt[0], self.max[0]

    def key(self) -> str:
        """Stable text for the cache key, e.g. 'data:1x3x227x227/4x3x227x227/8x3x227x227'."""
        return f"{self.input}:" + "/".join("x".join(map(str, s)) for s in (self.min, self.opt, self.max))


def profile_for(manifest: Manifest, max_batch: int | None = None, opt_batch: int | None = None) -> Profile:
    """Batch sizes from `manifest.batch` (the exporter's min/opt/max), the rest of the shape from the input spec.

    `max_batch` overrides the manifest's maximum (a smaller device, a larger pipeline batch); `opt` follows it down
    when it would exceed it. A static-batch model ignores the override: its batch is fixed in the graph.
    """
    spec = manifest.input
    rest = [d for d in spec.shape[1:]]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise ConfigError(f"input {spec.name!r} has dynamic non-batch dimensions {spec.shape}; only the batch may be "
                          "dynamic in a TensorRT profile")
    dims = tuple(int(d) for d in rest)
    if not manifest.batch.dynamic or not spec.dynamic_batch:
        fixed = int(spec.shape[0]) if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else 1
        if max_batch is not None and max_batch != fixed:
            raise ConfigError(f"{manifest.bundle_id} has a static batch of {fixed}; --max-batch {max_batch} "
                              "cannot change it")
        shape = (fixed, *dims)
        return Profile(input=spec.name, min=shape, opt=shape, max=shape)
    lo = max(1, manifest.batch.min)
    hi = max_batch if max_batch is not None else manifest.batch.max
    if hi < lo:
        raise ConfigError(f"max batch {hi} is below the manifest's minimum batch {lo}")
    opt = opt_batch if opt_batch is not None else manifest.batch.opt
    opt = min(max(opt, lo), hi)
    return Profile(input=spec.name, min=(lo, *dims), opt=(opt, *dims), max=(hi, *dims))
