"""Live mode through the real classes of two cryosparc-tools releases, 4.7.1 and 5.0.3, each job in its own process.

4.7.1 (installed into .venv-cs47 by `cs47_path`) speaks JSON-RPC over real HTTP to cs_rpc4.Rpc4Server, which answers
only the calls 4.7.1's own code makes; with 5.0.3 only the HTTP client is replaced (cs_recorder), each call bound to
the library's api.pyi. Both servers live in this test's process and keep the job's statuses, events and outputs, so
a job killed by a signal is seen as cryoSPARC would see it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from cryosparc.dataset import Dataset
from cs_project import DIAMETER_PX, NAMES, PICKER_FIELDS, make_project
from cs_recorder import FakeServer, ServerHost, exposure_groups
from cs_releases import CS47_RELEASE
from cs_rpc4 import Rpc4Server

from pupick.adapters.cryosparc import read_exposures, write_particles

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RELEASES = [CS47_RELEASE, "5.0.3"]
LICENSE = "0f0f0f0f-1111-2222-3333-444444444444"
EXPOSURE_FIELDS = [("micrograph_blob/path", "O"), ("micrograph_blob/idx", "<u4"),
                   ("micrograph_blob/shape", "2<u4"), ("micrograph_blob/psize_A", "<f4"),
                   ("micrograph_blob/format", "O")]
GROUPS = [1, 2, 1, 2, 3]
BLOB = ["--method", "blob", "--diameter-px", DIAMETER_PX]
PICK = ["pick", "--project", "P3", "--workspace", "W1", "--exposures", "J12.exposures_accepted"]


@dataclass
class Live:
    """One release's server in this process, and how to run pupick_cryosparc against it in another."""

    release: str
    server: object
    env: dict
    connection: list
    stop_server: object
    procs: list = field(default_factory=list)

    def args(self, args) -> list[str]:
        return [sys.executable, str(HERE / "cs_job.py"), *map(str, [*args, *self.connection])]

    def run(self, args, timeout: float = 240) -> tuple[int, str, str]:
        res = subprocess.run(self.args(args), env=self.env, capture_output=True, text=True, timeout=timeout,
                             cwd=self.env["PUPICK_TEST_CWD"])
        return res.returncode, res.stdout, res.stderr

    def spawn(self, args) -> subprocess.Popen:
        proc = subprocess.Popen(self.args(args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=self.env["PUPICK_TEST_CWD"])
        self.procs.append(proc)
        return proc

    def job(self) -> str:
        """The External job the run created."""
        made = [uid for uid in self.server.statuses if uid not in ("J12", "J15")]
        assert len(made) == 1, made
        return made[0]


def _sources(project, demo_labels, tmp_path: Path) -> dict:
    exposures = exposure_groups(Dataset.load(project.exposures_cs), GROUPS).take([0, 3])
    particles_cs = tmp_path / "labels.cs"
    labels = demo_labels[demo_labels["micrograph"].isin([NAMES[0], NAMES[3]])]
    write_particles(labels, particles_cs, read_exposures(project.exposures_cs))
    return {("J12", "exposures_accepted"): ("exposure", exposures),
            ("J15", "particles_selected"): ("particle", Dataset.load(particles_cs))}


@pytest.fixture(params=RELEASES)
def live(request, cs_project, demo_labels, tmp_path) -> Live:
    """A cryoSPARC stand-in for one release, on the bundled micrographs (two exposures)."""
    return make_live(request.param, request, cs_project, demo_labels, tmp_path)


def make_live(release: str, request, project, demo_labels, tmp_path: Path) -> Live:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "HOME": str(tmp_path), "PUPICK_TEST_CS_RELEASE": release, "PUPICK_TEST_CWD": str(cwd),
           "PUPICK_CRYOSPARC_STOP_RETRY_S": "1", "CRYOSPARC_COMMAND_RETRY_SECONDS": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(HERE)}
    for name in ("CRYOSPARC_BASE_URL", "CRYOSPARC_MASTER_HOSTNAME", "CRYOSPARC_BASE_PORT", "CRYOSPARC_LICENSE_ID"):
        env.pop(name, None)
    fields = {"particle": PICKER_FIELDS, "exposure": EXPOSURE_FIELDS}
    sources = _sources(project, demo_labels, tmp_path)
    if release.startswith("4."):
        package = request.getfixturevalue("cs47_path")
        server = Rpc4Server(package / "cryosparc", "P3", project.root, sources, fields, make_job_dirs=True,
                            version=release).start()
        env["PYTHONPATH"] = os.pathsep.join([str(package), str(HERE)])
        connection = ["--host", "127.0.0.1", "--base-port", server.base_port, "--license", LICENSE,
                      "--email", "a@b.c", "--password", "pw"]
        stop = server.stop
    else:
        server = FakeServer("P3", project.root, sources, fields, make_job_dirs=True)
        host = ServerHost(server)
        env.update(PUPICK_TEST_CS_SERVER=f"{host.address[0]}:{host.address[1]}", PUPICK_TEST_CS_KEY=host.authkey.hex())
        connection = ["--url", "http://cryosparc.test:39000", "--email", "a@b.c", "--password", "pw"]
        stop = host.close
    live = Live(release, server, env, connection, stop)
    request.addfinalizer(lambda: _close(live))
    return live


def _close(live: Live) -> None:
    for proc in live.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    live.stop_server()


def _no_rejected(live: Live) -> None:
    """Every request the job made is one its release's own code makes (4.x) / its api.pyi allows (5.x)."""
    rejected = getattr(live.server, "rejected", [])
    assert rejected == [], rejected


def _one_line(err: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err


# ---------------------------------------------------------------- the whole flows


def test_pick_job_end_to_end(live):
    code, out, err = live.run([*PICK, *BLOB])
    assert code == 0, err
    _no_rejected(live)
    job = live.job()
    assert f"created External job P3-{job}" in out and "picked" in out
    assert live.server.statuses[job] == ["building", "running", "completed"]
    particles = live.server.saved[(job, "particles")]
    assert sorted(particles.descr()[1:]) == sorted(Dataset.allocate(0, PICKER_FIELDS).descr()[1:])
    assert len(particles) > 20
    exposures = live.server.sources[("J12", "exposures_accepted")][1]
    group_of = dict(zip(np.asarray(exposures["uid"]).tolist(), np.asarray(exposures["mscope_params/exp_group_id"])))
    assert [group_of[int(u)] for u in np.asarray(particles["location/micrograph_uid"])] == \
        np.asarray(particles["location/exp_group_id"]).tolist()  # the optional mscope_params slot arrived
    assert set(np.asarray(particles["location/exp_group_id"]).tolist()) == {1, 2}
    np.testing.assert_allclose(particles["location/min_dist_A"], DIAMETER_PX / 2 * 5.36, rtol=1e-3)
    assert set(live.server.saved[(job, "micrographs")].prefixes()) == {"micrograph_blob"}
    events = live.server.events[job]
    assert any(kind == "image" and "score distribution" in text for kind, text in events)
    assert not [t for kind, t in events if kind == "error"]


def test_train_job_writes_its_model_into_the_job_directory(live, cs_project):
    code, out, err = live.run(["train", "--project", "P3", "--workspace", "W1", "--exposures",
                               "J12.exposures_accepted", "--particles", "J15.particles_selected",
                               "--diameter-px", DIAMETER_PX, "--arch", "conv31", "--units", "4", "--epochs", "1",
                               "--steps-per-epoch", "2", "--expected-particles", "150", "--device", "cpu"])
    assert code == 0, err
    _no_rejected(live)
    job = live.job()
    assert live.server.statuses[job] == ["building", "running", "completed"]
    model = cs_project.root / job / "pupick_model.pt"  # the job directory is mounted here: written in place
    assert model.read_bytes()[:2] == b"PK" and str(model) in out
    assert not (Path(live.env["PUPICK_TEST_CWD"]) / job).exists()


def test_upload_saves_every_slot_with_cryosparcs_types(live, cs_project, demo_labels, tmp_path):
    particles = tmp_path / "p.cs"
    write_particles(demo_labels, particles, read_exposures(cs_project.exposures_cs))
    code, out, err = live.run(["upload", "--particles", particles, "--project", "P3", "--workspace", "W1"])
    assert code == 0, err
    _no_rejected(live)
    job = live.job()
    assert live.server.statuses[job] == ["building", "running", "completed"]
    saved = live.server.saved[(job, "particles")]
    assert len(saved) == len(demo_labels)
    assert set(saved.fields()) == {"uid"} | {f[0] for f in PICKER_FIELDS}  # pick_stats too: Inspect Picks needs it


# ---------------------------------------------------------------- never left building or running


def test_a_setup_failure_marks_the_job_failed(live):
    code, out, err = live.run([*PICK[:-1], "J12.no_such_output", *BLOB])
    assert code == 1, err
    _one_line(err)
    assert "does not have output no_such_output" in err and "marked failed" in err
    assert live.server.statuses[live.job()][-1] == "failed"


def _corrupt_project(root: Path) -> None:
    """The micrographs of the first two exposures replaced by files that are not MRC."""
    for mrc in sorted((root / "J2" / "motioncorrected").glob("*.mrc")):
        mrc.unlink()
        mrc.write_bytes(b"not an MRC file" * 64)


def _failing_live(release, request, demo_labels, tmp_path) -> Live:
    (tmp_path / "broken").mkdir()
    project = make_project(tmp_path / "broken")
    _corrupt_project(project.root)
    return make_live(release, request, project, demo_labels, tmp_path)


# training's failure path is the same code on both releases (the pick case covers each release's mark-failed)
@pytest.mark.parametrize("command,release", [("pick", r) for r in RELEASES] + [("train", CS47_RELEASE)])
def test_a_failure_in_picking_or_training_fails_the_job_with_one_line(release, command, request, demo_labels,
                                                                      tmp_path):
    live = _failing_live(release, request, demo_labels, tmp_path)
    args = [*PICK, *BLOB] if command == "pick" else [
        "train", *PICK[1:], "--particles", "J15.particles_selected", "--diameter-px", DIAMETER_PX, "--epochs", "1",
        "--steps-per-epoch", "1", "--device", "cpu"]
    code, out, err = live.run(args)
    assert code == 1, err
    _one_line(err)
    job = live.job()
    assert live.server.statuses[job] == ["building", "running", "failed"]
    errors = [t for kind, t in live.server.events[job] if kind == "error"]
    assert len(errors) == 1 and errors[0].startswith("pupick: ") and "\n" not in errors[0], errors
    assert errors[0].removeprefix("pupick: ") in err  # cryoSPARC shows the line the terminal shows


@pytest.mark.parametrize("signum,said", [(signal.SIGTERM, "terminated by SIGTERM"),
                                         (signal.SIGINT, "interrupted (Ctrl-C)")])
def test_a_signal_fails_the_job(live, signum, said):
    live.server.hold_on = "pupick: picking"  # the job waits for this reply, in the middle of its run
    proc = live.spawn([*PICK, *BLOB])
    assert live.server.held.wait(120), proc.communicate(timeout=5)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    live.server.release.set()
    assert proc.returncode == 1, err
    _one_line(err)
    job = live.job()
    assert said in err and f"External job P3-{job} is marked failed" in err
    assert live.server.statuses[job] == ["building", "running", "failed"]
    errors = [t for kind, t in live.server.events[job] if kind == "error"]
    assert errors == [f"pupick: {said}"]


def test_an_unreachable_server_is_one_line_naming_the_job(live):
    live.server.hold_on = "pupick: picking"
    proc = live.spawn([*PICK, *BLOB])
    assert live.server.held.wait(120), proc.communicate(timeout=5)
    live.stop_server()  # the master goes away while the job runs
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    _one_line(err)
    job = live.job()
    assert f"External job P3-{job} may still show as running" in err and "could not be reached for 1 s" in err
    assert f"pupick_cryosparc mark-failed --project P3 --job {job}" in err
    assert live.server.statuses[job] == ["building", "running"]


def test_a_network_failure_during_setup_fails_the_job_without_a_traceback(live):
    live.server.drop_on = "add_external_job_input" if live.release.startswith("4.") else "jobs_add_external_input"
    code, out, err = live.run([*PICK, *BLOB])
    assert code == 1, err
    _one_line(err)
    job = live.job()
    assert f"External job P3-{job} could not be set up and is marked failed" in err
    assert live.server.statuses[job] == ["building", "failed"]
    errors = [t for kind, t in live.server.events[job] if kind == "error"]
    assert len(errors) == 1 and errors[0].startswith("pupick: cryoSPARC: "), errors


def test_an_unreachable_server_at_connect_is_one_line(live):
    live.stop_server()
    code, out, err = live.run([*PICK, *BLOB])
    assert code == 1
    _one_line(err)
    assert "cannot connect to cryoSPARC at" in err


def test_mark_failed_after_kill_9(live):
    live.server.hold_on = "pupick: picking"
    proc = live.spawn([*PICK, *BLOB])
    assert live.server.held.wait(120), proc.communicate(timeout=5)
    proc.kill()  # nothing can run after SIGKILL: the job stays running ...
    proc.communicate(timeout=30)
    live.server.release.set()
    job = live.job()
    assert live.server.statuses[job][-1] == "running"
    code, out, err = live.run(["mark-failed", "--project", "P3", "--job", job])  # ... until the user says so
    assert code == 0, err
    assert live.server.statuses[job][-1] == "failed"
    assert [t for kind, t in live.server.events[job] if kind == "error"][-1].startswith("pupick: stopped without")
