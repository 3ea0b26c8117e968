"""Render every `shadowline` command's help into docs/cli.md (`python -m shadowline.clidoc --write`).

tests/test_cli_docs.py fails when a command has no help text or when docs/cli.md is out of date with the code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

from runtime.errors import ShadowlineError
from shadowline.cli import RESERVED, cli

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


PACKAGES = ("runtime", "export", "edge", "fleet", "hwbench", "shadowline")


def error_classes() -> list[type[ShadowlineError]]:
    """Every domain error class of every package: their modules are imported first (an optional library that is
    missing only hides the module that needs it)."""
    import importlib
    import pkgutil

    for top in PACKAGES:
        pkg = importlib.import_module(top)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{top}."):
            # migrations are scripts alembic runs inside its own context, not modules to import
            if info.name.endswith("__main__") or ".migrations" in info.name:
                continue
            try:
                importlib.import_module(info.name)
            except ImportError:
                continue
    found: list[type[ShadowlineError]] = []
    stack: list[type[ShadowlineError]] = [ShadowlineError]
    while stack:
        cls = stack.pop()
        if cls.__module__.split(".")[0] in PACKAGES and cls not in found:
            found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


def exit_codes() -> list[tuple[int, str, str]]:
    """(code, error, what it means) of every domain error class and of the CLI's own codes. Raises when two claim
    one code: each error class exits with a code of its own."""
    seen: dict[int, str] = {}
    rows = []
    for cls in error_classes():
        code, name = cls.exit_code, f"{cls.__module__}.{cls.__qualname__}"
        if code in seen or code in RESERVED or code >= 128:
            raise ValueError(f"exit code {code} of {name} is {seen.get(code, 'reserved by the CLI')}'s already")
        seen[code] = name
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        if not doc:
            raise ValueError(f"{name} has no docstring to say what exit code {code} means")
        rows.append((code, f"`{cls.__qualname__}` ({cls.__module__})", doc))
    rows += [(code, "(CLI)", text) for code, text in RESERVED.items()]
    return sorted(rows)


def render() -> str:
    parts = ["# Command reference", "",
             "Generated from the code by `python -m shadowline.clidoc --write`; a test keeps it current.", "",
             "## Exit codes", "",
             "0 on success; every domain error class exits with a code of its own (runtime/errors.py and the "
             "packages' own subclasses; tests/test_cli_docs.py keeps them unique). Any other failure is one line on "
             "stderr, never a traceback (`shadowline --debug ...` or SHADOWLINE_DEBUG=1 prints it): a usage error "
             "64, an unexpected error 70, an operating-system error 74, Ctrl-C 130, and a signal N that stops an "
             "export 128 + N (SIGTERM 143, SIGHUP 129) after removing everything it had begun to write.", "",
             "| code | error | meaning |", "|---|---|---|"]
    parts += [f"| {code} | {name} | {doc} |" for code, name, doc in exit_codes()]
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
