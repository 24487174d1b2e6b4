"""Options and helpers shared by several commands."""
from __future__ import annotations

from typing import Callable

import click

from ..errors import PupickError


def run_core(fn: Callable, *args, **kwargs):
    """Call a core function, turning PupickError into a click error (exit 1, one line, no traceback)."""
    try:
        return fn(*args, **kwargs)
    except PupickError as err:
        raise click.ClickException(str(err)) from None


def size_options(f: Callable) -> Callable:
    """--scale / --diameter / --diameter-px / --pixel-size, shared by preprocess, train and pick."""
    f = click.option("--pixel-size", type=float, default=None, help="Å per original pixel (overrides the header).")(f)
    f = click.option("--diameter-px", type=float, default=None, help="Particle diameter in original pixels.")(f)
    f = click.option("--diameter", type=float, default=None, help="Particle diameter in Å (needs a pixel size).")(f)
    f = click.option("--scale", type=float, default=None, help="Downsampling factor (default: from the diameter).")(f)
    return f
