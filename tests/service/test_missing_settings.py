"""Settings a model needs, refused at submission (422 naming the setting, on both pick endpoints, nothing queued):
a minimum distance for a model that records no particle diameter (trained with --scale), the diameter for the general
model; with the setting the same model picks."""
from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time

import pytest
from service_server import Server

from pupick.core.modelfile import load_model, save_state


def _post(server, path: str, body: bytes, content_type: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.fixture
def srv(tmp_path, data_root, trained_model):
    """A real server with the shipped general model and "bare", the test model saved without its diameter."""
    models = tmp_path / "models"
    models.mkdir()
    model = load_model(trained_model)
    save_state(models / "bare.pt", model.module.state_dict(), {**model.config, "diameter_px": None})
    server = Server(tmp_path / "state", data_root, models=models).start()
    yield server
    server.stop()


def _done(srv, job_id: str) -> dict:
    client, t0 = srv.client(), time.monotonic()
    while (job := client.job(job_id))["state"] not in ("done", "failed"):
        assert time.monotonic() - t0 < 120, srv.output()[-2000:]
        time.sleep(0.2)
    return job


def test_a_model_without_a_diameter_is_refused_before_the_job(srv, data_root):
    mic = data_root / "mics" / "061_10028.mrc"
    body = lambda **settings: json.dumps({"micrographs": [str(mic)], "model": "bare",  # noqa: E731
                                          "settings": settings}).encode()
    status, answer = _post(srv, "/v1/pick", body(), "application/json")
    assert status == 422 and "--min-distance" in answer["error"], answer
    status, answer = _post(srv, "/v1/pick", body(min_distance=20, exclude_carbon=True), "application/json")
    assert status == 422 and "excluding carbon needs the particle diameter" in answer["error"], answer
    status, answer = _post(srv, "/v1/pick/upload?model=bare&name=m", mic.read_bytes(), "application/octet-stream")
    assert status == 422 and "--min-distance" in answer["error"], answer
    client = srv.client()
    assert client.jobs() == []  # nothing was queued
    status, answer = _post(srv, "/v1/pick", body(min_distance=20), "application/json")
    assert status == 202, answer
    job = _done(srv, answer["job"])
    assert job["state"] == "done" and job["done"] == 1, job
    assert "Traceback" not in srv.output()


def test_the_general_model_without_a_diameter_is_refused_before_the_job(srv, data_root):
    mic = data_root / "mics" / "061_10028.mrc"
    body = lambda **settings: json.dumps({"micrographs": [str(mic)], "model": "general",  # noqa: E731
                                          "settings": settings}).encode()
    for path, payload, kind in (("/v1/pick", body(), "application/json"),
                                ("/v1/pick/upload?model=general&name=m", mic.read_bytes(),
                                 "application/octet-stream")):
        status, answer = _post(srv, path, payload, kind)
        assert status == 422 and "the general model needs the particle diameter" in answer["error"], answer
    assert srv.client().jobs() == []  # nothing was queued
    status, answer = _post(srv, "/v1/pick", body(diameter_px=56), "application/json")
    assert status == 202, answer
    job = _done(srv, answer["job"])
    assert job["state"] == "done" and job["done"] == 1, job
    assert "Traceback" not in srv.output()


def test_pick_via_a_server_checks_the_models_settings_before_any_output(srv, tmp_path, data_root):
    # `pupick pick --server`: the model's registered config (GET /v1/models/NAME, grid_diameter included) is checked
    # by the same rule before the output folder is made: exit 2, one line; with the setting it picks
    mic = str(data_root / "mics" / "061_10028.mrc")
    out = tmp_path / "out"

    def pick(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pupick.core.cli", "pick", mic, "--server", srv.url, "-o",
                               str(out), *extra], capture_output=True, text=True, timeout=300)

    for args, named in ((["--model", "general"], "the general model needs the particle diameter"),
                        (["--model", "bare"], "--min-distance")):
        res = pick(*args)
        assert res.returncode == 2 and named in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and not out.exists(), res.stderr
    assert srv.client().jobs() == []
    res = pick("--model", "bare", "--min-distance", "20")
    assert res.returncode == 0, res.stderr
    assert (out / "picks.csv").is_file()
