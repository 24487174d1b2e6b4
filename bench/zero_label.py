"""Zero-label routes (issue 19 §3) on the shared sets and on their low-contrast copies (bench/hard_case.py).

Per set, with NO hand labels (they only score the test micrographs; the quality protocol's sorted 60/40 split):
- blob, blob+mask: the blob picker on the test micrographs;
- bootstrap: blob picks on the train micrographs -> `train` -> pick the test micrographs (bench/blob_bootstrap.py);
- general: the leave-one-set-out general model for that set (trained on the OTHER shared sets; DIR/<set>.pt from
  `bench/general_model.py --loso DIR`), set to the set's diameter, picks the test micrographs;
(The general+bootstrap route, `--bootstrap`, was removed in issue 30; its numbers stay in BENCHMARKS.md as history.)
A low-contrast set uses its source set's leave-one-set-out model: no model is scored on a set whose labels it saw.

    python bench/zero_label.py --loso DIR [--lowcontrast] [--sets ...] [--routes blob general ...]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_args, discover_sets, evaluate_test, write_result  # noqa: E402

ROUTES = ("blob", "blob+mask", "bootstrap", "general")


def base_name(name: str) -> str:
    """The shared set a (possibly low-contrast) set was built from."""
    from hard_case import SUFFIX

    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def general_for(bset, loso: Path):
    from pupick.core.modelfile import for_particle, load_model

    path = loso / f"{base_name(bset.name)}.pt"
    if not path.is_file():
        raise SystemExit(f"{path}: no leave-one-set-out model (run bench/general_model.py --loso {loso})")
    return for_particle(load_model(path), diameter_px=bset.diameter_px)


def run_route(route: str, bset, loso: Path, seed: int, threads: int) -> dict:
    from pupick.core.picking import pick

    t0 = time.perf_counter()
    if route in ("blob", "blob+mask"):
        run = pick(bset.test, None, bset.pick_config(method="blob", scale=bset.factor,
                                                     exclude_carbon=route == "blob+mask"), log=lambda m: None)
        picks = run.picks
    elif route == "bootstrap":
        from blob_bootstrap import run_bootstrap

        row = run_bootstrap(str(bset.dir), seed, {}, threads)
        row.pop("curve", None)
        return {"set": bset.name, "route": route, "seconds": time.perf_counter() - t0,
                **{k: row[k] for k in ("ap", "best_f1", "picks_per_micrograph", "label_precision",
                                       "labels_per_micrograph")}}
    elif route == "general":
        run = pick(bset.test, general_for(bset, loso), bset.pick_config(), log=lambda m: None)
        picks = run.picks
    else:
        raise SystemExit(f"unknown route {route}")
    seconds = time.perf_counter() - t0
    ev = evaluate_test(picks, bset)
    ev.pop("curve", None)
    return {"set": bset.name, "route": route, "seconds": seconds, **ev}


def main(argv: list[str] | None = None) -> None:
    def extra(ap):
        ap.add_argument("--loso", type=Path, required=True, help="folder of leave-one-set-out models (<set>.pt)")
        ap.add_argument("--lowcontrast", action="store_true", help="the low-contrast copies (bench/hard_case.py)")
        ap.add_argument("--routes", nargs="+", default=list(ROUTES), choices=ROUTES)
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--tag", default="", help="suffix of the result file name")

    args = bench_args(__doc__.splitlines()[0], argv, extra)
    import torch

    torch.set_num_threads(args.threads)
    data = args.data
    if args.lowcontrast:
        from hard_case import ensure

        data = ensure(names=args.sets, data=args.data)
    sets, skipped = discover_sets(data, args.sets)
    rows = []
    for bset in sets:
        for route in args.routes:
            row = run_route(route, bset, args.loso, args.seed, args.threads)
            rows.append(row)
            more = (f" (label precision {row['label_precision']:.2f})" if row.get("label_precision") is not None
                    else "")
            print(f"{bset.name} {route}: AP {row['ap']:.3f} F1 {row['best_f1']:.3f} in {row['seconds']:.1f} s{more}",
                  flush=True)
    name = "zero_label" + ("_lowcontrast" if args.lowcontrast else "") + (f"_{args.tag}" if args.tag else "")
    print(f"wrote {write_result(name, rows, loso=str(args.loso), skipped=[list(s) for s in skipped])}")


if __name__ == "__main__":
    main()
