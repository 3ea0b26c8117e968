"""Quiet exports: `--quiet` leaves stderr empty (no third-party output either); otherwise one progress display, one
line per finished step or finding, and nothing from onnx or ONNX Runtime in between."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import warnings

from export.cli import Display
from export.exporter import third_parties_through
from tests.conftest import MODELS, ROOT

OURS = re.compile(r"^\[(validate|labels|reference|fp16|int8|coreml|validation|sign|warning)\] ")


def export(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "shadowline.cli", "export", str(MODELS / "pcb-aoi_opset11.onnx"), "--preset",
           "pcb-aoi", "--fp16", "--int8", "--out", str(tmp_path / "out"), "--force", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_quiet_export_writes_nothing_on_stderr(tmp_path):
    r = export(tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith("bundle ") and len(r.stdout.splitlines()) == 1


def test_export_shows_one_display_of_its_own_lines(tmp_path):
    r = export(tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines and all(OURS.match(line) for line in lines), r.stderr
    assert [line.split("]")[0] + "]" for line in lines if " done in " in line] == \
        ["[validate]", "[reference]", "[fp16]", "[int8]", "[validation]", "[sign]"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_display_on_a_terminal_rewrites_the_running_step():
    term = Terminal()
    show = Display(term)
    show("[int8] ...")
    show("[int8] model.int8.onnx parity passed")
    show("[int8] done in 1.00 s")
    assert term.getvalue() == ("\r\033[K[int8] ..." "\r\033[K[int8] model.int8.onnx parity passed\n[int8] ..."
                               "\r\033[K[int8] done in 1.00 s\n")
    log = io.StringIO()
    show = Display(log)
    show("[int8] ...")
    show("[int8] done in 1.00 s")
    assert log.getvalue() == "[int8] done in 1.00 s\n"  # a log gets the finished step only


def test_third_party_warnings_become_display_lines():
    lines: list[str] = []
    with third_parties_through(lines.append):
        warnings.warn("opset 11 is old\n  really", DeprecationWarning, stacklevel=1)
        warnings.warn("opset 11 is old\n  really", DeprecationWarning, stacklevel=1)
    assert lines == ["[warning] DeprecationWarning: opset 11 is old really"]
