"""The job lifecycle: exactly one exit file, whatever happens."""
from __future__ import annotations

import os
import signal

import starfile

from pupick.core.errors import AbortRequested, InputError
from pupick.relion.job import ABORT_NOW, ABORTED, FAILURE, SUCCESS, relion_job
from pupick.relion.nodes import OUTPUT_NODES


def _exits(job_dir):
    return sorted(p.name for p in job_dir.glob("RELION_JOB_EXIT_*"))


def test_success_writes_nodes_then_success_and_removes_stale_exit_files(tmp_path):
    out = tmp_path / "External/job007"
    out.mkdir(parents=True)
    for stale in (SUCCESS, FAILURE, ABORTED):
        (out / stale).touch()
    with relion_job(out, "prog") as job:
        assert _exits(out) == []  # stale exit files are gone before the work starts
        job.version = 5
        job.add_output_node("External/job007/autopick.star", "MicrographCoordsGroup.star.relion.autopick")
    assert _exits(out) == [SUCCESS] and job.exit_code == 0
    nodes = starfile.read(out / OUTPUT_NODES, always_dict=True)["output_nodes"]
    assert nodes["rlnPipeLineNodeName"].tolist() == ["External/job007/autopick.star"]
    assert (out / OUTPUT_NODES).stat().st_mtime_ns <= (out / SUCCESS).stat().st_mtime_ns


def test_user_error_gives_failure_with_the_reason_last_in_run_err(tmp_path, capsys):
    out = tmp_path / "job"
    with relion_job(out, "prog") as job:
        raise InputError("m.star: no such file")
    assert _exits(out) == [FAILURE] and job.exit_code == 1
    assert not (out / OUTPUT_NODES).exists()
    # stderr here is not run.err, so the reason is appended to run.err too
    assert (out / "run.err").read_text().splitlines()[-1] == "prog: error: m.star: no such file"
    assert "m.star: no such file" in capsys.readouterr().err


def test_reason_is_not_doubled_when_stderr_already_goes_to_run_err(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "job"
    out.mkdir()
    code = ("from pupick.relion.job import relion_job\nfrom pupick.core.errors import InputError\n"
            f"with relion_job({str(out)!r}, 'prog'):\n    raise InputError('bad thing')\n")
    with open(out / "run.err", "a") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, check=False)
    assert (out / "run.err").read_text() == "prog: error: bad thing\n"
    assert _exits(out) == [FAILURE]


def test_bug_gives_failure_with_traceback(tmp_path, capsys):
    out = tmp_path / "job"
    with relion_job(out, "prog"):
        {}["missing"]
    assert _exits(out) == [FAILURE]
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error KeyError" in err


def test_abort_gives_aborted_and_removes_the_abort_file(tmp_path):
    out = tmp_path / "job"
    with relion_job(out, "prog") as job:
        assert not job.abort_requested()
        (out / ABORT_NOW).touch()
        assert job.abort_requested()
        job.check_abort()
        raise AssertionError("check_abort did not stop the job")
    assert _exits(out) == [ABORTED] and job.exit_code == 1
    assert not (out / ABORT_NOW).exists()


def test_abort_raised_by_the_core_is_aborted(tmp_path):
    out = tmp_path / "job"
    with relion_job(out, "prog"):
        (out / ABORT_NOW).touch()
        raise AbortRequested("stop")
    assert _exits(out) == [ABORTED]


def test_sigterm_still_leaves_failure(tmp_path):
    out = tmp_path / "job"
    before = signal.getsignal(signal.SIGTERM)
    with relion_job(out, "prog"):
        os.kill(os.getpid(), signal.SIGTERM)
    assert _exits(out) == [FAILURE]
    assert "terminated by SIGTERM" in (out / "run.err").read_text()
    assert signal.getsignal(signal.SIGTERM) is before


def test_failure_while_writing_nodes_is_failure(tmp_path):
    out = tmp_path / "job"
    with relion_job(out, "prog") as job:
        job.version = 5
        job.add_output_node("x.star", "MicrographCoordsGroup.star.relion.autopick")
        (out / OUTPUT_NODES).mkdir()  # a directory in the way: the node file cannot be written
    assert _exits(out) == [FAILURE]



def test_executable_without_o_explains_itself(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "pupick_relion_pick"
    done = subprocess.run([str(exe), "--in_mics", "m.star", "--model", "m.pt"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 1
    assert "--o (the job's output directory) is missing" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []
