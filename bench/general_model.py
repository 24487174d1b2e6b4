"""The general model (issue 19): train the shipped one, or leave-one-set-out ones and score them with zero labels.

- `--ship`: train on every label of every shared set and write core/shipped/general.pt (`make general-model`).
  Deterministic: fixed seeds, one thread order (same machine, same thread count, same file).
- `--loso DIR`: for each shared set S, train on the other sets only and write DIR/S.pt; then pick S's test
  micrographs with zero labels (`--model general`-style: `modelfile.for_particle` with S's diameter) and report AP
  (bench/out/general_loso.json). These are the models `bench/seed_spread.py --init DIR` fine-tunes from. A model is
  never scored on a set whose labels it saw.

- `--sim N` (issue 30): also train on the first N simulated sets (bench/simulate.py, built under bench/out/sim if
  missing), which draw `--sim-share` of the steps (the real sets the rest); `--no-real`: simulated sets only (one
  model, DIR/simulated.pt, scored on every set). `--lowcontrast` also scores each held-out set's low-contrast copy
  (bench/hard_case.py) with the same model; `--scales` replaces the scale jitter; `--no-augment` leaves out the
  contrast/noise augmentation; `--tag` names the result file (bench/out/general_loso_<tag>.json).

    python bench/general_model.py --ship [--data DIR] [--threads N] [--sim N --sim-share S]
    python bench/general_model.py --loso DIR [--epochs N] [--sets ...] [--data DIR] [--sim N ...] [--lowcontrast]
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import REPO, bench_args, discover_sets, evaluate_test, write_result  # noqa: E402

# The general model's schedule: resnet8-u32, 600 steps of 8 tiles, Adam 1e-3, EMA 0.99 over steps (the shipped model and
# the leave-one-set-out models in BENCHMARKS.md; about 15 minutes on 2 loaded CPU cores).
GENERAL_TRAIN = dict(arch="resnet8", units=32, epochs=12, steps_per_epoch=50, batch_size=8, tile_size=128,
                     learning_rate=1e-3, ema_decay=0.99, seed=0)
SHIPPED = REPO / "core" / "shipped" / "general.pt"
# Simulated sets (bench/simulate.py) trained alongside the real ones, and their share of the steps.
SIM_SETS = 0
SIM_SHARE = 0.5
SIM_MICROGRAPHS = 4


def labelled_sets(bsets, sim_bsets=(), sim_share: float = 0.0):
    """Every micrograph and every label of each set; simulated sets share `sim_share` of the steps.

    A simulated set knows every particle; it keeps a seeded LABEL_SHARE of them as labels, so that the PU objective's
    unlabeled share of particles is really there, as on the real sets."""
    from pupick.core.general import LABEL_SHARE, LabelledSet

    real_w = (1 - sim_share) / len(bsets) if bsets and sim_bsets else 1.0
    sim_w = sim_share / len(sim_bsets) if bsets and sim_bsets else 1.0
    return ([LabelledSet(b.name, list(b.micrographs), b.labels, b.diameter_px, weight=real_w) for b in bsets]
            + [LabelledSet(b.name, list(b.micrographs), b.labels.sample(frac=LABEL_SHARE, random_state=0).sort_index(),
                           b.diameter_px, weight=sim_w) for b in sim_bsets])


def simulated_sets(n: int, micrographs: int = SIM_MICROGRAPHS):
    """The first n simulated sets (bench/simulate.py; built if missing, deterministic)."""
    if n <= 0:
        return []
    from simulate import DEFAULT_OUT, ensure

    ensure(DEFAULT_OUT, n, micrographs)
    sets, skipped = discover_sets(DEFAULT_OUT, [f"sim{i:02d}" for i in range(n)])
    if skipped:
        raise SystemExit(f"simulated sets unusable: {skipped}")
    return sets


def train_on(bsets, sim_bsets=(), sim_share: float = 0.0, scales=None, log=print, augment: bool = True):
    from pupick.core.config import TrainConfig
    from pupick.core.general import SCALES, train_general

    return train_general(labelled_sets(bsets, sim_bsets, sim_share), TrainConfig(**GENERAL_TRAIN),
                         scales=tuple(scales) if scales else SCALES, log=log, augment=augment)


def zero_label(model_path: Path, bset, score_offset: float | None = None, blob_weight: float | None = None) -> dict:
    """Pick the set's test micrographs with the model at the set's diameter; AP against all test labels.

    `score_offset` replaces the model's own (the logit lift that keeps unseen particles above picking's threshold)."""
    from pupick.core.modelfile import for_particle, load_model
    from pupick.core.picking import pick

    loaded = load_model(model_path)
    if score_offset is not None:
        loaded.config["score_offset"] = float(score_offset)
    model = for_particle(loaded, diameter_px=bset.diameter_px)
    t0 = time.perf_counter()
    cfg = bset.pick_config(**({} if blob_weight is None else {"blob_weight": blob_weight}))
    run = pick(bset.test, model, cfg, progress=False, log=lambda m: None)
    ev = evaluate_test(run.picks, bset)
    ev.pop("curve", None)
    return {"set": bset.name, "method": "general (zero labels, leave-one-set-out)",
            "pick_seconds_per_micrograph": (time.perf_counter() - t0) / max(1, len(bset.test)), **ev}


def main(argv: list[str] | None = None) -> None:
    def extra(ap):
        ap.add_argument("--ship", action="store_true", help="train on all sets; write core/shipped/general.pt")
        ap.add_argument("--loso", type=Path, default=None, help="folder for the leave-one-set-out models")
        ap.add_argument("--epochs", type=int, default=None,
                        help=f"epochs of {GENERAL_TRAIN['steps_per_epoch']} steps (default {GENERAL_TRAIN['epochs']})")
        ap.add_argument("--sim", type=int, default=SIM_SETS, help=f"simulated sets (default {SIM_SETS})")
        ap.add_argument("--sim-share", type=float, default=SIM_SHARE,
                        help=f"share of the steps on simulated sets when real ones are used too (default {SIM_SHARE})")
        ap.add_argument("--no-real", action="store_true", help="simulated sets only")
        ap.add_argument("--scales", type=float, nargs="+", default=None, help="scale jitter (default core.general)")
        ap.add_argument("--no-augment", action="store_true",
                        help="leave out the contrast/noise augmentation (to measure what it adds)")
        ap.add_argument("--lowcontrast", action="store_true", help="also score the held-out set's low-contrast copy")
        ap.add_argument("--tag", default="", help="suffix of the result file name")
        ap.add_argument("--seed", type=int, default=None, help=f"training seed (default {GENERAL_TRAIN['seed']})")
        ap.add_argument("--blob-weight", type=float, default=None,
                        help="score the held-out sets with this blob prior weight (default: picking's own)")
        ap.add_argument("--score-offset", type=float, default=None,
                        help="score the held-out sets with this logit offset instead of the model's own")

    args = bench_args(__doc__.splitlines()[0], argv, extra)
    import torch

    torch.set_num_threads(args.threads)
    if args.epochs:
        GENERAL_TRAIN["epochs"] = args.epochs
    if args.seed is not None:
        GENERAL_TRAIN["seed"] = args.seed
    sets, skipped = discover_sets(args.data, args.sets)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", flush=True)
    sim = simulated_sets(args.sim)
    from simulate import VERSION

    recipe = {"schedule": GENERAL_TRAIN, "sim_sets": len(sim), "sim_version": VERSION if sim else None,
              "sim_share": args.sim_share, "real": not args.no_real,
              "scales": args.scales, "augment": not args.no_augment, "threads": args.threads}
    if args.ship:
        result = train_on([] if args.no_real else sets, sim, args.sim_share, args.scales, augment=not args.no_augment)
        result.save(SHIPPED, history=False)
        print(f"wrote {SHIPPED} ({SHIPPED.stat().st_size / 1e6:.2f} MB) in {result.seconds:.0f} s", flush=True)
    if args.loso:
        args.loso.mkdir(parents=True, exist_ok=True)
        low = {}
        if args.lowcontrast:
            from hard_case import SUFFIX, ensure

            names = [b.name for b in sets]
            low_sets, _ = discover_sets(ensure(names=names, data=args.data), names)
            low = {b.name.removesuffix(SUFFIX): b for b in low_sets}
        rows = []
        for held in sets:
            others = [] if args.no_real else [b for b in discover_sets(args.data)[0] if b.name != held.name]
            target = args.loso / ("simulated.pt" if args.no_real else f"{held.name}.pt")
            if not target.is_file():
                t0 = time.time()
                load0 = os.getloadavg()[0]
                result = train_on(others, sim, args.sim_share, args.scales, log=lambda m: None,
                                  augment=not args.no_augment)
                result.save(target, history=False)
                (target.with_suffix(".json")).write_text(json.dumps(
                    {"train_seconds": result.seconds, "load_start": load0, "load_end": os.getloadavg()[0],
                     "wall": time.time() - t0}))
                print(f"{held.name}: trained on {', '.join(b.name for b in others) or '-'} + {len(sim)} simulated "
                      f"in {result.seconds:.0f} s", flush=True)
            info = json.loads(target.with_suffix(".json").read_text()) if target.with_suffix(".json").is_file() else {}
            for bset in [held] + ([low[held.name]] if held.name in low else []):
                row = zero_label(target, bset, args.score_offset, args.blob_weight)
                row.update(trained_on=[b.name for b in others], sim_sets=len(sim), score_offset=args.score_offset,
                           blob_weight=args.blob_weight,
                           **info)
                rows.append(row)
                print(f"{bset.name}: zero-label AP {row['ap']:.3f} (F1 {row['best_f1']:.3f})", flush=True)
        name = "general_loso" + (f"_{args.tag}" if args.tag else "") + (
            "_" + "_".join(args.sets) if args.sets and not args.tag else "")
        print(f"wrote {write_result(name, rows, recipe=recipe)}")


if __name__ == "__main__":
    main()
