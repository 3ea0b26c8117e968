"""The `shadowline` command: one group per package, loaded lazily so `--help` stays fast and optional
libraries are imported only by the command that needs them. Domain errors become exit codes here, once."""

from __future__ import annotations

import importlib
import sys

import click

from runtime.errors import ShadowlineError
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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="shadowline")
def cli() -> None:
    """Shadowline: signed model bundles, an edge daemon with shadow mode, and MQTT fleet rollout."""


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, standalone_mode=False)
    except ShadowlineError as err:
        click.echo(f"error: {err}", err=True)
        return err.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
