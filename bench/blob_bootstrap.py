"""Blob picker AP on every shared set, and the zero-label bootstrap loop (blob picks -> pupick train -> pick).

Per set (the quality protocol of issue 3: sorted 60/40 split, match radius half a diameter, AP on the test
micrographs against all their labels):
- blob: `pick(method="blob")` on the test micrographs (default threshold, NMS at the particle radius); also with
  the carbon/ice mask (`exclude_carbon`).
- bootstrap: NO hand labels. The blob picker (carbon mask on, border of one radius) picks the TRAIN micrographs; the
  picks scoring >= LABEL_SCORE become the training labels and the number scoring >= COUNT_SCORE per micrograph the
  expected particle count; `train()` with the same defaults as the CNN bench; the model picks the test micrographs.
  The hand labels are used only to evaluate (and to report how clean the bootstrap labels were).
Each run is a subprocess (clean peak RSS). The same fixed rule on every set; nothing is tuned against the labels.

    python bench/blob_bootstrap.py [--quick] [--sets empiar10028 ...] [--seeds 0 1 2] [--set-config '{"epochs": 6}']
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import (bench_args, discover_sets, evaluate_test, load_set, pooled_labels,  # noqa: E402
                    quality_row, run_measured, write_result)

LABEL_SCORE = 2.0  # blob score (robust z) for a bootstrap label
COUNT_SCORE = 1.5  # blob score counted towards the expected particles per micrograph
QUICK_SETS = ["empiar10028"]
QUICK_OVERRIDES = {"epochs": 3}  # quick: a shorter training, the TrainConfig defaults otherwise


def run_blob(set_dir: str, exclude_carbon: bool, repeats: int) -> dict:
    """Blob-pick the test micrographs `repeats` times (same picks; median time) and evaluate."""
    from pupick.core.picking import pick

    bset = load_set(set_dir)
    cfg = bset.pick_config(method="blob", scale=bset.factor, exclude_carbon=exclude_carbon)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        run = pick(bset.test, None, cfg, progress=False, log=lambda m: None)
        times.append((time.perf_counter() - t0) / max(1, len(bset.test)))
    ev = evaluate_test(run.picks, bset)
    return {"set": bset.name, "method": "blob+mask" if exclude_carbon else "blob",
            "pick_seconds_per_micrograph": statistics.median(times), "pick_seconds_runs": times,
            "train_seconds": 0.0, **ev}


def bootstrap_labels(bset):
    """Blob picks on the train micrographs -> (labels, expected particles per micrograph, label stats)."""
    from pupick.core.evaluate import evaluate
    from pupick.core.picking import pick

    cfg = bset.pick_config(method="blob", scale=bset.factor, exclude_carbon=True, threshold=COUNT_SCORE,
                           border=bset.diameter_px / 2)
    run = pick(bset.train, None, cfg, progress=False, log=lambda m: None)
    picks = run.picks
    labels = picks[picks["score"] >= LABEL_SCORE][["micrograph", "x", "y"]].reset_index(drop=True)
    expected = len(picks) / max(1, len(bset.train))
    # how clean the bootstrap labels are, against the hand labels (reported, never used)
    stems = bset.stems(bset.train)
    ev = evaluate(picks[picks["score"] >= LABEL_SCORE], pooled_labels(bset.labels, stems), bset.match_radius,
                  micrographs=stems)
    tail = ev.curve.iloc[-1] if len(ev.curve) else None
    stats = {"labels_per_micrograph": len(labels) / max(1, len(bset.train)), "expected_particles": expected,
             "hand_expected_particles": bset.expected_particles,
             "label_precision": float(tail["precision"]) if tail is not None else None,
             "label_recall": float(tail["recall"]) if tail is not None else None,
             "blob_seconds_per_micrograph": run.seconds_per_micrograph}
    return labels, expected, stats


def run_bootstrap(set_dir: str, seed: int, overrides: dict, threads: int) -> dict:
    """Zero hand labels: blob labels -> train -> pick the test micrographs -> evaluate."""
    import torch

    torch.set_num_threads(threads)
    from pupick.core.config import PickConfig
    from pupick.core.modelfile import load_model
    from pupick.core.picking import pick
    from pupick.core.train import train

    bset = load_set(set_dir)
    t0 = time.perf_counter()
    labels, expected, stats = bootstrap_labels(bset)
    blob_seconds = time.perf_counter() - t0
    if labels.empty:
        raise SystemExit(f"{bset.name}: the blob picker gave no labels at score >= {LABEL_SCORE}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bset.train_config(seed=seed, **{"expected_particles": expected, **overrides})
        t1 = time.perf_counter()
        result = train(bset.train, labels, cfg, log=lambda m: None)
        train_seconds = time.perf_counter() - t1
        model = load_model(result.save(Path(tmp) / "model.pt"))
        t2 = time.perf_counter()
        run = pick(bset.test, model, PickConfig.from_settings({"seed": seed}), progress=False, log=lambda m: None)
        pick_seconds = (time.perf_counter() - t2) / max(1, len(bset.test))
    ev = evaluate_test(run.picks, bset)
    return {"set": bset.name, "method": "bootstrap", "seed": seed, "train_seconds": train_seconds + blob_seconds,
            "cnn_train_seconds": train_seconds, "blob_label_seconds": blob_seconds,
            "pick_seconds_per_micrograph": pick_seconds, "best_epoch": result.best_epoch, "val_ap": result.best_ap,
            "pi": result.pi, **stats, **ev}


def _child(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "--one-blob":
        out = run_blob(argv[1], argv[2] == "1", int(argv[3]))
    else:
        out = run_bootstrap(argv[1], int(argv[2]), json.loads(argv[3]), int(argv[4]))
    print("RESULT " + json.dumps(out, default=float))


def _measure(cmd: list[str], label: str) -> dict | None:
    m = run_measured([sys.executable, __file__, *cmd])
    line = [ln for ln in m.stdout.splitlines() if ln.startswith("RESULT ")]
    if m.returncode or not line:
        print(f"{label}: FAILED\n{m.stderr[-2000:]}", flush=True)
        return None
    r = json.loads(line[0][7:])
    r["peak_rss_mb"] = m.peak_rss_mb
    r["process_seconds"] = m.seconds
    return r


def _median_row(name: str, method: str, runs: list[dict], note: str) -> dict:
    med = lambda k: statistics.median(r[k] for r in runs) if all(r.get(k) is not None for r in runs) else None  # noqa: E731
    mid = sorted(runs, key=lambda r: r["ap"])[len(runs) // 2]  # the median run's curve
    keys = ("ap", "best_f1", "precision", "recall", "picks_per_micrograph", "train_seconds",
            "pick_seconds_per_micrograph", "peak_rss_mb")
    extra = {k: med(k) for k in ("label_precision", "label_recall", "labels_per_micrograph", "expected_particles",
                                 "hand_expected_particles") if k in runs[0]}
    return quality_row(name, method, **{k: med(k) for k in keys}, ap_runs=[r["ap"] for r in runs],
                       curve=mid.get("curve"), notes=note, **extra)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--one-blob"], ["--one-boot"]):
        _child(argv)
        return

    def extra(ap):
        ap.add_argument("--seeds", type=int, nargs="+", default=None, help="bootstrap training seeds (default 0)")
        ap.add_argument("--set-config", default=None, help="JSON of TrainConfig overrides for the bootstrap training")
        ap.add_argument("--blob-repeats", type=int, default=None, help="blob timing repeats (default 3; quick 1)")

    args = bench_args(__doc__.splitlines()[0], argv, extra)
    seeds = args.seeds or [0]
    overrides = json.loads(args.set_config) if args.set_config else (dict(QUICK_OVERRIDES) if args.quick else {})
    names = args.sets or (QUICK_SETS if args.quick else None)
    repeats = args.blob_repeats or (1 if args.quick else 3)
    sets, skipped = discover_sets(args.data, names)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", flush=True)
    rows, runs = [], []
    for bset in sets:
        for mask in (False, True):
            r = _measure(["--one-blob", str(bset.dir), "1" if mask else "0", str(repeats)], f"{bset.name} blob")
            if not r:
                continue
            runs.append(r)
            t = r["pick_seconds_runs"]
            rows.append(_median_row(bset.name, r["method"], [r], f"deterministic picks; time: median of {len(t)} "
                                                                  f"passes, {min(t):.2f}-{max(t):.2f} s/mic"))
            print(f"{bset.name} {r['method']}: AP {r['ap']:.3f} F1 {r['best_f1']:.3f} "
                  f"{r['pick_seconds_per_micrograph']:.2f} s/mic ({min(t):.2f}-{max(t):.2f}) RSS "
                  f"{r['peak_rss_mb']:.0f} MB", flush=True)
        got = []
        for seed in seeds:
            r = _measure(["--one-boot", str(bset.dir), str(seed), json.dumps(overrides), str(args.threads)],
                         f"{bset.name} bootstrap seed {seed}")
            if r:
                got.append(r)
                print(f"{bset.name} bootstrap seed {seed}: AP {r['ap']:.3f} F1 {r['best_f1']:.3f} (labels "
                      f"{r['labels_per_micrograph']:.0f}/mic, precision {r['label_precision']:.2f} vs hand labels; "
                      f"expected {r['expected_particles']:.0f}/mic, hand {r['hand_expected_particles']:.0f}) "
                      f"train {r['train_seconds']:.0f} s, RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        if got:
            runs += got
            rows.append(_median_row(bset.name, "bootstrap", got, f"zero hand labels; median of seeds {seeds}"))
    path = write_result("blob_bootstrap", rows, runs=[{k: v for k, v in r.items() if k != "curve"} for r in runs],
                        seeds=seeds, overrides=overrides, label_score=LABEL_SCORE, count_score=COUNT_SCORE,
                        skipped=[{"set": n, "reason": r} for n, r in skipped])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
