"""A private single-node SLURM for the tests: its own munged, slurmctld and slurmd, run from a temporary directory.

Nothing here reads or writes /etc/munge, /etc/slurm or a running munged: every daemon gets its own key, socket,
configuration (through SLURM_CONF), spool, pid and log files under the temporary directory, listens on 127.0.0.1 on
free ports, and is stopped by its pid (with every job process it started) even when a test failed.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
PARTITION = "pupick"


def missing_commands() -> list[str]:
    """The SLURM and munge commands this machine lacks (tests/core/ensure_slurm.sh installs them as root)."""
    return [c for c in DAEMONS + CLIENTS if not _which(c)]


def _which(cmd: str) -> str | None:
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin:/usr/local/sbin")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_line() -> str:
    """`slurmd -C`'s description of this machine (CPUs, sockets, cores, memory), for the one NodeName line."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    fields = dict(f.split("=", 1) for f in out.splitlines()[0].split() if "=" in f)
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    return " ".join(f"{k}={fields[k]}" for k in keep if k in fields) + f" RealMemory={int(fields['RealMemory']) - 512}"


class PrivateSlurm:
    """One munged + slurmctld + slurmd; `env` is what a SLURM client command (sbatch, squeue) needs to reach it."""

    def __init__(self) -> None:
        # not under pytest's 0700 tmp directory: munged requires every directory above its socket to be searchable
        self.root = Path(tempfile.mkdtemp(prefix="pupick-slurm-"))
        self.root.chmod(0o755)
        self.procs: dict[str, subprocess.Popen] = {}
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for var in [v for v in self.env if v.startswith(("SLURM_", "SBATCH_", "SQUEUE_")) and v != "SLURM_CONF"]:
            del self.env[var]

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 90) -> "PrivateSlurm":
        """Start the three daemons and wait until the node takes jobs."""
        try:
            self._start_munged()
            self._write_conf()
            log = open(self.root / "daemons.log", "ab")
            for daemon, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D", "-N", self.node])):
                self.procs[daemon] = subprocess.Popen([_which(daemon), *args], env=self.env, stdout=log,
                                                      stderr=subprocess.STDOUT, start_new_session=True)
            self._wait_idle(timeout)
            self._probe_timelimit_checks()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munged(self) -> None:
        d = self.socket.parent
        d.mkdir(mode=0o755)
        key = self.root / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        self.procs["munged"] = subprocess.Popen(
            [_which("munged"), "--foreground", f"--socket={self.socket}", f"--key-file={key}",
             f"--pid-file={d / 'munged.pid'}", f"--log-file={self.root / 'munged.log'}",
             f"--seed-file={self.root / 'munged.seed'}"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "munged.err", "wb"), start_new_session=True)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start: {(self.root / 'munged.err').read_text()[-500:]}")
            time.sleep(0.05)

    def _write_conf(self) -> None:
        ctld_port, slurmd_port = _free_ports(2)
        for d in ("state", "spool", "jobs"):
            (self.root / d).mkdir()
        (self.root / "plugstack.conf").write_text("")
        r = self.root
        self.conf.write_text(f"""\
ClusterName=pupicktest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd.log'}
PlugStackConfig={r / 'plugstack.conf'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=2
MinJobAge=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName={self.node} NodeAddr=127.0.0.1 {_node_line()} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}): {self.logs()}")
            res = self.run("sinfo", "-h", "-N", "-o", "%t", check=False)
            state = res.stdout.strip()
            if state in ("idle", "mix", "alloc"):
                return
            time.sleep(0.3)
        raise RuntimeError(f"the SLURM node is not idle after {timeout:.0f} s (state {state!r}): {self.logs()}")

    def _probe_timelimit_checks(self) -> None:
        """slurmctld ends jobs past their walltime on a 30 s timer; a job whose end time is moved to now times out on
        its next tick, which next_timelimit_check() then predicts."""
        res = self.run("sbatch", "--parsable", "-J", "probe", "-t", "10", "-o", "/dev/null", "--wrap", "sleep 600")
        self._probe = res.stdout.strip().split(";")[0]
        deadline = time.monotonic() + 30
        while not any(j["id"] == self._probe and j["state"] == "RUNNING" for j in self.jobs()):
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.2)
        self.run("scontrol", "update", f"JobId={self._probe}", "EndTime=now")

    def next_timelimit_check(self, after: float) -> float:
        """time.time() of slurmctld's first walltime check at or after `after` (waits for the probe's timeout)."""
        import datetime

        mark = f"Time limit exhausted for JobId={self._probe}"
        deadline = time.monotonic() + 45
        while True:
            line = next((ln for ln in (self.root / "slurmctld.log").read_text().splitlines() if mark in ln), None)
            if line:
                break
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.2)
        tick = datetime.datetime.fromisoformat(line[1:line.index("]")]).timestamp()
        while tick < after:
            tick += 30.0  # PERIODIC_TIMEOUT in slurmctld
        return tick

    def logs(self) -> str:
        """The end of each daemon's log, for a failure message."""
        parts = []
        for name in ("munged.err", "daemons.log", "slurmctld.log", "slurmd.log"):
            f = self.root / name
            if f.exists():
                parts.append(f"--- {name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, stop the daemons and every process they started (by pid), remove the directory."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "-u", str(os.getuid()), check=False)
            deadline = time.monotonic() + 15
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.3)
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        for pid in self._job_pids():  # slurmstepd and job processes left behind: ours carry our SLURM_CONF
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def _job_pids(self) -> list[int]:
        mark = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if mark in (d / "environ").read_bytes().split(b"\0"):
                    pids.append(int(d.name))
            except OSError:
                continue
        return pids

    # ------------------------------------------------------------ clients

    def run(self, cmd: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run([_which(cmd), *args], env=self.env, capture_output=True, text=True, timeout=30,
                              check=check)

    def jobs(self) -> list[dict]:
        """The queue: one {id, name, state} per job (pending, running or completing)."""
        res = self.run("squeue", "-h", "-o", "%i|%j|%T", check=False)
        return [dict(zip(("id", "name", "state"), line.split("|"))) for line in res.stdout.splitlines() if line]
