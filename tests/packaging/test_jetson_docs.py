"""docs/jetson.md against the code: its example config is a valid device config, the commands it tells an
operator to run exist, and the unit's command lines parse against the real CLI."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import click
import yaml

from edge.config import DeviceConfig
from shadowline.cli import cli
from tests.packaging.systemd import exec_argv, parse_unit

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "jetson.md"
UNIT = ROOT / "deploy" / "systemd" / "shadowline-edge.service"


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


def test_unit_exec_lines_are_real_commands():
    svc = parse_unit(UNIT.read_text())["Service"]
    (exec_start,) = svc["ExecStart"]
    cmd, params = parse_shadowline(exec_argv(exec_start))
    assert cmd.name == "run" and params["config_path"] == Path("/etc/shadowline/device.yaml")
    assert params["log_level"] == "info"
    for line in svc.get("ExecStartPre", []) + svc.get("ExecStartPost", []):
        parse_shadowline(exec_argv(line))


def test_docs_example_config_is_a_valid_device_config():
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S).group(1)
    cfg = DeviceConfig.model_validate(yaml.safe_load(textwrap.dedent(block)))
    assert cfg.fleet is not None and cfg.fleet.tls is not None
    assert cfg.fleet.fleet_keys == [Path("/etc/shadowline/fleet.pub")]  # the agent does not start without it
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


def test_docs_say_what_was_not_built_here():
    assert "could not be built here" in DOC.read_text()
