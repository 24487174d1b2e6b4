"""`pupick demo`: the main job end to end on the bundled micrographs, in a few minutes on a laptop CPU."""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import pandas as pd

from ..config import PickConfig, PreprocessConfig, TrainConfig
from ..errors import InputError
from ..evaluate import evaluate
from ..io import atomic_path, read_micrograph
from ..outputs import pick_to_dir
from ..overlay import plot_overlay, plot_pr
from ..tables import stem, validate_picks
from ._common import DEVICE, run_core
from .pick import _files

DIAMETER_PX = 56  # EMPIAR-10028 ribosomes at 5.36 Å/px (the bundled micrographs' headers leave it unset)
LABEL_FRACTION = 0.3
TRAIN_FRACTION = 0.6  # the first floor(0.6 n) micrographs by name train; the rest are held out
# a short schedule that fits the 3-minute budget on two CPU cores; `pupick train` defaults run longer
DEMO_TRAIN = dict(units=32, epochs=6, steps_per_epoch=20, batch_size=4, tile_size=160, learning_rate=1e-3,
                  test_split=0.0)


def bundled_data() -> Path:
    """data/demo next to the source tree (an editable or source install)."""
    return Path(__file__).resolve().parents[2] / "data" / "demo"


def run_demo(data: Path, out: Path, seed: int, device: str, log) -> dict:
    """Train on ~30% of the labels of most micrographs, pick the held-out ones, evaluate, write pictures."""
    # torch: here, not at the top, since `pupick --help` imports every command's module
    from ..modelfile import load_model
    from ..train import train

    mics = sorted((data / "micrographs").glob("*.mrc"))
    labels_path = data / "particles.csv"
    if len(mics) < 2 or not labels_path.is_file():
        raise InputError(f"{data}: expected micrographs/*.mrc (at least 2) and particles.csv")
    labels = validate_picks(pd.read_csv(labels_path), str(labels_path))
    n_train = max(1, int(np.floor(TRAIN_FRACTION * len(mics))))
    train_mics, test_mics = mics[:n_train], mics[n_train:]
    train_names = {stem(p) for p in train_mics}
    pool = labels[labels["micrograph"].isin(train_names)].reset_index(drop=True)
    keep = np.sort(np.random.default_rng(seed).choice(len(pool), round(LABEL_FRACTION * len(pool)), replace=False))
    given = pool.iloc[keep].reset_index(drop=True)
    expected = len(pool) / len(train_mics)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "train_labels.csv") as tmp:
        given.to_csv(tmp, index=False)
    log(f"training on {len(train_mics)} micrograph(s) with {len(given)} of their {len(pool)} labels "
        f"({LABEL_FRACTION:.0%}); holding out {', '.join(stem(p) for p in test_mics)}")

    t0 = time.perf_counter()
    config = TrainConfig(preprocess=PreprocessConfig(diameter_px=DIAMETER_PX), expected_particles=expected,
                         seed=seed, device=device, cache_dir=str(out / "cache"), **DEMO_TRAIN)
    model_path = out / "model.pt"
    train(train_mics, given, config, progress=True, log=log).save(model_path)
    t_train = time.perf_counter() - t0

    t1 = time.perf_counter()
    picks_dir = out / "picks"
    config = PickConfig.from_settings({"device": device, "seed": seed})
    result = pick_to_dir(test_mics, load_model(model_path), config, picks_dir, files=_files("star", None),
                         settings={"format": "star"}, overwrite=True, progress=True, log=log)
    if result.run.failures:
        raise InputError(f"could not pick {result.run.failures[0][0]}: {result.run.failures[0][1]}")
    t_pick = time.perf_counter() - t1

    held = [stem(p) for p in test_mics]
    ev = evaluate(result.picks, labels, DIAMETER_PX / 2, micrographs=held)
    with atomic_path(out / "pr.tsv") as tmp:
        ev.curve.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    plot_pr(ev, out / "pr.png", title=f"held-out {', '.join(held)}: AP {ev.ap:.3f}")
    first = test_mics[0]
    shown = result.picks[(result.picks["micrograph"] == stem(first)) & (result.picks["score"] >= ev.threshold)]
    plot_overlay(read_micrograph(first).image, shown, out / f"overlay_{stem(first)}.png", DIAMETER_PX / 2,
                 labels=labels[labels["micrograph"] == stem(first)],
                 title=f"{stem(first)}: {len(shown)} picks at threshold {ev.threshold:.2f} (circles), labels (+)")
    return {"ap": ev.ap, "best_f1": ev.best_f1, "precision": ev.precision, "recall": ev.recall,
            "threshold": ev.threshold, "n_labels": ev.n_labels, "n_picks": ev.n_picks,
            "train_seconds": t_train, "pick_seconds": t_pick, "overlay": out / f"overlay_{stem(first)}.png",
            "picks": result.picks_path, "held_out": held, "model": model_path}


@click.command("demo")
@click.option("-o", "--output", "out_dir", default="demo_output", show_default=True,
              type=click.Path(file_okay=False), help="Where to write the model, picks and pictures.")
@click.option("--data", type=click.Path(file_okay=False, exists=True), default=None,
              help="A directory with micrographs/*.mrc and particles.csv (default: the bundled data/demo).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Where the network runs.")
def command(out_dir, data, seed, device):
    """Train on 30% of the labels of the bundled micrographs, pick held-out ones and report AP and F1."""
    data_dir = Path(data) if data else bundled_data()
    if not data_dir.is_dir():
        raise click.UsageError(f"bundled demo data not found at {data_dir}; give --data DIR")
    out = Path(out_dir)
    t0 = time.perf_counter()
    r = run_core(run_demo, data_dir, out, seed, device, lambda m: click.echo(m, err=True))
    total = time.perf_counter() - t0
    click.echo("")
    click.echo(f"held-out micrograph(s) {', '.join(r['held_out'])}: {r['n_labels']} labels, {r['n_picks']} picks")
    click.echo(f"AP {r['ap']:.3f}; best F1 {r['best_f1']:.3f} (precision {r['precision']:.3f}, recall "
               f"{r['recall']:.3f}) at threshold {r['threshold']:.2f}")
    click.echo(f"train {r['train_seconds']:.0f} s, pick {r['pick_seconds']:.1f} s, total {total:.0f} s")
    click.echo(f"wrote {r['model']}, {r['picks']} (+ RELION STAR files in {out / 'picks' / 'coordinates'}), "
               f"{out / 'pr.png'}, {r['overlay']}")
