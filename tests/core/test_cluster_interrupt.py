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



CLOSING = """
import logging, sys
if sys.argv[1] == "serve":  # `pupick serve` logs through the root logger; distributed then adds no handler of its own
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s %(message)s")
import distributed  # in a `pupick pick --cluster` process: installs distributed's stderr handler
from pupick.core.cluster import _quiet_shutdown

owner = logging.getLogger("distributed" if sys.argv[1] == "pick" else "")
handler = next(h for h in owner.handlers if isinstance(h, logging.StreamHandler))
log = logging.getLogger("distributed.batched")
with _quiet_shutdown():
    handler.setLevel(logging.NOTSET)  # what a closing cluster does to the level it silenced
    try:
        raise ConnectionResetError("closed")
    except ConnectionResetError:
        log.info("Batched Comm Closed <TCP (closed)>", exc_info=True)
    log.error("a real error while closing")
    logging.getLogger("pupick.core.service").warning("pupick's own note while closing")
log.info("a note after the cluster is closed")
print(len(handler.filters))
"""


@pytest.mark.parametrize("process", ["pick", "serve"])
def test_closing_a_cluster_keeps_distributed_notes_off_stderr_until_it_is_closed(process):
    """A closing cluster restores distributed's stderr handler to its old level (everything); what the client logs
    as it winds down is an INFO note with a traceback, which must not reach the user. Errors still do, and so does
    everything that is not distributed's."""
    done = subprocess.run([sys.executable, "-c", CLOSING, process], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Batched Comm Closed" not in done.stderr and "Traceback" not in done.stderr
    for line in ("a real error while closing", "pupick's own note while closing", "a note after the cluster is closed"):
        assert line in done.stderr
    assert done.stdout.split() == ["0"]  # the filter is gone again
