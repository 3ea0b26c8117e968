"""Lean start: what the daemon imports before its first frame, and the frame path's threads visible by name to the
operating system (top -H, py-spy, the throughput benchmark's per-stage CPU times)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.edge.conftest import PCB, pcb_release
from tests.edge.test_daemon_inprocess import make_daemon

ROOT = Path(__file__).resolve().parents[2]

# Libraries the running daemon does not need at start: the uploader's HTTP client (and the CLI extras httpx pulls
# in), the exporter's and the fleet's libraries, plotting, and the local API's server (loaded on the API's thread,
# only when the API is enabled). Each would cost start time and resident memory.
# (paho is not listed: runtime.mqtt, which the config and the action dispatcher read their MQTT settings from,
# imports it; it is 1 MB.)
NOT_AT_START = ("httpx", "rich", "pygments", "coremltools", "matplotlib", "onnx", "sqlalchemy", "alembic", "jinja2",
                "export", "hwbench", "fastapi", "starlette", "uvicorn")


def test_daemon_start_imports_nothing_it_does_not_use() -> None:
    code = ("import json, sys\nimport edge.cli, edge.daemon\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    tops = {m.split(".")[0] for m in loaded}
    assert not tops & set(NOT_AT_START), sorted(tops & set(NOT_AT_START))
    assert [m for m in loaded if m.startswith("fleet.")] == ["fleet.protocol"]
    assert "edge.agent.runtime" not in loaded  # the agent (state machine, downloads) loads only with fleet:


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names at the OS level: Linux prctl")
def test_frame_path_threads_carry_their_names_at_the_os_level(tmp_path: Path, bundles, keys) -> None:
    d = make_daemon(tmp_path, keys, pcb_release(bundles)).start()
    try:
        image = sorted(PCB.iterdir())[0]
        out = d.submit(image.read_bytes(), image.suffix, timeout=60)
        assert out.prediction_id is not None
        names = {p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm")}
    finally:
        d.stop()
    assert {"reader", "inference", "commit", "decode_0"} <= names, sorted(names)
