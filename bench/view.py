"""`pupick view` speed (issue 18): first and cached view of a 4096² micrograph, slider redraw, retrain + re-pick.

    python bench/view.py [--quick]

1. Picture: the four full4096 micrographs of EMPIAR-10017 as float32 MRC (temp dir), through a real `pupick view`
   process over HTTP: the first request of each (nothing cached), the same again (memory cache), and after restarting
   the server (disk cache only). Medians over the micrographs / repeats.
2. Slider: in Debian's headless Chromium (Playwright), the viewer on one 4096² micrograph with 3,000 picks (seeded
   uniform positions and scores: this measures drawing, not picking); `performance.now()` around one threshold change
   (counts, histogram, PR text and the circles, read back so the canvas has rasterised), for 60 thresholds from "all 3,000" to "none".
3. Retrain + re-pick: the bundled demo set (blob picks, the bundled labels) from the page: press Train (default
   settings: 4 epochs), wait, press Pick all, wait until the page shows round 1. Wall time from the first click.
"""
from __future__ import annotations

import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import DATA_ROOT, bench_args, summarize, write_result  # noqa: E402
from view_helpers import DEMO, ViewProcess, pick_blob  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
N_PICKS = 3000


def load_avg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def full_mrcs(src: Path, dst: Path) -> list[Path]:
    from pupick.core.io import read_micrograph, write_mrc

    out = []
    for jpg in sorted(src.glob("*.jpg")):
        target = dst / f"{jpg.stem}.mrc"
        write_mrc(target, read_micrograph(jpg).image, 1.77)
        out.append(target)
    return out


def synthetic_outdir(out: Path, mrcs: list[Path]) -> None:
    """picks.csv with N_PICKS seeded picks on the first micrograph and a few on the others, plus a manifest."""
    import json

    rng = np.random.default_rng(0)
    rows = []
    for i, m in enumerate(mrcs):
        n = N_PICKS if i == 0 else 200
        rows.append(pd.DataFrame({"micrograph": m.stem, "x": rng.uniform(60, 4036, n).round(1),
                                  "y": rng.uniform(60, 4036, n).round(1), "score": rng.normal(0, 3, n).round(4),
                                  "path": str(m)}))
    out.mkdir(parents=True)
    pd.concat(rows).to_csv(out / "picks.csv", index=False)
    (out / "pupick_pick.json").write_text(json.dumps({"settings": {"pick": {"method": "blob"}}, "diameter_px": 108}))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(view: ViewProcess, path: str) -> float:
    req = urllib.request.Request(view.base + path, headers={"Authorization": f"Bearer {view.token}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
    return time.perf_counter() - t0


def bench_pictures(out: Path, mrcs: list[Path], repeats: int) -> dict:
    view = ViewProcess(str(out))
    try:
        get(view, "/api/state")  # imports and first-request set-up, not part of a view
        cold = [get(view, f"/api/image/{m.stem}?size=view") for m in mrcs]
        memory = [get(view, f"/api/image/{m.stem}?size=view") for m in mrcs for _ in range(repeats)]
    finally:
        view.close()
    view = ViewProcess(str(out))
    try:
        get(view, "/api/state")
        disk = [get(view, f"/api/image/{m.stem}?size=view") for m in mrcs]
    finally:
        view.close()
    return {"first_view_s": summarize(cold), "cached_memory_s": summarize(memory), "cached_disk_s": summarize(disk)}


def browser():
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
    return pw, b


def until(page, js: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not page.evaluate(js):
        if time.monotonic() > deadline:
            raise TimeoutError(js)
        page.wait_for_timeout(50)


def bench_slider(out: Path, name: str) -> dict:
    view = ViewProcess(str(out))
    pw, b = browser()
    try:
        page = b.new_page(viewport={"width": 1400, "height": 900})
        page.goto(view.url)
        until(page, "document.body.dataset.ready === '1'", 60)
        page.locator(f"tr[data-name='{name}']").click()
        until(page, f"document.body.dataset.micrograph === '{name}'", 60)
        lo, hi = page.evaluate("[Math.min(...pupickView.viewer.picks.score), Math.max(...pupickView.viewer.picks.score)]")
        ts = np.linspace(lo - 0.01, hi + 0.01, 60)
        page.evaluate("pupickView.timeRedraw(0)")  # warm-up
        times, drawn = [], []
        for t in ts:
            times.append(page.evaluate(f"pupickView.timeRedraw({float(t)!r})"))
            drawn.append(int(page.locator("#pick-layer").get_attribute("data-drawn")))
        all_ms = page.evaluate(f"pupickView.timeRedraw({float(lo - 1)!r})")
    finally:
        b.close()
        pw.stop()
        view.close()
    return {"redraw_ms": summarize(times), "redraw_all_3000_ms": all_ms, "max_drawn": max(drawn)}


def bench_retrain(tmp: Path) -> dict:
    out = pick_blob(tmp / "demo_out")
    view = ViewProcess(str(out), "--labels", str(DEMO / "particles.csv"))
    pw, b = browser()
    try:
        page = b.new_page(viewport={"width": 1400, "height": 900})
        page.goto(view.url)
        until(page, "document.body.dataset.ready === '1'", 60)
        load0 = load_avg()
        cpu0 = cpu_seconds(view.proc.pid)
        t0 = time.perf_counter()
        page.locator("#train").click()
        until(page, "document.getElementById('job-text').dataset.state === 'train:done'", 600)
        t_train = time.perf_counter() - t0
        page.locator("#pick-all").click()
        until(page, "document.getElementById('job-text').dataset.state === 'pick:done' && "
                    "document.body.dataset.round === '1'", 600)
        total = time.perf_counter() - t0
        cpu = cpu_seconds(view.proc.pid) - cpu0
    finally:
        b.close()
        pw.stop()
        view.close()
    return {"train_s": t_train, "pick_s": total - t_train, "total_s": total, "server_cpu_s": cpu, "load_avg_before": load0,
            "load_avg_after": load_avg()}


def main() -> None:
    args = bench_args(__doc__.splitlines()[0], extra=lambda ap: ap.add_argument(
        "--parts", nargs="*", default=["pictures", "slider", "retrain"], help="pictures slider retrain"))
    full = Path(args.data) / "empiar10017" / "full4096"
    results = []
    with tempfile.TemporaryDirectory(prefix="pupick-bench-view-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "mics").mkdir()
        mrcs = full_mrcs(full, tmp / "mics")
        out = tmp / "out"
        synthetic_outdir(out, mrcs)
        if "pictures" in args.parts:
            load = load_avg()
            pics = bench_pictures(out, mrcs, repeats=3 if args.quick else 10)
            results.append({"what": "picture of a 4096² MRC (1024² WebP)", "load_avg": load, **pics})
            print(results[-1], flush=True)
        if "slider" in args.parts:
            load = load_avg()
            results.append({"what": f"slider redraw, {N_PICKS} picks", "load_avg": load,
                            **bench_slider(out, mrcs[0].stem)})
            print(results[-1], flush=True)
        if "retrain" in args.parts:
            results.append({"what": "retrain + re-pick of data/demo from the page", **bench_retrain(tmp)})
            print(results[-1], flush=True)
    print(write_result("view", results, targets={"first_view_s": 1.0, "cached_s": 0.1, "redraw_ms": 30,
                                                 "retrain_repick_s": 30}))


if __name__ == "__main__":
    main()
