"""`pupick view` of 2,000 micrographs in a real headless Chromium: the page never holds more than 200 table rows,
paging and the name filter reach every micrograph, and a micrograph far down the list opens with its picks."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from test_view_browser import browser, _until  # noqa: F401  (the module's Chromium fixture)
from view_helpers import ViewProcess, clone_outdir, pick_blob

N = 2000
ROWS = "document.querySelectorAll('#mics tbody tr').length"


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("viewscale")
    return clone_outdir(pick_blob(root / "real"), N, root / "clone")


@pytest.fixture(scope="module")
def server(big: Path):
    view = ViewProcess(str(big))
    yield view
    view.close()


def test_the_table_holds_at_most_200_rows_and_reaches_every_micrograph(browser, server, big) -> None:  # noqa: F811
    picks = pd.read_csv(big / "picks.csv", dtype={"micrograph": str})
    assert picks["micrograph"].nunique() == N
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    big_requests: list[str] = []
    page.on("requestfinished", lambda r: big_requests.append(r.url) if "/api/" in r.url and "/api/image/" not in r.url and
            (r.sizes()["responseBodySize"] > 400_000) else None)
    try:
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert page.evaluate(ROWS) == 200
        assert page.locator("#page-text").inner_text() == f"1–200 of {N}"
        assert page.locator("#mics tbody tr").first.get_attribute("data-name") == "c000000"
        # page down to the last window: each holds 200 rows, never more
        for k in range(1, N // 200):
            page.locator("#page-next").click()
            _until(page, f"document.querySelector('#mics tbody').dataset.offset === '{k * 200}'")
            assert page.evaluate(ROWS) == 200
        assert page.locator("#page-next").is_disabled()
        far = f"c{N - 1:06d}"
        mine = picks[picks["micrograph"] == far]
        page.locator(f"tr[data-name='{far}']").click()
        page.wait_for_selector(f"body[data-micrograph='{far}']")
        _until(page, "document.getElementById('pick-layer').dataset.drawn !== undefined")
        t = page.evaluate("pupickView.threshold")
        want = int((mine["score"] >= t).sum())
        assert want > 0 and int(page.locator("#mic-count").inner_text()) == want
        assert int(page.locator("#pick-layer").get_attribute("data-drawn")) == want
        # next wraps to the first micrograph (the server's order)
        page.keyboard.press("n")
        page.wait_for_selector("body[data-micrograph='c000000']")
        page.keyboard.press("b")
        page.wait_for_selector(f"body[data-micrograph='{far}']")
        # back to the table: the window that holds it, still 200 rows; the total at the threshold is the file's
        page.locator("#back").click()
        _until(page, "document.querySelector('#mics tbody').dataset.offset === '1800'")
        assert page.evaluate(ROWS) == 200
        _until(page, f"document.getElementById('total-count').textContent === '{int((picks['score'] >= t).sum())}'")
        # sorting by count is done by the server, over all 2,000
        page.locator("th[data-sort='count']").click()
        _until(page, "document.querySelector('#mics tbody').dataset.offset === '0'")
        counts = picks[picks["score"] >= t].groupby("micrograph").size()
        first = int(page.locator("#mics tbody tr td.count").first.inner_text())
        assert first == counts.max() and page.evaluate(ROWS) == 200
        # the filter finds one micrograph among them
        page.locator("#filter").fill("c001234")
        _until(page, f"{ROWS} === 1")
        assert page.locator("#page-text").inner_text() == "1–1 of 1"
        assert not big_requests, big_requests  # no answer ships the whole data set
    finally:
        context.close()
    assert not problems, problems
