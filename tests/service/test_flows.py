"""The README's main flows against a real server: pick, train, pick with the new model; identical to local picks."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pupick.core.client import ServerError, pick_settings, pick_via_server, train_via_server
from pupick.core.config import PickConfig, PreprocessConfig, TrainConfig


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pupick.core.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    return done


def local_pick(mics: list[Path], model: Path, out: Path, *extra: str) -> Path:
    """`pupick pick` in its own process: the reference a server run must equal."""
    done = cli("pick", *mics, "--model", model, "-o", out, "--device", "cpu", *extra)
    assert done.returncode == 0, done.stderr
    return out / "picks.csv"


@pytest.fixture(scope="module")
def five(data_root) -> list[Path]:
    return sorted((data_root / "mics").glob("[0-9]*.mrc"))


SETTINGS = ("--threshold", "-4", "--views", "1")  # one view keeps the test quick; the identity is the point


def test_pick_train_pick(server, client, five, models_dir, data_root, token_file, tmp_path):
    remote = ("--server", server.url, "--token-file", token_file)
    # 1. `pupick pick --server` with a model registered on the server == `pupick pick` here with that file
    done = cli("pick", *five, "--model", "demo", "-o", tmp_path / "server1", *SETTINGS, *remote)
    assert done.returncode == 0, done.stderr
    local = local_pick(five, models_dir / "demo.pt", tmp_path / "local1", *SETTINGS)
    assert (tmp_path / "server1" / "picks.csv").read_bytes() == local.read_bytes()
    assert len(pd.read_csv(local)) > 100
    index = Path(".pupick_records") / "picks_index.bin"  # picks.csv's view index, the same bytes too
    assert (tmp_path / "server1" / index).read_bytes() == (tmp_path / "local1" / index).read_bytes()
    # the manifest records the same model and settings, so a local run could resume the server's OUTDIR
    server_manifest = json.loads((tmp_path / "server1" / "pupick_pick.json").read_text())
    local_manifest = json.loads((tmp_path / "local1" / "pupick_pick.json").read_text())
    assert server_manifest["settings"] == local_manifest["settings"]
    assert server_manifest["diameter_px"] == pytest.approx(local_manifest["diameter_px"])
    for p in five:  # the per-micrograph files too
        assert (tmp_path / "server1" / "coordinates" / f"{p.stem}.csv").read_bytes() == \
            (tmp_path / "local1" / "coordinates" / f"{p.stem}.csv").read_bytes()

    # 2. `pupick train --server`: the job registers a new model on the server, downloaded to -o
    done = cli("train", *five[:4], "--labels", data_root / "particles.csv", "-o", tmp_path / "new.pt",
               "--diameter-px", "56", "--units", "16", "--epochs", "2", "--steps-per-epoch", "6", "--batch-size", "4",
               "--expected-particles", "150", "--test-split", "0", "--seed", "3", "--quiet", *remote)
    assert done.returncode == 0, done.stderr
    job = next(j for j in client.jobs() if j["kind"] == "train")
    assert job["state"] == "done" and job["epochs"] == 2 and job["loss"] is not None
    assert f"registered on the server as {job['model']}" in done.stdout
    names = {m["name"]: m for m in client.models()}
    assert names[job["model"]]["source"] == "train" and names[job["model"]]["architecture"] == "resnet8"
    from pupick.core.modelfile import file_sha256, load_model

    assert file_sha256(tmp_path / "new.pt") == names[job["model"]]["file_sha256"]
    assert load_model(tmp_path / "new.pt").sha256 == names[job["model"]]["sha256"]  # the identity manifests record

    # 3. pick with the new model as a local file (uploaded under its hash; token from $PUPICK_TOKEN_FILE)
    env = {"PUPICK_TOKEN_FILE": str(token_file)}
    done = cli("pick", *five, "--model", tmp_path / "new.pt", "-o", tmp_path / "server2", *SETTINGS, "--server",
               server.url, env=env)
    assert done.returncode == 0, done.stderr
    local = local_pick(five, tmp_path / "new.pt", tmp_path / "local2", *SETTINGS)
    assert (tmp_path / "server2" / "picks.csv").read_bytes() == local.read_bytes()
    assert client.model(file_sha256(tmp_path / "new.pt")) is not None

    # a rerun into the same OUTDIR is a resume: nothing left to do, same picks, no server job
    before = len(client.jobs())
    done = cli("pick", *five, "--model", tmp_path / "new.pt", "-o", tmp_path / "server2", *SETTINGS, "--server",
               server.url, env=env)
    assert done.returncode == 0 and "5 micrograph(s) already picked" in done.stderr
    assert len(client.jobs()) == before
    assert (tmp_path / "server2" / "picks.csv").read_bytes() == local.read_bytes()
    # ... and other settings into it are refused, as a local run refuses them
    done = cli("pick", *five, "--model", tmp_path / "new.pt", "-o", tmp_path / "server2", "--threshold", "0",
               "--server", server.url, env=env)
    assert done.returncode == 1 and "different" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_client_failures_are_one_line(server, five, tmp_path):
    with socket.socket() as closed:  # bound, never listening: a port known to refuse for as long as this holds it
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
        done = cli("pick", *five[:1], "--model", "demo", "-o", tmp_path / "x", "--server", dead)
    assert done.returncode == 1 and "cannot reach the pupick server" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = cli("pick", *five[:1], "--model", "demo", "-o", tmp_path / "x", "--server", server.url)
    assert done.returncode == 1 and "needs a token (401)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_train_via_server_api(client, five, data_root, tmp_path):
    labels = pd.read_csv(data_root / "particles.csv")
    tconf = TrainConfig(preprocess=PreprocessConfig(diameter_px=56), units=8, epochs=1, steps_per_epoch=3,
                        batch_size=2, expected_particles=150, test_split=0.0, seed=1)
    seen = []
    job = train_via_server(client, five[:2], labels, tconf, tmp_path / "api.pt", name="round1", progress=False,
                           on_progress=seen.append)
    assert job["state"] == "done" and job["model"] == "round1" and seen and (tmp_path / "api.pt").is_file()
    with pytest.raises(ServerError) as err:  # the name is taken now
        client.submit_train(five[:2], labels_csv=labels.to_csv(index=False), name="round1")
    assert err.value.status == 409


def test_picks_formats_and_upload(client, five):
    job = client.submit_pick([str(five[0])], "demo", pick_settings(PickConfig.from_settings({"views": 1})))
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
    config = PickConfig.from_settings({"method": "blob", "diameter_px": 56, "max_picks": 20})
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


def test_shipped_models_are_offered(client):
    from pupick.core import modelfile

    shipped = getattr(modelfile, "SHIPPED_MODELS", {})
    present = [n for n, f in shipped.items() if (modelfile.SHIPPED_DIR / f).is_file()]
    if not present:
        pytest.skip("this installation ships no model yet")
    models = {m["name"]: m for m in client.models()}
    assert all(models[n]["source"] == "shipped" for n in present)


def test_suite_tables_keep_names_and_pixel_sizes(client, five, tmp_path):
    """A suite's micrograph table (its names, per-micrograph pixel sizes) picks on the server as it does here."""
    from pupick.core.outputs import pick_to_dir

    table = pd.DataFrame({"micrograph": ["a", "b", "c"], "path": [str(p) for p in five[:3]],
                          "pixel_size": [5.36, 4.0, 6.5]})
    config = PickConfig.from_settings({"method": "blob", "diameter": 300, "max_picks": 30, "device": "cpu"})
    remote = pick_via_server(client, table, None, config, tmp_path / "server", progress=False)
    local = pick_to_dir(table, None, config, tmp_path / "local")
    assert remote.micrographs == ["a", "b", "c"]
    assert (tmp_path / "server" / "picks.csv").read_bytes() == local.picks_path.read_bytes()
    sizes = pd.read_csv(local.picks_path).groupby("micrograph").size()
    assert list(sizes.index) == ["a", "b", "c"] and (sizes == 30).all()
