"""Training quality protocol (issue 3) on every shared set: AP / best F1 on the test micrographs, train time, peak RSS.

Per set: micrographs sorted by name, first floor(0.6 n) train, rest test; 30% of the pooled train labels (seed 0);
expected particles = mean labels per train micrograph; no validation split (`--test-split 0`: with 30% labels and six
training micrographs, a sixth of them is worth more than epoch selection on it: +0.01 to +0.02 AP on every shared
set), default TrainConfig otherwise. Each (set, seed) runs in its own
subprocess (clean peak RSS); train seconds = the `train()` call, preprocessing included (fresh cache each run).
Picking is `pupick pick` with its defaults (core.picking.pick: 4 views, the particle radius as suppression distance,
the border the model learned from its training labels); AP against all test labels with match radius = half the
diameter. Reports the median over seeds.

    python bench/train_quality.py [--quick] [--sets empiar10028 ...] [--seeds 0 1 2] [--set-config '{"epochs": 6}']
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_args, discover_sets, evaluate_test, load_set, quality_row, run_measured, write_result  # noqa: E402

TOPAZ = {  # better of two Topaz 0.3.20 runs under this protocol, and its train wall time (issue 3)
    "empiar10028": (0.815, 165.0),
    "empiar10017": (0.709, 188.0),
    "empiar10059": (0.724, 139.0),
}


def run_one(set_dir: str, seed: int, overrides: dict, threads: int) -> dict:
    """Train on one set with one seed, pick the test micrographs, evaluate; returns a plain dict."""
    import pandas as pd
    import torch

    torch.set_num_threads(threads)
    from pupick.core.modelfile import load_model
    from pupick.core.picking import pick
    from pupick.core.train import train

    bset = load_set(set_dir)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bset.train_config(seed=seed, **{"test_split": 0.0, **overrides})
        t0, c0 = time.perf_counter(), time.process_time()
        result = train(bset.train, bset.train_labels, cfg, log=lambda m: None)
        train_seconds = time.perf_counter() - t0
        train_cpu_seconds = time.process_time() - c0  # all threads; on a busy shared machine wall time inflates
        model = load_model(result.save(Path(tmp) / "model.pt"))
        t1 = time.perf_counter()
        run = pick(bset.test, model, bset.pick_config(), progress=False, log=lambda m: None)  # `pupick pick` defaults
        if run.failures:
            raise RuntimeError(f"picking failed: {run.failures}")
        pick_seconds = (time.perf_counter() - t1) / max(1, len(bset.test))
        frames = [run.picks]
        # ablation: what the picking defaults add (one view, border = the particle radius)
        radius = model.config["diameter_px"] / 2
        plain = pick(bset.test, model, bset.pick_config(views=1, border=radius), progress=False, log=lambda m: None)
        ap_plain = evaluate_test(plain.picks, bset)["ap"]
        ev = evaluate_test(pd.concat(frames, ignore_index=True), bset)
    ev.pop("curve", None)
    return {"set": bset.name, "seed": seed, "train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds,
            "load_average": os.getloadavg()[0], "pick_seconds_per_micrograph": pick_seconds,
            "best_epoch": result.best_epoch, "val_ap": result.best_ap, "pi": result.pi,
            "label_edge_margin": model.config.get("label_edge_margin"), "ap_one_view_radius_border": ap_plain, **ev}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--one"]:  # child: --one SET_DIR SEED OVERRIDES_JSON THREADS
        print("RESULT " + json.dumps(run_one(argv[1], int(argv[2]), json.loads(argv[3]), int(argv[4]))))
        return
    def extra(ap):
        ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; --quick: 0)")
        ap.add_argument("--set-config", default="{}", help="JSON of TrainConfig overrides, for tuning")

    args = bench_args(__doc__.splitlines()[0], argv, extra)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    overrides = json.loads(args.set_config)
    sets, skipped = discover_sets(args.data, args.sets)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}")
    rows, runs = [], []
    for bset in sets:
        per_seed = []
        for seed in seeds:
            m = run_measured([sys.executable, __file__, "--one", str(bset.dir), str(seed), json.dumps(overrides),
                              str(args.threads)])
            line = [ln for ln in m.stdout.splitlines() if ln.startswith("RESULT ")]
            if m.returncode or not line:
                print(f"{bset.name} seed {seed}: FAILED\n{m.stderr[-2000:]}")
                continue
            r = json.loads(line[0][7:])
            r["peak_rss_mb"] = m.peak_rss_mb
            r["process_seconds"] = m.seconds
            per_seed.append(r)
            runs.append(r)
            print(f"{bset.name} seed {seed}: AP {r['ap']:.3f} F1 {r['best_f1']:.3f} train {r['train_seconds']:.1f} s "
                  f"(cpu {r['train_cpu_seconds']:.1f} s, load {r['load_average']:.1f}; best epoch {r['best_epoch']}, "
                  f"val AP {r['val_ap']:.3f}) RSS {m.peak_rss_mb:.0f} MB", flush=True)
        if not per_seed:
            continue
        med = lambda k: statistics.median(r[k] for r in per_seed)  # noqa: E731
        topaz_ap, topaz_s = TOPAZ.get(bset.name, (None, None))
        row = quality_row(bset.name, "cnn", ap=med("ap"), best_f1=med("best_f1"), train_seconds=med("train_seconds"),
                          train_cpu_seconds=med("train_cpu_seconds"), peak_rss_mb=med("peak_rss_mb"), pick_seconds_per_micrograph=med("pick_seconds_per_micrograph"),
                          precision=med("precision"), recall=med("recall"),
                          picks_per_micrograph=med("picks_per_micrograph"), ap_runs=[r["ap"] for r in per_seed],
                          ap_one_view_radius_border=med("ap_one_view_radius_border"),
                          label_edge_margin=med("label_edge_margin"),
                          notes=f"median of seeds {seeds}")
        if topaz_ap is not None:
            row["target_ap"] = round(topaz_ap + 0.05, 3)
            row["target_train_seconds"] = topaz_s / 10
            row["meets_target"] = bool(row["ap"] >= topaz_ap + 0.05 and row["train_seconds"] <= topaz_s / 10)
        rows.append(row)
        print(f"== {bset.name}: median AP {row['ap']:.3f} (target {row.get('target_ap')}), train "
              f"{row['train_seconds']:.1f} s (target {row.get('target_train_seconds')}), RSS {row['peak_rss_mb']:.0f} MB")
    path = write_result("train_quality", rows, runs=runs, overrides=overrides, seeds=seeds,
                        skipped=[{"set": n, "reason": r} for n, r in skipped])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
