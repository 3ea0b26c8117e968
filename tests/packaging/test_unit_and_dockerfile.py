"""What can be checked of the Jetson packaging without Docker or systemd: the unit file's command lines parse
against the real CLI, and the Dockerfile references files, commands and endpoints that exist."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from edge.config import ApiConfig
from runtime.errors import ConfigError
from shadowline.cli import cli

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "shadowline-edge.service"
DOCKERFILE = ROOT / "Dockerfile.jetson"
DOC = ROOT / "docs" / "jetson.md"


def unit_entries() -> dict[str, dict[str, list[str]]]:
    """systemd's format: sections, Key=Value, repeatable keys, comment lines starting with # or ;."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{raw!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"not Key=Value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_shadowline(argv: list[str]) -> tuple[click.Command, dict]:
    """Resolve `shadowline SUB CMD ...` to the real click command and parse its arguments without running it."""
    assert Path(argv[0]).name == "shadowline", argv
    cmd: click.Command = cli
    ctx = cli.make_context("shadowline", list(argv[1:]), resilient_parsing=True)
    args = argv[1:]
    while isinstance(cmd, click.Group):
        name, args = args[0], args[1:]
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"`{name}` is not a shadowline command"
        cmd = sub
    ctx = cmd.make_context(cmd.name, list(args))  # raises on an unknown option or a missing required one
    return cmd, ctx.params


def test_unit_exec_start_is_a_real_command():
    svc = unit_entries()["Service"]
    (exec_start,) = svc["ExecStart"]
    cmd, params = parse_shadowline(shlex.split(exec_start))
    assert cmd.name == "run" and params["config_path"] == Path("/etc/shadowline/device.yaml")
    assert params["log_level"] == "info"
    (pre,) = svc["ExecStartPre"]
    cmd, params = parse_shadowline(shlex.split(pre))
    assert cmd.name == "validate-config" and params["config_path"] == Path("/etc/shadowline/device.yaml")
    # both name the same executable
    assert shlex.split(pre)[0] == shlex.split(exec_start)[0]


def test_unit_does_not_restart_on_an_invalid_config():
    svc = unit_entries()["Service"]
    assert svc["RestartPreventExitStatus"] == [str(ConfigError.exit_code)]
    assert svc["Restart"] == ["on-failure"]


def test_unit_state_paths_are_writable_under_protect_system():
    svc = unit_entries()["Service"]
    assert svc["ProtectSystem"] == ["strict"]
    writable = svc["ReadWritePaths"][0].split()
    cache = [e.split("=", 1)[1] for e in svc["Environment"] if e.startswith("SHADOWLINE_ENGINE_CACHE=")][0]
    for path in (svc["WorkingDirectory"][0], cache):
        assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), path
    assert "video" in svc["SupplementaryGroups"][0].split()
    assert unit_entries()["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_unit_verifies_with_systemd(tmp_path: Path):
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(UNIT)], capture_output=True, text=True)
    # the binary path and the user exist only on a provisioned device
    errors = [ln for ln in r.stderr.splitlines() if "shadowline" in ln and "/opt/shadowline" not in ln
              and "User" not in ln]
    assert not errors, r.stderr


# -- Dockerfile --------------------------------------------------------------------------------------------------
def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_base_and_toolchain():
    ins = instructions()
    assert ins[0] == ("FROM", "nvcr.io/nvidia/l4t-jetpack:r36.4.0")
    env = " ".join(rest for word, rest in ins if word == "ENV")
    assert "CUDA_ROOT=/usr/local/cuda" in env
    assert re.search(r"PATH=[^ ]*/usr/local/cuda/bin", env)
    runs = [rest for word, rest in ins if word == "RUN"]
    first_env = next(i for i, (w, _) in enumerate(ins) if w == "ENV")
    pycuda = next(i for i, (w, r) in enumerate(ins) if w == "RUN" and "pycuda" in r)
    assert first_env < pycuda, "pycuda must be built with CUDA_ROOT and nvcc on PATH"
    assert any("python3.10 -m venv --system-site-packages" in r for r in runs)  # apt's TensorRT bindings
    assert any("python3-libnvinfer" in r for r in runs)


def test_dockerfile_copies_files_that_exist_and_every_package():
    copies = [rest.split() for word, rest in instructions() if word == "COPY"]
    assert copies
    sources = [src for parts in copies for src in parts[:-1] if not src.startswith("--")]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[(.*?)\]", pyproject).group(1)
    packages = {p.strip(' "*') for p in include.split(",")}
    assert packages <= set(sources), f"packages not copied: {packages - set(sources)}"


def test_dockerfile_entrypoint_healthcheck_and_volumes():
    ins = dict((w, r) for w, r in instructions() if w in ("ENTRYPOINT", "HEALTHCHECK", "VOLUME", "USER"))
    copies = [rest.split() for word, rest in instructions() if word == "COPY"]
    entry = re.search(r'\["([^"]+)"\]', ins["ENTRYPOINT"]).group(1)
    assert ["deploy/jetson/entrypoint.sh", entry] in copies
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", ins["HEALTHCHECK"])
    assert url is not None
    assert int(url.group(1)) == ApiConfig().port  # the daemon's default API port
    api_source = (ROOT / "edge" / "api.py").read_text()
    assert f'@app.get("{url.group(2)}")' in api_source, f"{url.group(2)} is not a route of the daemon's API"
    assert "/var/lib/shadowline/engines" in ins["VOLUME"] and "/var/lib/shadowline/data" in ins["VOLUME"]
    env = " ".join(rest for word, rest in instructions() if word == "ENV")
    assert "SHADOWLINE_ENGINE_CACHE=/var/lib/shadowline/engines" in env
    assert ins["USER"] == "shadowline"


def test_docs_name_every_setting_the_entrypoint_reads():
    script = (ROOT / "deploy" / "jetson" / "entrypoint.sh").read_text()
    doc = DOC.read_text()
    for var in sorted(set(re.findall(r"\$\{?(SHADOWLINE_[A-Z_]+)", script))):
        assert var in doc, f"docs/jetson.md does not mention {var}"
    assert "could not be built here" in doc


def test_docs_example_config_is_a_valid_device_config():
    import textwrap

    import yaml

    from edge.config import DeviceConfig

    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S).group(1)
    cfg = DeviceConfig.model_validate(yaml.safe_load(textwrap.dedent(block)))
    assert cfg.fleet is not None and cfg.fleet.tls is not None
    assert str(cfg.store.path).startswith("/var/lib/shadowline/data")  # on the data volume


def test_docs_commands_exist():
    """Every `shadowline GROUP [COMMAND]` the page tells an operator to run resolves to a real command."""
    text = DOC.read_text()
    seen = set(re.findall(r"shadowline ((?:edge|export|hwbench|keys|fleet)(?: [a-z][a-z-]+)?)", text))
    assert {"edge validate-config", "edge run", "export tensorrt"} <= {s for s in seen if " " in s}
    ctx = click.Context(cli)
    for phrase in seen:
        words = phrase.split()
        cmd = cli.get_command(ctx, words[0])
        assert cmd is not None, phrase
        if len(words) == 2 and isinstance(cmd, click.Group):
            assert cmd.get_command(ctx, words[1]) is not None, f"`shadowline {phrase}` is not a command"
