"""The server's memory while a client downloads a large pick job's picks (csv, json, star), at two job sizes.

1. A real `pupick serve` picks the five bundled micrographs with the blob picker (diameter 56 px): the source job.
2. For each size N (--small, --large) a done job of N micrographs is built in a fresh --state: submitted to the real
   JobStore, each micrograph marked done, and the source job's files cloned under new names (exact/NAME.csv and the
   rows of picks.csv), as a long data collection leaves them.
3. For each format, a fresh `pupick serve --no-workers` on that --state: its VmHWM after start-up and a status
   request, then after one full download (the client counts the bytes, holding none). Growth = after - before.

`python bench/serve_download.py [--small 500 --large 20000]` (or `python bench/scale.py --service`) writes
bench/out/serve_download.json.
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_info, write_result  # noqa: E402

from pupick.core.client import Client, ServerError  # noqa: E402
from pupick.core.service.jobs import JobStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = sorted((REPO / "data" / "demo" / "micrographs").glob("*.mrc"))
BLOB = {"method": "blob", "diameter_px": 56}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(state: Path, root: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pupick.core.cli", "serve", "--port", str(port), "--state",
                             str(state), "--data-root", str(root), "--device", "cpu", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "2"})
    client = Client(f"http://127.0.0.1:{port}", retries=0, timeout=5)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"pupick serve exited with {proc.returncode}")
        try:
            client.health()
            return proc, port
        except ServerError:
            time.sleep(0.1)
    raise SystemExit("pupick serve did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def source_job(work: Path) -> tuple[Path, Path]:
    """The five bundled micrographs picked for real by a server; (its job folder, the data root)."""
    root = work / "root"
    root.mkdir()
    for p in DEMO:
        shutil.copy(p, root / p.name)
    proc, port = start(work / "src_state", root)
    try:
        client = Client(f"http://127.0.0.1:{port}")
        job = client.submit_pick([str(root)], None, BLOB)
        if client.wait(job)["state"] != "done":
            raise SystemExit("the source job did not finish")
    finally:
        stop(proc)
    return work / "src_state" / "jobs" / job, root


def build(state: Path, n: int, src: Path, root: Path) -> str:
    """A done job of n micrographs (c000000, ...) cloned from the source job's files; returns its id."""
    sources = sorted(p.stem for p in (src / "exact").glob("*.csv"))
    exact = {s: (src / "exact" / f"{s}.csv").read_text() for s in sources}
    rows: dict[str, str] = {s: "" for s in sources}
    lines = (src / "picks.csv").read_text().splitlines(keepends=True)
    for line in lines[1:]:
        rows[line.split(",", 1)[0]] += line
    names = [f"c{i:06d}" for i in range(n)]
    store = JobStore(state)
    store._db.execute("PRAGMA synchronous=OFF")  # building the bench's data set, not the server's writes
    job = store.submit("pick", {"model": None, "model_sha256": None, "settings": BLOB},
                       [(name, str(root / f"{name}.mrc")) for name in names])
    store.claim()
    out = store.job_dir(job)
    (out / "exact").mkdir(parents=True)
    with open(out / "picks.csv", "w") as table:
        table.write(lines[0])
        for i, name in enumerate(names):
            s = sources[i % len(sources)]
            old_path, new_path = str(root / f"{s}.mrc"), str(root / f"{name}.mrc")
            text = exact[s].replace(old_path, new_path).replace(f"\n{s},", f"\n{name},")
            (out / "exact" / f"{name}.csv").write_text(text)
            table.write(rows[s].replace(old_path, new_path).replace(f"{s},", f"{name},"))
            store.mark(job, name, True)
    store.finish(job, "done")
    store.close()
    return job


def download(state: Path, root: Path, job: str, fmt: str) -> dict:
    proc, port = start(state, root, "--no-workers")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("GET", f"/v1/jobs/{job}")
        conn.getresponse().read()
        before = hwm_mb(proc.pid)
        t0 = time.perf_counter()
        conn.request("GET", f"/v1/jobs/{job}/picks?format={fmt}")
        resp = conn.getresponse()
        size = 0
        while chunk := resp.read(1 << 16):
            size += len(chunk)
        seconds = time.perf_counter() - t0
        after = hwm_mb(proc.pid)
        assert resp.status == 200, resp.status
        return {"mb": round(size / 2**20, 2), "seconds": round(seconds, 2), "hwm_before_mb": round(before, 1),
                "hwm_after_mb": round(after, 1), "growth_mb": round(after - before, 1),
                "load_average": [round(v, 2) for v in os.getloadavg()]}
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--large", type=int, default=20_000)
    ap.add_argument("--formats", default="csv,json,star")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pupick-serve-download-"))
    results: dict = {}
    try:
        src, root = source_job(work)
        for n in (args.small, args.large):
            state = work / f"state{n}"
            t0 = time.perf_counter()
            job = build(state, n, src, root)
            print(f"built a done job of {n} micrographs in {time.perf_counter() - t0:.1f} s", flush=True)
            for fmt in args.formats.split(","):
                results.setdefault(str(n), {})[fmt] = download(state, root, job, fmt)
                print(f"N={n} {fmt}: {results[str(n)][fmt]}", flush=True)
        write_result("serve_download", [results], machine=machine_info(), args=vars(args))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
