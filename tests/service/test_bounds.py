"""Issue 26: a client cannot claim unbounded memory or time through settings; each over-the-bound setting is a 422
naming it, from the same config checks as the CLI, and nothing is queued."""
from __future__ import annotations

import http.client
import json

import pytest

from service_server import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}

TRAIN = [
    ({"batch_size": 1_000_000}, "--batch-size"),
    ({"tile_size": 100_000}, "--tile-size"),
    ({"batch_size": 256, "tile_size": 1024}, "--batch-size x --tile-size²"),
    ({"epochs": 1_000_000, "steps_per_epoch": 1_000_000}, "--epochs x --steps-per-epoch"),
    ({"label_radius": 1e9}, "--label-radius"),
    ({"units": 100_000}, "--units"),
    ({"frozen_layers": 10 ** 9}, "--frozen-layers"),
]
PICK = [({"tile_size": 1_000_000}, "--tile-size"), ({"max_picks": 10 ** 12}, "--max-picks"), ({"views": 64}, "--views")]


def _post(port: int, path: str, body: bytes | None, headers: dict) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())["error"]
    finally:
        conn.close()


@pytest.mark.parametrize("settings,named", TRAIN, ids=[str(s) for s, _ in TRAIN])
def test_train_settings_over_their_bound_get_422(server, client, data_root, settings, named):
    before = len(client.jobs())
    mic = str(data_root / "mics" / "061_10028.mrc")
    body = json.dumps({"micrographs": [mic], "labels_path": str(data_root / "particles.csv"),
                       "settings": {"diameter_px": 56, **settings}}).encode()
    status, error = _post(server.port, "/v1/train", body, JSON)
    assert status == 422 and named in error and "\n" not in error, (status, error)
    assert len(client.jobs()) == before


@pytest.mark.parametrize("settings,named", PICK, ids=[str(s) for s, _ in PICK])
def test_pick_settings_over_their_bound_get_422(server, client, data_root, settings, named):
    before = len(client.jobs())
    mic = str(data_root / "mics" / "061_10028.mrc")
    status, error = _post(server.port, "/v1/pick", json.dumps({"micrographs": [mic], "model": "demo",
                                                                "settings": settings}).encode(), JSON)
    assert status == 422 and named in error and "\n" not in error, (status, error)
    query = "&".join(f"{k}={v}" for k, v in settings.items())
    status, error = _post(server.port, f"/v1/pick/upload?model=demo&name=a&{query}",
                          (data_root / "mics" / "061_10028.mrc").read_bytes(), AUTH)
    assert status == 422 and named in error, (status, error)
    assert len(client.jobs()) == before
