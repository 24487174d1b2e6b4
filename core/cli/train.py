"""`pupick train`: learn a picker from micrographs and a few labeled particles (positive-unlabeled)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ..client import Client, train_via_server
from ..config import (ARCHITECTURES, LR_SCHEDULES, PRECISIONS, TILE_SAMPLINGS, WEIGHT_INITS, PreprocessConfig,
                      TrainConfig, check_frozen_layers)
from ..errors import InputError, PupickError
from ..io import check_output, expand_inputs, os_reason
from ._common import DEVICE, BadOption, UserError, read_pick_table, run_core, size_options, usage

OBJECTIVES = ["ge-binomial", "ge-kl", "nnpu", "pn"]  # core.objectives.OBJECTIVES


def read_labels(path: str) -> "pd.DataFrame":  # noqa: F821
    """A pick table: CSV/TSV with micrograph,x,y read here (out-of-image rows are train's to drop), else the adapters."""
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: labels file not found")
    if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".txt"):
        try:
            df = pd.read_csv(p, sep=None, engine="python")
        except Exception as err:  # pandas raises several types for malformed text
            raise InputError(f"{p}: unreadable label table ({str(err).splitlines()[0]})") from None
        missing = [c for c in ("micrograph", "x", "y") if c not in df.columns]
        if missing:
            raise InputError(f"{p}: missing column(s) {', '.join(missing)} (need micrograph, x, y)")
        return df
    return read_pick_table(str(p))


@click.command("train")
@click.argument("micrographs", nargs=-1, required=True)
@click.option("--labels", required=True, help="Labeled particles: any pick table (CSV/TSV micrograph,x,y, STAR, .box, ...).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write (.pt).")
@click.option("--expected-particles", type=float, default=None,
              help="Expected particles per micrograph (sets the class prior π). Default: twice the labeled mean.")
@size_options
@click.option("--label-radius", type=float, default=TrainConfig.label_radius, show_default=True,
              help="Positive radius, downsampled px.")
@click.option("--arch", type=click.Choice(ARCHITECTURES), default=TrainConfig.arch, show_default=True,
              help="Network (with --init: the init model's).")
@click.option("--units", type=int, default=TrainConfig.units, show_default=True, help="Network width.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=TrainConfig.objective, show_default=True)
@click.option("--slack", type=float, default=None, help="GE penalty weight (default 1 for ge-binomial, 10 for ge-kl).")
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True)
@click.option("--steps-per-epoch", type=int, default=TrainConfig.steps_per_epoch, show_default=True)
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True, help="Tiles per step.")
@click.option("--tile-size", type=int, default=TrainConfig.tile_size, show_default=True, help="Tile side, downsampled px.")
@click.option("--learning-rate", type=float, default=TrainConfig.learning_rate, show_default=True)
@click.option("--test-split", type=float, default=TrainConfig.test_split, show_default=True,
              help="Share of labeled micrographs held out to report validation AP per epoch and keep the best epoch "
                   "(0: none, keep the last epoch's averaged weights). Default 0, chosen by measurement (BENCHMARKS.md, "
                   "5 seeds on 3 sets): a validation split of 0.2 never raised the median AP. With 6 labeled "
                   "micrographs it cost up to 0.008 AP; with 2 it cost up to 0.013 and widened the seed-to-seed AP "
                   "range 3-4x, since the held-out micrograph is half of the training data. Use it to watch "
                   "validation AP when many micrographs are labeled.")
@click.option("--init", "init", default=None, metavar="MODEL|general",
              help="Fine-tune from a model file, or from the shipped general model (`general`: the particle is "
                   "brought to its size, so give --diameter or --diameter-px).")
@click.option("--ema-decay", type=float, default=TrainConfig.ema_decay, show_default=True,
              help="Save the exponential moving average of the weights over steps (0: the last step's weights).")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=TrainConfig.lr_schedule, show_default=True,
              help="Learning rate over the steps: constant, or cosine (from --learning-rate down to 0 by the last step).")
@click.option("--weight-init", type=click.Choice(WEIGHT_INITS), default=TrainConfig.weight_init, show_default=True,
              help="Starting weights (without --init): pca, the principal components of the training micrographs' "
                   "patches, layer by layer, the same for every seed; or random, drawn from --seed. With grid tiles, pca "
                   "held the AP of 5 seeds within 0.017 on every benchmark set and protocol (BENCHMARKS.md).")
@click.option("--frozen-layers", type=int, default=None,
              help="The first N feature layers keep their starting weights and get no gradient; 0 trains every "
                   "layer. Default: 1 when training starts from the PCA weights (the first layer is then the "
                   "principal components of the micrographs' patches: 0.86-0.88x the training time, the same AP "
                   "over 10 seeds on 6 benchmark cells, BENCHMARKS.md), else 0 (--init, --weight-init random).")
@click.option("--tile-sampling", type=click.Choice(TILE_SAMPLINGS), default=TrainConfig.tile_sampling,
              show_default=True,
              help="Where training tiles are cut: grid (shuffled passes of a jittered grid: every labeled particle "
                   "is seen equally often, and each batch of 8 holds each rotation and flip once) or random (uniform "
                   "positions and orientations).")
@click.option("--normalize", type=click.Choice(["gmm", "affine", "none"]), default="gmm", show_default=True)
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Preprocessed-micrograph cache (default: MODEL.cache/ next to the model).")
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--device", type=DEVICE, default=TrainConfig.device, show_default=True, help="Where the network trains.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=TrainConfig.precision, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--server", default=None,
              help="Train on a `pupick serve` at this URL; the new model is registered there and downloaded to -o.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="With --server: the file holding its token (default: $PUPICK_TOKEN_FILE).")
def command(micrographs, labels, output, expected_particles, scale, diameter, diameter_px, pixel_size, label_radius,
            arch, units, objective, slack, epochs, steps_per_epoch, batch_size, tile_size, learning_rate, test_split,
            init, ema_decay, lr_schedule, weight_init, frozen_layers, tile_sampling, normalize, cache_dir, seed, device,
            precision, quiet, server, token_file):
    """Train a picker on MICROGRAPHS (files, directories, globs, @list.txt) with the particles in --labels."""
    output = Path(output)
    try:  # options first: a bad one costs nothing and exits 2
        pre = PreprocessConfig(factor=scale, diameter_A=diameter, diameter_px=diameter_px, pixel_size=pixel_size,
                               normalize=normalize, seed=seed)
        config = TrainConfig(preprocess=pre, arch=arch, units=units, objective=objective, slack=slack,
                             expected_particles=expected_particles, label_radius=label_radius, epochs=epochs,
                             steps_per_epoch=steps_per_epoch, batch_size=batch_size, tile_size=tile_size,
                             learning_rate=learning_rate, test_split=test_split, seed=seed, device=device,
                             precision=precision, init=init, ema_decay=ema_decay, lr_schedule=lr_schedule,
                             weight_init=weight_init, frozen_layers=frozen_layers, tile_sampling=tile_sampling,
                             cache_dir=cache_dir or str(output.with_name(output.stem + ".cache")))
    except InputError as err:
        raise BadOption(str(err)) from None
    if init and frozen_layers is not None:  # the init model's network decides how many layers there are
        arch = _init_arch(init)
        if arch is not None:
            usage(check_frozen_layers, dataclasses.replace(config, arch=arch))
    paths = usage(expand_inputs, micrographs)
    if server:  # decided before the training stack is imported: server mode never loads torch here
        if init:
            raise click.UsageError("--init is not available with --server (train from scratch there)")
        run_core(check_output, output, "torch", [*paths, labels])
        table = run_core(read_labels, labels)
        client = run_core(Client.connect, server, token_file)
        job = run_core(train_via_server, client, paths, table, config, output, progress=not quiet, log=click.echo)
        ap = "" if job.get("ap") is None else f", validation AP {job['ap']:.3f} (epoch {job.get('epoch')})"
        click.echo(f"model -> {output} (registered on the server as {job['model']}{ap})")
        return
    from ..train import output_files, train  # torch: here, so that --server and `pupick --help` never load it
    from ..score import choose_device

    usage(choose_device, device)  # a device this machine lacks: exit 2 before any work

    for target, kind in output_files(output):  # never over an input, nor over another kind of file
        run_core(check_output, target, kind, [*paths, labels, *([init] if init else [])])
    table = run_core(read_labels, labels)
    result = run_core(train, paths, table, config, progress=not quiet, log=click.echo)
    try:
        run_core(result.save, output)
    except OSError as err:
        raise UserError(f"{output}: cannot write the model ({os_reason(err)})") from None
    best = "" if result.best_ap != result.best_ap else f", validation AP {result.best_ap:.3f} (epoch {result.best_epoch})"
    click.echo(f"model -> {output} (π = {result.pi:.4g}{best}); history -> {output.with_suffix('.train.tsv')}")


def _init_arch(init: str) -> str | None:
    """The architecture --init's model file names (read without torch), or None where it cannot be read here
    (loading it then says why)."""
    from ..modelmeta import read_config, resolve_model

    try:
        meta = read_config(resolve_model(init))
    except PupickError:
        return None
    arch = meta.get("arch") if meta else None
    return arch if arch in ARCHITECTURES else None
