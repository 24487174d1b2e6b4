"""`pupick pick --cluster jobqueue:` against a real SLURM: Debian's slurm-wlm and munge (tests/core/ensure_slurm.sh
installs them as root), run as this module's own munged, slurmctld and slurmd (tests/core/slurm_cluster.py).

The picks must equal a serial run's row for row, also when a worker's job is cancelled (scancel) or hits its
walltime mid-run; no job of ours may stay in the queue after a run, whichever way it ended; a job SLURM refuses is
one line before any work. Where the commands are missing the tests skip, loudly; with CI=true they fail instead.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from cluster_runs import BIN, PICK_ARGS, check_same_as_serial
from slurm_cluster import PARTITION, PrivateSlurm, missing_commands


@pytest.fixture(scope="module")
def slurm():
    """This module's own single-node SLURM (stopped, with every job it ran, even when a test failed)."""
    missing = missing_commands()
    if missing:
        message = (f"SLURM/munge commands missing ({', '.join(missing)}): run tests/core/ensure_slurm.sh as root "
                   "(apt-get install slurm-wlm munge)")
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: " + message)
        pytest.skip(message)
    cluster = PrivateSlurm()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def jobqueue_config(slurm: PrivateSlurm, tmp_path: Path, **extra: str) -> Path:
    """A dask-jobqueue config for this SLURM: one single-threaded worker per job, on loopback."""
    options = {"queue": PARTITION, "cores": 1, "processes": 1, "memory": "4GB", "walltime": '"00:10:00"',
"log-directory": str(slurm.root / "jobs"),
               "local-directory": str(tmp_path / "dask"), "python": sys.executable,
               "job-script-prologue": '["export OMP_NUM_THREADS=1"]',
               "worker-extra-args": '["--host", "127.0.0.1"]', "scheduler-options": "{host: 127.0.0.1}"}
    options.update(extra)
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text("jobqueue:\n  slurm:\n" + "".join(f"    {k}: {v}\n" for k, v in options.items()))
    return cfg


class Run:
    """`pupick pick` in the background with SLURM's environment; stderr is collected line by line as it comes."""

    def __init__(self, slurm: PrivateSlurm, args: list[str], env: dict | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen([str(BIN / "pupick"), "pick", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**slurm.env, **(env or {})})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def scheduler(self, timeout: float = 120) -> str:
        """The Dask scheduler's address, once the run has logged it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith("Dask scheduler tcp://"):
                    return line.split()[2].rstrip(";")
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.1)
        raise AssertionError("no Dask scheduler logged: " + "".join(self.lines))

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        stdout = self.proc.stdout.read()
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, stdout, "".join(self.lines))


def our_jobs(slurm: PrivateSlurm) -> list[dict]:
    """The queue's worker jobs (all but the fixture's probe job)."""
    return [j for j in slurm.jobs() if j["name"] != "probe"]


def no_job_left(slurm: PrivateSlurm, timeout: float = 20) -> None:
    """No worker job stays: a cancelled one may show as COMPLETING for a moment while its processes end."""
    deadline = time.monotonic() + timeout
    while our_jobs(slurm) and time.monotonic() < deadline:
        assert all(j["state"] in ("COMPLETING", "CANCELLED") for j in our_jobs(slurm)), our_jobs(slurm)
        time.sleep(0.2)
    assert our_jobs(slurm) == []


def busy_job(monitor) -> str | None:
    """The SLURM job id of a worker that is picking now (None while no worker picks)."""
    jobs = monitor.run(lambda: os.environ.get("SLURM_JOB_ID"))
    for worker, keys in monitor.processing().items():
        if any(str(k).startswith("pupick-") for k in keys) and jobs.get(worker):
            return jobs[worker]
    return None


def test_a_partition_slurm_refuses_is_one_line_before_any_work(slurm, trained_model, demo_micrographs, tmp_path):
    cfg = jobqueue_config(slurm, tmp_path, queue="nosuchpartition")
    out = tmp_path / "out"
    res = subprocess.run([str(BIN / "pupick"), "pick", str(demo_micrographs[0]), "--model", str(trained_model), "-o",
                          str(out), *PICK_ARGS, "--cluster", f"jobqueue:{cfg}", "--cluster-workers", "2"],
                         capture_output=True, text=True, timeout=120, env=slurm.env)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert str(cfg) in lines[0] and "SLURM refuses the worker job" in lines[0] and "partition" in lines[0].lower()
    assert not (out / "picks.csv").exists() and our_jobs(slurm) == []


def test_jobqueue_picks_equal_the_serial_ones_and_no_job_stays(slurm, many_mics, serial_run, trained_model,
                                                               tmp_path):
    """Two worker jobs pick 20 micrographs and fail the corrupt one: exit 1, the serial picks, an empty queue."""
    folder, bad = many_mics
    out = tmp_path / "out"
    run = Run(slurm, [str(folder), "--model", str(trained_model), "-o", str(out), *PICK_ARGS,
                      "--cluster", f"jobqueue:{jobqueue_config(slurm, tmp_path)}", "--cluster-workers", "2"])
    res = run.finish()
    check_same_as_serial(out, res, serial_run[1], bad)
    assert "asked slurm for 2 worker(s)" in res.stderr
    no_job_left(slurm)


def test_ctrl_c_mid_run_leaves_no_job(slurm, many_mics, trained_model, tmp_path):
    from distributed import Client

    folder, _ = many_mics
    run = Run(slurm, [str(folder), "--model", str(trained_model), "-o", str(tmp_path / "out"), *PICK_ARGS,
                      "--cluster", f"jobqueue:{jobqueue_config(slurm, tmp_path)}", "--cluster-workers", "2"])
    with Client(run.scheduler(), timeout="30s") as monitor:
        deadline = time.monotonic() + 150
        while busy_job(monitor) is None:
            assert time.monotonic() < deadline and run.proc.poll() is None, "".join(run.lines)
            time.sleep(0.1)
        run.proc.send_signal(signal.SIGINT)
        res = run.finish(timeout=60)
    assert res.returncode == 130, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    no_job_left(slurm)


def test_scancel_and_walltime_mid_run_keep_the_serial_picks(slurm, many_mics, serial_run, trained_model, tmp_path):
    """One worker's job is cancelled as it picks, the other's walltime ends as it picks: the run submits new jobs,
    ends with the serial picks (each micrograph once) and leaves no job behind.

    SLURM's shortest walltime is a minute and slurmctld looks every 30 s, so the job's end time is moved to now
    (`scontrol update EndTime=now`, as an admin may) once both workers pick, and the jobs submitted in their place
    wait (the file their job script waits for is taken away) until slurmctld's next look has ended that job: 1,200
    micrographs keep one worker busy for over 30 s on this CPU, so the walltime ends it mid-run."""
    from distributed import Client

    folder, _ = many_mics
    serial = serial_run[1]
    names = sorted(p.stem for p in folder.iterdir() if not p.name.startswith("c9_"))
    copies = 60  # 1,200 micrographs: ~45 s of picking for one worker on an idle machine
    mics = tmp_path / "mics"
    mics.mkdir()
    for r in range(copies):
        for name in names:
            (mics / f"r{r:02d}{name}.mrc").symlink_to(folder / f"{name}.mrc")
    expected = pd.concat([serial[serial["micrograph"] == name].assign(micrograph=f"r{r:02d}{name}",
                                                                      path=str(mics / f"r{r:02d}{name}.mrc"))
                          for r in range(copies) for name in names], ignore_index=True)
    out = tmp_path / "out"
    go = tmp_path / "go"
    cfg = jobqueue_config(slurm, tmp_path, **{"job-script-prologue":
                                              f'["export OMP_NUM_THREADS=1", "while [ ! -e {go} ]; do sleep 0.1; done"]'})
    run = Run(slurm, [str(mics), "--model", str(trained_model), "-o", str(out), *PICK_ARGS,
                      "--cluster", f"jobqueue:{cfg}", "--cluster-workers", "2"],
              env={"DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "2s"})
    deadline = time.monotonic() + 120
    while len([j for j in our_jobs(slurm) if j["state"] == "RUNNING"]) < 2:
        assert time.monotonic() < deadline and run.proc.poll() is None, "".join(run.lines) + str(slurm.jobs())
        time.sleep(0.2)
    go.touch()
    with Client(run.scheduler(), timeout="30s") as monitor:
        while (job := busy_job(monitor)) is None:
            assert time.monotonic() < deadline + 60 and run.proc.poll() is None, "".join(run.lines)
            time.sleep(0.1)
        # the other worker's job, named before the cancel: the job submitted in place of the cancelled one is not it
        other = [j["id"] for j in our_jobs(slurm) if j["id"] != job and j["state"] == "RUNNING"]
        go.unlink()  # new worker jobs wait in their job script from now on
        slurm.run("scancel", job)
        slurm.run("scontrol", "update", f"JobId={other[0]}", "EndTime=now")
        mark = f"Time limit exhausted for JobId={other[0]}"
        while mark not in (slurm.root / "slurmctld.log").read_text():  # slurmctld looks every 30 s
            assert time.monotonic() < deadline + 120 and run.proc.poll() is None, "".join(run.lines)
            time.sleep(0.2)
        go.touch()
        res = run.finish()
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert f"Time limit exhausted for JobId={other[0]}" in (slurm.root / "slurmctld.log").read_text()
    assert "worker job(s) ended before the run did" in res.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out / "picks.csv"), expected)  # nothing lost, nothing twice
    no_job_left(slurm)
