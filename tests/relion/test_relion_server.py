"""pupick_relion_pick/train in server mode against a real `pupick serve` on loopback, and model `general`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import starfile

from pupick.core.client import Client

from relion_project import DIAMETER_A, STEMS, exit_files, external_argv, make_project, run_external

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from service_server import TOKEN, Server, free_port  # noqa: E402  (the service tests' real-server helper)

PICK, TRAIN = "pupick_relion_pick", "pupick_relion_train"
MODEL = "External/job006/model.pt"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The server's data root; every project of this module lives under it."""
    return tmp_path_factory.mktemp("relion_root")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("relion_token") / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, root, token_file):
    srv = Server(tmp_path_factory.mktemp("relion_serve") / "state", root, token_file=token_file).start()
    yield srv
    srv.stop()


def _project(root: Path, name: str, model: Path | None = None, stems=STEMS, copies: int = 1):
    project = make_project(root / name, 50001)
    project.write_micrographs(stems, copies=copies)
    if model is not None:
        (project.root / MODEL).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model, project.root / MODEL)
    return project


def _coordinates(job: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(job.glob("Movies/*_pupick.star"))}


def _imported(stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def _run_importtime(project, exe: str, out: str, inputs: dict, params: dict, env: dict | None = None):
    """Run an executable as RELION does, under `python -X importtime` (the import list lands in run.err)."""
    job = project.root / out
    job.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-X", "importtime", *external_argv(exe, out, inputs, params, threads=2)]
    with open(job / "run.out", "a") as so, open(job / "run.err", "a") as se:
        return subprocess.run(argv, cwd=project.root, stdout=so, stderr=se, timeout=300, env=env)


def test_server_pick_writes_the_same_job_as_a_local_run_without_torch(root, server, token_file, trained_model):
    project = _project(root, "same", trained_model)
    local, remote = "External/job007/", "External/job008/"
    assert run_external(project, PICK, local, {"in_mics": project.mics_star}, {"model": MODEL},
                        threads=2).returncode == 0, (project.root / local / "run.err").read_text()
    done = _run_importtime(project, PICK, remote, {"in_mics": project.mics_star},
                           {"model": MODEL, "server": server.url, "token_file": str(token_file)})
    job = project.root / remote
    err = (job / "run.err").read_text()
    assert done.returncode == 0, err[-3000:]
    assert exit_files(job) == ["RELION_JOB_EXIT_SUCCESS"]
    modules = _imported(err)
    assert "pupick.core.client" in modules and "pupick.relion.pick" in modules  # the import list is real
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}, "server mode imported torch"
    # the same coordinate files, list and output node as the local job
    assert _coordinates(job) == _coordinates(project.root / local) and len(_coordinates(job)) == len(STEMS)
    nodes = starfile.read(job / "RELION_OUTPUT_NODES.star", always_dict=True)["output_nodes"]
    assert nodes["rlnPipeLineNodeName"].tolist() == [f"{remote}autopick.star"]
    listing = starfile.read(job / "autopick.star", always_dict=True)["coordinate_files"]
    assert listing["rlnMicrographCoordinates"].tolist() == [f"{remote}Movies/{s}_pupick.star" for s in STEMS]
    assert f"pupick server {server.url}" in (job / "run.out").read_text()


def test_server_abort_cancels_the_server_job_and_continue_finishes(root, server, token_file, trained_model):
    project = _project(root, "abort", trained_model, copies=3)  # 15 micrographs
    out = "External/job009/"
    job = project.root / out
    params = {"model": MODEL, "server": server.url}
    env = {**os.environ, "PUPICK_TOKEN_FILE": str(token_file)}  # the variable works as well as token_file
    argv = external_argv(PICK, out, {"in_mics": project.mics_star}, params, threads=1)
    job.mkdir(parents=True)
    with open(job / "run.out", "a") as so, open(job / "run.err", "a") as se:
        proc = subprocess.Popen(argv, cwd=project.root, stdout=so, stderr=se, env=env)
    client = server.client()
    try:
        deadline = time.monotonic() + 120
        running = []
        while time.monotonic() < deadline and proc.poll() is None:
            running = [j for j in client.jobs() if j.get("state") == "running" and int(j.get("done") or 0) >= 1]
            if running:
                break
            time.sleep(0.05)
        assert running, (job / "run.err").read_text()
        (job / "RELION_JOB_ABORT_NOW").touch()
        assert proc.wait(timeout=60) == 1, (job / "run.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert exit_files(job) == ["RELION_JOB_EXIT_ABORTED"]
    assert not (job / "RELION_JOB_ABORT_NOW").exists()
    state = client.job(running[0]["job"])
    deadline = time.monotonic() + 30
    while state["state"] not in ("cancelled", "done", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
        state = client.job(state["job"])
    assert state["state"] == "cancelled" and state["done"] < 15

    done = subprocess.run(argv, cwd=project.root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert exit_files(job) == ["RELION_JOB_EXIT_SUCCESS"]
    assert len(_coordinates(job)) == 15
    listing = starfile.read(job / "autopick.star", always_dict=True)["coordinate_files"]
    assert len(listing) == 15


@pytest.mark.parametrize("how, message", [
    ("down", "cannot reach the pupick server at http://127.0.0.1:{port} (connection refused)"),
    ("no token", "needs a token (401)"),
    ("wrong token", "refused the token (401)"),
])
def test_client_failures_are_one_line_in_run_err(root, server, tmp_path, trained_model, how, message):
    project = _project(root, f"fail_{how.replace(' ', '_')}", trained_model, stems=STEMS[:1])
    port = free_port()
    url = f"http://127.0.0.1:{port}" if how == "down" else server.url
    params = {"model": MODEL, "server": url}
    if how == "wrong token":
        bad = tmp_path / "bad_token"
        bad.write_text("not-the-token\n")
        bad.chmod(0o600)  # a token file others can read is refused before any request
        params["token_file"] = str(bad)
    out = "External/job010/"
    assert run_external(project, PICK, out, {"in_mics": project.mics_star}, params).returncode == 1
    job = project.root / out
    assert exit_files(job) == ["RELION_JOB_EXIT_FAILURE"]
    err = (job / "run.err").read_text()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("pupick_relion_pick: error: ") and message.format(port=port) in last, last
    assert not list(job.glob("Movies/*_pupick.star"))


def test_server_train_downloads_the_model_without_torch(root, server, token_file, demo_labels_df):
    project = _project(root, "train", stems=STEMS[:2])
    project.write_manual_picks(demo_labels_df, STEMS[:2])
    out = "External/job011/"
    params = {"diameter": str(DIAMETER_A), "epochs": "1", "steps_per_epoch": "2", "test_split": "0",
              "expected_particles": "150", "units": "8", "server": server.url, "token_file": str(token_file)}
    done = _run_importtime(project, TRAIN, out, {"in_mics": project.mics_star, "in_coords": project.coords_list},
                           params)
    job = project.root / out
    err = (job / "run.err").read_text()
    assert done.returncode == 0, err[-3000:]
    assert exit_files(job) == ["RELION_JOB_EXIT_SUCCESS"]
    modules = _imported(err)
    assert "pupick.core.client" in modules
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}, "server mode imported torch"
    from pupick.core.modelfile import load_model

    model = load_model(job / "model.pt")  # the server's trained model, downloaded whole
    assert model.config["diameter_px"] == pytest.approx(DIAMETER_A / 5.36, rel=0.01)
    assert (job / "training.json").is_file()
    nodes = starfile.read(job / "RELION_OUTPUT_NODES.star", always_dict=True)["output_nodes"]
    assert nodes["rlnPipeLineNodeName"].tolist()[0] == f"{out}model.pt"


@pytest.mark.parametrize("mode", ["local", "server"])
def test_pick_with_the_shipped_general_model(root, server, token_file, mode):
    project = _project(root, f"general_{mode}", stems=STEMS[:2])
    out = "External/job012/"
    params = {"model": "general", "diameter": str(DIAMETER_A)}
    if mode == "server":
        params.update(server=server.url, token_file=str(token_file))
    done = run_external(project, PICK, out, {"in_mics": project.mics_star}, params, threads=2)
    job = project.root / out
    assert done.returncode == 0, (job / "run.err").read_text()[-3000:]
    assert exit_files(job) == ["RELION_JOB_EXIT_SUCCESS"]
    files = _coordinates(job)
    assert len(files) == 2
    picks = [starfile.read(p) for p in sorted(job.glob("Movies/*_pupick.star"))]
    assert all(len(p) > 10 for p in picks)
    if mode == "server":  # the same picks as the local job
        local = project.root.parent / "general_local" / out
        if local.is_dir():
            assert files == _coordinates(local)
    else:
        assert "general model set to a" in (job / "run.out").read_text()


def test_general_model_needs_a_diameter(root, trained_model):
    project = _project(root, "general_nodiameter", stems=STEMS[:1])
    out = "External/job013/"
    assert run_external(project, PICK, out, {"in_mics": project.mics_star}, {"model": "general"}).returncode == 1
    last = (project.root / out / "run.err").read_text().splitlines()[-1]
    assert "parameter diameter is missing: model general" in last
