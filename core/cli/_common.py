"""Options and helpers shared by several commands."""
from __future__ import annotations

import io
import os
import stat
import sys
from typing import Callable

import click

from ..errors import PupickError


class UserError(click.ClickException):
    """A PupickError surfaced through click: one line `pupick: error: ...`, exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"pupick: error: {self.format_message()}", err=True, file=file)


def run_core(fn: Callable, *args, **kwargs):
    """Call a core function, turning PupickError into a click error (exit 1, one line, no traceback)."""
    try:
        return fn(*args, **kwargs)
    except PupickError as err:
        raise UserError(str(err)) from None


def size_options(f: Callable) -> Callable:
    """--scale / --diameter / --diameter-px / --pixel-size, shared by preprocess, train and pick."""
    f = click.option("--pixel-size", type=float, default=None, help="Å per original pixel (overrides the header).")(f)
    f = click.option("--diameter-px", type=float, default=None, help="Particle diameter in original pixels.")(f)
    f = click.option("--diameter", type=float, default=None, help="Particle diameter in Å (needs a pixel size).")(f)
    f = click.option("--scale", type=float, default=None, help="Downsampling factor (default: from the diameter).")(f)
    return f


class _QuietPipe(io.RawIOBase):
    """A file descriptor that swallows writes once its reader has gone (`pupick pick ... | head`)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd, self.broken = fd, False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data) -> int:
        if not self.broken:
            try:
                return os.write(self._fd, data)
            except BrokenPipeError:
                self.broken = True
        return len(data)


def quiet_broken_pipe() -> None:
    """When stdout is a pipe, let a closed reader cost nothing: the run finishes its work and exits normally."""
    try:
        if not stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode):
            return
    except (AttributeError, OSError, ValueError):  # not a real file (e.g. captured by a test)
        return
    sys.stdout.flush()
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(_QuietPipe(sys.stdout.fileno())), encoding=sys.stdout.encoding,
                                  errors=sys.stdout.errors, line_buffering=True)


def run_cli(group: click.Command, prog: str, argv: list[str] | None = None) -> None:
    """Run a click command as a console script: user errors become one line `PROG: error: ...` and exit status 1."""
    quiet_broken_pipe()
    try:
        group.main(args=argv, prog_name=prog, standalone_mode=False)
    except PupickError as err:
        click.echo(f"{prog}: error: {err}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo(f"{prog}: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)


def read_pick_table(path: str):
    """Any pick table the adapters read (CSV/TSV, STAR, .box, Topaz, .cs, or a directory of per-micrograph files)."""
    from pupick.adapters.registry import read_picks  # the CLI is the composition root: it may use the adapters

    return read_picks(path)
