"""Options and helpers shared by several commands."""
from __future__ import annotations

from ..console import DEVICE, BadOption, UserError, removed_options, run_cli, run_core, size_options, usage  # noqa: F401 (the commands' imports)


def read_pick_table(path: str):
    """Any pick table the adapters read (CSV/TSV, STAR, .box, Topaz, .cs, or a directory of per-micrograph files)."""
    from pupick.adapters.registry import read_picks  # the CLI is the composition root: it may use the adapters

    return read_picks(path)
