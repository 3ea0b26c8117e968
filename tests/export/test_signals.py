"""Any signal (SIGTERM, SIGINT, SIGHUP) during an export leaves no staging folder and no partial bundle: a real
`shadowline export` process is signalled while it works, in the reference run or in the INT8 step."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MODELS, ROOT


def wait_for(cond, timeout: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("sig,during", [(signal.SIGTERM, "staging"), (signal.SIGINT, "staging"),
                                        (signal.SIGHUP, "staging"), (signal.SIGTERM, ".int8-work"),
                                        (signal.SIGHUP, ".int8-work")],
                         ids=["TERM-reference", "INT-reference", "HUP-reference", "TERM-int8", "HUP-int8"])
def test_signal_leaves_no_staging_folder_and_no_bundle(tmp_path: Path, sig: signal.Signals, during: str) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shadowline.cli", "export", str(MODELS / "pcb-aoi_opset11.onnx"), "--preset",
           "pcb-aoi", "--int8", "--fp16", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        staging = lambda: [p for p in out.glob(".pcb-aoi-v1.0.staging-*")] if out.exists() else []
        if during == "staging":
            seen = wait_for(lambda: bool(staging()), 120, proc)
        else:
            seen = wait_for(lambda: any((s / during).is_dir() for s in staging()), 120, proc)
        assert seen, f"the export never reached {during}: {proc.communicate()}"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {sig.name}" in err and "Traceback" not in err
    assert list(out.iterdir()) == [], "a staging folder or a partial bundle was left behind"
