"""Make the pictures of docs/browser.md (and the README): `pupick view` on the bundled data, in headless Chromium.

    make screenshots          # or: .venv/bin/python docs/screenshots.py [--out docs]

1. `pupick pick --method blob --diameter-px 56` on the five micrographs of data/demo/ (no model needed) into a
   scratch directory, then `pupick view` on it with the bundled labels, as a real process on 127.0.0.1.
2. Debian's headless Chromium (/usr/bin/chromium; `tests/service/ensure_chromium.sh` installs it as root), driven
   by Playwright, 1400 × 900: micrograph 061_10028 at threshold 2.5 -> view_viewer.png; label mode with three labels
   added where no label was -> view_label_mode.png. The scratch copy of the labels is what changes; data/demo/ is
   only read.
3. Each picture is scaled to 800 px wide and stored with a 256-colour palette (small files in git), written under a
   temporary name and renamed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "service"))

from view_helpers import DEMO, DIAMETER, ViewProcess, pick_blob  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
MIC = "061_10028"
THRESHOLD = 2.5
VIEWPORT = {"width": 1400, "height": 900}
WIDTH = 800


def until(page, js: str, timeout: float = 60.0) -> None:
    """Poll a JS expression until it is truthy (the page's CSP forbids the eval behind page.wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(js):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {js}")
        page.wait_for_timeout(50)


def screen_point(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of original pixel (x, y) in the viewer, once the view has stopped moving."""
    last = None
    for _ in range(60):
        k, ox, oy = page.evaluate("[pupickView.viewer.k, pupickView.viewer.ox, pupickView.viewer.oy]")
        box = page.locator("#stage").bounding_box()
        here = (box["x"] + x * k + ox, box["y"] + y * k + oy)
        if here == last:
            return here
        last = here
        page.wait_for_timeout(50)
    return last


def free_spots(labels, n: int) -> list[tuple[float, float]]:
    """N places on MIC at least a diameter from every label and from each other (a grid scan: deterministic)."""
    taken = [tuple(p) for p in labels[labels["micrograph"] == MIC][["x", "y"]].to_numpy()]
    spots: list[tuple[float, float]] = []
    for x in range(100, 1000, 37):
        for y in range(100, 1000, 41):
            if all(((x - ex) ** 2 + (y - ey) ** 2) ** 0.5 > DIAMETER for ex, ey in [*taken, *spots]):
                spots.append((float(x), float(y)))
                if len(spots) == n:
                    return spots
    raise RuntimeError(f"no room for {n} new labels on {MIC}")


def save(png: bytes, path: Path) -> None:
    """Scale to WIDTH px, quantise to a 256-colour palette, write atomically."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
    tmp = path.with_name(f".{path.name}.tmp")
    image.quantize(256).save(tmp, format="PNG", optimize=True)
    tmp.replace(path)
    print(f"wrote {path} ({image.width}x{image.height})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder for the PNGs (default: docs/)")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"screenshots: error: {CHROMIUM} is missing (run tests/service/ensure_chromium.sh as root)")
    import pandas as pd
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    labels = pd.read_csv(DEMO / "particles.csv")
    with tempfile.TemporaryDirectory(prefix="pupick-screenshots-") as tmp:
        outdir = pick_blob(Path(tmp) / "demo_picks")
        view = ViewProcess(str(outdir), "--labels", str(DEMO / "particles.csv"), "--micrographs",
                           str(DEMO / "micrographs"))
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
                page = browser.new_context(viewport=VIEWPORT).new_page()
                page.goto(view.url)
                page.wait_for_selector("body[data-ready='1']", timeout=60_000)
                page.locator(f"tr[data-name='{MIC}']").click()
                page.wait_for_selector(f"body[data-micrograph='{MIC}']")
                until(page, "document.getElementById('pick-layer').dataset.drawn !== undefined")
                page.locator("#threshold").fill(repr(THRESHOLD))
                until(page, "document.getElementById('pr-text').textContent.includes('precision')")
                page.wait_for_timeout(500)  # the picture and the plots settle
                save(page.screenshot(), args.out / "view_viewer.png")

                page.keyboard.press("m")
                n0 = int(page.locator("#pick-layer").get_attribute("data-labels"))
                for i, (x, y) in enumerate(free_spots(labels, 3), 1):
                    page.mouse.click(*screen_point(page, x, y))
                    until(page, "document.body.dataset.saved !== undefined && "
                                f"document.getElementById('pick-layer').dataset.labels === '{n0 + i}'")
                until(page, f"document.getElementById('status').textContent.includes('{n0 + 3} label(s) on')")
                page.wait_for_timeout(500)
                save(page.screenshot(), args.out / "view_label_mode.png")
                browser.close()
        finally:
            view.close()


if __name__ == "__main__":
    main()
