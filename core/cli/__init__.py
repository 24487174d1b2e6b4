"""The `pupick` command group: thin commands that build a config and call one core function.

Commands live one per module and are imported only when invoked, so `pupick --help` and
`pupick preprocess` start without importing torch.
"""
from __future__ import annotations

import importlib

import click

from .. import __version__
from ._common import run_cli

# command name -> module (relative to this package) defining a click command called `command`
COMMANDS = {
    "preprocess": "preprocess",
    "train": "train",
    "pick": "pick",
    "evaluate": "evaluate",
    "convert": "convert",
    "demo": "demo",
    "view": "view",
    "serve": "serve",  # the picking service (core/service/)
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"{__name__}.{COMMANDS[name]}")
        return module.command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="pupick", message="%(version)s")
def cli() -> None:
    """pupick: positive-unlabeled CNN particle picking for cryo-EM."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit status 1."""
    run_cli(cli, "pupick", argv)
