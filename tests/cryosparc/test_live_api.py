"""Live mode end to end through the real cryosparc-tools `CryoSPARC` and External-job classes.

Only the library's HTTP client is replaced (cs_recorder.RecordingAPIClient): each request is checked against the
library's own endpoint signatures and answered by an in-memory server. A deliberately wrong call in live.py (a
renamed method, swapped or misnamed arguments) fails these tests.
"""
from __future__ import annotations

import numpy as np
import pytest
from cryosparc.dataset import Dataset
from cs_project import DIAMETER_PX, NAMES
from cs_recorder import FakeServer, RecordingAPIClient, api_signatures, exposure_groups

from pupick.adapters.cryosparc import PARTICLE_FIELDS, read_exposures, write_particles
from pupick.cryosparc.cli import main
from console_run import run_console

URL = ["--url", "http://cryosparc.test:39000", "--email", "a@b.c", "--password", "pw"]
GROUPS = [1, 2, 1, 2, 3]
# The server's template for a particle output (get_output_fields sends (name, numpy dtype string) pairs):
# cryoSPARC's types, some unlike pupick's own (the template wins)
SERVER_PARTICLE_FIELDS = [
    ("location/micrograph_uid", "<u8"), ("location/exp_group_id", "<u4"), ("location/micrograph_path", "O"),
    ("location/micrograph_shape", "2<u4"), ("location/micrograph_psize_A", "<f8"),
    ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"), ("location/min_dist_A", "<f8"),
    ("pick_stats/ncc_score", "<f4"), ("pick_stats/power", "<f8"), ("pick_stats/template_idx", "<u4"),
    ("pick_stats/angle_rad", "<f4"),
]


@pytest.fixture
def server(cs_project, demo_labels, tmp_path, monkeypatch):
    exposures = exposure_groups(Dataset.load(cs_project.exposures_cs), GROUPS)
    particles_cs = tmp_path / "labels.cs"
    write_particles(demo_labels, particles_cs, read_exposures(cs_project.exposures_cs))
    srv = FakeServer("P3", cs_project.root, {
        ("J12", "exposures_accepted"): ("exposure", exposures),
        ("J15", "particles_selected"): ("particle", Dataset.load(particles_cs)),
    }, {"particle": SERVER_PARTICLE_FIELDS})
    monkeypatch.setattr(RecordingAPIClient, "server", srv, raising=False)
    monkeypatch.setattr("cryosparc.tools.APIClient", RecordingAPIClient)
    monkeypatch.setenv("HOME", str(tmp_path))  # no saved cryosparc-tools sessions
    return srv


def run(capsys, args) -> tuple[int, str, str]:
    return run_console(main, capsys, args)


def test_the_recorder_uses_the_librarys_signatures():
    sigs = api_signatures()
    assert hasattr(sigs.JobsAPI, "add_external_input") and hasattr(sigs.JobsAPI, "save_output")
    from cs_recorder import Endpoint, RequestRejected

    class Client:
        calls: list = []
        server = None

    ep = Endpoint(Client(), "jobs", "connect", sigs.JobsAPI.connect)
    with pytest.raises(RequestRejected, match="source_job_uid"):  # swapped/misnamed keywords are refused
        ep("P3", "J20", "micrographs", source_job="J12", source_output_name="x")
    with pytest.raises(RequestRejected, match="is not a|does not fit"):  # wrong types too
        Endpoint(Client(), "jobs", "save_output", sigs.JobsAPI.save_output)("P3", "J20", "particles", [1, 2])


def test_live_pick_job_end_to_end(server, capsys, trained_model, cs_project):
    code, out, err = run(capsys, ["pick", "--project", "P3", "--workspace", "W1", "--exposures",
                                  "J12.exposures_accepted", "--model", trained_model, "--device", "cpu", *URL])
    assert code == 0, err
    job = next(uid for uid in server.statuses if uid not in ("J12", "J15"))
    assert f"created External job P3-{job}" in out and "picked" in out
    assert server.statuses[job] == ["building", "running", "completed"]
    spec = server.jobs[job].spec
    assert set(spec.inputs.root) == {"micrographs"} and set(spec.outputs.root) == {"particles", "micrographs"}
    assert spec.inputs.root["micrographs"].connections[0].job_uid == "J12"

    particles = server.saved[(job, "particles")]
    # exactly the server's fields, with the server's types
    assert sorted(particles.descr()[1:]) == sorted(Dataset.allocate(0, SERVER_PARTICLE_FIELDS).descr()[1:])
    assert len(particles) > 100
    # every particle carries its exposure's group from mscope_params
    exposures = server.sources[("J12", "exposures_accepted")][1]
    group_of = dict(zip(np.asarray(exposures["uid"]).tolist(), GROUPS))
    expected = [group_of[int(u)] for u in np.asarray(particles["location/micrograph_uid"])]
    assert np.asarray(particles["location/exp_group_id"]).tolist() == expected
    assert set(expected) == set(GROUPS)
    # the NMS distance: the particle radius in Å
    np.testing.assert_allclose(particles["location/min_dist_A"], DIAMETER_PX / 2 * 5.36, rtol=1e-3)
    passthrough = server.saved[(job, "micrographs")]
    assert set(passthrough.prefixes()) == {"micrograph_blob"} and len(passthrough) == len(NAMES)
    # plots: no "/" in any asset file name; the score plot is logged
    assert server.assets and not [f for _, f, _ in server.assets if "/" in f]
    assert any(kind == "image" and "score distribution" in text for kind, text in server.events[job])
    assert not [t for kind, t in server.events[job] if kind == "error"]


def test_live_train_job_uploads_its_model(server, capsys, cs_project):
    code, out, err = run(capsys, ["train", "--project", "P3", "--workspace", "W1", "--exposures",
                                  "J12.exposures_accepted", "--particles", "J15.particles_selected",
                                  "--diameter-px", DIAMETER_PX, "--arch", "conv31", "--units", "4", "--epochs", "1",
                                  "--steps-per-epoch", "2", "--test-split", "0", "--expected-particles", "150",
                                  "--device", "cpu", *URL])
    assert code == 0, err
    job = next(uid for uid in server.statuses if uid not in ("J12", "J15"))
    assert server.statuses[job] == ["building", "running", "completed"]
    assert set(server.jobs[job].spec.inputs.root) == {"micrographs", "particles"}
    # the job directory is not mounted here: the model went up through the API, into the job's directory
    assert f"{job}/pupick_model.pt" in server.uploaded
    assert server.uploaded[f"{job}/pupick_model.pt"][:2] == b"PK"
    assert not [f for _, f, _ in server.assets if "/" in f]


def test_upload_saves_an_external_result(server, capsys, cs_project, demo_labels, tmp_path):
    particles = tmp_path / "p.cs"
    write_particles(demo_labels, particles, read_exposures(cs_project.exposures_cs))
    code, out, err = run(capsys, ["upload", "--particles", particles, "--project", "P3", "--workspace", "W1", *URL])
    assert code == 0, err
    job = next(uid for uid in server.statuses if uid not in ("J12", "J15"))
    saved = server.saved[(job, "particles")]
    assert len(saved) == len(demo_labels) and "location/min_dist_A" in saved
    assert server.statuses[job] == ["building", "running", "completed"]


@pytest.mark.parametrize("exposures,project,message", [
    ("J12.no_such_output", "P3", "does not have output no_such_output"),
    ("J99.exposures_accepted", "P3", "J99 not found"),
])
def test_a_setup_failure_marks_the_job_failed_in_one_line(server, capsys, exposures, project, message):
    code, out, err = run(capsys, ["pick", "--project", project, "--workspace", "W1", "--exposures", exposures,
                                  "--method", "blob", "--diameter-px", DIAMETER_PX, *URL])
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err and "marked failed" in err
    job = next(uid for uid in server.statuses if uid not in ("J12", "J15"))
    assert server.statuses[job][-1] == "failed"  # not left building


def test_a_wrong_project_is_one_line_and_creates_nothing(server, capsys):
    code, out, err = run(capsys, ["pick", "--project", "P99", "--workspace", "W1", "--exposures",
                                  "J12.exposures_accepted", "--method", "blob", "--diameter-px", DIAMETER_PX, *URL])
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "Project P99 not found" in err
    assert set(server.statuses) == set()


def test_a_refused_save_fails_the_job_in_one_line(server, capsys):
    server.refuse.add("save_output")
    code, out, err = run(capsys, ["pick", "--project", "P3", "--workspace", "W1", "--exposures",
                                  "J12.exposures_accepted", "--method", "blob", "--diameter-px", DIAMETER_PX, *URL])
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "save_output refused by the test server" in err
    job = next(uid for uid in server.statuses if uid not in ("J12", "J15"))
    assert server.statuses[job] == ["building", "running", "failed"]


def test_offline_particles_carry_min_dist(cs_project, tmp_path, capsys):
    out = tmp_path / "p.cs"
    code, _, err = run(capsys, ["pick", "--exposures", cs_project.exposures_cs, "--project-dir", cs_project.root,
                                "--method", "blob", "--diameter-px", DIAMETER_PX, "-o", out])
    assert code == 0, err
    dset = Dataset.load(out)
    assert {f[0] for f in PARTICLE_FIELDS} <= set(dset.fields())
    np.testing.assert_allclose(dset["location/min_dist_A"], DIAMETER_PX / 2 * 5.36, rtol=1e-3)
