"""Ctrl-C during `pupick pick --cluster local:2` (real subprocess, real Dask workers): one line, no worker
tracebacks, picks kept; and more local workers than the machine can run are refused before any work."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pupick.core.cluster import ClusterConfig, local_worker_bound
from pupick.core.errors import InputError


def _finished(records) -> list:
    return [p for p in records.glob("*.csv") if not p.name.startswith(".")] if records.is_dir() else []


def test_ctrl_c_during_a_local_cluster_run_prints_one_line(demo_micrographs, trained_model, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pupick.core.cli", "pick", *map(str, demo_micrographs), "--model",
                             str(trained_model), "-o", str(out), "--device", "cpu", "--cluster", "local:2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        records = out / ".pupick_records"
        while not _finished(records):  # the workers are picking
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: pupick and every worker process get SIGINT
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    lines = [line.split("\r")[-1] for line in err.splitlines()]  # the progress bar redraws itself with \r
    lines = [line for line in lines if line.strip() and not line.startswith(("Dask scheduler", "pick"))]
    assert lines == ["pupick: aborted"], err
    assert _finished(records)  # what was finished is kept


def test_more_local_workers_than_the_machine_can_run_are_refused(tmp_path):
    most, why = local_worker_bound()
    assert most >= 1 and "CPU" in why and "memory" in why
    assert ClusterConfig(f"local:{most}").workers == most
    for spec, workers in ((f"local:{most + 1}", None), ("local:100000", None), ("local", most + 1)):
        with pytest.raises(InputError, match=rf"at most {most} local worker\(s\).*CPU.*memory"):
            ClusterConfig(spec, workers)
    res = subprocess.run([sys.executable, "-m", "pupick.core.cli", "pick", "nothing.mrc", "--method", "blob",
                          "--diameter-px", "56", "-o", str(tmp_path / "out"), "--cluster", "local:100000"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "at most" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "out").exists()
