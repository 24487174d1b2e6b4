"""The browser pages at /ui/jobs/<id>/ of a running server: page and assets without data are public, the api/ behind
the token. Runs where core/service/view.py (the pages, issue 18) is installed."""
from __future__ import annotations

import http.client
import importlib.util
import json

import pytest
from service_server import TOKEN

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pupick.core.service.view") is None,
                                reason="the browser pages (pupick.core.service.view) are not in this checkout")


def get(server, path: str, token: bool = False) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_pages_of_a_job(server, client, data_root):
    job = client.submit_pick([str(data_root / "mics" / "061_10028.mrc")], "demo", {"views": 1})
    assert client.wait(job)["state"] == "done"
    status, page = get(server, f"/ui/jobs/{job}/?token={TOKEN}")
    assert status == 200 and b"<html" in page.lower()
    assert get(server, f"/ui/jobs/{job}/api/state")[0] == 401  # data needs the token
    status, body = get(server, f"/ui/jobs/{job}/api/state", token=True)
    assert status == 200 and json.loads(body)["outdir"].endswith(job)
    assert get(server, "/ui/jobs/0123456789abcdef/api/state", token=True)[0] == 404
