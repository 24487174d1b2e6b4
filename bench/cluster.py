"""Scale-out on Dask: throughput, scheduler overhead per task, and peak memory per worker.

1. Trains a small model on the shared empiar10017 set (protocol split), then picks its micrographs (replicated under
   new names to --micrographs) with the engine API: serial (the default local executor), `local:1` and `local:2`
   (DaskExecutor, worker processes). Cluster start-up and one warm-up run are excluded and reported apart; the
   median of --repeats runs gives micrographs per second and the scaling efficiency. The picks must equal serial's.
2. The scheduler's overhead per task: no-op tasks through the DaskExecutor (one micrograph per task, so the loop,
   the scheduler and the worker hop are all counted) and raw `client.map` of no-ops (the scheduler's best case).
   Projected to 50,000 micrographs on 10 / 100 / 1,000 workers: when does the scheduler, not picking, set the pace?
3. Peak resident memory of each worker process (VmHWM, read on the workers after the runs).

`python bench/cluster.py [--quick]` writes bench/out/cluster.json.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import DATA_ROOT, bench_args, load_set, summarize, write_result  # noqa: E402

SET = "empiar10017"
N_PROJECTED = 50_000
PROJECTED_WORKERS = (10, 100, 1000)
IDLE_CPU_S_PER_MIC = 0.62  # BENCHMARKS.md quality table: cnn pick time per empiar10017 micrograph, 2 idle cores


def noop_batch(work, items):
    """A task that does nothing: what is left of its time is overhead."""
    return list(items)


def noop(x):
    return x


def worker_peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def train_model(bset, out: Path, quick: bool) -> Path:
    from pupick.core.train import train

    cfg = bset.train_config(units=32, epochs=2 if quick else 4, steps_per_epoch=20, batch_size=4, tile_size=160,
                            learning_rate=1e-3, test_split=0.0, seed=0)
    train(bset.train, bset.train_labels, cfg, log=lambda m: None).save(out)
    return out


def replicate(paths: list[Path], n: int, folder: Path) -> list[Path]:
    """n micrographs named apart (symbolic links to the set's files, cycling through them)."""
    out = []
    for i in range(n):
        src = paths[i % len(paths)]
        link = folder / f"c{i:04d}_{src.name}"
        link.symlink_to(src)
        out.append(link)
    return out


def picks_key(picks):
    """The picks in a fixed order, for comparing runs."""
    cols = ["micrograph", "x", "y", "score"]
    return picks[cols].astype({"micrograph": str}).sort_values(cols).reset_index(drop=True)


def measure_throughput(model, mics: list[Path], config, repeats: int) -> tuple[list[dict], dict]:
    from pupick.core.cluster import executor_from_spec
    from pupick.core.picking import pick

    rows, reference = [], None
    peaks: dict[str, list[float]] = {}
    for mode in ("serial", "local:1", "local:2"):
        t0 = time.perf_counter()
        ex = None if mode == "serial" else executor_from_spec(mode).__enter__()
        startup = time.perf_counter() - t0
        try:
            pick(mics[:2], model, config, executor=ex, progress=False, log=lambda m: None)  # warm-up
            seconds, same = [], True
            for _ in range(repeats):
                t0 = time.perf_counter()
                res = pick(mics, model, config, executor=ex, progress=False, log=lambda m: None)
                seconds.append(time.perf_counter() - t0)
                key = picks_key(res.picks)
                if reference is None:
                    reference = key
                same = same and key.equals(reference)
            if ex is not None:
                peaks[mode] = sorted(ex.client.run(worker_peak_rss_mb).values())
                sizes = sorted(set(ex.last_batch_sizes))
            else:
                sizes = None
        finally:
            if ex is not None:
                ex.close()
        s = summarize(seconds)
        print(f"{mode}: {len(mics)} micrographs in {s['median']:.1f} s (median of {repeats}); start-up "
              f"{startup:.1f} s", flush=True)
        rows.append({"mode": mode, "micrographs": len(mics), "seconds_median": s["median"],
                     "seconds_spread": s["spread"], "mic_per_s": len(mics) / s["median"],
                     "startup_seconds": startup if ex is not None else None, "picks_equal_serial": same,
                     "batch_sizes": sizes})
    by = {r["mode"]: r["mic_per_s"] for r in rows}
    eff = {"local2_vs_2x_local1": by["local:2"] / (2 * by["local:1"]),
           "local2_vs_serial": by["local:2"] / by["serial"], "local1_vs_serial": by["local:1"] / by["serial"]}
    return rows, {"efficiency": eff, "worker_peak_rss_mb": peaks}


def measure_overhead(n_tasks: int, repeats: int) -> dict:
    from distributed import wait

    from pupick.core.cluster import DaskExecutor, executor_from_spec

    out: dict[str, dict] = {}
    items = list(range(n_tasks))
    for mode in ("local:1", "local:2"):
        with executor_from_spec(mode) as ex:
            client = ex.client
            client.submit(noop, 0).result()
            runner = DaskExecutor(client=client, batch_function=noop_batch, batch_size=1)
            via_executor, raw = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                n = sum(1 for _ in runner.run(None, items))
                via_executor.append((time.perf_counter() - t0) / n)
                t0 = time.perf_counter()
                futs = client.map(noop, items, pure=False)
                wait(futs)
                raw.append((time.perf_counter() - t0) / n_tasks)
                del futs
        out[mode] = {"executor_s_per_task": summarize(via_executor)["median"],
                     "executor_spread": summarize(via_executor)["spread"],
                     "raw_map_s_per_task": summarize(raw)["median"], "raw_spread": summarize(raw)["spread"]}
    return out


def project(overhead_s: float, seconds_per_mic: dict[str, float]) -> list[dict]:
    """50,000 micrographs on W workers: the picking time alone, and the scheduler's time for the tasks it must
    hand out (a single scheduler process does them one after another)."""
    from pupick.core.cluster import batch_size

    rows = []
    for label, t in seconds_per_mic.items():
        for workers in PROJECTED_WORKERS:
            for batching in ("pupick", "one per task"):
                b = batch_size(N_PROJECTED, workers, t) if batching == "pupick" else 1
                tasks = math.ceil(N_PROJECTED / b)
                work = N_PROJECTED * t / workers
                sched = tasks * overhead_s
                rows.append({"worker_speed": label, "s_per_mic": t, "workers": workers, "batching": batching,
                             "batch": b, "tasks": tasks, "picking_hours": work / 3600,
                             "scheduler_hours": sched / 3600, "scheduler_busy": sched / work,
                             "overhead_per_task": overhead_s / (b * t),
                             "bound_by": "scheduler" if sched > work else "picking"})
    return rows


def main(argv=None) -> int:
    def extra(ap):
        ap.add_argument("--micrographs", type=int, default=None, help="micrographs per run (default 24, quick 12)")
        ap.add_argument("--repeats", type=int, default=None)

    args = bench_args(__doc__.splitlines()[0], argv, extra)
    import torch

    torch.set_num_threads(args.threads)
    from pupick.core.config import PickConfig
    from pupick.core.modelfile import load_model

    n_mics = args.micrographs or (12 if args.quick else 24)
    repeats = args.repeats or (2 if args.quick else 3)
    bset = load_set(Path(args.data or DATA_ROOT) / SET)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        model = load_model(train_model(bset, tmp / "model.pt", args.quick))
        print(f"trained in {time.perf_counter() - t0:.1f} s", flush=True)
        mics = replicate(bset.micrographs, n_mics, tmp)
        config = PickConfig.from_settings({"device": "cpu"})
        throughput, extra_doc = measure_throughput(model, mics, config, repeats)
    for r in throughput:
        print(f"{r['mode']:8s} {r['mic_per_s']:.2f} mic/s (median of {repeats}, spread {r['seconds_spread']:.2f} s)"
              f" picks equal serial: {r['picks_equal_serial']}", flush=True)
    print("efficiency", extra_doc["efficiency"], flush=True)
    overhead = measure_overhead(300 if args.quick else 1000, repeats)
    print("overhead", overhead, flush=True)
    serial_rate = next(r["mic_per_s"] for r in throughput if r["mode"] == "local:1")
    per_task = statistics.median([overhead[m]["raw_map_s_per_task"] for m in overhead])
    projection = project(per_task, {"this CPU worker (measured, loaded machine)": 1 / serial_rate,
                                    "CPU worker, idle (BENCHMARKS pick time)": IDLE_CPU_S_PER_MIC,
                                    "a fast GPU worker": 0.05})
    write_result("cluster", throughput, overhead=overhead, projection=projection, **extra_doc,
                 overhead_used_for_projection_s=per_task, usable_cores=len(os.sched_getaffinity(0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
