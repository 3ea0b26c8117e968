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


def exit_codes() -> list[tuple[int, str, str]]:
    """(code, error class, what it means) of every domain error that sets its own code (runtime/errors.py); a
    subclass without its own code exits with its parent's. Raises if two classes claim one code."""
    from runtime import errors

    seen: dict[int, str] = {}
    rows = []
    for name, cls in vars(errors).items():
        if isinstance(cls, type) and issubclass(cls, errors.ShadowlineError) and "exit_code" in vars(cls):
            if cls.exit_code in seen:
                raise ValueError(f"exit code {cls.exit_code} of {name} is {seen[cls.exit_code]}'s already")
            seen[cls.exit_code] = name
            rows.append((cls.exit_code, name, " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())))
    return sorted(rows)


def render() -> str:
    parts = ["# Command reference", "",
             "Generated from the code by `python -m shadowline.clidoc --write`; a test keeps it current.", "",
             "## Exit codes", "",
             "0 on success; a domain error exits with its class's code (runtime/errors.py); a subclass not listed "
             "here exits with its parent's. Usage errors (a missing or unknown option) exit 2 as click's do; "
             "Ctrl-C exits 130.", "", "| code | error | meaning |", "|---|---|---|"]
    parts += [f"| {code} | `{name}` | {doc} |" for code, name, doc in exit_codes()]
    parts.append("")
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
