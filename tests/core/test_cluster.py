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


def test_batches_hold_a_hundred_times_the_task_overhead_and_spare_the_scheduler():
    from pupick.core.cluster import MAX_TASK_S, OVERHEAD_FRACTION, SCHEDULER_BUSY, TASK_OVERHEAD_S

    for seconds in (0.02, 0.05, 0.5, 5.0):
        for workers in (1, 10, 100, 1000):
            n = batch_size(50_000, workers, seconds)
            share = -(-50_000 // (workers * 2))  # too few micrographs to do better and keep every worker busy
            capped = n in (int(MAX_TASK_S / seconds), share)
            assert TASK_OVERHEAD_S <= OVERHEAD_FRACTION * n * seconds or capped
            assert workers / (n * seconds) * TASK_OVERHEAD_S <= SCHEDULER_BUSY or capped  # scheduler's busy share
    assert batch_size(3, 2, 0.01) == 1  # the tail is shared out rather than left to one worker
    assert batch_size(1000, 2, None) >= 1


# ---------------------------------------------------------------- real clusters


@pytest.fixture(scope="module")
def local2():
    """One `local:2` DaskExecutor for the tests that use the Python API (a cluster start costs seconds here)."""
    with executor_from_spec("local:2") as ex:
        yield ex


def test_local_cluster_listens_on_loopback_only(local2):
    client = local2.client
    info = client.scheduler_info()
    addresses = [client.scheduler.address] + list(info["workers"]) + [w["nanny"] for w in info["workers"].values()]
    assert len(info["workers"]) == 2
    assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
    assert all(w["nthreads"] == 1 for w in info["workers"].values())
    pids = [os.getpid(), *client.run(os.getpid).values()]
    listening = _listening(pids)
    assert len(listening) >= 5  # scheduler + its HTTP server, and each worker's and nanny's port
    assert {host for host, _ in listening} == {"127.0.0.1"}, listening


def _listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket the processes hold (from /proc; IPv4 and IPv6)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr, port = cols[1].split(":")
            if width == 8:
                host = ".".join(str(int(hexaddr[i:i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                host = "::1" if hexaddr == "0" * 24 + "01000000" else hexaddr
            found.add((host, int(port, 16)))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_with_another_pupick_version_are_refused_with_one_line(local2):
    from pupick.core.errors import PupickError

    with pytest.raises(PupickError, match=r"pupick 9\.9\.9") as err:
        local2._register_work(local2.client, "pupick-test-version", None, "9.9.9")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- the real CLI and engine, serial vs cluster

N_COPIES = 4  # the 5 bundled micrographs under 4 names each: 20 micrographs, so a run lasts long enough to kill a worker
PICK_ARGS = ["--device", "cpu", "--threshold", "-3", "--views", "1"]  # one view: 4x less work, same code path


@pytest.fixture(scope="module")
def many_mics(tmp_path_factory, demo_micrographs) -> tuple[Path, Path]:
    """20 micrographs (links to the bundled five under new names) and one corrupt file among them."""
    folder = tmp_path_factory.mktemp("mics")
    for k in range(N_COPIES):
        for src in demo_micrographs:
            (folder / f"c{k}_{src.name}").symlink_to(src)
    bad = folder / "c9_corrupt.mrc"
    bad.write_bytes(b"MRC?" + os.urandom(3000))
    return folder, bad


def _pick(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "pupick"), "pick", *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def serial_run(many_mics, trained_model, tmp_path_factory):
    folder, bad = many_mics
    out = tmp_path_factory.mktemp("serial") / "out"
    res = _pick([str(folder), "--model", str(trained_model), "-o", str(out), *PICK_ARGS])
    assert res.returncode == 1, res.stderr  # the corrupt micrograph fails the run's exit status, not the others
    table = pd.read_csv(out / "picks.csv")
    assert table["micrograph"].nunique() == 5 * N_COPIES and len(table) > 100
    return out, table


def _check_same_as_serial(out: Path, res: subprocess.CompletedProcess, serial_table: pd.DataFrame, bad: Path):
    assert res.returncode == 1, res.stdout + res.stderr
    failed = [line for line in res.stderr.splitlines() if "failed:" in line]
    assert len(failed) == 1 and bad.name in failed[0], res.stderr  # reported once
    assert "Traceback" not in res.stderr
    table = pd.read_csv(out / "picks.csv")
    pd.testing.assert_frame_equal(table, serial_table)  # row for row: nothing lost, nothing duplicated


def test_local2_gives_the_serial_picks(many_mics, serial_run, trained_model, tmp_path):
    folder, bad = many_mics
    out = tmp_path / "out"
    res = _pick([str(folder), "--model", str(trained_model), "-o", str(out), *PICK_ARGS, "--cluster", "local:2"])
    _check_same_as_serial(out, res, serial_run[1], bad)
    assert "Dask scheduler tcp://127.0.0.1:" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cli_cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes (Dask's own CLI) on loopback; yields the address."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    common = dict(stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dask.log", "w"), cwd=tmp_path)
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], **common)]
    for _ in range(2):
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                       "--no-dashboard"], **common))
    try:
        yield address
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_dask_cli_cluster_survives_a_killed_worker_with_the_serial_picks(many_mics, serial_run, trained_model,
                                                                         tmp_path, dask_cli_cluster):
    from distributed import Client

    folder, bad = many_mics
    out = tmp_path / "out"
    with Client(dask_cli_cluster, timeout="60s") as monitor:
        monitor.wait_for_workers(2, timeout=120)
        pids = monitor.run(os.getpid)
        run = subprocess.Popen([str(BIN / "pupick"), "pick", str(folder), "--model", str(trained_model), "-o",
                                str(out), *PICK_ARGS, "--cluster", dask_cli_cluster],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = None
        deadline = time.monotonic() + 240
        while killed is None and run.poll() is None and time.monotonic() < deadline:
            busy = [w for w, keys in monitor.processing().items() if any(str(k).startswith("pupick-") for k in keys)]
            if busy:  # mid-run: this worker is picking a batch, others are queued
                killed = pids[busy[0]]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        stdout, stderr = run.communicate(timeout=300)
        assert killed is not None, "the run ended before a worker could be killed"
        assert killed not in monitor.run(os.getpid).values()  # that worker process is gone (its nanny started another)
    res = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
    _check_same_as_serial(out, res, serial_run[1], bad)


def test_jobqueue_without_the_batch_system_says_so(tmp_path):
    """No SLURM here: starting the cluster stops at the missing sbatch, with one line, instead of waiting for jobs."""
    from pupick.core.errors import PupickError

    if shutil.which("sbatch"):
        pytest.skip("sbatch exists here: this checks the message where it does not")
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(SLURM_YAML)
    ex = executor_from_spec(f"jobqueue:{cfg}", 2)
    with pytest.raises(PupickError, match="sbatch not found"):
        ex.start()
    assert ex.client is None


# ---------------------------------------------------------------- the engine API on a cluster


def _payload_keys() -> list[str]:
    from pupick.core import cluster

    return sorted(cluster._PAYLOADS)


def test_each_worker_holds_the_work_once_and_drops_it_after_the_run(local2, trained_model, demo_micrographs):
    from pupick.core.config import PickConfig
    from pupick.core.picking import pick

    seen: list[dict] = []

    def on_result(res) -> None:
        if not seen:
            seen.append(local2.client.run(_payload_keys))

    config = PickConfig.from_settings({"device": "cpu", "views": 1})
    run = pick(demo_micrographs, trained_model, config, executor=local2, on_result=on_result)
    assert run.n_done == len(demo_micrographs) and not run.failures
    keys = list(seen[0].values())
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 1  # one run's work on each worker
    assert all(not k for k in local2.client.run(_payload_keys).values())  # unregistered when the run ended


def test_stop_cancels_pending_tasks_and_a_rerun_resumes(local2, trained_model, demo_micrographs, tmp_path):
    from pupick.core.config import PickConfig
    from pupick.core.errors import AbortRequested
    from pupick.core.outputs import pick_to_dir

    config = PickConfig.from_settings({"device": "cpu", "views": 1})
    out = tmp_path / "out"
    done: list[str] = []
    with pytest.raises(AbortRequested):
        pick_to_dir(demo_micrographs, trained_model, config, out, executor=local2,
                    on_result=lambda res: done.append(res.micrograph), should_stop=lambda: len(done) >= 1)
    assert 1 <= len(done) < len(demo_micrographs)
    deadline = time.monotonic() + 20  # cancelled: the scheduler forgets the run's tasks
    while any(str(k).startswith("pupick-") for keys in local2.client.processing().values() for k in keys):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    again = pick_to_dir(demo_micrographs, trained_model, config, out, executor=local2)
    assert set(done) <= set(again.skipped)  # what finished before the stop stayed finished
    assert again.run.n_done == len(demo_micrographs) - len(again.skipped)
    serial = pick_to_dir(demo_micrographs, trained_model, config, tmp_path / "serial")
    pd.testing.assert_frame_equal(pd.read_csv(again.picks_path), pd.read_csv(serial.picks_path))


@pytest.fixture
def tls_certs(tmp_path) -> dict[str, Path]:
    """A throw-away CA and one certificate for 127.0.0.1 (scheduler, worker and client share it)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path / "tls"
    d.mkdir()
    ssl = ["openssl"]
    run = dict(cwd=d, check=True, capture_output=True)
    subprocess.run(ssl + ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                          "-days", "2", "-subj", "/CN=pupick-test-ca"], **run)
    subprocess.run(ssl + ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
                          "-subj", "/CN=127.0.0.1"], **run)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(ssl + ["x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                          "-out", "node.pem", "-days", "2", "-extfile", "ext"], **run)
    return {"ca": d / "ca.pem", "cert": d / "node.pem", "key": d / "node.key"}


def test_tls_scheduler_with_dask_security_config(many_mics, serial_run, trained_model, tmp_path, tls_certs):
    """tls://: the scheduler and worker require TLS; pupick takes its certificates from Dask's configuration."""
    folder, bad = many_mics
    port = _free_port()
    address = f"tls://127.0.0.1:{port}"
    tls = ["--tls-ca-file", str(tls_certs["ca"]), "--tls-cert", str(tls_certs["cert"]), "--tls-key",
           str(tls_certs["key"])]
    log = open(tmp_path / "dask.log", "w")
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port",
                               str(port), "--no-dashboard", *tls], stderr=log, stdout=log)]
    procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                   "--no-dashboard", *tls], stderr=log, stdout=log))
    try:
        out = tmp_path / "out"
        args = [str(folder), "--model", str(trained_model), "-o", str(out), *PICK_ARGS, "--cluster", address]
        plain = _pick(args)  # no certificates configured: refused before any work
        assert plain.returncode == 2 and "TLS configuration lacks" in plain.stderr and not out.exists()
        env = dict(os.environ, DASK_DISTRIBUTED__COMM__TLS__CA_FILE=str(tls_certs["ca"]),
                   DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(tls_certs["cert"]),
                   DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(tls_certs["key"]))
        res = _pick(args, env=env)
        _check_same_as_serial(out, res, serial_run[1], bad)
        assert f"Dask scheduler {address}" in res.stderr
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
        log.close()


def _die_on_c(work, items):
    """A batch function whose worker process dies on the micrograph named 'c' (as a segfault or the OOM killer would)."""
    if any(item.micrograph == "c" for item in items):
        os._exit(1)
    return [f"picked {item.micrograph}" for item in items]


def test_a_micrograph_that_kills_its_worker_is_isolated_and_reported_once_and_close_ends_the_workers():
    """Dask gives up on a task after `allowed-failures` worker deaths (0 here, to be quick); the executor then runs
    the batch's micrographs one by one, so only the one at fault is reported and the others are picked."""
    import dask

    from pupick.core.cluster import DaskExecutor
    from pupick.core.pipeline import MicrographItem

    items = [MicrographItem(name, f"/data/{name}.mrc") for name in "abcde"]
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        ex = DaskExecutor(ClusterConfig("local:1"), batch_function=_die_on_c, batch_size=5)
        with ex:
            results = list(ex.run(None, items))
            pids = list(ex.client.run(os.getpid).values())
    assert ex.client is None  # the executor closed what it started: the worker processes are gone
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pids and not any(_alive(p) for p in pids)
    picked = sorted(r for r in results if isinstance(r, str))
    failed = [r for r in results if not isinstance(r, str)]
    assert picked == ["picked a", "picked b", "picked d", "picked e"]
    assert len(failed) == 1 and failed[0].micrograph == "c" and "/data/c.mrc" in failed[0].error
    assert "died" in failed[0].error and failed[0].picks.empty
    assert ex.last_batch_sizes == [5, 1, 1, 1, 1, 1]
