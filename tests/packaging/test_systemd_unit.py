"""deploy/systemd/shadowline-edge.service: `systemd-analyze verify` clean, the unit's commands run against the real
CLI and daemon, systemd's restart rule applied to how they really end (no restart loop on a bad config), and every
path the service writes (the engine cache included) writable under its sandbox."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from runtime.errors import BackendUnavailable, BundleError, ConfigError, ModelRejected, ParityError, SignatureError
from tests.conftest import free_port
from tests.packaging.health import reaped, wait_healthy
from tests.packaging.systemd import Ended, exec_argv, is_writable, parse_unit, restarts, words

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "shadowline-edge.service"
INSTALLED_BIN = "/opt/shadowline/venv/bin/shadowline"
INSTALLED_CONFIG = "/etc/shadowline/device.yaml"
VENV_BIN = str(Path(sys.executable).with_name("shadowline"))


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


# -- systemd-analyze -------------------------------------------------------------------------------------------
def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` on the unit, with its executable path pointed at this checkout's `shadowline` (the
    one thing that exists only on a provisioned device). It warns on stderr and still exits 0 for unknown keys and
    bad values, so the caller checks the output too."""
    copy = tmp_path / UNIT.name
    copy.write_text(unit_text.replace(INSTALLED_BIN, VENV_BIN))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True,
                          timeout=60)


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is missing (scripts/install.sh installs systemd)")


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path):
    r = verify(UNIT.read_text(), tmp_path)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


@needs_analyze
@pytest.mark.parametrize("plant, says", [("NoSuchKey=1", "Unknown key"),
                                         ("RestartPreventExitStatus=two", "Failed to parse")])
def test_systemd_analyze_catches_a_planted_mistake(tmp_path: Path, plant: str, says: str):
    """The check above can fail: systemd-analyze reports what a typo in the unit does."""
    text = UNIT.read_text().replace("[Service]\n", f"[Service]\n{plant}\n")
    r = verify(text, tmp_path)
    assert says in r.stderr


# -- the restart rule ------------------------------------------------------------------------------------------
def test_restart_rule_model():
    """systemd.service(5), checked on the cases this unit meets."""
    svc = {"Restart": ["on-failure"], "RestartPreventExitStatus": ["2 3"]}
    assert not restarts(svc, Ended("main", exit_code=0))
    assert not restarts(svc, Ended("main", exit_code=2))
    assert restarts(svc, Ended("main", exit_code=1))
    assert restarts(svc, Ended("main", signal="SIGKILL"))
    assert not restarts(svc, Ended("main", signal="SIGTERM"))
    assert restarts(svc, Ended("pre", exit_code=2)), "RestartPreventExitStatus covers the main process only"


def test_permanent_errors_are_not_restarted():
    """The exit codes of errors that a restart cannot fix are exactly the unit's RestartPreventExitStatus."""
    permanent = {ConfigError, ModelRejected, BundleError, SignatureError, ParityError, BackendUnavailable}
    assert set(words(service(), "RestartPreventExitStatus")) == {str(e.exit_code) for e in permanent}
    assert service()["Restart"] == ["on-failure"]


def run_unit_commands(svc: dict[str, list[str]], config: Path, workdir: Path, timeout: float = 120) -> Ended:
    """Run ExecStartPre= then ExecStart= as systemd would (in order, stopping at the first failure), with the
    executable and config paths pointed at this checkout and a test config; returns how the run ended. Only for
    runs that end by themselves (an invalid config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWLINE_")}
    for e in words(svc, "Environment"):
        k, _, v = e.partition("=")
        env[k] = str(workdir / "engines") if k == "SHADOWLINE_ENGINE_CACHE" else v
    for kind, key in (("pre", "ExecStartPre"), ("main", "ExecStart")):
        for line in svc.get(key, []):
            argv = [VENV_BIN if a == INSTALLED_BIN else str(config) if a == INSTALLED_CONFIG else a
                    for a in exec_argv(line)]
            r = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
            if r.returncode != 0 and not line.startswith("-"):
                return Ended(kind, exit_code=r.returncode)
    return Ended("main", exit_code=0)


def device_config(tmp_path: Path, bundle: Path, trust: Path, port: int, mode: str = "shadow") -> Path:
    cfg = tmp_path / "device.yaml"
    cfg.write_text(f"device_id: jetson-07\nbundles_dir: {bundle.parent}\ntrust_store: {trust}\n"
                   f"release:\n  name: pcb\n  mode: {mode}\n  stages:\n    - role: verify\n"
                   f"      bundle: {bundle.name}\nstore:\n  path: {tmp_path / 'device.db'}\n"
                   f"retention:\n  dir: {tmp_path / 'images'}\napi:\n  port: {port}\n")
    return cfg


@pytest.mark.parametrize("case, code", [("bad key", ConfigError.exit_code), ("unsigned", SignatureError.exit_code),
                                        ("missing bundle", BundleError.exit_code)])
def test_a_bad_config_stops_the_unit_without_a_restart(tmp_path: Path, bundles, keys, case: str, code: int):
    trust = keys["trust"]
    bundle = bundles["pcb-aoi"]
    if case == "unsigned":  # a trust store that holds another key than the bundle's signer
        trust = tmp_path / "other-trust"
        trust.mkdir()
        shutil.copy(keys["other_private"].parent / "intruder.pub", trust / "intruder.pub")
    if case == "missing bundle":
        bundle = bundle.parent / "no-such-bundle-v9.9"
    cfg = device_config(tmp_path, bundle, trust, free_port(), mode="live" if case == "bad key" else "shadow")
    ended = run_unit_commands(service(), cfg, tmp_path)
    assert ended == Ended("main", exit_code=code)
    assert not restarts(service(), ended)


def test_the_old_unit_shape_did_loop(tmp_path: Path, bundles, keys):
    """The unit as shipped before: validation in ExecStartPre= ends the same bad config with the same code, and
    systemd restarts it (the restart loop of the field report)."""
    old = {**service(), "ExecStartPre": [f"{INSTALLED_BIN} edge validate-config {INSTALLED_CONFIG}"]}
    cfg = device_config(tmp_path, bundles["pcb-aoi"], keys["trust"], free_port(), mode="live")
    ended = run_unit_commands(old, cfg, tmp_path)
    assert ended == Ended("pre", exit_code=ConfigError.exit_code)
    assert restarts(old, ended)


def test_a_good_config_runs_and_a_crash_restarts(tmp_path: Path, bundles, keys):
    """ExecStart= with a valid config serves /healthz; SIGTERM (systemctl stop) ends it with 0, no restart; a
    SIGKILL (the OOM killer) is restarted."""
    svc = service()
    port = free_port()
    cfg = device_config(tmp_path, bundles["pcb-aoi"], keys["trust"], port)
    (line,) = svc["ExecStart"]
    argv = [VENV_BIN if a == INSTALLED_BIN else str(cfg) if a == INSTALLED_CONFIG else a for a in exec_argv(line)]
    ends = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        p = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        with reaped(p):
            wait_healthy(p, port)
            p.send_signal(sig)
            p.communicate(timeout=30)
        ends.append(Ended("main", exit_code=p.returncode) if p.returncode >= 0
                    else Ended("main", signal=signal.Signals(-p.returncode).name))
    assert ends[0] == Ended("main", exit_code=0) and not restarts(svc, ends[0])
    assert ends[1] == Ended("main", signal="SIGKILL") and restarts(svc, ends[1])


# -- the sandbox -----------------------------------------------------------------------------------------------
def test_sandbox_model():
    svc = {"ProtectSystem": ["strict"], "ProtectHome": ["yes"], "PrivateTmp": ["yes"],
           "StateDirectory": ["app app/x"], "CacheDirectory": ["app"], "ReadWritePaths": ["-/srv/data"]}
    for ok in ("/var/lib/app/x/y", "/var/cache/app/engines", "/srv/data/a", "/tmp/z"):
        assert is_writable(svc, ok), ok
    for ro in ("/var/cache/other", "/etc/app", "/opt/app", "/home/app/.cache", "/var/lib/application"):
        assert not is_writable(svc, ro), ro


def documented_engine_caches() -> set[str]:
    """Every engine cache directory the unit and the docs give: the unit's SHADOWLINE_ENGINE_CACHE, the docs'
    `--cache-dir`/`--engine-cache` arguments and `cache_dir:` config examples, and the default (~/.cache/...) for
    the service user's home as docs/jetson.md creates it."""
    found = {e.split("=", 1)[1] for e in words(service(), "Environment") if e.startswith("SHADOWLINE_ENGINE_CACHE=")}
    for doc in ("jetson.md", "daemon.md"):
        text = (ROOT / "docs" / doc).read_text()
        found |= set(re.findall(r"(?:--cache-dir|--engine-cache)[ =](/[\w/.-]+)", text))
        found |= set(re.findall(r"cache_dir: (/[\w/.-]+)", text))
    home = re.search(r"useradd [^\n]*--home-dir (\S+) shadowline", (ROOT / "docs" / "jetson.md").read_text())
    assert home is not None, "docs/jetson.md no longer creates the service user"
    found.add(f"{home.group(1)}/.cache/shadowline/engines")
    return found


def test_engine_cache_and_state_are_writable_under_the_sandbox():
    svc = service()
    assert svc["ProtectSystem"] == ["strict"]
    caches = documented_engine_caches()
    assert "/var/lib/shadowline/engines" in caches and "/var/cache/shadowline/engines" in caches
    for path in sorted(caches | {svc["WorkingDirectory"][0]}):
        assert is_writable(svc, path), f"{path} is read-only under the unit's sandbox"


def test_docs_example_paths_are_writable_under_the_sandbox():
    """The store, kept images and releases of docs/jetson.md's example config."""
    import textwrap

    import yaml

    from edge.config import DeviceConfig

    block = re.search(r"```yaml\n(.*?)```", (ROOT / "docs" / "jetson.md").read_text(), re.S).group(1)
    cfg = DeviceConfig.model_validate(yaml.safe_load(textwrap.dedent(block)))
    assert cfg.fleet is not None
    for path in (cfg.store.path, cfg.retention.dir, cfg.fleet.releases_dir):
        assert is_writable(service(), path), f"{path} is read-only under the unit's sandbox"


def test_the_gpu_and_camera_group():
    assert "video" in words(service(), "SupplementaryGroups")
    assert parse_unit(UNIT.read_text())["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_daemon_tells_systemd_when_it_is_ready_and_when_it_stops(tmp_path: Path, bundles, keys):
    """Type=notify: ExecStart= run with NOTIFY_SOCKET set, as systemd runs it, sends READY=1 once /readyz answers
    200 (not at spawn), and STOPPING=1 on SIGTERM (systemctl stop) before it exits 0."""
    import socket

    svc = service()
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    port = free_port()
    cfg = device_config(tmp_path, bundles["pcb-aoi"], keys["trust"], port)
    (line,) = svc["ExecStart"]
    argv = [VENV_BIN if a == INSTALLED_BIN else str(cfg) if a == INSTALLED_CONFIG else a for a in exec_argv(line)]
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(60)
        p = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "NOTIFY_SOCKET": str(sock_path)})
        with reaped(p):
            ready = sock.recv(4096).decode()
            assert "READY=1" in ready.splitlines(), ready
            assert f"MAINPID={p.pid}" in ready.splitlines(), ready
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                assert r.status == 200  # ready when it says so
            p.send_signal(signal.SIGTERM)
            assert sock.recv(4096).decode() == "STOPPING=1"
            p.communicate(timeout=30)
    assert p.returncode == 0
