"""Issue 26, the smaller items against a real `pupick serve`: a job whose micrographs all failed fails, the
Idempotency-Key is bound to its endpoint and body, a chunked body over the limit gets 413, bad limits exit 2,
proxy headers are ignored by default, the pages under the service are static for any id and read-only, and
`pupick train --server` reattaches to its job after a server restart."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from service_server import TOKEN, Server

from pupick.core.client import Client


def _request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             token: bool = True) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        hdrs = {"Authorization": f"Bearer {TOKEN}"} if token else {}
        conn.request(method, path, body=body, headers={**hdrs, **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, {"_raw": data[:200]}
    finally:
        conn.close()


def test_a_job_whose_micrographs_all_failed_fails(server, client, data_root):
    broken = data_root / f"broken_{uuid.uuid4().hex[:8]}"
    broken.mkdir()
    try:
        for name in ("a.mrc", "b.mrc", "c.mrc"):
            (broken / name).write_bytes(b"no MRC header here" * 10)
        job = client.submit_pick([str(broken)], None, {"method": "blob", "diameter_px": 56})
        final = client.wait(job, timeout=60, poll=0.2)
    finally:
        shutil.rmtree(broken)
    assert final["state"] == "failed", final
    assert final["error"].startswith("all 3 micrographs failed; the first: ") and "a.mrc" in final["error"]
    assert len(final["failures"]) == 3


def test_idempotency_key_is_bound_to_endpoint_and_body(server, data_root):
    mic = str(data_root / "mics" / "061_10028.mrc")
    body = {"micrographs": [mic], "settings": {"method": "blob", "diameter_px": 56}}
    key = {"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
    status, first = _request(server, "POST", "/v1/pick", json.dumps(body).encode(), key)
    assert status == 202
    status, again = _request(server, "POST", "/v1/pick", json.dumps(body).encode(), key)
    assert status == 202 and again["job"] == first["job"]
    other = {**body, "settings": {"method": "blob", "diameter_px": 60}}
    status, refused = _request(server, "POST", "/v1/pick", json.dumps(other).encode(), key)
    assert status == 422 and "Idempotency-Key" in refused["error"]
    # the same key on /v1/train is another endpoint's key: not the pick job (and its own body decides)
    train = {"micrographs": [mic], "labels_csv": "micrograph,x,y\nnothing,1,2\n"}
    status, answer = _request(server, "POST", "/v1/train", json.dumps(train).encode(), key)
    assert status == 400 and "labels name none" in answer["error"]


def test_a_chunked_body_over_the_limit_gets_413(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.putrequest("POST", "/v1/pick")
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b"[" + b" " * (1 << 20)
        try:
            for _ in range(20):  # 20 MB, over the 16 MB JSON limit, with no Content-Length to refuse up front
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                chunk = b" " * (1 << 20)
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before the whole body is sent
        resp = conn.getresponse()
        assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]
    finally:
        conn.close()
    assert Client(server.url, TOKEN).health() == {"status": "ok"}


@pytest.mark.parametrize("option, value", [("--max-upload-mb", "nan"), ("--max-model-mb", "inf"),
                                           ("--max-queue", "0"), ("--max-job-micrographs", "0"),
                                           ("--max-job-micrographs", "-5"), ("--retention", "-1"),
                                           ("--model-cache", "0"), ("--retention", "inf")])
def test_bad_limits_exit_2_with_one_line(tmp_path, option, value):
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-m", "pupick.core.cli", "serve", "--state", str(state), "--port", "0",
                           option, value], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and option in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not state.exists()


def test_proxy_headers_are_ignored_without_forwarded_allow_ips(server, data_root):
    body = {"micrographs": [str(data_root / "mics" / "062_10028.mrc")],
            "settings": {"method": "blob", "diameter_px": 56}}
    status, job = _request(server, "POST", "/v1/pick", json.dumps(body).encode(),
                           {"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.9"})
    assert status == 202
    lines = [json.loads(ln) for ln in server.output().splitlines() if job["job"] in ln and ln.startswith("{")]
    assert lines and all(ln["client"] == "127.0.0.1" for ln in lines)


def test_pages_are_static_for_any_id_and_read_only(server, client, data_root):
    page_status, page = _request(server, "GET", "/ui/jobs/0123456789abcdef/", token=False)
    assert page_status == 200 and b"<html" in page["_raw"].lower()  # the same page, no job looked up
    assert _request(server, "GET", "/ui/jobs/0123456789abcdef/api/state", token=False)[0] == 401
    status, answer = _request(server, "GET", "/ui/jobs/0123456789abcdef/api/state")
    assert status == 404 and "error" in answer
    status, answer = _request(server, "GET", "/ui/jobs/0123456789abcdef/static/..%2Fapp.py", token=False)
    assert status in (401, 404) and "error" in answer
    jobs = [client.submit_pick([str(data_root / "mics" / "copy_063_10028.mrc")], None,
                               {"method": "blob", "diameter_px": 56 + i}) for i in range(9)]
    for job in jobs:
        assert client.wait(job, timeout=60, poll=0.2)["state"] == "done"
    trains_before = len(client.jobs("running")) + len(client.jobs("queued"))
    for job in jobs:  # nine pages cannot start nine trainings: they start none, and say where training lives
        status, answer = _request(server, "POST", f"/ui/jobs/{job}/api/train", b'{"epochs": 1}',
                                  {"Content-Type": "application/json"})
        assert status == 405 and "POST /v1/train" in answer["error"]
        assert _request(server, "POST", f"/ui/jobs/{job}/api/pick", b"{}")[0] == 405
        # label edits pass (bounded, no worker: tests/service/test_view_labels.py); an unknown micrograph is 404
        assert _request(server, "PUT", f"/ui/jobs/{job}/api/labels/x", b'{"points": []}')[0] == 404
    assert len(client.jobs("running")) + len(client.jobs("queued")) == trains_before
    status, answer = _request(server, "GET", f"/ui/jobs/{jobs[0]}/api/nothing")
    assert status == 404 and set(answer) == {"error"}


def test_train_server_reattaches_after_a_server_restart(tmp_path, data_root):
    state = tmp_path / "state"
    first = Server(state, data_root).start()
    out = tmp_path / "trained.pt"
    args = [sys.executable, "-m", "pupick.core.cli", "train", *(str(p) for p in sorted((data_root / "mics").glob(
        "0*.mrc"))[:2]), "--labels", str(data_root / "particles.csv"), "-o", str(out), "--diameter-px", "56",
        "--units", "8", "--epochs", "3", "--steps-per-epoch", "25", "--batch-size", "4", "--seed", "1",
        "--server", first.url]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cli = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        probe = first.client()
        t0 = time.monotonic()
        while not probe.jobs("running") and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        (job,) = [j["job"] for j in probe.jobs("running")]
    finally:
        first.kill()
    _, err = cli.communicate(timeout=120)
    assert cli.returncode == 1 and "cannot reach" in err and not out.exists()
    second = Server(state, data_root, port=first.port).start()
    try:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"reattached to server job {job}" in done.stdout + done.stderr
        assert out.is_file() and not list(tmp_path.glob(".trained.pt.*"))
        assert [j["job"] for j in second.client().jobs()] == [job]  # no second training was submitted
    finally:
        second.stop()


def test_unused_models_and_cache_follow_retention(tmp_path, data_root, models_dir):
    """--retention of 3.6 s: an uploaded model no job uses and old training-cache files go; a model a queued job
    needs, and the --models files, stay. (--no-workers keeps the job queued.) The same server believes the proxy
    it is told of (--forwarded-allow-ips)."""
    srv = Server(tmp_path / "state", data_root, models=models_dir,
                 extra=["--retention", "0.001", "--no-workers", "--forwarded-allow-ips", "127.0.0.1"]).start()
    try:
        client = srv.client()
        client.upload_model(models_dir / "demo.pt", "unused")
        client.upload_model(models_dir / "demo.pt", "needed")
        job = client.submit_pick([str(data_root / "mics" / "061_10028.mrc")], "needed", {"views": 1})
        cached = tmp_path / "state" / "cache" / "abc" / "mic.npy"
        cached.parent.mkdir(parents=True)
        cached.write_bytes(b"preprocessed")
        os.utime(cached, (time.time() - 3600, time.time() - 3600))
        t0 = time.monotonic()
        while "unused" in {m["name"] for m in client.models()} or cached.exists():
            assert time.monotonic() - t0 < 20, srv.output()[-2000:]
            time.sleep(0.2)
        names = {m["name"] for m in client.models()}
        assert {"needed", "demo"} <= names and "unused" not in names
        assert client.job(job)["state"] == "queued"
        assert not (tmp_path / "state" / "models" / "unused.pt").exists()
        body = {"micrographs": [str(data_root / "mics" / "062_10028.mrc")],
                "settings": {"method": "blob", "diameter_px": 56}}
        status, proxied = _request(srv, "POST", "/v1/pick", json.dumps(body).encode(),
                                   {"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.9"},
                                   token=False)
        assert status == 202
        line = next(json.loads(ln) for ln in srv.output().splitlines() if proxied["job"] in ln)
        assert line["client"] == "203.0.113.9"
    finally:
        srv.stop()
