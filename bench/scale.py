"""How cost grows with the data set: on-the-fly reruns and peak memory of `pupick pick` at N finished micrographs.

1. Picks N_real micrographs for real (hard links to the five bundled 1024² micrographs under new names) with the
   shipped general model (--diameter-px 56, --views 1), at two sizes: wall time and peak RSS of each run.
2. Builds OUTDIRs of --clone micrographs (20,000 by default) and of --small ones (100) by cloning the real run's
   records and coordinate files under new names (what a long on-the-fly session leaves behind), and one run takes
   them into picks.csv (a full rewrite from the records: the one O(N) run), timed.
3. --repeats interleaved rounds, each on both OUTDIRs: a rerun with nothing new, then an iteration with --k new
   micrographs (real picking). Medians of wall time and peak RSS (VmHWM of the pick process).

`python bench/scale.py [--real 100 --clone 20000 --repeats 5 --k 10]` writes bench/out/scale.json.
`python bench/scale.py --service [--small 500 --clone 20000]` measures instead the server's memory while a client
downloads a job of that many micrographs as csv, json and star (bench/serve_download.py; serve_download.json).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_info, run_measured, summarize, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = sorted((REPO / "data" / "demo" / "micrographs").glob("*.mrc"))
PUPICK = Path(sys.executable).parent / "pupick"
PICK = ["--model", "general", "--diameter-px", "56", "--views", "1", "--device", "cpu"]


def link(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        target = folder / f"{name}.mrc"
        if not target.exists():
            os.link(DEMO[n % len(DEMO)], target)


def pick(mics: Path, out: Path) -> dict:
    m = run_measured([PUPICK, "pick", mics, "-o", out, *PICK], env={"OMP_NUM_THREADS": "2"})
    if m.returncode != 0:
        raise SystemExit(f"pupick pick failed ({m.returncode}): {m.stderr[-2000:]}")
    return {"seconds": m.seconds, "peak_rss_mb": m.peak_rss_mb, "stdout": m.stdout.strip().splitlines()[-3:]}


def clone(real_out: Path, real_mics: Path, n: int, root: Path) -> tuple[Path, Path]:
    """An OUTDIR of n finished micrographs: the real run's records and files under new names (c000000...)."""
    mics, out = root / f"mics{n}", root / f"out{n}"
    records, coords = out / ".pupick_records", out / "coordinates"
    records.mkdir(parents=True)
    coords.mkdir()
    sources = sorted(p.stem for p in (real_out / ".pupick_records").glob("*.csv"))
    texts = {s: (real_out / ".pupick_records" / f"{s}.csv").read_text() for s in sources}
    names = [f"c{i:06d}" for i in range(n)]
    mics.mkdir(parents=True)
    for i, name in enumerate(names):
        src = sources[i % len(sources)]
        os.link(real_mics / f"{src}.mrc", mics / f"{name}.mrc")
        text = texts[src].replace(str(real_mics / f"{src}.mrc"), str(mics / f"{name}.mrc"))
        (records / f"{name}.csv").write_text(text.replace(f"\n{src},", f"\n{name},"))
        (records / f"{name}.outputs").write_text(f"coordinates/{name}.csv\n")
        os.link(real_out / "coordinates" / f"{src}.csv", coords / f"{name}.csv")
    shutil.copy(real_out / "pupick_pick.json", out / "pupick_pick.json")
    return mics, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=int, default=500, help="micrographs picked for real (and a quarter of it)")
    ap.add_argument("--clone", type=int, default=20_000, help="finished micrographs built by cloning records")
    ap.add_argument("--small", type=int, default=100, help="the small data set the large one is compared with")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--k", type=int, default=10, help="new micrographs per on-the-fly iteration")
    ap.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="only the rounds, on the data sets an earlier --keep left")
    ap.add_argument("--service", action="store_true", help="the server's memory during downloads (serve_download)")
    args = ap.parse_args(argv)
    if args.service:
        from serve_download import main as service

        return service(["--small", str(args.small), "--large", str(args.clone)])
    if args.reuse and args.keep is None:
        ap.error("--reuse needs --keep")
    root = Path(args.keep or tempfile.mkdtemp(prefix="pupick-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {"real": {}, "take_in": {}, "rounds": []}
    try:
        # 1. real picking at two sizes
        real_mics = root / "real_mics"
        for n in () if args.reuse else (max(1, args.real // 4), args.real):
            link(real_mics, [f"r{i:05d}" for i in range(n)])
            out = root / f"real{n}"
            results["real"][n] = pick(real_mics, out)
            print(f"real pick of {n}: {results['real'][n]}", flush=True)
        real_out = root / f"real{args.real}"
        # 2. the cloned data sets, taken into picks.csv once
        sets = {}
        for n in (args.small, args.clone):
            if args.reuse:
                sets[n] = (root / f"mics{n}", root / f"out{n}")
                continue
            t0 = time.perf_counter()
            mics, out = clone(real_out, real_mics, n, root)
            built = time.perf_counter() - t0
            m = run_measured([PUPICK, "pick", mics, "-o", out, *PICK])
            results["take_in"][n] = {"build_seconds": built, "seconds": m.seconds, "peak_rss_mb": m.peak_rss_mb,
                                     "csv_mb": (out / "picks.csv").stat().st_size / 2**20}
            print(f"take-in of {n}: {results['take_in'][n]}", flush=True)
            sets[n] = (mics, out)
        # 3. interleaved rounds: nothing new, then k new
        stamp = f"{int(time.time()):x}"
        for r in range(args.repeats):
            row = {}
            for n, (mics, out) in sets.items():
                still = run_measured([PUPICK, "pick", mics, "-o", out, *PICK])
                assert "nothing new" in still.stdout, still.stdout + still.stderr
                link(mics, [f"z{stamp}{r:02d}{i:03d}" for i in range(args.k)])  # new names, after the others
                new = run_measured([PUPICK, "pick", mics, "-o", out, *PICK])
                assert new.returncode == 0 and f"on {args.k} micrograph(s)" in new.stdout, new.stdout + new.stderr
                row[n] = {"nothing_new_s": still.seconds, "nothing_new_rss_mb": still.peak_rss_mb,
                          "k_new_s": new.seconds, "k_new_rss_mb": new.peak_rss_mb}
            results["rounds"].append(row)
            print(f"round {r}: {row}", flush=True)
        summary = {n: {key: summarize(row[n][key] for row in results["rounds"])["median"]
                       for key in ("nothing_new_s", "nothing_new_rss_mb", "k_new_s", "k_new_rss_mb")}
                   for n in sets}
        results["summary"] = summary
        print("medians:", summary)
        write_result("scale", [results], machine=machine_info(), args=vars(args) | {"keep": str(args.keep)})
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
