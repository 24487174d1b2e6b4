"""pupick_relion_pick in a full or read-only job directory: one line naming the path and the reason (no "internal
error", no traceback), RELION's FAILURE exit file where it can be written, and continuing once there is space picks
the rest (real tmpfs and read-only bind mounts: tests/mounts.py)."""
from __future__ import annotations

import shutil
import subprocess

from mounts import fill, read_only, small_disk
from relion_project import STEMS, exit_files, external_argv, make_project

EXE = "pupick_relion_pick"
MODEL = "External/job006/model.pt"
OUT = "External/job012/"


def _project(tmp_path, model):
    project = make_project(tmp_path / "project", 50001)
    (project.root / MODEL).parent.mkdir(parents=True)
    shutil.copyfile(model, project.root / MODEL)
    return project


def _run(project):
    """As RELION runs it; stdout/stderr go to pipes, since a full job directory cannot hold run.out either."""
    argv = external_argv(EXE, OUT, {"in_mics": project.mics_star}, {"model": MODEL, "device": "cpu"}, threads=2)
    return subprocess.run(argv, cwd=project.root, capture_output=True, text=True, timeout=300)


def _last_error(done) -> str:
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{EXE}: error: "), done.stderr
    return last


def test_full_job_directory_fails_in_one_line_and_continue_resumes(tmp_path, trained_model):
    project = _project(tmp_path, trained_model)
    project.write_micrographs(STEMS[:2])
    with small_disk(project.root / OUT) as job:
        for leave in (0, 6000):  # nothing left, or room for a coordinate file or two
            filler = fill(job, leave=leave)
            done = _run(project)
            last = _last_error(done)
            assert done.returncode == 1 and OUT.rstrip("/") in last and "no space left on device" in last, last
            assert exit_files(job) == ["RELION_JOB_EXIT_FAILURE"]
            assert not list(job.rglob(".*.part*"))
            filler.unlink()
        done = _run(project)  # space again: continue
        assert done.returncode == 0, done.stderr
        assert exit_files(job) == ["RELION_JOB_EXIT_SUCCESS"]
        assert "2 micrograph(s) in" in done.stdout and (job / "autopick.star").exists()


def test_read_only_job_directory_fails_in_one_line(tmp_path, trained_model):
    project = _project(tmp_path, trained_model)
    project.write_micrographs(STEMS[:1])
    with read_only(project.root / OUT) as job:
        done = _run(project)
        last = _last_error(done)
        assert done.returncode == 1 and OUT.rstrip("/") in last and "read-only file system" in last, last
