"""Optimisation profiles from the real bundles' manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.bundle import read_manifest
from runtime.errors import ConfigError
from runtime.loaders.tensorrt.profile import Profile, profile_for


def test_dynamic_batch_from_manifest(bundles: dict[str, Path]) -> None:
    m = read_manifest(bundles["pcb-aoi"])
    assert m.batch.dynamic and m.input.shape[0] == "N"
    p = profile_for(m)
    assert p.input == m.input.name == "data"
    assert p.min == (m.batch.min, 3, 227, 227) and p.opt == (m.batch.opt, 3, 227, 227)
    assert p.max == (m.batch.max, 3, 227, 227) and p.dynamic
    assert p.key() == f"data:{m.batch.min}x3x227x227/{m.batch.opt}x3x227x227/{m.batch.max}x3x227x227"


def test_max_batch_override_pulls_opt_down(bundles: dict[str, Path]) -> None:
    m = read_manifest(bundles["pcb-aoi"])
    p = profile_for(m, max_batch=2)
    assert p.batch == (1, min(m.batch.opt, 2), 2)
    assert profile_for(m, max_batch=32).batch == (1, m.batch.opt, 32)
    assert profile_for(m, max_batch=32, opt_batch=16).batch == (1, 16, 32)


@pytest.mark.parametrize("name,shape", [("squeezenet", (1, 3, 224, 224)), ("yolox-nano", (1, 3, 416, 416))])
def test_static_batch(bundles: dict[str, Path], name: str, shape: tuple[int, ...]) -> None:
    m = read_manifest(bundles[name])
    p = profile_for(m)
    assert p.min == p.opt == p.max == shape and not p.dynamic
    assert profile_for(m, max_batch=1) == p
    with pytest.raises(ConfigError, match="static batch of 1"):
        profile_for(m, max_batch=4)


def test_profile_order_is_validated() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        Profile(input="x", min=(4, 3), opt=(2, 3), max=(8, 3))
    with pytest.raises(ValueError, match="same rank"):
        Profile(input="x", min=(1, 3), opt=(1, 3, 3), max=(1, 3))


def test_dynamic_spatial_dims_refused(bundles: dict[str, Path]) -> None:
    m = read_manifest(bundles["pcb-aoi"])
    bad = m.model_copy(update={"input": m.input.model_copy(update={"shape": ["N", 3, "H", 227]})})
    with pytest.raises(ConfigError, match="only the batch may be dynamic"):
        profile_for(bad)
