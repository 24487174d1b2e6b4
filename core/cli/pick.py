"""`pupick pick`: score micrographs with a model (or the blob picker) and write picks, resumably."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

import dataclasses

from ..client import Client, pick_via_server
from ..config import (DEFAULT_THRESHOLD, DEFAULT_VIEWS, GENERAL_BLOB_WEIGHT, METHODS, SCORE_PRECISIONS, VIEW_COUNTS,
                      PickConfig)
from ..errors import InputError, PupickError
from ..evaluate import default_match_radius, evaluate
from ..executors import LocalExecutor
from ..io import Protected, check_output, check_output_dir, expand_inputs
from ..outputs import RECORDS, PerMicrographFiles, nothing_new, pick_to_dir, unfinished
from ..pipeline import check_model, check_model_settings, micrograph_items
from ..prefetch import start_prefetch
from ._common import DEVICE, BadOption, read_pick_table, removed_options, run_core, usage

FORMATS = ("csv", "star", "box", "tsv", "cs")
COORD_DIR = "coordinates"  # per-micrograph files live in OUTDIR/coordinates/<stem>.<ext>
EXTENSIONS = {"csv": ".csv", "tsv": ".tsv", "star": ".star", "box": ".box"}


def _files(fmt: str, box_size: int | None):
    """Per-micrograph files for the chosen format in OUTDIR/coordinates/ (None for cs: one particles file)."""
    if fmt == "cs":
        return None
    from pupick.adapters.registry import write_picks

    adapter_fmt = "relion" if fmt == "star" else fmt
    ext = EXTENSIONS[fmt]
    return PerMicrographFiles(
        target=lambda item: Path(f"{COORD_DIR}/{item.micrograph}{ext}"),
        write=lambda df, target: write_picks(df, target, fmt=adapter_fmt, box_size=box_size),  # atomic
    )


def _summary(result, config: PickConfig, seconds: float, labels, match_radius) -> list[str]:
    import numpy as np

    run = result.run
    n_mics = len(result.counts)  # this run's: the cost of a rerun follows what is new
    lines = []
    if n_mics:
        counts = np.fromiter(result.counts.values(), dtype=int, count=n_mics)
        lines.append(f"{counts.sum()} picks on {n_mics} micrograph(s) at threshold {config.extract.threshold:g}: "
                     f"{counts.mean():.1f} per micrograph (median {np.median(counts):g}, range {counts.min()}-"
                     f"{counts.max()})" + (f"; {len(result.skipped)} done earlier" if result.skipped else ""))
    elif result.skipped:
        lines.append(f"nothing new to pick: {len(result.skipped)} micrograph(s) done earlier")
    if run.n_done:
        lines.append(f"{run.seconds_per_micrograph:.2f} s per micrograph ({run.n_done} picked in {seconds:.1f} s)")
    suggestion = _suggest_threshold(result, labels, match_radius, n_mics)
    if suggestion:
        lines.append(suggestion)
    return lines


def _suggest_threshold(result, labels, match_radius, n_mics: int) -> str | None:
    """A working threshold: best F1 against labels when given, else where picks meet the expected count."""
    import numpy as np

    if not n_mics:
        return None
    if labels is not None:
        picks = result.picks  # every requested micrograph's, from picks.csv: labels may name any of them
        if not len(picks):
            return None
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
    kth = result.scores.kth_largest(int(round(expected * n_mics))) if result.scores is not None else None
    if kth is None:
        return None
    return f"suggested threshold {kth:.2f}: keeps the model's expected {expected:g} particles per micrograph"


@click.command("pick")
@click.argument("micrographs", nargs=-1, required=True)
@click.option("--model", "model_path", default=None,
              help="Model file from `pupick train`, or `general` (the shipped general model: zero labels, needs "
                   "--diameter or --diameter-px). Not with --method blob.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
              help="Keep picks scoring at least this (a logit; low on purpose so recall is not cut).")
@click.option("--min-distance", type=float, default=None,
              help="Minimum distance between picks, original pixels (default: the particle radius).")
@click.option("--pixel-size", type=float, default=None,
              help="Å per original pixel of the micrographs (overrides the header; rescales if not the model's).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True,
              help="Per-micrograph files: one file per micrograph in OUTDIR/coordinates/ (star: RELION coordinate "
                   "files plus their list OUTDIR/coordinates.star); cs: one OUTDIR/particles.cs for cryoSPARC "
                   "(needs --exposures). OUTDIR/picks.csv is always written.")
@click.option("--box-size", type=int, default=None, help="Box size for .box (default: even, >= 1.5 x diameter).")
@click.option("--exposures", type=click.Path(dir_okay=False, exists=True), default=None,
              help="cryoSPARC exposures .cs that the micrographs come from (for --format cs).")
@click.option("--device", type=DEVICE, default="auto", show_default=True,
              help="Where the network runs (cuda:N picks a GPU).")
@click.option("--workers", type=int, default=1, show_default=True, help="Reader threads ahead of the scorer.")
@click.option("--overwrite", is_flag=True,
              help="Redo the micrographs given, even with other settings than before; OUTDIR's other micrographs "
                   "are kept (refused if they were picked with other settings).")
@click.option("--max-picks", type=int, default=None, help="Keep at most this many picks per micrograph.")
@click.option("--top-n", type=int, default=None, hidden=True, help="Alias of --max-picks.")
@click.option("--border", type=float, default=None,
              help="Drop picks closer than this to an edge (original pixels; default: the particle radius, or as close as "
                   "the training labels came when that is wider, at most a diameter; 0 keeps all).")
@click.option("--dense", is_flag=True, help="Score every pixel exactly (slower) instead of the native stride.")
@click.option("--views", type=click.Choice([str(v) for v in VIEW_COUNTS]), default=None,
              help="Average the score over this many rotated/mirrored copies of each micrograph (more: smoother, "
                   f"slower; default {DEFAULT_VIEWS}, or 1 with --dense).")
@click.option("--precision", type=click.Choice(SCORE_PRECISIONS), default="auto", show_default=True,
              help="Scoring arithmetic: auto (bf16 where the hardware has it), fp32, bf16, or int8 (CPU, native "
                   "stride: 8-bit activations scaled per micrograph).")
@click.option("--score-maps", is_flag=True, help="Also write each score map as OUTDIR/score_maps/<stem>.mrc.")
@click.option("--method", type=click.Choice(METHODS), default="cnn", show_default=True,
              help="cnn (a trained model) or blob (training-free band-pass picker; needs the diameter).")
@click.option("--diameter", type=float, default=None, help="Particle diameter in Å: the size the blob picker or the general model looks for.")
@click.option("--diameter-px", type=float, default=None, help="The same in original pixels.")
@click.option("--light", is_flag=True, help="Blob picker and blob prior: particles are lighter than the background.")
@click.option("--blob-weight", type=float, default=None,
              help=f"Add the blob picker's response at this weight to the CNN's score map (both in robust s.d. per "
                   f"micrograph; 0: off). Default {GENERAL_BLOB_WEIGHT:g} with the general model (zero labels), 0 "
                   "with a model trained on labels.")
@click.option("--exclude-carbon", is_flag=True, help="Drop picks on carbon/ice areas far from the ice component.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice (the GMM subsample).")
@click.option("--labels", type=click.Path(exists=True), default=None,
              help="Optional labels: the summary suggests the best-F1 threshold against them.")
@click.option("--match-radius", type=float, default=None, help="With --labels: match radius (default: radius).")
@click.option("--cluster", default=None, metavar="SPEC",
              help="Pick on a Dask cluster: local[:N], tcp://HOST:PORT, tls://HOST:PORT or jobqueue:CONFIG.yaml "
                   "(docs/scaling.md).")
@click.option("--cluster-workers", type=int, default=None, help="Workers to start (local and jobqueue clusters).")
@click.option("--server", default=None,
              help="Pick on a `pupick serve` at this URL (http[s]://HOST:PORT); same OUTDIR as a local run.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="With --server: the file holding its token (default: $PUPICK_TOKEN_FILE).")
@removed_options
def command(micrographs, model_path, out_dir, threshold, min_distance, pixel_size, fmt, box_size, exposures, device,
            workers, overwrite, max_picks, top_n, border, dense, views, precision, score_maps, method, diameter,
            diameter_px, light, blob_weight, exclude_carbon, seed, labels, match_radius, cluster, cluster_workers,
            server, token_file):
    """Pick particles on MICROGRAPHS (files, directories, globs, @list.txt) into OUTDIR/picks.csv."""
    import time

    out = Path(out_dir)
    if method == "cnn" and not model_path:
        raise BadOption("--model is required (or --method blob with --diameter/--diameter-px)")
    if method == "blob" and model_path:
        raise BadOption("--method blob takes no --model")
    if fmt == "cs" and not exposures:
        raise BadOption("--format cs needs --exposures EXPOSURES.cs (the micrographs' exposures)")
    if box_size is not None and box_size < 1:
        raise BadOption(f"--box-size must be a whole number >= 1 (got {box_size})")
    if match_radius is not None and not (match_radius > 0 and match_radius < float("inf")):
        raise BadOption(f"--match-radius must be a finite number > 0 (got {match_radius})")
    settings = {"method": method, "threshold": threshold, "min_distance": min_distance, "max_picks": max_picks,
                "border": border, "pixel_size": pixel_size, "device": device, "precision": precision,
                "stride": "dense" if dense else "native", "views": int(views) if views else None,
                "workers": workers, "diameter": diameter, "diameter_px": diameter_px, "dark_particles": not light,
                "blob_weight": blob_weight, "exclude_carbon": exclude_carbon, "seed": seed}
    alias = top_n is not None and max_picks is None
    if alias:
        settings["max_picks"] = top_n
    try:
        config = PickConfig.from_settings(settings)
    except InputError as err:  # the alias is named as the user gave it
        raise BadOption(str(err).replace("--max-picks", "--top-n") if alias else str(err)) from None
    if score_maps:
        config = dataclasses.replace(config, score_map_dir=str(out / "score_maps"))
    if server and cluster:
        raise BadOption("--server and --cluster do not go together: a server has its own executor (pupick serve --cluster)")
    executor = _executor(cluster, cluster_workers)  # checked before any work; started below
    prefetch = local = None
    paths = usage(expand_inputs, micrographs)
    run_core(check_output_dir, out)  # -o under a file or in an unwritable place: one line, before any work
    if not server:
        items = run_core(micrograph_items, paths)
        if not overwrite and fmt != "cs" and labels is None:
            extra = {"format": fmt, "box_size": box_size if fmt == "box" else None}
            # before the output rule's stat of every input: this writes nothing (no torch, no model read)
            if nothing_new(out, items, _files(fmt, None), model_path, config, extra):
                click.echo(f"nothing new: all {len(items)} micrograph(s) were picked earlier; {out / 'picks.csv'} "
                           "is unchanged")
                return
    inputs = Protected([*paths, *(p for p in (labels, exposures, model_path) if p and Path(p).exists())])
    for target, kind in ((out / "picks.csv", "text"), (out / "particles.cs", "npy")):  # never over an input
        run_core(check_output, target, kind, inputs, probe=False)
    if server:
        if score_maps:
            raise BadOption("--score-maps is not available with --server (the maps stay on the server)")
        client, model = run_core(_server_model, server, token_file, model_path, config)
    else:
        if executor is None:  # the first micrographs are read while torch and the model load
            # a resumed run: only what is left (the format's file names do not depend on the box size)
            prefetch = start_prefetch(unfinished(out, items, _files(fmt, None), overwrite), model_path, config)
            local = LocalExecutor(config.workers, prefetch)
        model = run_core(check_model, model_path, config, items)  # loaded once, here
        if method == "cnn" and (cluster is None or cluster.startswith("local")):  # this machine's device, fit for it
            from ..score import check_scoring_device

            usage(check_scoring_device, config.score)
    if labels and match_radius is None and not server and _known_diameter(model, config) is None:
        raise BadOption(NO_MATCH_RADIUS)  # before any work; with --server the answer tells (below)
    label_table = run_core(read_pick_table, labels) if labels else None
    box = run_core(_box_size, box_size, model, config) if fmt == "box" else None
    files = _files(fmt, box)
    t0 = time.perf_counter()
    if server:
        result = run_core(pick_via_server, client, paths, model_path, config, out, files=files,
                          settings={"format": fmt, "box_size": box}, overwrite=overwrite, progress=True,
                          log=lambda m: click.echo(m, err=True))
    else:
        if executor is not None:
            # a cluster that cannot start is one line, not a traceback; a refused job config is bad usage (exit 2)
            run_core(usage, executor.start)
        try:
            with executor or contextlib.nullcontext():
                result = run_core(pick_to_dir, paths, model, config, out, files=files, settings={"format": fmt,
                                  "box_size": box}, overwrite=overwrite, executor=executor or local, progress=True,
                                  log=lambda m: click.echo(m, err=True))
        finally:
            if prefetch is not None:
                prefetch.close()
    seconds = time.perf_counter() - t0
    if fmt == "cs":
        run_core(_write_cs, result, out / "particles.cs", exposures)
    if fmt == "star":
        run_core(_write_star_list, result, out)
    radius = match_radius
    if label_table is not None and radius is None:
        d = _diameter(result, config)
        if d is None:
            raise BadOption(NO_MATCH_RADIUS)
        radius = default_match_radius(d)
    try:
        lines = _summary(result, config, seconds, label_table, radius)
    except InputError as err:
        lines = [f"(no threshold suggestion: {err})"]
    for line in lines:
        click.echo(line)
    wrote = f"wrote {result.picks_path}"
    if files is not None and (out / COORD_DIR).is_dir():
        wrote += f" and {fmt} files in {out / COORD_DIR}"
    click.echo(wrote)
    failures = result.run.failures
    for path, reason in failures:
        click.echo(f"  failed: {reason}", err=True)
    if failures:
        click.echo(f"pupick: error: {len(failures)} micrograph(s) could not be picked", err=True)
        sys.exit(1)


def _executor(spec: str | None, workers: int | None):
    """The Dask executor for --cluster (None: this machine); a bad spec is bad usage."""
    if spec is None:
        if workers is not None:
            raise BadOption("--cluster-workers needs --cluster")
        return None
    from ..cluster import executor_from_spec  # Dask: here, since only --cluster needs it

    return usage(executor_from_spec, spec, workers, log=lambda m: click.echo(m, err=True))


def _server_model(server: str, token_file: str | None, model_path: str | None, config: PickConfig):
    """A client for --server and the model's registered config (the model file stays unread here: no torch)."""
    from types import SimpleNamespace

    client = Client.connect(server, token_file)
    if config.method != "cnn":
        return client, None
    info = client.model(client.resolve_model(model_path)) or {}
    meta = {"diameter_px": info.get("diameter_px"), "grid_diameter": info.get("grid_diameter")}
    if "grid_diameter" in info:  # before any output; an older server, which does not say, refuses at submission
        check_model_settings(meta, config)
    return client, SimpleNamespace(config=meta)


NO_MATCH_RADIUS = "--labels needs --match-radius (the model records no particle diameter)"


def _known_diameter(model, config: PickConfig) -> float | None:
    """Before picking: the particle diameter that --labels' default match radius would come from, when given."""
    pre = config.preprocess
    return pre.diameter_px or pre.diameter_A or (model.config.get("diameter_px") if model is not None else None)


def _diameter(result, config: PickConfig) -> float | None:
    """The particle diameter in the micrographs' pixels (after any rescaling), when known."""
    import numpy as np

    if result.run.diameters:
        return float(np.median(list(result.run.diameters.values())))
    if result.model is not None:
        return result.model.config.get("diameter_px")
    return config.preprocess.diameter_px


def _box_size(box_size: int | None, model, config: PickConfig) -> int:
    from pupick.adapters.eman import box_size_for

    diameter = config.preprocess.diameter_px
    if box_size is None and diameter is None and model is not None:
        diameter = model.config.get("diameter_px")
    return box_size_for(box_size, diameter)


def _write_cs(result, target: Path, exposures: str) -> None:
    """OUTDIR/particles.cs from picks.csv, read and written 20,000 rows at a time (no table of all picks)."""
    import pandas as pd

    from pupick.adapters.cryosparc import write_particles_stream
    from pupick.adapters.registry import read_micrographs

    # the particle uids are salted with the file's real name (same picks, same uids), as write_picks does
    with pd.read_csv(result.picks_path, dtype={"micrograph": str, "path": str}, keep_default_na=False,
                     na_values={"score": [""]}, chunksize=20_000) as pieces:
        done = set(result.micrographs)
        write_particles_stream(pieces, target, read_micrographs(exposures),
                               [str(i.path) for i in result.items if i.micrograph in done])


def _earlier_entries(out: Path, now: set[str]):
    """The entries of an existing OUTDIR/coordinates.star for micrographs this run did not name (kept by a run
    on some of them), while their records are there; read a line at a time."""
    from pupick.adapters.relion import read_coordinate_list_stream

    try:
        for micrograph, coords in read_coordinate_list_stream(out / "coordinates.star"):
            if coords not in now and (out / RECORDS / f"{Path(coords).stem}.csv").exists():
                yield micrograph, coords
    except (OSError, ValueError, PupickError):  # no list yet, or not one of ours: nothing to keep
        return


def _write_star_list(result, out: Path) -> None:
    """OUTDIR/coordinates.star: RELION's list of micrographs and their coordinate files, streamed (this run's in
    input order, then an earlier list's others)."""
    from pupick.adapters.relion import write_coordinate_list_stream

    done = set(result.micrographs)  # their records and coordinate files exist: no stat of each
    now = {str(out / COORD_DIR / f"{i.micrograph}.star") for i in result.items if i.micrograph in done}

    def entries():
        for i in result.items:
            if i.micrograph in done:
                yield str(i.path), str(out / COORD_DIR / f"{i.micrograph}.star")
        yield from _earlier_entries(out, now)  # the old list is read while the new one is written beside it

    write_coordinate_list_stream(entries(), out / "coordinates.star")  # atomic
