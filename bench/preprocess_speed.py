"""Preprocessing speed/memory on 4096² micrographs, and the GMM ice-centring check over all shared data.

    python bench/preprocess_speed.py [--quick]

Writes bench/out/preprocess_speed.json. Timings: read + x4 Fourier crop + GMM normalisation per micrograph, in
process (median of repeats), and the whole `pupick preprocess` CLI as a subprocess (wall time, peak RSS).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pupick.core.io import read_micrograph, write_mrc
from pupick.core.preprocess import downsample, normalize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "out"


def machine() -> dict:
    import os

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    try:
        import torch

        tv = torch.__version__
    except ImportError:
        tv = None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": tv}


def convert_jpegs(tmp: Path) -> list[Path]:
    """The 4096² JPEGs as float32 MRC, as users' micrographs are."""
    out = []
    for jpg in sorted((SHARED / "empiar10017" / "full4096").glob("*.jpg")):
        target = tmp / f"{jpg.stem}.mrc"
        write_mrc(target, read_micrograph(jpg).image, 1.77)
        out.append(target)
    return out


def time_in_process(paths: list[Path], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        for p in paths:
            t0 = time.perf_counter()
            normalize(downsample(read_micrograph(p).image, 4), "gmm")
            times.append(time.perf_counter() - t0)
    return times


def time_cli(paths: list[Path], tmp: Path, workers: int) -> dict:
    out_dir = tmp / f"cli_out_{workers}"
    cmd = [sys.executable, "-m", "pupick.core.cli", "preprocess", *map(str, paths), "--scale", "4",
           "-o", str(out_dir), "--workers", str(workers), "--overwrite"]
    # /usr/bin/time-style peak RSS of the child's own address space (VmHWM), polled while it runs: ru_maxrss of a
    # child carries over the parent's size across fork/exec on Linux.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.perf_counter()
    peak_kb = 0
    while proc.poll() is None:
        try:
            status = open(f"/proc/{proc.pid}/status").read()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"pupick preprocess failed: {proc.stderr.read().decode()[-500:]}")
    return {"workers": workers, "wall_s": wall, "s_per_micrograph": wall / len(paths), "peak_rss_gb": peak_kb / 1024**2}


def ice_centring() -> list[dict]:
    rows = []
    for set_dir in sorted(p for p in SHARED.iterdir() if (p / "set.json").exists()):
        factor = json.loads((set_dir / "set.json").read_text())["factor"]
        offsets = []
        for mic in sorted((set_dir / "micrographs").glob("*.mrc")):
            image = normalize(downsample(read_micrograph(mic).image, factor), "gmm")
            hist, edges = np.histogram(image, bins=400, range=(-5, 5))
            offsets.append(float(0.5 * (edges[np.argmax(hist)] + edges[np.argmax(hist) + 1])))
        rows.append({"set": set_dir.name, "micrographs": len(offsets), "median_abs_peak_offset_sd":
                     statistics.median(abs(o) for o in offsets), "max_abs_peak_offset_sd": max(abs(o) for o in offsets)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        paths = convert_jpegs(tmp)
        times = time_in_process(paths, 1 if args.quick else 3)
        cli = [time_cli(paths, tmp, w) for w in ([1] if args.quick else [1, 2])]
    result = {
        "name": "preprocess_speed",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": {
            "in_process_median_s_per_4096_micrograph": statistics.median(times),
            "in_process_runs": len(times),
            "cli": cli,
            "ice_centring": ice_centring(),
        },
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "preprocess_speed.json").write_text(json.dumps(result, indent=1))
    r = result["results"]
    print(f"read + x4 crop + GMM: median {r['in_process_median_s_per_4096_micrograph']:.3f} s per 4096² micrograph")
    for c in cli:
        print(f"pupick preprocess --workers {c['workers']}: {c['s_per_micrograph']:.3f} s/mic, peak RSS {c['peak_rss_gb']:.2f} GB")
    for row in r["ice_centring"]:
        print(f"{row['set']}: ice peak offset median {row['median_abs_peak_offset_sd']:.3f} sd, max {row['max_abs_peak_offset_sd']:.3f} sd")
    return result


if __name__ == "__main__":
    main()
