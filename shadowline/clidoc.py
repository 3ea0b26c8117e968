"""Render every `shadowline` command's help into docs/cli.md (`python -m shadowline.clidoc --write`).

tests/test_cli_docs.py fails when a command has no help text or when docs/cli.md is out of date with the code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

from shadowline.cli import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def walk(cmd: click.Command, path: list[str], ctx: click.Context | None = None) -> Iterator[tuple[list[str], click.Command, click.Context]]:
    # A fixed width: click otherwise wraps to the terminal, and the file would differ between a shell and CI.
    # The command's own settings too (the root's `-h`): click caches a command's help option from the first
    # context that asks, so a bare context would render differently depending on what ran before.
    settings = {**cmd.context_settings, "terminal_width": 100, "max_content_width": 100}
    ctx = click.Context(cmd, info_name=path[-1], parent=ctx, **settings)
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None:
                yield from walk(sub, path + [name], ctx)


def render() -> str:
    parts = ["# Command reference", "",
             "Generated from the code by `python -m shadowline.clidoc --write`; a test keeps it current.", ""]
    for path, cmd, ctx in walk(cli, ["shadowline"]):
        parts += [f"## `{' '.join(path)}`", "", "```", cmd.get_help(ctx).replace("\r", ""), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    text = render()
    if "--write" in sys.argv:
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text)
        print(f"wrote {DOC}")
    else:
        print(text)
