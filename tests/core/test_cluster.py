"""The Dask executor with real Dask: a LocalCluster, and `dask scheduler` / `dask worker` processes on loopback.

The pick runs go through the real CLI (`pupick pick --cluster ...`) and compare picks.csv with a serial run's, row
for row. The jobqueue path renders a SLURM job script without a SLURM controller (none runs here).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pupick.core.cluster import ClusterConfig, batch_size, executor_from_spec, jobqueue_cluster
from pupick.core.errors import InputError

BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- options, checked before any work


@pytest.mark.parametrize("spec, workers, message", [
    ("locale:2", None, "expected local[:N]"),
    ("local:0", None, "whole number >= 1"),
    ("local:x", None, "whole number >= 1"),
    ("local:2", 3, "disagree"),
    ("local", 0, "--cluster-workers must be"),
    ("tcp://127.0.0.1", None, "tcp://HOST:PORT"),
    ("tcp://:8786", None, "tcp://HOST:PORT"),
    ("tcp://sched:8786", 4, "brings its own workers"),
    ("tls://sched:8786", None, "TLS configuration lacks"),
    ("jobqueue:/nonexistent/slurm.yaml", 2, "not found"),
    ("jobqueue:x.yaml", None, "needs --cluster-workers"),
])
def test_bad_specs_are_refused_with_one_line(spec, workers, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ClusterConfig(spec, workers)


def test_good_specs_parse():
    assert ClusterConfig("local:3").workers == 3
    assert ClusterConfig("local", 2).workers == 2
    assert ClusterConfig("local").workers >= 1
    cfg = ClusterConfig("tcp://10.0.0.5:8786")
    assert (cfg.kind, cfg.address) == ("tcp", "tcp://10.0.0.5:8786")


@pytest.mark.parametrize("text, message", [
    ("slurm: [1, 2]", "must be a mapping"),
    ("jobqueue:\n  nosuch: {cores: 1}", "one batch system section"),
    ("slurm:\n  cores: 8\n  memory: 8GB\n  gpus_per_node: 1", "unknown slurm option"),
    ("slurm:\n  memory: 8GB", "needs `cores`"),
    ("slurm: {cores: [", "not a readable YAML"),
])
def test_bad_jobqueue_configs_name_the_problem(tmp_path, text, message):
    cfg = tmp_path / "jq.yaml"
    cfg.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        ClusterConfig(f"jobqueue:{cfg}", 2)
    assert str(cfg) in str(err.value)


SLURM_YAML = """\
# dask-jobqueue's own configuration format (as in ~/.config/dask/jobqueue.yaml)
jobqueue:
  slurm:
    queue: gpu
    account: cryoem
    cores: 8
    processes: 1
    memory: 32GB
    walltime: "04:00:00"
    job-extra-directives: ["--gres=gpu:1"]
    job-script-prologue: ["source /opt/pupick/.venv/bin/activate"]
    python: /opt/pupick/.venv/bin/python
    local-directory: $TMPDIR
    scheduler-options: {host: 127.0.0.1}
"""


def test_jobqueue_slurm_config_renders_the_job_script(tmp_path):
    """What sbatch would get, rendered by dask-jobqueue itself; nothing is submitted (no SLURM controller here)."""
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(SLURM_YAML)
    cluster = jobqueue_cluster(ClusterConfig(f"jobqueue:{cfg}", 4))
    try:
        script = cluster.job_script()
        lines = script.splitlines()
        assert lines[0] == "#!/usr/bin/env bash"
        for directive in ("-p gpu", "-A cryoem", "--cpus-per-task=8", "--mem=30G", "-t 04:00:00", "--gres=gpu:1"):
            assert f"#SBATCH {directive}" in lines
        assert "source /opt/pupick/.venv/bin/activate" in lines
        worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
        assert worker.startswith("/opt/pupick/.venv/bin/python -m distributed.cli.dask_worker tcp://127.0.0.1:")
        assert cluster.scheduler_address in worker and "--nthreads 8" in worker and "--local-directory $TMPDIR" in worker
        assert not cluster.workers  # scaling was not asked for: no job was submitted
    finally:
        cluster.close()


def test_batches_hold_a_hundred_times_the_task_overhead():
    from pupick.core.cluster import MAX_BATCH, OVERHEAD_FRACTION, TASK_OVERHEAD_S

    for seconds in (0.02, 0.05, 0.5, 5.0):
        n = batch_size(50_000, 100, seconds)
        assert TASK_OVERHEAD_S <= OVERHEAD_FRACTION * n * seconds or n == MAX_BATCH
    assert batch_size(3, 2, 0.01) == 1  # the tail is shared out rather than left to one worker
    assert batch_size(1000, 2, None) >= 1


# ---------------------------------------------------------------- real clusters


def test_local_cluster_listens_on_loopback_only_and_closes_what_it_started():
    with executor_from_spec("local:2") as ex:
        client = ex.client
        info = client.scheduler_info()
        addresses = [client.scheduler.address] + list(info["workers"]) + \
            [w["nanny"] for w in info["workers"].values()]
        assert len(info["workers"]) == 2
        assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
        assert all(w["nthreads"] == 1 for w in info["workers"].values())
        pids = list(client.run(os.getpid).values())
    assert ex.client is None
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
