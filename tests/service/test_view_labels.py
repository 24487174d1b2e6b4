"""The labels the pages save, attacked: `PUT api/labels/<mic>` takes JSON numbers only, finite, inside the
micrograph; at most 10,000 labels per micrograph and 1 MB per request (413, refused while the body is still coming);
every error is {"error": ...}; the same under `pupick serve`'s /ui/jobs/<id>/. A bad labels.csv row at start is one
line `labels.csv:ROW: ...`, exit 2. With no labels, the suggested threshold comes from the model's expected count."""
from __future__ import annotations

import http.client
import json
import select
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from service_server import TOKEN
from view_helpers import DEMO, ViewProcess, pick_blob

MIC = "063_10028"  # 1024 x 1024
BAD_POINTS = {
    "huge": [[1e308, 1e308]],
    "negative": [[-1, 5]],
    "x at the width": [[1024, 5]],
    "y past the height": [[5, 1e4]],
    "booleans": [[True, False]],
    "strings": [["12", "13"]],
    "null": [[None, 3]],
    "three numbers": [[1, 2, 3]],
    "not a pair": [5],
}


class Pages:
    """Raw HTTP to one set of pages (a `pupick view` or a job's /ui/jobs/<id>/ under `pupick serve`)."""

    def __init__(self, port: int, prefix: str, token: str) -> None:
        self.port, self.prefix, self.token = port, prefix, token

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, self.prefix + path, body=body, headers={
                "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                "Host": f"127.0.0.1:{self.port}", **(headers or {})})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw
        finally:
            conn.close()

    def put_points(self, points) -> tuple[int, object]:
        return self.request("PUT", f"/api/labels/{MIC}", json.dumps({"points": points}).encode())

    def streamed_put(self, total: int, chunk: int = 65536) -> tuple[int, int, object]:
        """A chunked PUT of `total` bytes (no Content-Length): (status, bytes sent before the answer, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest("PUT", f"{self.prefix}/api/labels/{MIC}", skip_host=True)
            for k, v in {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                         "Host": f"127.0.0.1:{self.port}", "Transfer-Encoding": "chunked"}.items():
                conn.putheader(k, v)
            conn.endheaders()
            piece = b'{"points": [' + b"[1, 2], " * (chunk // 8)
            sent = 0
            try:
                while sent < total:
                    if select.select([conn.sock], [], [], 0.05 if sent > 1 << 20 else 0)[0]:
                        break  # the answer came while the body was still coming
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                    sent += len(piece)
                    piece = b"[1, 2], " * (chunk // 8)
                else:
                    conn.send(b"0\r\n\r\n")
            except OSError:  # the server answered and closed while we were still sending
                pass
            resp = conn.getresponse()
            return resp.status, sent, json.loads(resp.read())
        finally:
            conn.close()


def _check_rules(pages: Pages, labels_csv: Path, exports: bool = True) -> None:
    status, body = pages.put_points([[10.5, 20.25], [1023.5, 0]])
    assert status == 200 and body["n"] == 2, body
    before = labels_csv.read_bytes()
    for case, points in BAD_POINTS.items():
        status, body = pages.put_points(points)
        assert status == 422, (case, status, body)
        assert isinstance(body["error"], str) and "\n" not in body["error"], (case, body)
    status, body = pages.request("PUT", f"/api/labels/{MIC}", b'{"points": [[NaN, 1]]}')
    assert status == 422 and "error" in body, body
    status, body = pages.request("PUT", f"/api/labels/{MIC}", b"{not json")
    assert status == 422 and "error" in body, body
    status, body = pages.put_points([[float(i % 1000), float(i // 1000)] for i in range(10_001)])
    assert status == 413 and "10000" in body["error"].replace(",", ""), body
    status, body = pages.request("PUT", f"/api/labels/{MIC}", b'{"points": [' + b" " * 1_100_000 + b"]}")
    assert status == 413 and "error" in body, body
    status, sent, body = pages.streamed_put(40_000_000)  # 40 MB announced by nothing: cut off while reading
    assert status == 413 and sent < 8_000_000 and "error" in body, (status, sent, body)
    assert labels_csv.read_bytes() == before  # nothing of the refused requests was saved
    status, body = pages.put_points([[float(i % 1000), float(i // 1000)] for i in range(10_000)])  # the limit
    assert status == 200 and body["n"] == 10_000, body
    status, body = pages.request("POST", "/api/apply", b'{"format": "csv"}')  # a pydantic 422 is {"error"} too
    assert status == (422 if exports else 405) and isinstance(body.get("error"), str), body  # serve: no exports


@pytest.fixture(scope="module")
def picked(tmp_path_factory) -> Path:
    return pick_blob(tmp_path_factory.mktemp("viewlabels") / "out", sorted((DEMO / "micrographs").glob("*.mrc"))[:3])


def test_view_labels_are_numbers_inside_the_micrograph_and_bounded(picked) -> None:
    view = ViewProcess(str(picked))
    try:
        _check_rules(Pages(view.port, "", view.token), picked / "labels.csv")
    finally:
        view.close()


def test_the_same_rules_hold_under_serve(server, client, data_root) -> None:
    job = client.submit_pick([str(data_root / "mics" / f"{MIC}.mrc")], "demo", {"views": 1})
    assert client.wait(job)["state"] == "done"
    _check_rules(Pages(server.port, f"/ui/jobs/{job}", TOKEN), server.state / "jobs" / job / "labels.csv",
                 exports=False)


def test_a_bad_labels_csv_row_is_one_line_and_exit_2(picked, tmp_path) -> None:
    from pupick.core.errors import InputError
    from pupick.core.service.view_labels import LabelStore

    out = tmp_path / "out"
    out.mkdir()
    for name in ("picks.csv", "pupick_pick.json"):
        (out / name).write_bytes((picked / name).read_bytes())
    labels = out / "labels.csv"
    for row, message in [("063_10028,5,nan", "labels.csv:3: y is nan, not a finite number"),
                         ("063_10028,-4,5", "labels.csv:3: x is -4, below 0"),
                         ("063_10028,abc,5", "labels.csv:3: x is 'abc', not a number")]:
        labels.write_text(f"micrograph,x,y\n063_10028,10,20\n{row}\n")
        with pytest.raises(InputError, match=message):
            LabelStore(labels)
    r = subprocess.run([sys.executable, "-m", "pupick.core.cli", "view", str(out), "--no-browser"],
                       capture_output=True, text=True, timeout=120)  # the last one, as the user meets it
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"pupick: error: {labels}:3: x is 'abc', not a number", r.stderr


def test_suggested_threshold_without_labels_comes_from_the_models_expected_count(trained_model, tmp_path,
                                                                                    capsys) -> None:
    from console_run import run_console

    from pupick.core.cli import main

    out = tmp_path / "out"
    mics = [str(p) for p in sorted((DEMO / "micrographs").glob("*.mrc"))[:2]]
    code, stdout, err = run_console(main, capsys, ["pick", *mics, "--model", trained_model, "-o", out, "--device",
                                                   "cpu", "--views", "1"])
    assert code == 0, err
    printed = next(line for line in stdout.splitlines() if line.startswith("suggested threshold"))
    view = ViewProcess(str(out))
    try:
        status, body = Pages(view.port, "", view.token).request("GET", "/api/round/0/analysis")
    finally:
        view.close()
    assert status == 200 and body["suggested"] is not None, body
    assert "expected" in body["suggested"]["reason"]
    assert f"suggested threshold {body['suggested']['threshold']:.2f}" == printed.split(":")[0]
