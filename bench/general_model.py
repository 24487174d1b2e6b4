"""The general model (issue 19): train the shipped one, or leave-one-set-out ones and score them with zero labels.

- `--ship`: train on every label of every shared set and write core/shipped/general.pt (`make general-model`).
  Deterministic: fixed seeds, one thread order (same machine, same thread count, same file).
- `--loso DIR`: for each shared set S, train on the other sets only and write DIR/S.pt; then pick S's test
  micrographs with zero labels (`--model general`-style: `modelfile.for_particle` with S's diameter) and report AP
  (bench/out/general_loso.json). These are the models `bench/seed_spread.py --init DIR` fine-tunes from. A model is
  never scored on a set whose labels it saw.

    python bench/general_model.py --ship [--data DIR] [--threads N]
    python bench/general_model.py --loso DIR [--epochs N] [--sets ...] [--data DIR]
"""
from __future__ import annotations

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


def labelled_sets(bsets):
    """Every micrograph and every label of each set."""
    from pupick.core.general import LabelledSet

    return [LabelledSet(b.name, list(b.micrographs), b.labels, b.diameter_px) for b in bsets]


def train_on(bsets, log=print):
    from pupick.core.config import TrainConfig
    from pupick.core.general import train_general

    return train_general(labelled_sets(bsets), TrainConfig(**GENERAL_TRAIN), log=log)


def zero_label(model_path: Path, bset) -> dict:
    """Pick the set's test micrographs with the model at the set's diameter; AP against all test labels."""
    from pupick.core.modelfile import for_particle, load_model
    from pupick.core.picking import pick

    model = for_particle(load_model(model_path), diameter_px=bset.diameter_px)
    t0 = time.perf_counter()
    run = pick(bset.test, model, bset.pick_config(), progress=False, log=lambda m: None)
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

    args = bench_args(__doc__.splitlines()[0], argv, extra)
    if args.epochs:
        GENERAL_TRAIN["epochs"] = args.epochs
    sets, skipped = discover_sets(args.data, args.sets)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", flush=True)
    if args.ship:
        result = train_on(sets)
        result.save(SHIPPED, history=False)
        print(f"wrote {SHIPPED} ({SHIPPED.stat().st_size / 1e6:.2f} MB) in {result.seconds:.0f} s", flush=True)
    if args.loso:
        args.loso.mkdir(parents=True, exist_ok=True)
        rows = []
        for held in sets:
            others = [b for b in discover_sets(args.data)[0] if b.name != held.name]
            target = args.loso / f"{held.name}.pt"
            if not target.is_file():
                result = train_on(others, log=lambda m: None)
                result.save(target, history=False)
                print(f"{held.name}: trained on {', '.join(b.name for b in others)} in {result.seconds:.0f} s",
                      flush=True)
            row = zero_label(target, held)
            row["trained_on"] = [b.name for b in others]
            rows.append(row)
            print(f"{held.name}: zero-label AP {row['ap']:.3f} (F1 {row['best_f1']:.3f})", flush=True)
        name = "general_loso" + ("_" + "_".join(args.sets) if args.sets else "")
        print(f"wrote {write_result(name, rows, schedule=GENERAL_TRAIN)}")


if __name__ == "__main__":
    main()
