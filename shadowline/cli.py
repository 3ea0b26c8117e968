"""The `shadowline` command: one group per package, loaded lazily so `--help` stays fast and optional
libraries are imported only by the command that needs them. Domain errors become exit codes here, once."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from runtime.errors import Interrupted, ShadowlineError
from shadowline import __version__

# name -> (module, attribute, one-line help shown by `shadowline --help` without importing the module)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "export": ("export.cli", "export_group", "Turn a trained ONNX model into a signed bundle; inspect bundles."),
    "keys": ("export.cli", "keys_group", "Generate and show ed25519 signing keys."),
    "edge": ("edge.cli", "edge_group", "The device daemon: run, validate its config, predict on images."),
    "fleet": ("fleet.cli", "fleet_group", "The fleet service and its admin commands."),
    "hwbench": ("hwbench.cli", "hwbench_command", "Measure a bundle on this device's hardware."),
    "demo": ("shadowline.demo", "demo_command", "Run the end-to-end demo on the shipped real models."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, attr, _ = SUBCOMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as err:
            if err.name and err.name.split(".")[0] in {"export", "edge", "fleet", "hwbench", "shadowline"}:
                return None
            raise

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


# Exit codes of conditions that are not domain errors (sysexits.h where it has one). Domain errors carry their own
# (runtime/errors.py and its subclasses); docs/cli.md lists them all, and a test keeps every code unique.
EXIT_USAGE = 64  # EX_USAGE: an unknown option, a missing argument, a value of the wrong type
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug; the one-line message says to run with --debug for the traceback
EXIT_IO = 74  # EX_IOERR: the operating system refused a file or a socket nothing below turned into a domain error
EXIT_SIGINT = 130  # 128 + SIGINT: Ctrl-C; other signals that stop an export give 128 + their number
RESERVED: dict[int, str] = {EXIT_USAGE: "usage error (unknown option, missing or malformed argument)",
                            EXIT_INTERNAL: "internal error: a bug (run with --debug for the traceback)",
                            EXIT_IO: "operating-system error on a file or socket (permission, disk full, ...)",
                            EXIT_SIGINT: "interrupted (Ctrl-C); 128 + N for signal N during an export"}

_debug = False


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    global _debug
    _debug = _debug or value


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="shadowline")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help="print the Python traceback of an error (also: SHADOWLINE_DEBUG=1)")
def cli() -> None:
    """Shadowline: signed model bundles, an edge daemon with shadow mode, and MQTT fleet rollout."""


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _fail(message: str, code: int) -> int:
    if _debug:
        traceback.print_exc()
    click.echo(message, err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and turn every way it can fail into a message and an exit code; never a traceback unless
    --debug (or SHADOWLINE_DEBUG=1) asks for one."""
    global _debug
    _debug = os.environ.get("SHADOWLINE_DEBUG", "") not in ("", "0")
    try:
        cli.main(args=argv, standalone_mode=False)
    except ShadowlineError as err:
        return _fail(f"error: {err}", err.exit_code)
    except Interrupted as err:
        return _fail(f"{err}: stopped, nothing left half-written", err.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        return _fail("interrupted", EXIT_SIGINT)
    except click.exceptions.Exit as err:
        return err.exit_code
    except click.UsageError as err:
        err.show()
        return EXIT_USAGE
    except click.ClickException as err:  # click's own (a file it could not open for a File parameter)
        return _fail(f"error: {_one_line(err.format_message())}", EXIT_IO if isinstance(err, click.FileError)
                     else EXIT_USAGE)
    except SystemExit as err:  # a command that chose its exit code itself
        return err.code if isinstance(err.code, int) else (0 if err.code is None else _fail(str(err.code), 1))
    except OSError as err:
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        return _fail(f"error: {err.strerror or _one_line(str(err))}{where}", EXIT_IO)
    except Exception as err:  # anything else is a bug: one line, the exit code, and how to see more
        return _fail(f"error: internal error ({type(err).__name__}: {_one_line(str(err))}); run "
                     f"`shadowline --debug ...` for the traceback", EXIT_INTERNAL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
