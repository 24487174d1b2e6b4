"""`pupick pick`: score micrographs with a model (or the blob picker) and write picks, resumably."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config import VIEW_COUNTS, PickConfig
from ..io import atomic_path, check_output_dir, expand_inputs
from ._common import read_pick_table, run_core

FORMATS = ("csv", "star", "box", "tsv", "cs")
COORD_DIR = "coordinates"  # per-micrograph files live in OUTDIR/coordinates/<stem>.<ext>
EXTENSIONS = {"csv": ".csv", "tsv": ".tsv", "star": ".star", "box": ".box"}


def _writer(fmt: str, out_dir: Path, box_size: int | None):
    """A per-micrograph writer for the chosen format (None for cs: one particles file at the end)."""
    if fmt == "cs":
        return None
    from pupick.adapters.registry import write_picks

    adapter_fmt = "relion" if fmt == "star" else fmt
    ext = EXTENSIONS[fmt]

    def write(df, path: Path) -> None:
        from ..tables import stem

        write_picks(df, out_dir / COORD_DIR / f"{stem(path)}{ext}", fmt=adapter_fmt, box_size=box_size)  # atomic

    return write


def _summary(result, config: PickConfig, seconds: float, labels, match_radius) -> list[str]:
    import numpy as np

    picks, run = result.picks, result.run
    n_mics = run.n_done + len(result.skipped)
    lines = []
    if n_mics:
        counts = picks.groupby("micrograph", observed=True).size().to_numpy() if len(picks) else np.zeros(0, int)
        counts = np.r_[counts, np.zeros(max(0, n_mics - len(counts)), int)]
        lines.append(f"{len(picks)} picks on {n_mics} micrograph(s) at threshold {config.threshold:g}: "
                     f"{counts.mean():.1f} per micrograph (median {np.median(counts):g}, range {counts.min()}-"
                     f"{counts.max()})" + (f"; {len(result.skipped)} done earlier" if result.skipped else ""))
    if run.n_done:
        lines.append(f"{run.seconds_per_micrograph:.2f} s per micrograph ({run.n_done} picked in {seconds:.1f} s)")
    suggestion = _suggest_threshold(result, labels, match_radius, n_mics)
    if suggestion:
        lines.append(suggestion)
    return lines


def _suggest_threshold(result, labels, match_radius, n_mics: int) -> str | None:
    """A working threshold: best F1 against labels when given, else where picks meet the expected count."""
    import numpy as np

    picks = result.picks
    if not len(picks) or not n_mics:
        return None
    if labels is not None:
        from ..evaluate import evaluate

        ev = evaluate(picks, labels, match_radius, micrographs=result.micrographs)
        if ev.n_labels == 0:
            return "no threshold suggested: the labels name none of the picked micrographs"
        if np.isfinite(ev.threshold):
            return (f"suggested threshold {ev.threshold:.2f}: best F1 {ev.best_f1:.3f} (precision {ev.precision:.3f}, "
                    f"recall {ev.recall:.3f}) against the labels; AP {ev.ap:.3f}")
        return None
    expected = (result.model.config.get("expected_particles") if result.model is not None else None)
    if not expected:
        return None
    k = int(round(expected * n_mics))
    scores = np.sort(picks["score"].to_numpy(dtype=float))[::-1]
    if k < 1 or k > len(scores):
        return None
    return (f"suggested threshold {scores[k - 1]:.2f}: keeps the model's expected {expected:g} particles per "
            "micrograph")


@click.command("pick")
@click.argument("micrographs", nargs=-1, required=True)
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Model file from `pupick train` (not with --method blob).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--threshold", type=float, default=-6.0, show_default=True,
              help="Keep picks scoring at least this (a logit; low on purpose so recall is not cut).")
@click.option("--min-distance", type=float, default=None,
              help="Minimum distance between picks, original pixels (default: the particle radius).")
@click.option("--pixel-size", type=float, default=None,
              help="Å per original pixel of the micrographs (overrides the header; rescales if not the model's).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True,
              help="Per-micrograph files in OUTDIR/coordinates/ (cs: one OUTDIR/particles.cs, needs --exposures).")
@click.option("--box-size", type=int, default=None, help="Box size for .box (default: even, >= 1.5 x diameter).")
@click.option("--exposures", type=click.Path(dir_okay=False, exists=True), default=None,
              help="cryoSPARC exposures .cs that the micrographs come from (for --format cs).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", type=int, default=1, show_default=True, help="Reader threads ahead of the scorer.")
@click.option("--overwrite", is_flag=True, help="Redo every micrograph, even with other settings than before.")
@click.option("--max-picks", type=int, default=None, help="Keep at most this many picks per micrograph.")
@click.option("--border", type=float, default=None,
              help="Drop picks closer than this to an edge (original pixels; default: the particle radius, or as close as "
                   "the training labels came when that is wider, at most a diameter; 0 keeps all).")
@click.option("--dense", is_flag=True, help="Score every pixel exactly (slower) instead of the native stride.")
@click.option("--views", type=click.Choice([str(v) for v in VIEW_COUNTS]), default=None,
              help="Average the score over this many rotated/mirrored copies of each micrograph (more: smoother, "
                   "slower; default 4, or 1 with --dense).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True)
@click.option("--score-maps", is_flag=True, help="Also write each score map as OUTDIR/score_maps/<stem>.mrc.")
@click.option("--method", type=click.Choice(["cnn", "blob"]), default="cnn", show_default=True,
              help="cnn (a trained model) or blob (training-free band-pass picker; needs the diameter).")
@click.option("--diameter", type=float, default=None, help="Blob picker: particle diameter in Å.")
@click.option("--diameter-px", type=float, default=None, help="Blob picker: particle diameter in original pixels.")
@click.option("--light", is_flag=True, help="Blob picker: particles are lighter than the background.")
@click.option("--top-n", type=int, default=None, help="Keep the N best picks per micrograph.")
@click.option("--exclude-carbon", is_flag=True, help="Drop picks on carbon/ice areas far from the ice component.")
@click.option("--labels", type=click.Path(exists=True), default=None,
              help="Optional labels: the summary suggests the best-F1 threshold against them.")
@click.option("--match-radius", type=float, default=None, help="With --labels: match radius (default: radius).")
def command(micrographs, model_path, out_dir, threshold, min_distance, pixel_size, fmt, box_size, exposures, device,
            workers, overwrite, max_picks, border, dense, views, precision, score_maps, method, diameter, diameter_px,
            light, top_n, exclude_carbon, labels, match_radius):
    """Pick particles on MICROGRAPHS (files, directories, globs, @list.txt) into OUTDIR/picks.csv."""
    import time

    from ..errors import InputError
    from ..pipeline import pick_to_dir

    paths = run_core(expand_inputs, micrographs)
    out = Path(out_dir)
    run_core(check_output_dir, out)  # one line for -o under a file or in an unwritable place, before any work
    if method == "cnn" and not model_path:
        raise click.UsageError("--model is required (or --method blob with --diameter/--diameter-px)")
    if method == "blob" and model_path:
        raise click.UsageError("--method blob takes no --model")
    if fmt == "cs" and not exposures:
        raise click.UsageError("--format cs needs --exposures EXPOSURES.cs (the micrographs' exposures)")
    config = PickConfig(threshold=threshold, min_distance_px=min_distance, max_picks=max_picks, border_px=border,
                        pixel_size=pixel_size, device=device, precision=precision,
                        stride="dense" if dense else "fast", views=int(views) if views else None, workers=workers,
                        score_map_dir=str(out / "score_maps") if score_maps else None, method=method,
                        diameter_A=diameter, diameter_px=diameter_px, dark_particles=not light,
                        exclude_carbon=exclude_carbon, top_n=top_n)
    label_table = None
    if labels:
        label_table = run_core(read_pick_table, labels)
    box = None
    if fmt == "box":
        box = run_core(_box_size, box_size, model_path, config)
    writer = _writer(fmt, out, box)
    settings = {"format": fmt, "box_size": box}
    t0 = time.perf_counter()
    result = run_core(pick_to_dir, paths, model_path, config, out, writer=writer, settings=settings,
                      overwrite=overwrite, progress=True, log=lambda m: click.echo(m, err=True))
    seconds = time.perf_counter() - t0
    if fmt == "cs":
        run_core(_write_cs, result.picks, out / "particles.cs", exposures)
    if fmt == "star":
        run_core(_write_star_list, paths, out)
    radius = match_radius
    if label_table is not None and radius is None:
        d = _diameter(result, config)
        if d is None:
            raise click.UsageError("--labels needs --match-radius (the model records no particle diameter)")
        radius = d / 2
    try:
        lines = _summary(result, config, seconds, label_table, radius)
    except InputError as err:
        lines = [f"(no threshold suggestion: {err})"]
    for line in lines:
        click.echo(line)
    coords = out / COORD_DIR
    click.echo(f"wrote {result.picks_path}" + (f" and {fmt} files in {coords}" if writer and coords.is_dir() else ""))
    failures = result.run.failures
    for path, reason in failures:
        click.echo(f"  failed: {reason}", err=True)
    if failures:
        click.echo(f"pupick: error: {len(failures)} micrograph(s) could not be picked", err=True)
        sys.exit(1)


def _diameter(result, config: PickConfig) -> float | None:
    """The particle diameter in the micrographs' pixels (after any rescaling), when known."""
    import numpy as np

    if result.run.diameters:
        return float(np.median(list(result.run.diameters.values())))
    if result.model is not None:
        return result.model.config.get("diameter_px")
    return config.diameter_px


def _box_size(box_size: int | None, model_path: str | None, config: PickConfig) -> int:
    from pupick.adapters.eman import box_size_for

    diameter = config.diameter_px
    if box_size is None and diameter is None and model_path:
        from ..modelfile import load_model

        diameter = load_model(model_path).config.get("diameter_px")
    return box_size_for(box_size, diameter)


def _write_cs(picks, target: Path, exposures: str) -> None:
    from pupick.adapters.registry import read_micrographs, write_picks

    # the adapter writes atomically, and salts the particle uids with the file's real name (same picks, same uids)
    write_picks(picks, target, fmt="cs", micrographs=read_micrographs(exposures))


def _write_star_list(paths: list[Path], out: Path) -> None:
    """OUTDIR/coordinates.star: RELION's list of micrographs and their coordinate files."""
    import pandas as pd

    from pupick.adapters.relion import write_coordinate_list

    from ..tables import stem

    entries = pd.DataFrame({
        "micrograph_path": [str(p) for p in paths],
        "coordinates_path": [str(out / COORD_DIR / f"{stem(p)}.star") for p in paths],
    })
    exists = [Path(c).exists() for c in entries["coordinates_path"]]
    with atomic_path(out / "coordinates.star") as tmp:
        write_coordinate_list(entries[exists], tmp)
