"""The server's memory while it picks one large job, at two job sizes (issue 29: "the server during the job").

For each N in --sizes: N hard links to the five bundled 1024² micrographs under new names, a fresh `pupick serve`
(--state in a temporary folder, --data-root the links), one pick job of all N with the shipped general model
(--diameter-px 56, one view), polled to the end. Every 0.5 s the peak resident memory (VmHWM) of the server process and
of each process under it (its supervised workers) is read; the result is the largest seen per role, with the wall
time and the load average at the end. Each sample's resident memory (VmRSS) and the number of micrographs done are kept
too (`series`), with the median resident memory over the job's second half (`steady_rss_mb`): a peak is one moment,
the series shows whether memory grows with the micrographs done.

`python bench/serve_job_memory.py [--sizes 500 5000]` writes bench/out/serve_job_memory.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import write_result  # noqa: E402
from serve_download import DEMO, start  # noqa: E402

from pupick.core.client import Client  # noqa: E402

SETTINGS = {"diameter_px": 56, "views": 1}


def mem_mb(pid: int, field: str = "VmHWM") -> float | None:
    """A /proc/PID/status memory field in MiB: VmHWM (peak resident) or VmRSS (resident now); None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def hwm_mb(pid: int) -> float | None:
    """The process's peak resident memory in MiB (None once it has gone)."""
    return mem_mb(pid, "VmHWM")


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (children of all its threads, recursively)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}/task").is_dir() else []:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def one_size(n: int, work: Path, run: int = 0) -> dict:
    root = work / f"mics{n}_{run}"
    root.mkdir()
    for i in range(n):
        src = DEMO[i % len(DEMO)]
        os.link(src, root / f"m{i:06d}_{src.name}")
    proc, port = start(work / f"state{n}_{run}", root)
    try:
        client = Client(f"http://127.0.0.1:{port}", retries=2, timeout=30)
        t0 = time.perf_counter()
        job = client.submit_pick([str(root)], "general", SETTINGS)
        peak = {"server": 0.0, "worker": 0.0}
        series = []  # [seconds, micrographs done, VmRSS MiB, VmHWM MiB]
        while True:
            state = client.job(job)
            peak["server"] = max(peak["server"], hwm_mb(proc.pid) or 0.0)
            series.append([round(time.perf_counter() - t0, 1), state.get("done") or 0,
                           mem_mb(proc.pid, "VmRSS"), peak["server"]])
            for kid in descendants(proc.pid):
                peak["worker"] = max(peak["worker"], hwm_mb(kid) or 0.0)
            if state["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.5)
        wall = time.perf_counter() - t0
        second_half = [r[2] for r in series if r[1] >= n / 2 and r[2] is not None]
        return {"micrographs": n, "state": state["state"], "done": state.get("done"), "seconds": wall,
                "server_peak_mb": peak["server"], "worker_peak_mb": peak["worker"],
                "steady_rss_mb": statistics.median(second_half) if second_half else None,
                "load_average": list(os.getloadavg()), "series": thin(series)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def thin(series: list, keep: int = 400) -> list:
    """At most `keep` evenly spaced samples (the last always kept), so a 3-hour job's series stays small."""
    if len(series) <= keep:
        return series
    step = len(series) / (keep - 1)
    return [series[int(i * step)] for i in range(keep - 1)] + [series[-1]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pupick-serve-job-"))
    rows = []
    try:
        for run, n in enumerate(args.sizes):  # a size given twice is measured twice (the peak varies run to run)
            row = one_size(n, work, run)
            print({k: v for k, v in row.items() if k != "series"}, flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {write_result('serve_job_memory', rows)}")


if __name__ == "__main__":
    main()
