"""Every admin command a person runs can be scripted: each `shadowline fleet` command takes `--json` (the few
that cannot are named here with the reason), and every `shadowline fleet ...` line in the operations docs names
a command and options that exist."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from shadowline.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "fleet.md", ROOT / "docs" / "runbooks.md"]

# commands without --json, and why
NO_JSON = {
    "fleet serve": "runs the service until stopped (its state is in /metrics and /api/...)",
    "fleet ingest-worker": "runs until stopped",
    "fleet mosquitto-conf": "prints a Mosquitto configuration file, which is its whole output",
    "fleet migrate": "prints JSON only (the revision before and after)",
}


def leaves(cmd: click.Command, path: list[str], ctx: click.Context) -> Iterator[tuple[str, click.Command]]:
    if isinstance(cmd, click.Group):
        if cmd.invoke_without_command:  # a group that is also a command (`fleet devices`)
            yield " ".join(path), cmd
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None
            yield from leaves(sub, [*path, name], ctx)
    else:
        yield " ".join(path), cmd


def options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*getattr(p, "opts", []), *getattr(p, "secondary_opts", []))}


def fleet_commands() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    fleet = cli.get_command(ctx, "fleet")
    assert fleet is not None
    return dict(leaves(fleet, ["fleet"], ctx))


def without_json(commands: dict[str, click.Command]) -> list[str]:
    return sorted(name for name, cmd in commands.items() if "--json" not in options(cmd) and name not in NO_JSON)


def test_every_admin_command_has_json():
    commands = fleet_commands()
    assert len(commands) >= 30 and "fleet devices" in commands
    missing = without_json(commands)
    assert not missing, f"fleet commands without --json: {missing}"
    assert set(NO_JSON) <= set(commands), set(NO_JSON) - set(commands)  # no stale exemption


def test_the_check_fails_on_a_command_without_json():
    @click.command("bare")
    def bare() -> None:
        """A command someone added without --json."""

    assert without_json({**fleet_commands(), "fleet bare": bare}) == ["fleet bare"]


def doc_commands(text: str) -> Iterator[list[str]]:
    """The `shadowline fleet ...` command lines of the ```sh blocks (continuations joined, comments dropped)."""
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["shadowline", "fleet"]:
                yield words[1:]


def resolve(words: list[str], commands: dict[str, click.Command]) -> tuple[str, click.Command, list[str]]:
    for n in range(len(words), 0, -1):
        name = " ".join(words[:n])
        if name in commands:
            return name, commands[name], words[n:]
    raise AssertionError(f"no command {' '.join(words)!r}")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_fleet_commands_exist_with_their_options(doc: Path):
    commands = fleet_commands()
    seen = 0
    for words in doc_commands(doc.read_text()):
        name, cmd, rest = resolve(words, commands)
        unknown = [w.split("=")[0] for w in rest if w.startswith("--") and w.split("=")[0] not in options(cmd)]
        assert not unknown, f"{doc.name}: `shadowline {' '.join(words)}`: {name} has no {unknown}"
        seen += 1
    assert seen >= 5, f"{doc.name}: only {seen} fleet commands found"


def test_the_doc_check_catches_a_wrong_option():
    commands = fleet_commands()
    [words] = list(doc_commands("```sh\nshadowline fleet alerts silence --for 2h --because x  # comment\n```"))
    name, cmd, rest = resolve(words, commands)
    assert name == "fleet alerts silence" and "--because" not in options(cmd) and "--for" in options(cmd)
    with pytest.raises(AssertionError, match="no command"):
        resolve(["fleet", "alarms", "list"], commands)
