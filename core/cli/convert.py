"""`pupick convert`: pick coordinates from one format to another (RELION, cryoSPARC, EMAN, Topaz, CSV/TSV)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import click
import numpy as np
import pandas as pd

from ..errors import InputError
from ._common import run_core

FORMAT_NAMES = ["star", "relion", "box", "eman2", "topaz", "csv", "tsv", "cs"]


def _diameter_px(diameter: float, pixel_size: float | None, mics: pd.DataFrame | None) -> float:
    """--diameter (Å) in pixels, by --pixel-size or the micrographs' one pixel size."""
    ps = pixel_size
    if ps is None and mics is not None and mics["pixel_size"].notna().any():
        sizes = mics["pixel_size"].dropna().unique()
        if len(sizes) > 1:
            raise InputError(f"--diameter: the micrographs have several pixel sizes ({', '.join(map(str, sizes[:4]))});"
                             " give --diameter-px or --box-size")
        ps = float(sizes[0])
    if not ps or not math.isfinite(ps):
        raise InputError("--diameter is in Å but no pixel size is known: give --pixel-size, --micrographs with "
                         "pixel sizes, or --diameter-px")
    return diameter / ps


def convert(inputs: list[str], output: str, from_fmt: str | None, to_fmt: str | None, coord_factor: float,
            threshold: float | None, box_size: int | None, diameter_px: float | None,
            micrographs: str | pd.DataFrame | None, suffix: str, relion_version: str, force: bool,
            protect: Sequence[str | Path] = ()) -> tuple[pd.DataFrame, list[Path]]:
    """Read every input, scale and filter, write the output; returns (picks written, files).

    `micrographs` is a micrograph table's file (or an already read table). Neither the inputs, that file nor the
    files in `protect` are ever written over."""
    from pupick.adapters import registry

    mics = registry.read_micrographs(micrographs) if isinstance(micrographs, (str, Path)) else micrographs
    tables = [registry.read_picks(path, fmt=from_fmt) for path in inputs]
    picks = pd.concat(tables, ignore_index=True) if tables else None
    if coord_factor != 1:
        picks = registry.scale_picks(picks, coord_factor)
    if threshold is not None:
        missing = int(picks["score"].isna().sum())
        if missing:
            raise InputError(f"--threshold: {missing} of {len(picks)} picks have no score "
                             f"({', '.join(inputs[:3])}); thresholds apply to scored picks only")
        picks = picks[picks["score"].to_numpy() >= threshold].reset_index(drop=True)
    registry.check_coordinates(picks, ", ".join(inputs[:3]), mics)
    written = registry.write_picks(picks, output, fmt=to_fmt, micrographs=mics, box_size=box_size,
                                   diameter_px=diameter_px, suffix=suffix, version=relion_version,
                                   overwrite=force, inputs=[*inputs, *protect, *([micrographs] if isinstance(
                                       micrographs, (str, Path)) else [])])
    return picks, written


@click.command(name="convert")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Output file, or directory for per-micrograph formats.")
@click.option("--from", "from_fmt", type=click.Choice(FORMAT_NAMES), default=None,
              help="Input format (default: from the extension).")
@click.option("--to", "to_fmt", type=click.Choice(FORMAT_NAMES), default=None,
              help="Output format (default: from the extension; required for a directory).")
@click.option("--coord-factor", type=float, default=1.0, show_default=True,
              help="Multiply coordinates by F (e.g. 4 from a 4x-binned frame to the unbinned one).")
@click.option("--threshold", type=float, default=None, help="Keep picks with score >= T (scores are logits).")
@click.option("--box-size", type=int, default=None, help="Box size in pixels for .box output.")
@click.option("--diameter-px", type=float, default=None,
              help="Particle diameter in pixels; .box size = smallest even integer >= 1.5 x diameter.")
@click.option("--diameter", type=float, default=None, help="Particle diameter in Å (needs a pixel size).")
@click.option("--pixel-size", type=float, default=None, help="Å per pixel, for --diameter.")
@click.option("--micrographs", default=None,
              help="MICROGRAPHS.star, exposures.cs or micrograph files: paths, shapes, pixel sizes, cryoSPARC uids.")
@click.option("--suffix", default="pupick", show_default=True, help="Per-micrograph RELION files: <mic>_SUFFIX.star.")
@click.option("--relion-version", type=click.Choice(["3.0", "3.1", "4", "5"]), default="4", show_default=True,
              help="STAR layout to write (3.0: no version line and no list file).")
@click.option("--force", is_flag=True, help="Replace existing output files.")
def command(inputs, output, from_fmt, to_fmt, coord_factor, threshold, box_size, diameter_px, diameter, pixel_size,
            micrographs, suffix, relion_version, force) -> None:
    """Convert pick coordinates between formats: INPUTS... -> OUTPUT."""
    def run():
        from pupick.adapters.registry import read_micrographs

        from pupick.adapters.registry import detect_format

        fmt = to_fmt or detect_format(Path(output), for_writing=True)
        # read once, before any picks; a .cs stores fractions of the micrograph sizes, so read those too
        mics = read_micrographs(micrographs, read_shapes=fmt == "cs") if micrographs else None
        d_px = diameter_px
        if d_px is None and diameter is not None:
            d_px = _diameter_px(diameter, pixel_size, mics)
        return convert(list(inputs), output, from_fmt, to_fmt, coord_factor, threshold, box_size, d_px,
                       mics, suffix, relion_version, force, protect=[micrographs] if micrographs else [])

    picks, written = run_core(run)
    n_mics = picks["micrograph"].nunique() if len(picks) else 0
    where = written[0] if len(written) == 1 else f"{len(written)} files under {Path(output)}"
    click.echo(f"{len(picks)} picks on {n_mics} micrograph(s) -> {where}")
    if (to_fmt == "relion" and relion_version != "3.0" and len(written) > 0
            and not any(p.name.endswith(".star") and not p.name.endswith(f"_{suffix}.star") for p in written)):
        click.echo("note: no coordinate list written (micrograph paths unknown); give --micrographs MICROGRAPHS.star")
    scores = picks["score"].to_numpy(dtype=float)
    if len(picks) and np.isfinite(scores).any():
        click.echo(f"scores {np.nanmin(scores):.3g} .. {np.nanmax(scores):.3g}")
