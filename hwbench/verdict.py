"""Use-case targets and the verdict: does any configuration measured on this device meet each target?

A latency target is judged on a latency statistic per call (P95 by default: a line tolerates a rare slow frame,
not a slow median) of the best configuration: every image of a batch waits for the whole call, so batching buys
throughput, never latency. A throughput target is judged on images per second. A throughput range
(`min_ips`..`ideal_ips`, e.g. the Jetson 5-15 images/s of the field guide) gives `partial` between the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtime.errors import ConfigError
from runtime.yamlconf import read_config_text

Metric = Literal["avg", "p50", "p95", "p99", "max"]


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="short id, e.g. realtime-line")
    description: str = Field("", description="the use case in words")
    max_latency_ms: float | None = Field(None, gt=0, description="latency of a frame must stay below this")
    metric: Metric = Field("p95", description="latency statistic judged against max_latency_ms")
    min_ips: float | None = Field(None, gt=0, description="images per second needed at the least")
    ideal_ips: float | None = Field(None, gt=0, description="images per second for a full pass (range top)")
    max_batch: int | None = Field(None, ge=1, description="only configurations up to this batch size count")

    @model_validator(mode="after")
    def _one_kind(self) -> Target:
        if (self.max_latency_ms is None) == (self.min_ips is None):
            raise ValueError(f"target {self.name!r}: give exactly one of max_latency_ms or min_ips")
        if self.ideal_ips is not None and (self.min_ips is None or self.ideal_ips < self.min_ips):
            raise ValueError(f"target {self.name!r}: ideal_ips needs min_ips and must not be below it")
        return self


class TargetSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    targets: list[Target] = Field(min_length=1, description="use cases to judge the device against")


DEFAULT_TARGETS_FILE = Path(__file__).with_name("targets.yaml")


def load_targets(path: Path | str | None) -> TargetSet:
    """The targets of a YAML file (`targets: [...]`), or the defaults (hwbench/targets.yaml) when none is given."""
    path = Path(path) if path is not None else DEFAULT_TARGETS_FILE
    try:
        data = yaml.safe_load(read_config_text(path, "targets file"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    try:
        return TargetSet.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {loc}: {first['msg']} ({err.error_count()} error(s))") from err


DEFAULT_TARGETS = load_targets(None)


class TargetVerdict(BaseModel):
    target: str
    description: str
    requirement: str
    status: Literal["pass", "partial", "fail", "n/a"]
    best_config: str | None = None
    value: float | None = None
    unit: str


def judge(targets: TargetSet, configs: list[dict], overhead_ms: float = 0.0) -> list[TargetVerdict]:
    """`configs`: dicts with `id`, `batch`, `latency_ms` {avg,p50,...} per call and `throughput_ips`.
    `overhead_ms` (measured pre- and post-processing per image) is added to every latency and its time taken out
    of throughput, so the verdict is about whole frames when it was measured."""
    verdicts: list[TargetVerdict] = []
    for t in targets.targets:
        pool = [c for c in configs if t.max_batch is None or c["batch"] <= t.max_batch]
        if t.max_latency_ms is not None:
            req = f"{t.metric} < {t.max_latency_ms:g} ms" + (f" at batch <= {t.max_batch}" if t.max_batch else "")
            if overhead_ms:
                req += f" (incl. {overhead_ms:.1f} ms pre/post-processing)"
            if not pool:
                verdicts.append(TargetVerdict(target=t.name, description=t.description, requirement=req,
                                              status="n/a", unit="ms"))
                continue
            best = min(pool, key=lambda c: c["latency_ms"][t.metric])
            value = best["latency_ms"][t.metric] + overhead_ms
            status = "pass" if value < t.max_latency_ms else "fail"
            verdicts.append(TargetVerdict(target=t.name, description=t.description, requirement=req, status=status,
                                          best_config=best["id"], value=round(value, 3), unit="ms"))
        else:
            assert t.min_ips is not None
            req = f">= {t.min_ips:g} images/s" + (f" (ideal {t.ideal_ips:g})" if t.ideal_ips else "")
            if not pool:
                verdicts.append(TargetVerdict(target=t.name, description=t.description, requirement=req,
                                              status="n/a", unit="images/s"))
                continue
            best = max(pool, key=lambda c: c["throughput_ips"])
            # pre/post-processing runs on the CPU in series with inference in the daemon's single worker
            value = best["throughput_ips"]
            if overhead_ms:
                value = 1000.0 / (1000.0 / value + overhead_ms)
            if value >= (t.ideal_ips or t.min_ips):
                status = "pass"
            elif value >= t.min_ips:
                status = "partial"
            else:
                status = "fail"
            verdicts.append(TargetVerdict(target=t.name, description=t.description, requirement=req, status=status,
                                          best_config=best["id"], value=round(value, 3), unit="images/s"))
    return verdicts
