"""Issue 29, the service at facility scale: a server with default limits accepts one 50,000-micrograph job (413, one
line, only past --max-job-micrographs), and the json and star picks downloads stream (chunked, no Content-Length) the
very bytes a whole-table render gives. Memory during a download is measured in bench/, not here."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import time

import pandas as pd
import pytest
from service_server import TOKEN, Server

from pupick.adapters.registry import write_picks

BIG = 50_000
BLOB = {"method": "blob", "diameter_px": 56}


def _call(server: Server, method: str, path: str, body: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
    resp = conn.getresponse()
    resp.data = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


@pytest.fixture(scope="module")
def big_root(tmp_path_factory, demo_micrographs):
    """A data root with 50,000 micrographs: hard links, under new names, to one bundled micrograph."""
    root = tmp_path_factory.mktemp("big_root")
    mics = root / "mics"
    mics.mkdir()
    first = mics / "m00000.mrc"
    shutil.copy(demo_micrographs[0], first)
    for i in range(1, BIG):
        os.link(first, mics / f"m{i:05d}.mrc")
    return root


def test_a_50000_micrograph_job_is_accepted_by_default(tmp_path, big_root, token_file):
    srv = Server(tmp_path / "state", big_root, token_file=token_file, extra=["--no-workers"]).start()
    try:
        t0 = time.monotonic()
        resp = _call(srv, "POST", "/v1/pick", {"micrographs": [str(big_root / "mics")], "settings": BLOB})
        seconds = time.monotonic() - t0
        assert resp.status == 202, resp.data
        job = json.loads(resp.data)
        assert job["total"] == BIG
        got = json.loads(_call(srv, "GET", f"/v1/jobs/{job['job']}").data)
        assert (got["state"], got["total"], got["done"]) == ("queued", BIG, 0)
        print(f"50,000-micrograph submission: {seconds:.1f} s")
    finally:
        srv.stop()


def test_a_job_over_max_job_micrographs_gets_413_in_one_line(tmp_path, big_root, token_file):
    srv = Server(tmp_path / "state", big_root, token_file=token_file,
                 extra=["--no-workers", "--max-job-micrographs", str(BIG - 1)]).start()
    try:
        resp = _call(srv, "POST", "/v1/pick", {"micrographs": [str(big_root / "mics")], "settings": BLOB})
        error = json.loads(resp.data)["error"]
        assert resp.status == 413 and "--max-job-micrographs 49999" in error and f"{BIG} micrographs" in error
        assert "\n" not in error
        assert json.loads(_call(srv, "GET", "/v1/jobs").data)["jobs"] == []  # nothing was queued
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def picked(tmp_path_factory, demo_micrographs, token_file):
    """A server (workers on) and a done blob job on eight micrographs: the five bundled ones and three more names."""
    base = tmp_path_factory.mktemp("stream")
    root = base / "root"
    root.mkdir()
    for p in demo_micrographs:
        shutil.copy(p, root / p.name)
    for i, p in enumerate(demo_micrographs[:3]):
        os.link(root / p.name, root / f"again{i}_{p.name}")
    srv = Server(base / "state", root, token_file=token_file).start()
    client = srv.client()
    job = client.submit_pick([str(root)], None, BLOB)
    assert client.wait(job)["state"] == "done"
    yield srv, job
    srv.stop()


@pytest.mark.parametrize("fmt", ["json", "star"])
def test_downloads_stream_the_bytes_of_a_whole_render(picked, fmt, tmp_path):
    srv, job = picked
    resp = _call(srv, "GET", f"/v1/jobs/{job}/picks?format={fmt}")
    assert resp.status == 200
    assert resp.getheader("Content-Length") is None and resp.getheader("Transfer-Encoding") == "chunked"
    job_dir = srv.state / "jobs" / job
    table = pd.read_csv(job_dir / "picks.csv", dtype={"micrograph": str, "path": str}, keep_default_na=False,
                        na_values={"score": [""]})
    assert len(table) > 1000  # several chunks of the body, several picks per micrograph
    if fmt == "star":  # what the handler wrote before it streamed: write_picks of the whole table
        write_picks(table, tmp_path / "whole.star", fmt="star")
        assert resp.getheader("Content-Type").startswith("text/plain")
        assert resp.data == (tmp_path / "whole.star").read_bytes()
        return
    from pupick.core.service.worker import EXACT_DIR, read_exact

    mics = json.loads(resp.data)["micrographs"]
    assert [m["state"] for m in mics] == ["done"] * 8
    records = []
    for m in mics:
        records.extend({k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                       for r in read_exact(job_dir / EXACT_DIR / f"{m['micrograph']}.csv").to_dict("records"))
    whole = json.dumps({"job": job, "picks": records, "micrographs": mics}, ensure_ascii=False, allow_nan=False,
                       separators=(",", ":")).encode()  # starlette's JSONResponse, which sent it before
    assert resp.getheader("Content-Type") == "application/json"
    assert resp.data == whole and len(records) == len(table)
    assert [f"{r['x']:.6g}" for r in records] == [f"{x:.6g}" for x in table["x"]]
