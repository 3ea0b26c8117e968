"""deploy/jetson/entrypoint.sh run with bash: config from a path or from an env var, refusal of invalid configs
through the real `shadowline edge validate-config`, and the real daemon started on a valid one."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.packaging.health import reaped, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "jetson" / "entrypoint.sh"


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWLINE_")}
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"  # the venv's `shadowline`
    e["SHADOWLINE_STATE_DIR"] = str(tmp_path / "state")
    e.update(extra)
    return e


def config_text(tmp_path: Path, bundles: dict[str, Path], trust: Path, port: int) -> str:
    b = bundles["pcb-aoi"]
    return (f"device_id: jetson-07\nbundles_dir: {b.parent}\ntrust_store: {trust}\n"
            f"release:\n  name: pcb\n  mode: shadow\n  stages:\n    - role: verify\n      bundle: {b.name}\n"
            f"store:\n  path: {tmp_path / 'device.db'}\nretention:\n  dir: {tmp_path / 'images'}\n"
            f"api:\n  port: {port}\n")


def run(tmp_path: Path, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env=env(tmp_path, **extra), capture_output=True,
                          text=True, timeout=timeout)


def start_and_check_health(tmp_path: Path, port: int, **extra: str) -> str:
    """Start the entrypoint, wait for the daemon's /healthz, stop it with SIGTERM; returns its stderr."""
    p = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env(tmp_path, **extra), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    with reaped(p):
        wait_healthy(p, port)
        p.send_signal(signal.SIGTERM)  # exec: the signal reaches the daemon itself, not a wrapping shell
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    return err


def test_config_path_starts_the_daemon(tmp_path: Path, bundles, keys):
    port = free_port()
    cfg = tmp_path / "device.yaml"
    cfg.write_text(config_text(tmp_path, bundles, keys["trust"], port))
    err = start_and_check_health(tmp_path, port, SHADOWLINE_CONFIG=str(cfg), SHADOWLINE_LOG_LEVEL="warning")
    assert f"{cfg}: OK (device jetson-07" in err
    assert (tmp_path / "device.db").exists()


def test_config_from_env_text_is_written_privately_and_used(tmp_path: Path, bundles, keys):
    port = free_port()
    err = start_and_check_health(tmp_path, port, SHADOWLINE_CONFIG_YAML=config_text(tmp_path, bundles,
                                                                                    keys["trust"], port))
    written = tmp_path / "state" / "device.yaml"
    assert f"{written}: OK" in err
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".device.yaml")]  # no temp left


def test_invalid_config_is_refused_and_the_daemon_never_starts(tmp_path: Path, bundles, keys):
    cfg = tmp_path / "device.yaml"
    text = config_text(tmp_path, bundles, keys["trust"], free_port()).replace("mode: shadow", "mode: live")
    cfg.write_text(text)
    r = run(tmp_path, SHADOWLINE_CONFIG=str(cfg))
    assert r.returncode == 2
    assert f"{cfg}:6: release.mode" in r.stderr  # file:line: key path
    assert "refusing to start" in r.stderr
    assert not (tmp_path / "device.db").exists()


def test_unsigned_bundle_is_refused_by_validation(tmp_path: Path, bundles, keys):
    """The config parses, but its bundle is not signed by a key in its trust store: still no start."""
    other = tmp_path / "other-trust"
    other.mkdir()
    cfg = tmp_path / "device.yaml"
    cfg.write_text(config_text(tmp_path, bundles, other, free_port()))
    r = run(tmp_path, SHADOWLINE_CONFIG=str(cfg))
    assert r.returncode == 2 and "refusing to start" in r.stderr


def test_missing_config(tmp_path: Path):
    r = run(tmp_path, SHADOWLINE_CONFIG=str(tmp_path / "nope.yaml"))
    assert r.returncode == 2
    assert f"no device config at {tmp_path / 'nope.yaml'}" in r.stderr


def test_config_that_is_a_directory(tmp_path: Path):
    r = run(tmp_path, SHADOWLINE_CONFIG=str(tmp_path))
    assert r.returncode == 2 and "is not a regular file" in r.stderr


def test_bad_log_level(tmp_path: Path):
    r = run(tmp_path, SHADOWLINE_LOG_LEVEL="loud")
    assert r.returncode == 2 and "SHADOWLINE_LOG_LEVEL='loud'" in r.stderr


def test_a_command_runs_instead_of_the_daemon(tmp_path: Path):
    r = run(tmp_path, "shadowline", "--version")
    assert r.returncode == 0 and "shadowline" in r.stdout


def test_missing_executable(tmp_path: Path):
    cfg = tmp_path / "device.yaml"
    cfg.write_text("device_id: x\n")
    r = run(tmp_path, SHADOWLINE_CONFIG=str(cfg), SHADOWLINE_BIN="shadowline-not-installed")
    assert r.returncode == 127 and "not installed or not on PATH" in r.stderr


def test_older_cli_without_validate_config_gets_a_clear_message(tmp_path: Path):
    """A shadowline build that predates `edge validate-config` (stand-in script: such a build does not exist here)
    is started directly, with a message saying the config was not validated first."""
    old = tmp_path / "old-shadowline"
    old.write_text('#!/bin/sh\nif [ "$2" = validate-config ]; then echo "No such command" >&2; exit 2; fi\n'
                   'echo "ran: $*"\n')
    old.chmod(0o755)
    cfg = tmp_path / "device.yaml"
    cfg.write_text("device_id: x\n")
    r = run(tmp_path, SHADOWLINE_CONFIG=str(cfg), SHADOWLINE_BIN=str(old))
    assert r.returncode == 0
    assert "has no 'edge validate-config' command" in r.stderr
    assert r.stdout.strip() == f"ran: edge run --config {cfg} --log-level info"


@pytest.mark.parametrize("script", [ENTRYPOINT])
def test_entrypoint_is_executable_bash(script: Path):
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
