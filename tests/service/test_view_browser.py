"""`pupick view` in a real headless Chromium (Debian's, driven by Playwright): threshold, labels, retraining.

The browser comes from the test set-up (tests/service/ensure_chromium.sh, run by `make test`). Without it the tests
skip with the reason, except in CI (CI=true), where they fail.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest

from view_helpers import DEMO, DIAMETER, REPO, ViewProcess, pick_blob

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
ARTIFACTS = REPO / "tests" / "artifacts"
MIC = "061_10028"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    pytest.skip(f"BROWSER TESTS SKIPPED: {reason} (run `make test` as root to install Debian's chromium)")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def outdir(tmp_path_factory) -> Path:
    return pick_blob(tmp_path_factory.mktemp("view") / "out")


@pytest.fixture(scope="module")
def server(outdir: Path):
    view = ViewProcess(str(outdir), "--labels", str(DEMO / "particles.csv"), "--micrographs",
                       str(DEMO / "micrographs"))
    yield view
    view.close()


def _replaced(request) -> bool:
    """A thumbnail's in-memory copy (a blob: URL, fetched from the server already) whose <img> was redrawn or closed
    while it decoded: the browser aborts that load. Not a failure; a failed fetch from the server still counts."""
    return request.url.startswith("blob:") and request.failure == "net::ERR_ABORTED"


@pytest.fixture
def page(browser, server):
    """A page on the viewer's URL; any console error, page error or failed request fails the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("requestfailed", lambda r: None if _replaced(r) else problems.append(f"request failed: {r.url} {r.failure}"))
    pg.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    pg.goto(server.url)
    pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
    yield pg
    pg.wait_for_timeout(200)  # let late requests (thumbnails) finish or fail
    context.close()
    assert not problems, problems


def _open(page, name: str) -> None:
    page.locator(f"tr[data-name='{name}']").click()
    page.wait_for_selector(f"body[data-micrograph='{name}']")
    _until(page, "document.getElementById('pick-layer').dataset.drawn !== undefined")


def _until(page, js: str, timeout: float = 30.0) -> None:
    """Poll a JS expression until it is truthy (page.wait_for_function would eval, which the page's CSP forbids)."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(js):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {js}")
        page.wait_for_timeout(50)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_slider_counts_and_circles_match_picks_csv(page, outdir: Path) -> None:
    picks = pd.read_csv(outdir / "picks.csv")
    table = page.locator("#mics tbody tr")
    assert table.count() == 5
    _open(page, MIC)
    assert page.locator("#stage").is_visible() and page.locator("#mics").is_hidden()
    mine = picks[picks["micrograph"] == MIC]
    for t in (float(mine["score"].quantile(0.3)), 2.5, float(mine["score"].max()) - 0.01):
        page.locator("#threshold").fill(repr(t))
        expected = int((mine["score"] >= t).sum())
        assert 0 < expected < len(mine) or t > 2.5
        assert int(page.locator("#mic-count").inner_text()) == expected
        assert int(page.locator("#pick-layer").get_attribute("data-drawn")) == expected
        _until(page, f"document.getElementById('total-count').textContent === '{int((picks['score'] >= t).sum())}'")
    page.locator("#threshold").fill("2.5")
    # the PR curve's operating point is core.evaluate's curve read at 2.5
    from pupick.core.evaluate import evaluate

    curve = evaluate(picks, pd.read_csv(DEMO / "particles.csv"), DIAMETER / 2).curve
    kept = curve[curve["threshold"] >= 2.5].iloc[-1]
    text = page.locator("#pr-text").inner_text()
    assert f"precision {kept.precision:.3f}, recall {kept.recall:.3f}" in text, text
    # keyboard: p and l toggle the picks and labels, n and b step through the micrographs
    page.keyboard.press("p")
    assert page.locator("#pick-layer").get_attribute("data-drawn") == "0"
    page.keyboard.press("p")
    assert int(page.locator("#pick-layer").get_attribute("data-drawn")) == int((mine["score"] >= 2.5).sum())
    page.keyboard.press("l")
    assert not page.locator("#show-labels").is_checked()
    page.keyboard.press("l")
    page.keyboard.press("n")
    page.wait_for_selector("body[data-micrograph='062_10028']")
    page.keyboard.press("b")
    page.wait_for_selector(f"body[data-micrograph='{MIC}']")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "view_viewer.png"))
    # the table's counts follow the slider too
    page.locator("#back").click()
    page.wait_for_selector("body[data-view='table']")
    _until(page, "document.querySelector('#mics tbody').dataset.threshold === '2.5'")
    assert page.locator("#mics").is_visible() and page.locator("#stage").is_hidden()
    for name, g in picks.groupby("micrograph"):
        row = page.locator(f"tr[data-name='{name}'] td.count")
        assert int(row.inner_text()) == int((g["score"] >= 2.5).sum())
    _until(page, "[...document.querySelectorAll('#mics img')].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(ARTIFACTS / "view_table.png"))


def _screen(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of original pixel (x, y) in the viewer, once the view and the layout have stopped moving
    (a status line or a re-fit can shift them between reading and clicking on a busy machine)."""
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


def test_label_mode_adds_and_removes_labels_in_the_file(page, outdir: Path) -> None:
    source = DEMO / "particles.csv"
    before = _sha(source)
    existing = pd.read_csv(source)
    existing = existing[existing["micrograph"] == MIC][["x", "y"]].to_numpy()
    # three places at least a diameter from every existing label, so each click adds one
    spots = []
    for x in range(100, 1000, 37):
        for y in range(100, 1000, 41):
            if all(((x - ex) ** 2 + (y - ey) ** 2) ** 0.5 > DIAMETER for ex, ey in [*existing, *spots]):
                spots.append((float(x), float(y)))
    spots = spots[:3]
    assert len(spots) == 3
    _open(page, MIC)
    page.keyboard.press("m")
    assert page.locator("#label-mode").is_checked()
    n0 = int(page.locator("#pick-layer").get_attribute("data-labels"))
    for i, (x, y) in enumerate(spots, 1):
        page.mouse.click(*_screen(page, x, y))
        _until(page, f"document.body.dataset.saved !== undefined && "
                               f"document.getElementById('pick-layer').dataset.labels === '{n0 + i}'")
    _until(page, f"document.getElementById('status').textContent.includes('{n0 + 3} label(s) on')")
    page.screenshot(path=str(ARTIFACTS / "view_label_mode.png"))
    saved = pd.read_csv(outdir / "labels.csv")
    assert list(saved.columns) == ["micrograph", "x", "y"]
    mine = saved[saved["micrograph"] == MIC][["x", "y"]].to_numpy()
    assert len(mine) == n0 + 3
    for x, y in spots:
        assert min(((mine[:, 0] - x) ** 2 + (mine[:, 1] - y) ** 2) ** 0.5) <= 1.0
    # a click on a label's circle removes it, from the page and the file
    x, y = spots[1]
    page.mouse.click(*_screen(page, x + 3, y - 2))
    _until(page, f"document.getElementById('status').textContent.includes('{n0 + 2} label(s) on')")
    mine = pd.read_csv(outdir / "labels.csv").query("micrograph == @MIC")[["x", "y"]].to_numpy()
    assert len(mine) == n0 + 2
    assert min(((mine[:, 0] - x) ** 2 + (mine[:, 1] - y) ** 2) ** 0.5) > DIAMETER
    # undo brings it back
    page.keyboard.press("u")
    _until(page, f"document.getElementById('status').textContent.includes('{n0 + 3} label(s) on')")
    assert len(pd.read_csv(outdir / "labels.csv").query("micrograph == @MIC")) == n0 + 3
    page.keyboard.press("u")
    _until(page, f"document.getElementById('status').textContent.includes('{n0 + 2} label(s) on')")
    assert _sha(source) == before  # --labels is never modified


def test_train_then_pick_all_makes_round_1(page, outdir: Path) -> None:
    original = _sha(outdir / "picks.csv")
    page.locator("#epochs").fill("1")
    page.locator("#train").click()
    page.wait_for_selector("#job-text[data-state='train:done']", timeout=120_000)
    assert (outdir / "rounds" / "1" / "model.pt").is_file()
    page.locator("#pick-all").click()
    page.wait_for_selector("#job-text[data-state='pick:done']", timeout=120_000)
    page.wait_for_selector("body[data-round='1']", timeout=30_000)
    round1 = outdir / "rounds" / "1"
    picks = pd.read_csv(round1 / "picks.csv")
    assert set(picks["micrograph"]) == {p.stem for p in (DEMO / "micrographs").glob("*.mrc")}
    assert (round1 / "labels.csv").is_file() and (round1 / "pupick_pick.json").is_file()
    assert _sha(outdir / "picks.csv") == original
    assert page.locator("#round").input_value() == "1"
    t = page.evaluate("pupickView.threshold")
    _until(page, f"document.getElementById('total-count').textContent === '{int((picks['score'] >= t).sum())}'")
