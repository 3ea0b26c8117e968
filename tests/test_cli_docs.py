"""Every CLI command has help text and is documented (docs/cli.md, generated from the code, must be current)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shadowline.cli import cli
from shadowline.clidoc import DOC, walk

COMMANDS = list(walk(cli, ["shadowline"]))


@pytest.mark.parametrize("path,cmd,ctx", COMMANDS, ids=[" ".join(p) for p, _, _ in COMMANDS])
def test_command_has_help(path, cmd, ctx):
    text = (cmd.help or cmd.short_help or "").strip()
    assert len(text) > 15, f"{' '.join(path)} has no help text"
    for param in cmd.params:
        if isinstance(param, __import__("click").Option) and not param.hidden and param.name not in ("help",):
            assert param.help, f"{' '.join(path)} option {param.opts} has no help"


def test_expected_command_groups_exist():
    names = {" ".join(p) for p, _, _ in COMMANDS}
    for needed in ("shadowline export model", "shadowline export inspect", "shadowline export verify",
                   "shadowline keys generate", "shadowline edge predict", "shadowline demo"):
        assert needed in names


def test_exit_codes_are_unique_and_listed():
    from shadowline.clidoc import exit_codes

    rows = exit_codes()  # raises when two error classes claim one code
    assert [code for code, _, _ in rows] == sorted({code for code, _, _ in rows})
    assert all(doc for _, _, doc in rows), "every error class with its own exit code says what it means"
    text = DOC.read_text()
    for code, name, _ in rows:
        assert f"| {code} | {name} |" in text
    names = {name for _, name, _ in rows}
    assert "`LabelError` (runtime.errors)" in names and "`QueueFull` (edge.processor)" in names


def test_docs_cli_md_is_current():
    """Rendered in a fresh process: click caches each command's help option from the first context that asks, so
    commands other tests invoked directly would render differently in this one."""
    assert DOC.exists(), "run: python -m shadowline.clidoc --write"
    out = subprocess.run([sys.executable, "-m", "shadowline.clidoc"], capture_output=True, text=True, check=True)
    assert DOC.read_text() + "\n" == out.stdout, "docs/cli.md is stale: run python -m shadowline.clidoc --write"


def test_cli_subprocess_help_and_errors(tmp_path):
    exe = [sys.executable, "-m", "shadowline.cli"]
    out = subprocess.run(exe + ["--help"], capture_output=True, text=True, check=True)
    assert "export" in out.stdout and "fleet" in out.stdout
    bad = subprocess.run(exe + ["export", str(tmp_path / "missing.onnx"), "--preset", "pcb-aoi", "--out",
                                str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 3 and "no such file" in bad.stderr
