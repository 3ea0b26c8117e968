"""Session fixtures of the Core ML tests: the three shipped models exported once per precision with --coreml."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PRESETS, export_preset

pytest.importorskip("coremltools")


@pytest.fixture(scope="session")
def coreml_bundles(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> dict[tuple[str, str], Path]:
    """(preset, precision) -> signed bundle directory exported through the real exporter with coreml=True."""
    out = tmp_path_factory.mktemp("coreml-bundles")
    bundles = {}
    for precision in ("fp32", "fp16"):
        for preset in PRESETS:
            # the two precisions share name and version: one output folder each
            bundles[(preset, precision)] = export_preset(preset, out / precision, keys["private"], coreml=True,
                                                         coreml_precision=precision)
    return bundles
