"""How cost grows with the data set: peak memory of `pupick pick`, on-the-fly reruns, at N finished micrographs.

1. Picks each of --real (500 and 5,000 by default) micrographs for real: hard links to the five bundled 1024²
   micrographs under new names, the shipped general model (--diameter-px 56, --views 1), `nice -n --nice` and
   --threads torch threads (one reader thread), so a long pick can share a busy machine. Wall time, peak RSS.
2. Builds OUTDIRs of --small (100) and each --clone (20,000 and 50,000) finished micrographs by cloning the largest
   real run's records and coordinate files under new names (what a long on-the-fly session leaves behind); one run
   takes each into picks.csv (the rewrite from the records: the one O(N) run), timed, with its peak RSS.
3. --repeats interleaved rounds, each on every OUTDIR: a rerun with nothing new, then an iteration with --k new
   micrographs (picked for real). Medians of wall time and peak RSS (VmHWM of the pick process).

Every measurement records the load average (1, 5, 15 min) when it ended: the numbers are comparable within a run.

`python bench/scale.py [--real 500 5000 --clone 20000 50000 --repeats 5 --k 10] [--keep DIR [--reuse]]` writes
bench/out/scale.json; `--plot bench/out/scale.json` draws it (PNG beside it, or --png PATH).
`python bench/scale.py --service [--small 500 --clone 50000]`: the server's memory during csv/json/star downloads of a
job of that many micrographs (bench/serve_download.py). `pupick view` at 50,000: bench/view_scale.py --outdir DIR/out50000.
"""
from __future__ import annotations

import argparse
import json
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
KEYS = ("nothing_new_s", "nothing_new_rss_mb", "k_new_s", "k_new_rss_mb")


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def link(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        target = folder / f"{name}.mrc"
        if not target.exists():
            os.link(DEMO[n % len(DEMO)], target)


def pick(mics: Path, out: Path, threads: int, nice: int) -> dict:
    """A real pick run, niced, with `threads` torch threads and one reader thread."""
    cmd = [PUPICK, "pick", mics, "-o", out, *PICK, "--workers", "1"]
    m = run_measured(["nice", "-n", str(nice), *cmd] if nice else cmd,
                     env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    if m.returncode != 0:
        raise SystemExit(f"pupick pick failed ({m.returncode}): {m.stderr[-2000:]}")
    return {"seconds": m.seconds, "peak_rss_mb": m.peak_rss_mb, "load_average": load(),
            "stdout": m.stdout.strip().splitlines()[-3:]}


def clone(real_out: Path, real_mics: Path, n: int, root: Path) -> tuple[Path, Path]:
    """An OUTDIR of n finished micrographs: the real run's records and files under new names (c000000...)."""
    mics, out = root / f"mics{n}", root / f"out{n}"
    records, coords = out / ".pupick_records", out / "coordinates"
    records.mkdir(parents=True)
    coords.mkdir()
    sources = sorted(p.stem for p in (real_out / ".pupick_records").glob("*.csv"))[:500]
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


def rounds(sets: dict[int, tuple[Path, Path]], repeats: int, k: int) -> list[dict]:
    """Interleaved: per round, on each OUTDIR, a rerun with nothing new, then k new micrographs."""
    out = []
    stamp = f"{int(time.time()):x}"
    for r in range(repeats):
        row = {}
        for n, (mics, outdir) in sets.items():
            still = run_measured([PUPICK, "pick", mics, "-o", outdir, *PICK])
            assert "nothing new" in still.stdout, still.stdout + still.stderr
            still_load = load()
            link(mics, [f"z{stamp}{r:02d}{i:03d}" for i in range(k)])  # new names, after the others
            new = run_measured([PUPICK, "pick", mics, "-o", outdir, *PICK])
            assert new.returncode == 0 and f"on {k} micrograph(s)" in new.stdout, new.stdout + new.stderr
            row[n] = {"nothing_new_s": still.seconds, "nothing_new_rss_mb": still.peak_rss_mb,
                      "nothing_new_load": still_load, "k_new_s": new.seconds, "k_new_rss_mb": new.peak_rss_mb,
                      "k_new_load": load()}
        out.append(row)
        print(f"round {r}: {json.dumps(row)}", flush=True)
    return out


def plot(result_json: Path, png: Path) -> None:
    """Peak RSS and on-the-fly rerun times against N, from a scale.json."""
    from matplotlib.figure import Figure

    doc = json.loads(result_json.read_text())
    res = doc["results"][0]
    fig = Figure(figsize=(10, 3.8))
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    real = sorted((int(n), v) for n, v in res.get("real", {}).items())
    take = sorted((int(n), v) for n, v in res.get("take_in", {}).items())
    summ = sorted((int(n), v) for n, v in res.get("summary", {}).items())
    for rows, key, label, marker in ((real, "peak_rss_mb", "picked for real", "o"),
                                     (take, "peak_rss_mb", "take-in of cloned records (rewrite)", "s")):
        if rows:
            ax.plot([n for n, _ in rows], [v[key] for _, v in rows], marker=marker, label=label)
    if summ:
        ax.plot([n for n, _ in summ], [v["k_new_rss_mb"] for _, v in summ], marker="^", label="k = 10 new (median)")
        ax.plot([n for n, _ in summ], [v["nothing_new_rss_mb"] for _, v in summ], marker="v",
                label="nothing new (median)")
        bx.plot([n for n, _ in summ], [v["nothing_new_s"] for _, v in summ], marker="v", label="nothing new")
        bx.plot([n for n, _ in summ], [v["k_new_s"] for _, v in summ], marker="^", label="k = 10 new")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("micrographs (N)")
    ax.set_ylabel("peak RSS of `pupick pick`, MiB")
    ax.legend(fontsize=8)
    bx.set_xscale("log")
    bx.set_ylim(bottom=0)
    bx.axhline(1.5, color="#cc3311", linestyle="--", linewidth=0.8, label="goal, nothing new at 20,000")
    bx.set_xlabel("finished micrographs (N)")
    bx.set_ylabel("wall s (median of 5, interleaved)")
    bx.legend(fontsize=8)
    fig.suptitle(f"bench/scale.py, {doc.get('date', '')[:10]}, 2 shared cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=int, nargs="+", default=[500, 5000], help="sizes picked for real")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the real picks")
    ap.add_argument("--nice", type=int, default=10, help="niceness of the real picks (0: not niced)")
    ap.add_argument("--clone", type=int, nargs="+", default=[20_000, 50_000], help="sizes built by cloning records")
    ap.add_argument("--small", type=int, default=100, help="the small data set the large ones are compared with")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--k", type=int, default=10, help="new micrographs per on-the-fly iteration")
    ap.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="only the rounds, on the data sets an earlier --keep left")
    ap.add_argument("--service", action="store_true", help="the server's memory during downloads (serve_download)")
    ap.add_argument("--plot", type=Path, default=None, help="draw this scale.json instead of measuring")
    ap.add_argument("--png", type=Path, default=None, help="where --plot writes (default: beside the JSON)")
    args = ap.parse_args(argv)
    if args.plot:
        return plot(args.plot, args.png or args.plot.with_suffix(".png"))
    if args.service:
        from serve_download import main as service

        return service(["--small", str(args.small), "--large", str(max(args.clone))])
    if args.reuse and args.keep is None:
        ap.error("--reuse needs --keep")
    root = Path(args.keep or tempfile.mkdtemp(prefix="pupick-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {"real": {}, "take_in": {}, "rounds": []}
    try:
        real_mics = root / "real_mics"
        for n in () if args.reuse else sorted(args.real):
            link(real_mics, [f"r{i:05d}" for i in range(n)])
            results["real"][n] = pick(real_mics, root / f"real{n}", args.threads, args.nice)
            print(f"real pick of {n}: {results['real'][n]}", flush=True)
        real_out = root / f"real{min(args.real)}"  # its records are the clones' sources (a cycle of 500)
        sets = {}
        for n in (args.small, *sorted(args.clone)):
            if args.reuse:
                sets[n] = (root / f"mics{n}", root / f"out{n}")
                continue
            t0 = time.perf_counter()
            mics, out = clone(real_out, real_mics, n, root)
            built = time.perf_counter() - t0
            m = run_measured([PUPICK, "pick", mics, "-o", out, *PICK])
            results["take_in"][n] = {"build_seconds": built, "seconds": m.seconds, "peak_rss_mb": m.peak_rss_mb,
                                     "csv_mb": (out / "picks.csv").stat().st_size / 2**20, "load_average": load()}
            print(f"take-in of {n}: {results['take_in'][n]}", flush=True)
            sets[n] = (mics, out)
        results["rounds"] = rounds(sets, args.repeats, args.k)
        results["summary"] = {n: {key: summarize(row[n][key] for row in results["rounds"])["median"] for key in KEYS}
                              for n in sets}
        print("medians:", json.dumps(results["summary"]))
        write_result("scale", [results], machine=machine_info(), args=vars(args) | {"keep": str(args.keep)})
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
