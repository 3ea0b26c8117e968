"""The floors of docs/architecture.md, enforced by import-linter's contracts in pyproject.toml.

The contracts run over the real packages, and over a copy with a wrong import planted inside a function body, which
must fail them: a contract that cannot fail checks nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export", "edge", "fleet", "hwbench", "shadowline")
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--no-cache"]


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(LINT, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_floors_hold() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.html", "*.yaml"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(("module", "planted", "broken"), [
    ("runtime/bundle.py", "from edge import pipeline", "runtime"),            # the ground reaching up
    ("edge/store.py", "from export import exporter", "edge"),                 # sideways between apps
    ("export/labels.py", "import edge.pipeline", "export"),                    # the old export -> edge arrow
    ("fleet/ingest.py", "from runtime.predictor import BundleModel\n    import edge.store", "fleet"),
    ("hwbench/bench.py", "from fleet import store", "hwbench"),                # only fleet.protocol is allowed
    ("fleet/protocol.py", "from fleet import store", "fleet.protocol"),       # protocol stands alone
    ("runtime/predictor.py", "import shadowline.cli", "runtime"),
])
def test_a_planted_import_inside_a_function_breaks_the_floors(copy: Path, module: str, planted: str,
                                                               broken: str) -> None:
    target = copy / module
    target.write_text(target.read_text() + f"\n\ndef _planted() -> None:\n    {planted}\n")
    result = lint(copy)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and broken in result.stdout


def test_edge_may_import_fleet_protocol_only(copy: Path) -> None:
    target = copy / "edge" / "store.py"
    target.write_text(target.read_text() + "\n\ndef _allowed() -> None:\n    from fleet import protocol\n")
    assert lint(copy).returncode == 0
