"""`pupick preprocess`: downsample and normalise micrographs into a directory."""
from __future__ import annotations

import sys

import click

from ..config import PreprocessConfig
from ..io import expand_inputs
from ..outputs import preprocess_to_dir
from ..preprocess import NORMALIZE_METHODS
from ._common import run_core, size_options


@click.command("preprocess")
@click.argument("micrographs", nargs=-1, required=True)
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@size_options
@click.option("--normalize", type=click.Choice(NORMALIZE_METHODS), default="gmm", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the mixture fit's pixel subsample.")
@click.option("--workers", type=int, default=1, show_default=True, help="Micrographs processed at once.")
@click.option("--overwrite", is_flag=True, help="Redo outputs that already exist.")
def command(micrographs, out_dir, scale, diameter, diameter_px, pixel_size, normalize, seed, workers, overwrite):
    """Downsample (Fourier crop) and normalise MICROGRAPHS (files, directories, globs, @list.txt) into OUT_DIR."""
    paths = run_core(expand_inputs, micrographs)
    config = PreprocessConfig(factor=scale, diameter_A=diameter, diameter_px=diameter_px, pixel_size=pixel_size,
                              normalize=normalize, seed=seed)
    result = run_core(preprocess_to_dir, paths, out_dir, config, workers=workers, overwrite=overwrite)
    factors = sorted(set(result.factors.values()))
    how = ("given by --scale" if scale else "from the particle diameter (diameter/s <= 40 px)" if (diameter or diameter_px)
           else "none given: 1")
    click.echo(f"downsampling factor {', '.join(f'{f:g}' for f in factors) or '-'} ({how}); normalisation {normalize}")
    click.echo(f"{len(result.written)} written, {len(result.skipped)} already done, {len(result.failures)} failed -> {out_dir}")
    for name, error in result.failures:
        click.echo(f"  failed: {error}", err=True)
    if result.failures:
        sys.exit(1)
