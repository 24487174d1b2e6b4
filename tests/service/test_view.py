"""`pupick view` over real HTTP on loopback (no browser): token, Host check, failures, labels, Apply threshold."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from pupick.core.errors import ERROR_CHARS

from view_helpers import DEMO, ViewProcess, pick_blob

BROKEN = "999_broken"


@pytest.fixture(scope="module")
def picked(tmp_path_factory) -> tuple[Path, Path]:
    """A blob-picker output of the five bundled micrographs plus one truncated MRC (which fails)."""
    root = tmp_path_factory.mktemp("viewhttp")
    mics = root / "mics"
    shutil.copytree(DEMO / "micrographs", mics)
    (mics / f"{BROKEN}.mrc").write_bytes((mics / "061_10028.mrc").read_bytes()[:5000])
    out = root / "out"
    with pytest.raises(subprocess.CalledProcessError):  # the broken micrograph makes the run exit 1
        pick_blob(out, sorted(mics.glob("*.mrc")))
    return out, mics


@pytest.fixture(scope="module")
def server(picked):
    out, mics = picked
    view = ViewProcess(str(out), "--labels", str(DEMO / "particles.csv"), "--micrographs", str(mics))
    yield view
    view.close()


def call(server, path: str, method: str = "GET", body=None, token: str | None = "ok", headers=None):
    """(status, parsed JSON or bytes, response headers)."""
    h = dict(headers or {})
    if token == "ok":
        h["Authorization"] = f"Bearer {server.token}"
    elif token is not None:
        h["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(server.base + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, raw, rh = r.status, r.read(), r.headers
    except urllib.error.HTTPError as err:
        status, raw, rh = err.code, err.read(), err.headers
    if rh.get("content-type", "").startswith("application/json"):
        return status, json.loads(raw), rh
    return status, raw, rh


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_first_line_is_a_loopback_url_with_a_token(server) -> None:
    assert server.url.startswith("http://127.0.0.1:") and len(server.token) >= 24
    status, page, _ = call(server, "/", token=None)
    assert status == 200 and b"static/app.js" in page


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_api_needs_the_token(server, token) -> None:
    status, body, _ = call(server, "/api/state", token=token)
    assert status == 401 and "token" in body["error"]
    assert call(server, "/api/state")[0] == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "192.168.0.1:{port}"])
def test_foreign_host_header_is_refused(server, host) -> None:
    for path in ("/", "/api/state"):
        status, body, _ = call(server, path, headers={"Host": host.format(port=server.port)})
        assert status == 421 and "host" in body["error"]
    status, body, _ = call(server, "/api/state", headers={"Host": "x" * 6000})
    assert status == 421 and len(body["error"]) <= ERROR_CHARS + 60


def test_localhost_names_are_accepted(server) -> None:
    for host in ("localhost", "127.0.0.1"):
        assert call(server, "/api/state", headers={"Host": f"{host}:{server.port}"})[0] == 200


def test_foreign_origin_cannot_change_anything(server) -> None:
    status, body, _ = call(server, "/api/labels/061_10028", "PUT", {"points": [[1, 2]]},
                           headers={"Origin": "http://evil.example"})
    assert status == 403


def test_failed_micrograph_is_listed_with_its_error(server) -> None:
    status, body, _ = call(server, "/api/round/0/micrographs")
    rows = {r["name"]: r for r in body["micrographs"]}
    assert len(rows) == 6
    assert rows[BROKEN]["error"] and rows[BROKEN]["n"] == 0
    ok = [r for n, r in rows.items() if n != BROKEN]
    assert all(r["error"] is None and r["n"] > 0 and r["score_min"] <= r["score_max"] for r in ok)


def test_picks_endpoint_matches_picks_csv(server, picked) -> None:
    picks = pd.read_csv(picked[0] / "picks.csv")
    for name, g in picks.groupby("micrograph"):
        body = call(server, f"/api/round/0/picks/{name}")[1]
        assert body["diameter_px"] == 56 and body["micrograph"] == name
        assert sorted(body["score"], reverse=True) == body["score"]
        assert body["score"] == pytest.approx(sorted(g["score"].tolist(), reverse=True))
        assert sorted(zip(body["x"], body["y"])) == sorted(zip(g["x"].tolist(), g["y"].tolist()))
    status, body, _ = call(server, f"/api/round/0/picks/{BROKEN}")  # known, failed: no picks
    assert status == 200 and body["score"] == []


def test_micrographs_are_served_a_window_at_a_time(server, picked) -> None:
    picks = pd.read_csv(picked[0] / "picks.csv")
    t = float(picks["score"].median())
    expected = picks[picks["score"] >= t].groupby("micrograph").size()
    body = call(server, f"/api/round/0/micrographs?offset=1&limit=2&sort=count&desc=true&threshold={t}")[1]
    order = [n for n in expected.sort_values(ascending=False, kind="stable").index]
    assert body["total"] == 6 and body["offset"] == 1 and len(body["micrographs"]) == 2
    assert [r["count"] for r in body["micrographs"]] == sorted(expected.to_list(), reverse=True)[1:3]
    assert body["at_threshold"] == int((picks["score"] >= t).sum()) and body["with_picks"] == 5
    assert set(r["name"] for r in body["micrographs"]) <= set(order)
    body = call(server, "/api/round/0/micrographs?q=062&limit=1")[1]
    assert body["total"] == 1 and body["micrographs"][0]["name"] == "062_10028"
    body = call(server, "/api/round/0/micrographs?limit=2&at=311_10028")[1]
    assert body["offset"] == 2 and "311_10028" in [r["name"] for r in body["micrographs"]]
    assert call(server, "/api/round/0/micrographs?limit=201")[0] == 422  # never more than 200 rows
    assert call(server, "/api/round/0/micrographs?sort=evil")[0] == 400
    assert call(server, "/api/round/0/neighbour?name=061_10028&step=1")[1]["name"] == "062_10028"
    assert call(server, "/api/round/0/neighbour?name=061_10028&step=-1")[1]["name"] == "312_10028"  # wraps


def test_score_histogram_is_binned_on_the_server(server, picked) -> None:
    import numpy as np

    picks = pd.read_csv(picked[0] / "picks.csv")
    body = call(server, "/api/round/0/scores")[1]
    assert len(body["counts"]) == 200 and sum(body["counts"]) == len(picks) == body["n"]
    assert body["lo"] == pytest.approx(picks["score"].min(), abs=1e-5)
    assert body["hi"] == pytest.approx(picks["score"].max(), abs=1e-5)
    want, _ = np.histogram(picks["score"].astype(np.float32), bins=200, range=(body["lo"], body["hi"]))
    assert np.abs(np.asarray(body["counts"]) - want).sum() <= 2  # float32 vs float64 bin edges


def test_analysis_gives_the_pr_curve_of_core_evaluate(server, picked) -> None:
    from pupick.core.evaluate import evaluate

    body = call(server, "/api/round/0/analysis")[1]
    picks = pd.read_csv(picked[0] / "picks.csv")
    ev = evaluate(picks, pd.read_csv(DEMO / "particles.csv"), 28.0)
    assert body["pr"]["ap"] == pytest.approx(ev.ap)
    assert body["suggested"]["threshold"] == pytest.approx(ev.threshold)


def test_picture_is_rendered_once_and_cached(server, picked) -> None:
    from PIL import Image

    status, data, headers = call(server, "/api/image/062_10028?size=view")
    assert status == 200 and headers["X-Pupick-Factor"] == "1" and headers["X-Pupick-Shape"] == "1024,1024"
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (1024, 1024)
    cached = list((picked[0] / ".pupick_view_cache").glob("062_10028-*"))
    assert len(cached) == 1
    assert call(server, "/api/image/062_10028?size=view")[1] == data
    status, thumb, _ = call(server, "/api/image/062_10028?size=thumb")
    with Image.open(io.BytesIO(thumb)) as im:
        assert max(im.size) == 192


@pytest.mark.parametrize("path,status", [
    ("/api/image/nope?size=view", 404), ("/api/image/062_10028?size=huge", 400), (f"/api/image/{BROKEN}", 400),
    ("/api/round/7/picks/061_10028", 400), ("/api/round/0/picks/nope", 404), ("/static/..%2Fview.py", 404), ("/static/view.py", 404),
    ("/api/image/" + "x" * 6000 + "?size=view", 404), ("/api/image/062_10028?size=" + "x" * 6000, 400),
])
def test_bad_requests_get_one_json_sentence(server, path, status) -> None:
    got, body, _ = call(server, path)
    assert got == status
    if path.startswith("/api"):
        assert isinstance(body["error"], str) and "\n" not in body["error"]
        assert len(body["error"]) <= ERROR_CHARS + 60  # a name the client sent is not echoed whole


def test_labels_are_saved_atomically_and_the_source_never_changes(server, picked) -> None:
    source = DEMO / "particles.csv"
    before = sha(source)
    status, body, _ = call(server, "/api/labels/063_10028", "PUT", {"points": [[10.5, 20.25], [300, 400]]})
    assert status == 200 and body["n"] == 2
    saved = pd.read_csv(picked[0] / "labels.csv")
    mine = saved[saved["micrograph"] == "063_10028"]
    assert mine[["x", "y"]].values.tolist() == [[10.5, 20.25], [300.0, 400.0]]
    others = pd.read_csv(source)
    assert len(saved) == len(others[others["micrograph"] != "063_10028"]) + 2  # a copy of --labels, then edited
    assert sha(source) == before
    assert call(server, "/api/labels/nope", "PUT", {"points": []})[0] == 404
    assert call(server, "/api/labels/063_10028", "PUT", {"points": "x"})[0] == 422
    assert call(server, "/api/labels/063_10028", "PUT", b"{not json")[0] == 422
    assert not list(picked[0].glob(".labels.csv.*"))  # no temporary file left behind


@pytest.mark.parametrize("fmt", ["csv", "star", "box", "topaz"])
def test_apply_threshold_writes_a_new_file_and_keeps_picks_csv(server, picked, fmt) -> None:
    from pupick.adapters.registry import read_picks

    out = picked[0]
    original = sha(out / "picks.csv")
    picks = pd.read_csv(out / "picks.csv")
    t = 3.25
    status, body, _ = call(server, "/api/apply", "POST", {"round": 0, "threshold": t, "format": fmt})
    assert status == 200, body
    target = Path(body["path"])
    assert target.exists() and target.parent == out / "exports"
    assert body["n"] == int((picks["score"] >= t).sum())
    back = read_picks(target, fmt="relion" if fmt == "star" and target.is_dir() else None)
    assert len(back) == body["n"]
    if fmt in ("csv", "star", "topaz"):  # streamed from picks.csv: the file the kept table written whole gives
        from pupick.adapters.registry import write_picks

        table = pd.read_csv(out / "picks.csv", dtype={"micrograph": str, "path": str}, keep_default_na=False,
                            na_values={"score": [""], "x": [""], "y": [""]})
        whole = out.parent / f"whole{target.suffix}"
        write_picks(table[table["score"] >= t], whole, fmt=fmt)
        assert target.read_bytes() == whole.read_bytes()
        whole.unlink()
    again = call(server, "/api/apply", "POST", {"round": 0, "threshold": t, "format": fmt})[1]
    assert again["path"] != body["path"]  # never overwrites an earlier export
    assert sha(out / "picks.csv") == original


def test_apply_rejects_bad_input(server) -> None:
    assert call(server, "/api/apply", "POST", {"threshold": 1, "format": "cs"})[0] == 400
    assert call(server, "/api/apply", "POST", {"format": "csv"})[0] == 422
    assert call(server, "/api/pick", "POST", {})[0] == 400  # no trained round yet


def test_bad_outdir_is_one_line_and_no_server(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "pupick.core.cli", "view", str(tmp_path / "nope"), "--no-browser"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "nope" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "pupick.core.cli", "view", str(tmp_path / "empty"), "--no-browser"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "picks.csv" in r.stderr and "Traceback" not in r.stderr
