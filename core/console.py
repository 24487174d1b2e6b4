"""Console-script plumbing shared by `pupick` and the wrappers' commands: one-line errors, exit codes, option types.

Exit codes: 2 for bad usage (an option or input that cannot work, refused before any work), 1 for failed work.
"""
from __future__ import annotations

import io
import os
import stat
import sys
from typing import Any, Callable

import click

from .config import DEVICES, REMOVED, check_device, removed_message
from .errors import BadName, InputError, MissingSetting, PupickError, RemovedOption


class UserError(click.ClickException):
    """A PupickError surfaced through click: one line `PROG: error: ...`, exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"{_prog()}: error: {self.format_message()}", err=True, file=file)


def _prog() -> str:
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().info_name if ctx is not None and ctx.find_root().info_name else "pupick"


class BadOption(UserError):
    """An option or input that cannot work: one line, exit status 2 (bad usage), before any work."""

    exit_code = 2


def run_core(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call a core function, turning PupickError into a click error (exit 1, one line, no traceback)."""
    try:
        return fn(*args, **kwargs)
    except (BadName, RemovedOption, MissingSetting) as err:  # bad input: a name that cannot name a file, ...
        raise BadOption(str(err)) from None
    except PupickError as err:
        raise UserError(str(err)) from None


def usage(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Build a config or check an option: an InputError is bad usage (exit 2, one line), raised before any work."""
    try:
        return fn(*args, **kwargs)
    except InputError as err:
        raise BadOption(str(err)) from None


class DeviceType(click.ParamType):
    """auto, cpu, cuda or cuda:N: the devices the engine accepts (config.check_device), for every front end."""

    name = "device"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            return check_device(value)
        except InputError:
            self.fail(f"{value!r}: choose {', '.join(DEVICES)} or cuda:N", param, ctx)

    def get_metavar(self, param: Any, ctx: Any = None) -> str:
        return "[" + "|".join(DEVICES) + "|cuda:N]"


DEVICE = DeviceType()


def _refuse_removed(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None:
        raise BadOption(removed_message(param.name or "", f"--{(param.name or '').replace('_', '-')}"))


def removed_options(f: Callable) -> Callable:
    """Hidden --NAME/--no-NAME flags for each option in config.REMOVED: either form is refused with its one line
    (exit 2), while the command line is parsed, before any work."""
    for name in REMOVED:
        flag = name.replace("_", "-")
        f = click.option(f"--{flag}/--no-{flag}", name, default=None, hidden=True, is_eager=True,
                         expose_value=False, callback=_refuse_removed)(f)
    return f


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
    """Run a click command as a console script: user errors are one line `PROG: error: ...` (exit 1), bad usage
    exit 2, Ctrl-C 130; a closed stdout (`| head`) after the work is done is not an error."""
    quiet_broken_pipe()
    try:
        group.main(args=argv, prog_name=prog, standalone_mode=False)
    except PupickError as err:
        click.echo(f"{prog}: error: {err}", err=True)
        sys.exit(2 if isinstance(err, (BadName, RemovedOption, MissingSetting)) else 1)
    except click.exceptions.Abort:
        click.echo(f"{prog}: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except OSError as err:
        from .io import cannot_write, is_disk_error

        if not is_disk_error(err):
            raise
        click.echo(f"{prog}: error: {cannot_write(err.filename or 'output', err)}", err=True)  # a full disk
        sys.exit(1)
