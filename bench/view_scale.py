"""`pupick view` of a large OUTDIR (issue 29): time from starting `pupick view` to its first view, and its memory.

    python bench/view_scale.py [--n 2000] [--repeats 3] [--python OTHER_VENV/bin/python]

Builds an OUTDIR of --n finished micrographs by cloning a blob-picker run of the five bundled micrographs under new
names (records, picks.csv rows, hard-linked images: tests/service/view_helpers.clone_outdir; ~430 picks each), then
per repeat, each time with a fresh `pupick view --no-browser` process:
- api: from starting the process to the page's first three answers (the first 200 table rows, the binned score
  histogram, the analysis with the suggested threshold), over HTTP;
- page: from starting the process to the page in Debian's headless Chromium saying it is ready (table shown, counts,
  histogram drawn); the browser is started before the clock.
- page_warm: the same again, with what the first start kept in OUTDIR/.pupick_view_cache (the other two start
  without it).
"Cold" is about `pupick view`'s own cache only: an OUTDIR a pick run wrote (--outdir, e.g. bench/scale.py's take-in
of cloned records) holds the run's view index (.pupick_records/picks_index.bin), read instead of a scan; the --n
clone holds none (the scan). Peak RSS (VmHWM) of the view process after the page's first view. --python runs another checkout's `pupick view`
on the same OUTDIR (a same-run comparison). Medians; writes bench/out/view_scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))

from common import machine_info, summarize, write_result  # noqa: E402
from view import browser, until  # noqa: E402
from view_helpers import clone_outdir, pick_blob  # noqa: E402


def start(python: str, outdir: Path) -> tuple[subprocess.Popen, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "-m", "pupick.core.cli", "view", str(outdir), "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"pupick view printed {url!r}")
    return proc, url, t0


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def api_first_view(python: str, outdir: Path) -> dict:
    proc, url, t0 = start(python, outdir)
    try:
        parts = urlsplit(url)
        base, token = f"{parts.scheme}://{parts.netloc}", parts.query.split("token=", 1)[1]
        sizes = {}
        for path in ("/api/round/0/micrographs?limit=200", "/api/round/0/scores", "/api/round/0/analysis"):
            req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
            for _ in range(600):
                try:
                    with urllib.request.urlopen(req, timeout=120) as r:
                        sizes[path] = len(r.read())
                    break
                except urllib.error.HTTPError as err:
                    if err.code != 404:  # an old checkout lacks an endpoint: note it, go on
                        raise
                    sizes[path] = None
                    break
                except OSError:
                    time.sleep(0.02)
        return {"seconds": time.perf_counter() - t0, "bytes": sizes, "peak_rss_mb": peak_rss_mb(proc.pid)}
    finally:
        stop(proc)


def page_first_view(b, python: str, outdir: Path) -> dict:
    context = b.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    proc, url, t0 = start(python, outdir)
    try:
        page.goto(url)
        until(page, "document.body.dataset.ready === '1'", 300)
        seconds = time.perf_counter() - t0
        rows = page.evaluate("document.querySelectorAll('#mics tbody tr').length")
        return {"seconds": seconds, "rows_in_page": rows, "peak_rss_mb": peak_rss_mb(proc.pid)}
    finally:
        stop(proc)
        context.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="micrographs in the OUTDIR")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--outdir", type=Path, default=None,
                    help="measure this existing OUTDIR instead of building one (e.g. bench/scale.py --keep's "
                         "out50000); its .pupick_view_cache is removed before each cold start")
    ap.add_argument("--python", action="append", default=None,
                    help="a Python whose `pupick view` to measure (repeatable; default: this one)")
    args = ap.parse_args(argv)
    pythons = args.python or [sys.executable]
    with tempfile.TemporaryDirectory(prefix="pupick-viewscale-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        outdir = args.outdir or clone_outdir(pick_blob(root / "real"), args.n, root / "clone")
        built = time.perf_counter() - t0
        csv_mb = (outdir / "picks.csv").stat().st_size / 2**20
        print(f"{'using' if args.outdir else 'built'} {args.n} micrographs in {built:.1f} s; picks.csv {csv_mb:.1f} MB", flush=True)
        pw, b = browser()
        runs: dict = {p: [] for p in pythons}
        try:
            for r in range(args.repeats):  # interleaved: each checkout once per round
                for p in pythons:
                    shutil.rmtree(outdir / ".pupick_view_cache", ignore_errors=True)
                    row = {"api": api_first_view(p, outdir)}
                    shutil.rmtree(outdir / ".pupick_view_cache", ignore_errors=True)
                    row["page"] = page_first_view(b, p, outdir)  # cold: nothing kept from an earlier start
                    row["page_warm"] = page_first_view(b, p, outdir)  # what the cold start kept
                    row["load_average"] = [round(v, 2) for v in os.getloadavg()]
                    runs[p].append(row)
                    print(f"round {r} {p}: {json.dumps(row)}", flush=True)
        finally:
            b.close()
            pw.stop()
        summary = {p: {"api_s": summarize(x["api"]["seconds"] for x in rows)["median"],
                       "page_s": summarize(x["page"]["seconds"] for x in rows)["median"],
                       "page_warm_s": summarize(x["page_warm"]["seconds"] for x in rows)["median"],
                       "peak_rss_mb": summarize(x["page"]["peak_rss_mb"] for x in rows)["median"],
                       "rows_in_page": rows[-1]["page"]["rows_in_page"]} for p, rows in runs.items()}
        print("medians:", json.dumps(summary))
        write_result("view_scale", [{"runs": runs, "summary": summary}], machine=machine_info(),
                     args=vars(args), n=args.n, picks_csv_mb=csv_mb, build_seconds=built)


if __name__ == "__main__":
    main()
