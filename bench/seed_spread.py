"""Seed-to-seed spread of training (issue 19): AP over 5 training seeds per set, under two label protocols.

Protocols (micrographs sorted by name, the first floor(0.6 n) are the train pool, the rest test; AP on the test
micrographs against all their labels, match radius half a diameter, picked with `pupick pick`'s defaults):
- standard: all train micrographs, 30% of their pooled labels (seed 0) -- the issue 3 protocol;
- hard: the first two train micrographs only, 10% of their pooled labels (seed 0).
Expected particles = mean labels per (used) train micrograph. Only the training seed changes between runs; the label
subsample stays the same. Each run is a subprocess. `--init DIR` fine-tunes from DIR/<set>.pt (leave-one-set-out
general models: a model never trained on the set it is scored on). Reports median and min-max per set and protocol.

    python bench/seed_spread.py [--quick] [--sets empiar10028 ...] [--seeds 0 1 2 3 4] [--protocols standard hard]
        [--set-config '{"test_split": 0.2}'] [--init DIR] [--tag NAME] [--vary both|init|draws]

`--vary init` / `--vary draws`: the seed sets only the initial weights / only the training draws (the other from
seed 0), to see where the spread comes from. `--blob-weights W...`: also pick each trained model with the blob prior
at each weight (core.blob.add_blob_prior); each run records those APs as `ap_blob`.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import (bench_args, discover_sets, evaluate_test, expected_particles, load_set,  # noqa: E402
                    register_plan, run_measured, subsample_labels, write_result)

PROTOCOLS = {"standard": (None, 0.3), "hard": (2, 0.1)}  # (train micrographs used, label fraction)


def protocol_set(bset, protocol: str):
    """The set with the protocol's train micrographs and label subsample (test micrographs unchanged)."""
    n_train, fraction = PROTOCOLS[protocol]
    train = bset.train if n_train is None else bset.train[:n_train]
    stems = bset.stems(train)
    return dataclasses.replace(bset, train=train, train_labels=subsample_labels(bset.labels, stems, fraction, 0),
                               expected_particles=expected_particles(bset.labels, stems))


def train_model(micrographs, labels, config, target: Path):
    """Train and write the model file, through either train API (output path argument, or TrainResult.save)."""
    from pupick.core.train import train

    if "output" in inspect.signature(train).parameters:  # the API before issue 13
        result = train(micrographs, labels, config, target, progress=False, log=lambda m: None)
    else:
        result = train(micrographs, labels, config, progress=False, log=lambda m: None)
        result.save(target)
    return result


def run_one(set_dir: str, protocol: str, seed: int, overrides: dict, init: str, threads: int,
            vary: str = "both", blob_weights: str = "") -> dict:
    """Train one (set, protocol, seed), pick the test micrographs, evaluate; a plain dict. `vary`: what the seed
    sets: both (the initial weights and the training draws, as `pupick train --seed`), init (the initial weights
    only; draws from seed 0) or draws (the tiles and unlabeled samples only; initial weights from seed 0)."""
    import torch

    torch.set_num_threads(threads)
    init_seed, seed = {"both": (seed, seed), "init": (seed, 0), "draws": (0, seed)}[vary]
    if init_seed != seed:  # a diagnostic of where the spread comes from: the weights are built from init_seed
        import pupick.core.train as train_module

        built = train_module.build

        def build_from_init_seed(cfg):
            torch.manual_seed(init_seed)
            return built(cfg)

        train_module.build = build_from_init_seed
    from pupick.core.modelfile import load_model
    from pupick.core.picking import pick

    if "plan" in overrides:  # a candidate network, not in the shipped registry
        overrides = dict(overrides)
        register_plan(overrides["arch"], overrides.pop("plan"))

    bset = protocol_set(load_set(set_dir), protocol)
    if init:
        overrides = {**overrides, "init": str(Path(init) / f"{bset.name}.pt")}
    with tempfile.TemporaryDirectory() as tmp:
        pre = {"factor": None} if "init" in overrides else None  # the init model's particle size sets the factor
        cfg = bset.train_config(preprocess=pre, seed=seed, **{"test_split": 0.0, **overrides})
        t0, c0 = time.perf_counter(), time.process_time()
        result = train_model(bset.train, bset.train_labels, cfg, Path(tmp) / "model.pt")
        train_seconds = time.perf_counter() - t0
        train_cpu_seconds = time.process_time() - c0
        model = load_model(Path(tmp) / "model.pt")
        run = pick(bset.test, model, bset.pick_config(), progress=False, log=lambda m: None)
        if run.failures:
            raise RuntimeError(f"picking failed: {run.failures}")
        ap_blob = {}  # the same model picked again with a blob prior of each weight (--blob-weights)
        for w in filter(None, blob_weights.split(",")):
            again = pick(bset.test, model, bset.pick_config(blob_weight=float(w)), progress=False, log=lambda m: None)
            ap_blob[w] = evaluate_test(again.picks, bset)["ap"]
    ev = evaluate_test(run.picks, bset)
    ev.pop("curve", None)
    if ap_blob:
        ev["ap_blob"] = ap_blob
    return {"set": bset.name, "protocol": protocol, "seed": seed, "init_seed": init_seed,
            "train_seconds": train_seconds,
            "train_cpu_seconds": train_cpu_seconds, "load_average": os.getloadavg()[0],
            "n_train_micrographs": len(bset.train), "n_train_labels": len(bset.train_labels),
            "best_epoch": result.best_epoch, "val_ap": result.best_ap, **ev}


def summary_rows(runs: list[dict]) -> list[dict]:
    """Median, min, max and range of AP (and median train time) per (set, protocol)."""
    rows = []
    for key in sorted({(r["set"], r["protocol"]) for r in runs}):
        sel = [r for r in runs if (r["set"], r["protocol"]) == key]
        aps = [r["ap"] for r in sel]
        rows.append({"set": key[0], "protocol": key[1], "n": len(sel), "ap_median": statistics.median(aps),
                     "ap_min": min(aps), "ap_max": max(aps), "ap_range": max(aps) - min(aps),
                     "train_seconds_median": statistics.median(r["train_seconds"] for r in sel),
                     "train_cpu_seconds_median": statistics.median(r["train_cpu_seconds"] for r in sel),
                     "load_average_median": statistics.median(r["load_average"] for r in sel),
                     "ap_runs": aps})
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--one"]:  # child: --one SET_DIR PROTOCOL SEED OVERRIDES_JSON INIT THREADS
        out = run_one(argv[1], argv[2], int(argv[3]), json.loads(argv[4]), argv[5], int(argv[6]), *argv[7:9])
        print("RESULT " + json.dumps(out, default=float))
        return

    def extra(ap):
        ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0-4; quick: 0 1)")
        ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
        ap.add_argument("--set-config", default="{}",
                       help='JSON of TrainConfig overrides; with "plan" (a layer plan as in core.models.PLANS), "arch" '
                            'names that candidate network')
        ap.add_argument("--init", default="", help="folder of leave-one-set-out models <set>.pt to fine-tune from")
        ap.add_argument("--tag", default="", help="suffix of the output name (bench/out/seed_spread[_TAG].json)")
        ap.add_argument("--vary", default="both", choices=["both", "init", "draws"],
                        help="what the seed sets: both (default), the initial weights only, or the training draws only")
        ap.add_argument("--blob-weights", type=float, nargs="+", default=[],
                        help="also pick each model with a blob prior of these weights (runs' ap_blob)")

    args = bench_args(__doc__.splitlines()[0], argv, extra)
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2, 3, 4])
    overrides = json.loads(args.set_config)
    sets, skipped = discover_sets(args.data, args.sets)
    runs = []
    for bset in sets:
        for protocol in args.protocols:
            for seed in seeds:
                m = run_measured([sys.executable, __file__, "--one", str(bset.dir), protocol, str(seed),
                                  json.dumps(overrides), args.init, str(args.threads), args.vary,
                                  ",".join(f"{w:g}" for w in args.blob_weights)])
                line = [ln for ln in m.stdout.splitlines() if ln.startswith("RESULT ")]
                if m.returncode or not line:
                    print(f"{bset.name} {protocol} seed {seed}: FAILED\n{m.stderr[-2000:]}", flush=True)
                    continue
                r = json.loads(line[0][7:])
                r["peak_rss_mb"] = m.peak_rss_mb
                runs.append(r)
                print(f"{bset.name} {protocol} seed {seed}: AP {r['ap']:.3f} train {r['train_seconds']:.1f} s "
                      f"(cpu {r['train_cpu_seconds']:.1f} s, load {r['load_average']:.1f})", flush=True)
    rows = summary_rows(runs)
    for row in rows:
        print(f"== {row['set']} {row['protocol']}: median AP {row['ap_median']:.3f}, range {row['ap_min']:.3f}-"
              f"{row['ap_max']:.3f} ({row['ap_range']:.3f}), train {row['train_seconds_median']:.1f} s", flush=True)
    name = "seed_spread" + (f"_{args.tag}" if args.tag else "")
    path = write_result(name, rows, runs=runs, seeds=seeds, overrides=overrides, init=args.init or None, vary=args.vary,
                        blob_weights=args.blob_weights,
                        skipped=[{"set": n, "reason": r} for n, r in skipped])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
