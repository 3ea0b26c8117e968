"""Session fixtures of the Core ML tests: the three shipped models exported with --coreml, per precision, each
exported the first time a test asks for it (a targeted run pays only for what it uses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PRESETS, export_preset

pytest.importorskip("coremltools")


class CoremlBundles:
    """(preset, precision) -> signed bundle directory exported through the real exporter with coreml=True."""

    def __init__(self, out: Path, key: Path) -> None:
        self.out, self.key = out, key
        self.done: dict[tuple[str, str], Path] = {}

    def __getitem__(self, item: tuple[str, str]) -> Path:
        preset, precision = item
        if preset not in PRESETS or precision not in ("fp32", "fp16"):
            raise KeyError(item)
        if item not in self.done:
            # the two precisions share name and version: one output folder each
            self.done[item] = export_preset(preset, self.out / precision, self.key, coreml=True,
                                            coreml_precision=precision)
        return self.done[item]


@pytest.fixture(scope="session")
def coreml_bundles(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> CoremlBundles:
    return CoremlBundles(tmp_path_factory.mktemp("coreml-bundles"), keys["private"])
