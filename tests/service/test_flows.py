"""The README's main flows against a real server: pick, train, pick with the new model; identical to local picks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pupick.core.client import pick_settings, pick_via_server, train_via_server
from pupick.core.config import PickConfig, PreprocessConfig, TrainConfig
from pupick.core.errors import InputError


def local_pick(mics: list[Path], model: Path, out: Path, *extra: str) -> Path:
    """`pupick pick` in its own process: the reference a server run must equal."""
    cmd = [sys.executable, "-m", "pupick.core.cli", "pick", *map(str, mics), "--model", str(model), "-o", str(out),
           "--device", "cpu", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out / "picks.csv"


@pytest.fixture(scope="module")
def five(data_root) -> list[Path]:
    return sorted((data_root / "mics").glob("[0-9]*.mrc"))


def test_pick_train_pick(server, client, five, models_dir, data_root, tmp_path):
    # 1. pick with a model registered on the server (from --models) == a local `pupick pick` with that file
    config = PickConfig(threshold=-4.0, views=1)  # one view keeps the test quick; the identity is the point
    cli_settings = {"format": "csv", "box_size": None}  # what `pupick pick` records besides the pick fields
    run = pick_via_server(client, five, "demo", config, tmp_path / "server1", settings=cli_settings, progress=False)
    assert run.run.failures == [] and run.micrographs == [p.stem for p in five]
    local = local_pick(five, models_dir / "demo.pt", tmp_path / "local1", "--threshold", "-4", "--views", "1")
    assert (tmp_path / "server1" / "picks.csv").read_bytes() == local.read_bytes()
    assert len(pd.read_csv(local)) > 100
    # the manifest records the same model and settings, so a local run could resume the server's OUTDIR
    server_manifest = json.loads((tmp_path / "server1" / "pupick_pick.json").read_text())
    local_manifest = json.loads((tmp_path / "local1" / "pupick_pick.json").read_text())
    assert server_manifest["settings"] == local_manifest["settings"]
    assert server_manifest["diameter_px"] == pytest.approx(local_manifest["diameter_px"])

    # 2. train on the server; the finished job names a new registered model, which downloads to a file
    labels = pd.read_csv(data_root / "particles.csv")
    tconf = TrainConfig(preprocess=PreprocessConfig(diameter_px=56), units=16, epochs=2, steps_per_epoch=6,
                        batch_size=4, expected_particles=150, test_split=0.0, seed=3)
    seen = []
    job = train_via_server(client, five[:4], labels, tconf, tmp_path / "new.pt", name="round1", progress=False,
                           on_progress=seen.append)
    assert job["state"] == "done" and job["model"] == "round1" and job["epochs"] == 2
    assert job["loss"] is not None and seen
    names = {m["name"]: m for m in client.models()}
    assert names["round1"]["source"] == "train" and names["round1"]["architecture"] == "resnet8"
    from pupick.core.modelfile import file_sha256

    assert file_sha256(tmp_path / "new.pt") == names["round1"]["sha256"]

    # 3. pick with the new model given as a local file (uploaded under its hash) == local pick with that file
    run = pick_via_server(client, five, tmp_path / "new.pt", config, tmp_path / "server2", progress=False)
    assert run.run.n_done == 5
    local = local_pick(five, tmp_path / "new.pt", tmp_path / "local2", "--threshold", "-4", "--views", "1")
    assert (tmp_path / "server2" / "picks.csv").read_bytes() == local.read_bytes()
    assert client.model(file_sha256(tmp_path / "new.pt")) is not None

    # a rerun into the same OUTDIR is a resume: nothing left to do, same picks, no server job
    before = len(client.jobs())
    again = pick_via_server(client, five, tmp_path / "new.pt", config, tmp_path / "server2", progress=False)
    assert len(again.skipped) == 5 and len(client.jobs()) == before
    assert (tmp_path / "server2" / "picks.csv").read_bytes() == local.read_bytes()
    # ... and other settings into it are refused, as a local run refuses them
    with pytest.raises(InputError, match="different"):
        pick_via_server(client, five, tmp_path / "new.pt", PickConfig(threshold=0.0), tmp_path / "server2",
                        progress=False)


def test_picks_formats_and_upload(client, five):
    job = client.submit_pick([str(five[0])], "demo", pick_settings(PickConfig(views=1)))
    assert client.wait(job)["state"] == "done"
    csv = client.picks(job, "csv")
    table = pd.read_csv(pd.io.common.StringIO(csv))
    as_json = client.picks(job, "json")
    assert len(as_json["picks"]) == len(table) > 0
    assert as_json["micrographs"] == [{"micrograph": five[0].stem, "path": str(five[0]), "state": "done"}]
    star = client.picks(job, "star")
    assert "_rlnCoordinateX" in star and star.count(five[0].stem) == len(table)
    # the fast path gives the same picks for the same bytes (CSV keeps 6 significant digits)
    fast = client.pick_upload(five[0], "demo", {"views": 1})
    assert fast["micrograph"] == five[0].stem
    got = [(f"{p['x']:.6g}", f"{p['y']:.6g}", f"{p['score']:.6g}") for p in fast["picks"]]
    want = [(f"{x:.6g}", f"{y:.6g}", f"{s:.6g}") for x, y, s in zip(table.x, table.y, table.score)]
    assert got == want


def test_blob_method_needs_no_model(client, five, tmp_path):
    config = PickConfig(method="blob", diameter_px=56, top_n=20)
    run = pick_via_server(client, five[:2], None, config, tmp_path / "blob", progress=False)
    picks = pd.read_csv(tmp_path / "blob" / "picks.csv")
    assert run.run.n_done == 2 and picks.groupby("micrograph").size().tolist() == [20, 20]


def test_cancel_and_list(client, data_root, server):
    mics = sorted((data_root / "mics").glob("*.mrc"))[:6]
    job = client.submit_pick([str(m) for m in mics], "demo", {"views": 8})
    cancelled = client.cancel(job)
    assert cancelled["state"] in ("cancelled", "running")
    final = client.wait(job)
    assert final["state"] == "cancelled" and final["done"] < final["total"]
    assert client.cancel(job) is None  # already finished: nothing to do
    listed = [j["job"] for j in client.jobs()]
    assert listed.count(job) == 1
    assert job in [j["job"] for j in client.jobs("cancelled")]
    assert '"event": "job"' in server.output() and f'"job": "{job}"' in server.output()
