"""pupick_relion_train run the way RELION's External job runs it (short trainings: the pick tests reuse one model)."""
from __future__ import annotations

import json
import time

import pytest
import starfile

from pupick.core.modelfile import load_model

from relion_project import DIAMETER_A, PIXEL_SIZE, STEMS, exit_files, make_project, run_external

EXE = "pupick_relion_train"
SHORT = {"diameter": str(DIAMETER_A), "epochs": "1", "steps_per_epoch": "1", "test_split": "0",
         "expected_particles": "150"}


def _nodes(job) -> list[tuple[str, str]]:
    table = starfile.read(job / "RELION_OUTPUT_NODES.star", always_dict=True)["output_nodes"]
    return list(zip(table["rlnPipeLineNodeName"], table["rlnPipeLineNodeTypeLabel"]))


@pytest.mark.parametrize("version, labels_from, model_label", [
    (50001, "in_coords", "ParamsData.sav.pupick.model"),
    (30001, "in_parts", "ProcessData.sav.pupick.model"),
])
def test_train_from_picks_or_particles(tmp_path, demo_labels_df, version, labels_from, model_label):
    project = make_project(tmp_path / "project", version)
    project.write_micrographs(STEMS[:3])  # the third has no labels: left out of training
    project.write_manual_picks(demo_labels_df, STEMS[:2])
    project.write_particles(demo_labels_df, STEMS[:2])
    labels = project.coords_list if labels_from == "in_coords" else project.particles_star
    out = "External/job006/"
    job = project.root / out
    inputs = {"in_mics": project.mics_star, labels_from: labels}
    done = run_external(project, EXE, out, inputs, {**SHORT, "arch": "resnet8"})
    assert done.returncode == 0, (job / "run.err").read_text()
    assert exit_files(job) == ["RELION_JOB_EXIT_SUCCESS"]
    assert _nodes(job) == [(f"{out}model.pt", model_label), (f"{out}training.pdf", "LogFile.pdf.pupick.training")]
    assert (job / "training.pdf").read_bytes().startswith(b"%PDF")

    model = load_model(job / "model.pt")
    assert model.config["arch"] == "resnet8"
    assert model.config["pixel_size"] == pytest.approx(PIXEL_SIZE)  # from the micrographs STAR, not the MRC header
    assert model.config["diameter_px"] == pytest.approx(DIAMETER_A / PIXEL_SIZE)
    n_labels = int(demo_labels_df["micrograph"].isin(STEMS[:2]).sum())
    summary = json.loads((job / "training.json").read_text())
    assert summary["n_labels"] == n_labels and summary["labels"] == labels
    assert f"{n_labels} labelled particle(s) from {labels}; 2 of the 3 micrograph(s)" in (job / "run.out").read_text()
    assert model.config["provenance"]["micrographs"] == STEMS[:2]

    # RELION's continue: the finished model is kept, nodes are listed again
    stamp = (job / "model.pt").stat().st_mtime_ns
    time.sleep(0.01)
    assert run_external(project, EXE, out, inputs, {**SHORT, "arch": "resnet8"}).returncode == 0
    assert exit_files(job) == ["RELION_JOB_EXIT_SUCCESS"]
    assert (job / "model.pt").stat().st_mtime_ns == stamp
    assert "kept as is" in (job / "run.out").read_text()


def test_train_fine_tunes_the_general_model(tmp_path, demo_labels_df):
    project = make_project(tmp_path / "project", 50001)
    project.write_micrographs(STEMS[:1])
    project.write_manual_picks(demo_labels_df, STEMS[:1])
    out = "External/job007/"
    done = run_external(project, EXE, out, {"in_mics": project.mics_star, "in_coords": project.coords_list},
                        {**SHORT, "init": "general"})
    assert done.returncode == 0, (project.root / out / "run.err").read_text()
    cfg = load_model(project.root / out / "model.pt").config
    assert cfg["provenance"]["train_config"]["init"] == "general"
    grid = load_model("general").config["grid_diameter"]
    assert cfg["factor"] == pytest.approx(DIAMETER_A / PIXEL_SIZE / grid)
    assert "fine-tuning from general" in (project.root / out / "run.out").read_text()


@pytest.mark.parametrize("inputs, params, message", [
    ({"in_coords": "c"}, SHORT, "--in_mics is missing"),
    ({"in_mics": "m", "in_coords": "c", "in_parts": "p"}, SHORT, "--in_coords .* or --in_parts .*, not both"),
    ({"in_mics": "m"}, {"epochs": "1"}, "parameter diameter is missing"),
    ({"in_mics": "m", "in_3dref": "r.mrc"}, SHORT, "does not read --in_3dref"),
    ({"in_mics": "m", "in_coords": "c"}, {**SHORT, "arch": "resnet9"}, r"--arch must be one of resnet8, .* \(got 'resnet9'\)"),
    ({"in_mics": "m", "in_coords": "c"}, {**SHORT, "epoch": "3"}, r"unknown parameter\(s\) epoch "),
    ({"in_mics": "m"}, SHORT, "no labels: put hand-picked coordinates"),
])
def test_bad_input_fails_with_the_reason_in_run_err(tmp_path, demo_labels_df, inputs, params, message):
    import re

    project = make_project(tmp_path / "project", 50001)
    project.write_micrographs(STEMS[:1])
    project.write_manual_picks(demo_labels_df, STEMS[:1])
    names = {"m": project.mics_star, "c": project.coords_list, "p": project.particles_star}
    out = "External/job011/"
    done = run_external(project, EXE, out, {k: names.get(v, v) for k, v in inputs.items()}, params)
    job = project.root / out
    assert done.returncode == 1
    assert exit_files(job) == ["RELION_JOB_EXIT_FAILURE"]
    last = (job / "run.err").read_text().strip().splitlines()[-1]
    assert last.startswith("pupick_relion_train: error: ") and re.search(message, last), last
    assert not (job / "model.pt").exists() and not (job / "RELION_OUTPUT_NODES.star").exists()


def test_abort_during_training(tmp_path, demo_labels_df):
    project = make_project(tmp_path / "project", 50001)
    project.write_micrographs(STEMS[:2])
    project.write_manual_picks(demo_labels_df, STEMS[:2])
    out = "External/job012/"
    job = project.root / out
    proc = run_external(project, EXE, out, {"in_mics": project.mics_star, "in_coords": project.coords_list},
                        {**SHORT, "epochs": "50", "steps_per_epoch": "50"}, background=True)
    try:
        deadline = time.monotonic() + 120
        while "training micrograph(s)" not in (job / "run.out").read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, (job / "run.err").read_text()
            time.sleep(0.05)
        started = time.monotonic()
        (job / "RELION_JOB_ABORT_NOW").touch()
        assert proc.wait(timeout=60) == 1
        assert time.monotonic() - started < 20  # stopped mid-epoch, not after 2500 steps
    finally:
        if proc.poll() is None:
            proc.kill()
    assert exit_files(job) == ["RELION_JOB_EXIT_ABORTED"]
    assert not (job / "RELION_JOB_ABORT_NOW").exists()
    assert not (job / "model.pt").exists() and not (job / "training.json").exists()
