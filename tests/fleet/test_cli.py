"""`shadowline fleet` end to end: `serve` (with its embedded broker) as a real process, admin commands talking to
its API, a simulated device following the rollout; every command has help and is documented in docs/fleet.md."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click
import httpx
import pytest

from fleet.cli import fleet_group
from fleet.protocol import Topics
from tests.conftest import free_port
from tests.fleet.devicesim import SimFleet, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((f"{prefix} {name}", cmd))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix} {name}")
    return out


def test_every_command_has_help_and_is_documented():
    doc = (ROOT / "docs" / "fleet.md").read_text()
    for path, cmd in _commands(fleet_group, "shadowline fleet"):
        assert len((cmd.help or "").strip()) > 10, f"{path} has no help"
        assert f"`{path}" in doc, f"{path} is not in docs/fleet.md"
        for p in cmd.params:
            assert not isinstance(p, click.Option) or p.help, f"{path} {p.opts} has no help"


def run(*args: str, token: str | None = None, url: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if token:
        env["SHADOWLINE_FLEET_TOKEN"] = token
    if url:
        env["SHADOWLINE_FLEET_URL"] = url
    p = subprocess.run([sys.executable, "-m", "shadowline.cli", "fleet", *args], capture_output=True, text=True,
                       env=env, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_serve_and_admin_commands(tmp_path, keys, bundles):
    tokens = tmp_path / "tokens.json"
    token = run("token", "create", "--tokens-file", str(tokens), "--name", "ops", "--role", "admin").stdout.strip()
    viewer = run("token", "create", "--tokens-file", str(tokens), "--name", "v", "--role", "viewer").stdout.strip()
    # the simulator speaks for several devices over one connection: a service user, as the embedded broker's ACL
    # wants (it refuses anonymous clients)
    broker_dir = tmp_path / "broker"
    run("credentials", "add", "--dir", str(broker_dir), "--role", "fleet", "simulator")
    sim_auth = {"username": "simulator",
                "password": json.loads((broker_dir / "credentials.json").read_text())["users"]["simulator"]["password"]}
    mqtt_port, http_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http_port}"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "shadowline.cli", "fleet", "serve", "--data-dir",
                             str(tmp_path / "data"), "--embedded-broker-port", str(mqtt_port), "--port",
                             str(http_port), "--trust-store", str(keys["trust"]), "--tokens-file", str(tokens),
                             "--broker-credentials-dir", str(broker_dir)],
                            stdout=log, stderr=log)
    sims = None
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "fleet serve to be ready")
        pushed = json.loads(run("bundle", "push", str(bundles["pcb-aoi"]), "--json", token=token, url=url).stdout)
        assert pushed["id"] == bundles["pcb-aoi"].name
        tampered = tmp_path / bundles["squeezenet"].name
        shutil.copytree(bundles["squeezenet"], tampered)
        (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes() + b"\0")
        bad = run("bundle", "push", str(tampered), token=token, url=url, check=False)
        assert bad.returncode == 4 and "model.onnx" in bad.stderr  # BundleError
        # the refusal names the bundle the admin sent, not the server's temporary upload file
        assert f"{tampered.name}.tar: file 'model.onnx'" in bad.stderr and ".upload-" not in bad.stderr
        denied = run("bundle", "push", str(bundles["pcb-aoi"]), token=viewer, url=url, check=False)
        assert denied.returncode == 14 and "403" in denied.stderr  # AccessDenied
        assert run("bundle", "list", url=url, check=False).returncode != 0  # no token
        run("devices", "--device", "cam-1", "--set-groups", "line", token=token, url=url)
        run("devices", "--device", "cam-2", "--set-groups", "line", token=token, url=url)
        listed = run("devices", "--group", "line", token=token, url=url).stdout.splitlines()
        assert listed[0].split() == ["DEVICE", "STATUS", "ACTIVE", "CANDIDATE", "GROUPS", "ACTIVATION", "LAST", "SEEN"]
        assert [line.split()[0] for line in listed[1:]] == ["cam-1", "cam-2"]
        assert [d["id"] for d in json.loads(run("devices", "--json", token=token, url=url).stdout)] == ["cam-1", "cam-2"]
        shown = run("devices", "show", "cam-1", token=token, url=url).stdout
        assert "device" in shown and "cam-1" in shown and "recent errors" in shown
        assert json.loads(run("devices", "show", "cam-1", "--json", token=token, url=url).stdout)["groups"] == ["line"]
        missing = run("devices", "show", "cam-9", token=token, url=url, check=False)
        assert missing.returncode == 10 and "cam-9" in missing.stderr and "Traceback" not in missing.stderr
        spec = tmp_path / "seal.yaml"
        spec.write_text(f"name: seal\nmode: shadow\nstages:\n  - role: verify\n    bundle: {pushed['id']}\n")
        assert json.loads(run("release", "create", str(spec), "--json", token=token, url=url).stdout)["revision"] == 1
        assert run("release", "create", str(spec), token=token, url=url).stdout.startswith("created seal@2 (shadow)")
        # a bad spec: file:line: key.path for every problem, exit 2 (ConfigError), nothing sent
        broken = tmp_path / "broken.yaml"
        broken.write_text("name: seal\nmode: live\nstages:\n  - role: verify\n    bundel: x\n")
        res = run("release", "create", str(broken), token=token, url=url, check=False)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert f"{broken}:2: mode: Input should be 'shadow' or 'production'" in res.stderr
        assert f"{broken}:5: stages.0.bundel: Extra inputs are not permitted" in res.stderr
        assert f"{broken}:4: stages.0.bundle: Field required" in res.stderr
        unknown = tmp_path / "unknown.yaml"
        unknown.write_text("name: seal\nstages:\n  - role: verify\n    bundle: nope-v1.0\n")
        res = run("release", "create", str(unknown), token=token, url=url, check=False)
        assert res.returncode != 0 and f"{unknown}: refused by the fleet:" in res.stderr and "nope-v1.0" in res.stderr
        sims = SimFleet(f"mqtt://127.0.0.1:{mqtt_port}", Topics(), ["cam-1", "cam-2"], predictions_per_report=0,
                        auth=sim_auth)
        ro = json.loads(run("rollout", "start", "seal@1", "--group", "line", "--waves", "1,100%",
                            "--gates", '{"wave_timeout_s": 60}', "--json", token=token, url=url).stdout)

        def state() -> str:
            return json.loads(run("rollout", "status", ro["id"], "--json", token=token, url=url).stdout)["state"]

        wait_for(lambda: state() != "running", 90, "rollout through the embedded broker")
        assert state() == "completed" and set(sims.active.values()) == {"seal@1"}
        ro2 = json.loads(run("rollout", "start", "seal@2", "--group", "line", "--waves", "100%", "--json",
                             token=token, url=url).stdout)
        wait_for(lambda: set(sims.active.values()) == {"seal@2"}, 60, "seal@2 everywhere")
        back = json.loads(run("rollback", ro2["id"], "--json", token=token, url=url).stdout)
        assert back["state"] == "rolled_back"
        wait_for(lambda: set(sims.active.values()) == {"seal@1"}, 60, "rolled back to seal@1")
        assert not sims.errors
        listed = json.loads(run("rollout", "status", "--json", token=token, url=url).stdout)
        assert [r["id"] for r in listed] == [ro["id"], ro2["id"]]
        text = run("rollout", "status", token=token, url=url).stdout.splitlines()
        assert text[0].split()[:4] == ["ID", "RELEASE", "GROUP", "STATE"]
        assert [line.split()[:2] for line in text[1:]] == [[ro["id"], "seal@1"], [ro2["id"], "seal@2"]]
    finally:
        if sims is not None:
            sims.stop()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("fleet serve did not stop on SIGINT")
