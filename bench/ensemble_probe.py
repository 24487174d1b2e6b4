"""Zero labels, two general models at once: the real-set leave-one-set-out models, a simulated-only model, their sum.

A probe, not a front end (issue 30): each held-out set's test micrographs (and their low-contrast copies,
bench/hard_case.py) are scored by `--real DIR/<set>.pt` and `--sim FILE`, each alone, summed (mean logits, or robust
z-scores), and each with the blob prior (core.blob.add_blob_prior) at the weights given; picks as `pupick pick` makes
them (every local maximum, NMS at the radius, the default border) and AP against all test labels. No model is scored
on a set whose labels it saw.

    python bench/ensemble_probe.py --real DIR --sim DIR/simulated.pt [--weights 0.25 0.5] [--threads 2]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_args, discover_sets, evaluate_test, write_result  # noqa: E402

SETS = ["empiar10017", "empiar10028", "empiar10059"]


def main(argv: list[str] | None = None) -> None:
    def extra(ap):
        ap.add_argument("--real", type=Path, required=True, help="folder of leave-one-set-out models <set>.pt")
        ap.add_argument("--sim", type=Path, required=True, help="a general model trained on simulated sets only")
        ap.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5], help="blob prior weights")

    args = bench_args(__doc__.splitlines()[0], argv, extra)
    import numpy as np
    import pandas as pd
    import torch

    from hard_case import ensure
    from pupick.core.blob import _robust_stats, add_blob_prior
    from pupick.core.extract import default_border_px, extract_picks
    from pupick.core.modelfile import for_particle, load_model
    from pupick.core.pipeline import _Picker, micrograph_items
    from pupick.core.score import Scorer
    from pupick.core.tables import make_picks

    torch.set_num_threads(args.threads)
    names = args.sets or SETS
    sets, _ = discover_sets(args.data, names)
    low, _ = discover_sets(ensure(names=names, data=args.data), names)
    rows = []
    for bset in sets + low:
        base = bset.name.removesuffix("-lowcontrast")
        real = for_particle(load_model(args.real / f"{base}.pt"), diameter_px=bset.diameter_px)
        sim = for_particle(load_model(args.sim), diameter_px=bset.diameter_px)
        cfg = bset.pick_config(blob_weight=0)
        picker, sim_scorer = _Picker(real, cfg), Scorer(sim, cfg.score)
        maps = []
        for item in micrograph_items(bset.test):
            job, _ = picker.prepare(item)
            maps.append((job, picker.scorer(job.image), sim_scorer(job.image)))

        def z(m, job):
            centre, scale = _robust_stats(m, int(np.ceil(job.diameter_px / job.factor / 2)))
            return (m - centre) / scale

        def run(name, combine):
            frames = []
            for job, a, b in maps:
                smap = np.asarray(combine(job, a, b), dtype=np.float32)
                x, y, s = extract_picks(smap, job.factor, job.diameter_px / 2, -1e9,
                                        border_px=default_border_px(job.diameter_px, picker.edge_margin),
                                        original_shape=job.source_shape)
                frames.append(make_picks(job.item.micrograph, x, y, s, path=job.item.path))
            ap = evaluate_test(pd.concat(frames, ignore_index=True), bset)["ap"]
            rows.append({"set": bset.name, "variant": name, "ap": ap})
            print(f"{bset.name:26s} {name:30s} AP {ap:.3f}", flush=True)

        def prior(job, m, w):
            return add_blob_prior(m, job.image, job.diameter_px / job.factor, w)

        combos = {"real": lambda j, a, b: a, "sim": lambda j, a, b: b, "mean logits": lambda j, a, b: (a + b) / 2,
                  "z sum": lambda j, a, b: z(a, j) + z(b, j)}
        for name, combine in combos.items():
            run(name, combine)
            for w in args.weights:
                run(f"{name} + prior {w:g}", lambda j, a, b, c=combine, w=w: prior(j, c(j, a, b), w))
    print(f"wrote {write_result('ensemble_probe', rows, real=str(args.real), sim=str(args.sim), weights=args.weights)}")


if __name__ == "__main__":
    main()
