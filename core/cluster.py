"""The Dask executor: pick batches of micrographs on a Dask cluster (local processes, a running scheduler, or a
batch system through dask-jobqueue). The cluster is only where the work runs: same items in, same results out.

Each worker receives the model once, through a worker plugin that Dask also hands to workers joining later (a
restarted or newly started one); a task carries only its batch of micrograph paths. Fault tolerance is Dask's: a
task whose worker dies is rerun elsewhere (up to the scheduler's `allowed-failures`); a batch that keeps killing
workers is split so that only the micrograph at fault is reported.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from distributed.diagnostics.plugin import WorkerPlugin

from . import __version__
from .errors import AbortRequested, InputError, PupickError
from .pipeline import failed, pick_batch

SPEC_FORMS = "local[:N], tcp://HOST:PORT, tls://HOST:PORT or jobqueue:CONFIG.yaml"
# dask-jobqueue's cluster class for each batch system a config file may name
JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
                    "htcondor": "HTCondorCluster", "moab": "MoabCluster", "oar": "OARCluster"}
# Batch sizing. TASK_OVERHEAD_S is the scheduler's cost per task, with a margin (bench/cluster.py measured 1.6-3.5 ms
# per no-op task on 2 loaded cores). A task holds at least 1/OVERHEAD_FRACTION times that much picking, so the
# scheduler costs a worker under 1% of its time, and enough that the one scheduler stays under half busy however many
# workers ask it for tasks. Until results say how long a micrograph takes, FAST_MICROGRAPH_S is assumed (a fast GPU
# worker; CPU workers are ~10x slower, which only makes the first batches' overhead smaller).
TASK_OVERHEAD_S = 0.005
OVERHEAD_FRACTION = 0.01
SCHEDULER_BUSY = 0.5
FAST_MICROGRAPH_S = 0.05
MAX_TASK_S = 60.0  # a dying worker loses at most about this much work
TASKS_PER_THREAD = 2  # tasks queued per worker thread: the next batch is there when one finishes
CONNECT_TIMEOUT_S = 20
KEEP_JOBS_S = 5.0  # how often a jobqueue run asks again for worker jobs that ended (walltime, scancel, node failure)
# The most local workers a machine runs: each is a process with torch, the model and a micrograph's buffers (about
# 1 GiB for a 4k micrograph), and more than a few per core only queue for the cores (one per GPU is the fast case).
LOCAL_WORKER_MEMORY = 1 << 30
LOCAL_WORKERS_PER_CPU = 4


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _available_memory() -> int | None:
    """Bytes of memory available for new processes (MemAvailable), else the machine's total; None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def local_worker_bound() -> tuple[int, str]:
    """(the most local workers this machine can run, why): from its CPU count and its available memory."""
    cpus = _cpu_count()
    memory = _available_memory()
    by_cpu = cpus * LOCAL_WORKERS_PER_CPU
    by_memory = max(1, memory // LOCAL_WORKER_MEMORY) if memory else by_cpu
    why = (f"{LOCAL_WORKERS_PER_CPU} per CPU core on {cpus} CPU core(s), and "
           + (f"{LOCAL_WORKER_MEMORY >> 30} GiB each of {memory / (1 << 30):.1f} GiB available memory" if memory
              else "memory unknown"))
    return max(1, min(by_cpu, by_memory)), why


@dataclass
class ClusterConfig:
    """Where picking runs: `spec` is local[:N], tcp://HOST:PORT, tls://HOST:PORT or jobqueue:CONFIG.yaml."""

    spec: str
    workers: int | None = None  # --cluster-workers: local (same as :N) and jobqueue; not for a running scheduler
    kind: str = field(init=False)  # local | tcp | tls | jobqueue
    address: str | None = field(init=False, default=None)
    jobqueue_system: str | None = field(init=False, default=None)
    jobqueue_options: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        spec = (self.spec or "").strip()
        if self.workers is not None and (isinstance(self.workers, bool) or int(self.workers) != self.workers
                                         or self.workers < 1):
            raise InputError(f"--cluster-workers must be a whole number >= 1 (got {self.workers})")
        if spec == "local" or spec.startswith("local:"):
            self.kind = "local"
            n = spec.partition(":")[2]
            if n:
                if not n.isdigit() or int(n) < 1:
                    raise InputError(f"--cluster {spec}: N in local:N must be a whole number >= 1")
                if self.workers is not None and self.workers != int(n):
                    raise InputError(f"--cluster {spec} and --cluster-workers {self.workers} disagree; give one")
                self.workers = int(n)
            elif self.workers is None:
                self.workers = _cpu_count()
            most, why = local_worker_bound()
            if self.workers > most:
                raise InputError(f"--cluster {spec} with {self.workers} workers: this machine can run at most {most} "
                                 f"local worker(s) ({why})")
        elif spec.startswith(("tcp://", "tls://")):
            self.kind = spec[:3]
            host, _, port = spec[6:].rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InputError(f"--cluster {spec}: expected {self.kind}://HOST:PORT (the Dask scheduler's address)")
            if self.workers is not None:
                raise InputError("--cluster-workers is for local and jobqueue clusters; a running scheduler "
                                 f"({spec}) brings its own workers")
            if self.kind == "tls":
                _check_tls_config(spec)
            self.address = spec
        elif spec.startswith("jobqueue:"):
            self.kind = "jobqueue"
            if self.workers is None:
                raise InputError(f"--cluster {spec} needs --cluster-workers N (how many workers to start)")
            self.jobqueue_system, self.jobqueue_options = read_jobqueue_config(Path(spec[len("jobqueue:"):]))
        else:
            raise InputError(f"--cluster {spec!r}: expected {SPEC_FORMS}")


def _check_slurm_job(spec: str, script: str) -> None:
    """`sbatch --test-only` of the worker job: a bad partition, account, time or memory is one line now, before any
    work, instead of jobs that never start while the run waits for workers."""
    import subprocess

    try:
        res = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PupickError(f"--cluster {spec}: sbatch --test-only did not answer ({err})") from None
    if res.returncode != 0:
        lines = [line.strip() for line in (res.stderr + res.stdout).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
        reason = reason.split("error:", 1)[-1].strip() if "error:" in reason else reason
        raise InputError(f"--cluster {spec}: SLURM refuses the worker job: {reason or f'exit {res.returncode}'}")


def _check_tls_config(spec: str) -> None:
    """tls:// takes its certificates from Dask's own configuration; say which keys when they are missing."""
    import dask

    missing = [k for k in ("ca-file", "client.cert", "client.key")
               if not dask.config.get(f"distributed.comm.tls.{k}", None)]
    if missing:
        env = ", ".join("DASK_DISTRIBUTED__COMM__TLS__" + k.upper().replace("-", "_").replace(".", "__")
                        for k in missing)
        raise InputError(f"--cluster {spec}: Dask's TLS configuration lacks {', '.join(missing)} "
                         f"(set distributed.comm.tls.* in ~/.config/dask/*.yaml, or {env})")


def read_jobqueue_config(path: Path) -> tuple[str, dict]:
    """(batch system, options) from a dask-jobqueue YAML config (`jobqueue: {slurm: {...}}` or `slurm: {...}`)."""
    import yaml

    if not path.is_file():
        raise InputError(f"{path}: jobqueue config file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: not a readable YAML file ({str(err).splitlines()[0]})") from None
    if isinstance(doc, dict) and set(doc) == {"jobqueue"}:
        doc = doc["jobqueue"]
    if not isinstance(doc, dict) or len(doc) != 1 or next(iter(doc)) not in JOBQUEUE_CLASSES:
        raise InputError(f"{path}: expected one batch system section, e.g. `jobqueue: {{slurm: {{cores: 8, "
                         f"memory: 32GB}}}}`; systems: {', '.join(JOBQUEUE_CLASSES)}")
    system, options = next(iter(doc.items()))
    options = options or {}
    if not isinstance(options, dict):
        raise InputError(f"{path}: the {system} section must be a mapping of dask-jobqueue options")
    _jobqueue_module(path)  # registers dask-jobqueue's defaults, which name every known option
    import dask

    known = {k.replace("_", "-") for k in dask.config.get(f"jobqueue.{system}")}
    unknown = sorted(k for k in options if str(k).replace("_", "-") not in known)
    if unknown:
        raise InputError(f"{path}: unknown {system} option(s) {', '.join(map(str, unknown))} "
                         f"(dask-jobqueue knows: {', '.join(sorted(known))})")
    for need in ("cores", "memory"):
        if options.get(need) is None and dask.config.get(f"jobqueue.{system}.{need}") is None:
            raise InputError(f"{path}: the {system} section needs `{need}` (per job)")
    return system, {str(k).replace("-", "_"): v for k, v in options.items()}


def _jobqueue_module(source: Any):
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    ctrl_c = signal.getsignal(signal.SIGINT) if main else None
    try:
        import dask_jobqueue
    except ImportError:
        raise InputError(f"{source}: jobqueue clusters need dask-jobqueue: pip install 'pupick[cluster]'") from None
    finally:
        # dask_jobqueue.runner, on import, makes Ctrl-C a silent sys.exit() (exit status 0, as if the run succeeded)
        if main and ctrl_c is not None:
            signal.signal(signal.SIGINT, ctrl_c)
    return dask_jobqueue


def _not_cancelled(record: Any) -> bool:
    """A logging filter: no record of a task that was cancelled (a worker start a closing cluster stopped)."""
    import asyncio

    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


@contextlib.contextmanager
def _quiet_shutdown() -> Iterator[None]:
    """Only errors from distributed while a cluster shuts down, and none of a task it cancels. A cluster silences
    distributed's stderr handlers while it runs and restores their levels as it closes, so a connection the client
    finds closed a moment later (Ctrl-C) would print an INFO note with a traceback; a filter outlives that restore.
    The root's handlers (`pupick serve` logs there) get the same filter, which passes every other logger's records."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not record.name.startswith("distributed") or record.levelno >= logging.ERROR and _not_cancelled(record)

    handlers = [*logging.getLogger("distributed").handlers, *logging.getLogger().handlers]
    for h in handlers:
        h.addFilter(keep)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(keep)


@contextlib.contextmanager
def _workers_without_ctrl_c() -> Iterator[None]:
    """While a local cluster starts: every process started from here on, by this thread or a thread it starts (the
    cluster's event loop, a nanny's process watcher), is born with SIGINT blocked, as the standard library starts its
    resource tracker (bpo-33613). So a terminal's Ctrl-C never reaches a worker that is still importing, nor one a
    nanny restarts later; pupick's own process stops them. This process's own Ctrl-C is held until the cluster is up
    and then raised: a half-started cluster cannot be closed."""
    import signal
    import threading
    from multiprocessing import resource_tracker

    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: the workers' dask_setup is all there is
        yield
        return
    resource_tracker.ensure_running()  # started later from the loop thread, it would unblock SIGINT there
    held: list[int] = []
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    hold = callable(previous)  # SIG_IGN (a background job) or not the main thread: nothing to hold
    if hold:
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if hold:
            signal.signal(signal.SIGINT, previous)
    if held:
        previous(signal.SIGINT, None)  # what that Ctrl-C would have done (KeyboardInterrupt), the cluster now up


def jobqueue_cluster(config: ClusterConfig) -> Any:
    """The dask-jobqueue cluster a jobqueue: config describes, not yet scaled (no job submitted)."""
    module = _jobqueue_module(config.spec)
    cls = getattr(module, JOBQUEUE_CLASSES[config.jobqueue_system])
    options = dict(config.jobqueue_options)
    if importlib.util.find_spec("bokeh") is None:  # no dashboard without bokeh; say nothing about it
        options["scheduler_options"] = {"dashboard_address": None, **(options.get("scheduler_options") or {})}
    try:
        return cls(**options)
    except (TypeError, ValueError) as err:
        raise InputError(f"{config.spec}: {err}") from None


# ---------------------------------------------------------------- what runs on the workers

_PAYLOADS: dict[str, Any] = {}  # on a worker: run id -> PickWork, put there once by _WorkPlugin


class _WorkPlugin(WorkerPlugin):
    """Puts one run's PickWork (model state_dict + config) on every worker, including ones that join later."""

    def __init__(self, key: str, work: Any, version: str) -> None:
        self.key, self.work, self.version = key, work, version

    def setup(self, worker: Any) -> None:
        if __version__ != self.version:
            raise RuntimeError(f"this worker runs pupick {__version__}, the client {self.version}")
        _PAYLOADS[self.key] = self.work

    def teardown(self, worker: Any) -> None:
        _PAYLOADS.pop(self.key, None)


class _LocalWorkerSetup(WorkerPlugin):
    """A local worker's torch threads and, on a GPU workstation, its one GPU (by worker number)."""

    def __init__(self, threads: int, gpus: Sequence[str]) -> None:
        self.threads, self.gpus = threads, list(gpus)

    def setup(self, worker: Any) -> None:
        if self.gpus:  # before anything in this process touches CUDA
            index = int(worker.name) if str(getattr(worker, "name", "")).isdigit() else 0
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpus[index % len(self.gpus)]
        import torch

        torch.set_num_threads(self.threads)


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run first in each local worker process: Ctrl-C is for pupick's own process, which stops
    the run and the workers; a terminal sends it to every process of the group, and a worker would print a trace.
    Nor does a worker print one when its connection to the scheduler in pupick's process closes under it (a heartbeat
    as a run is interrupted): pupick's process ends the run and says why."""
    import logging
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    for target in (logging.getLogger("distributed.worker"), *logging.getLogger("distributed").handlers):
        if _scheduler_still_there not in target.filters:
            target.addFilter(_scheduler_still_there)


def _scheduler_still_there(record: Any) -> bool:
    """A local worker's logging filter: no record of a connection to the scheduler that closed or was refused."""
    from distributed.comm.core import CommClosedError

    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, (CommClosedError, ConnectionError))


def _run_batch(key: str, items: Sequence[Any], batch_function: Callable | None = None) -> list:
    """A task: pick one batch with the PickWork this worker already holds."""
    if key not in _PAYLOADS:
        raise RuntimeError("this worker has no pupick work loaded (its plugin setup failed; see the worker's log)")
    return (batch_function or pick_batch)(_PAYLOADS[key], items)


def _worker_versions() -> dict:
    return {"pupick": __version__}


# ---------------------------------------------------------------- the executor

def batch_size(remaining: int, threads: int, seconds_per_micrograph: float | None) -> int:
    """Micrographs per task: enough that the scheduler's overhead stays under 1% of a task's work and the scheduler
    under half busy, fewer at the tail so every worker thread still gets a share, at most MAX_TASK_S of work."""
    t = seconds_per_micrograph if seconds_per_micrograph and seconds_per_micrograph > 0 else FAST_MICROGRAPH_S
    per_task = TASK_OVERHEAD_S / (OVERHEAD_FRACTION * t)
    scheduler = max(1, threads) * TASK_OVERHEAD_S / (SCHEDULER_BUSY * t)
    floor = math.ceil(max(per_task, scheduler))
    share = math.ceil(remaining / max(1, threads * TASKS_PER_THREAD))
    return max(1, min(floor, share, math.floor(MAX_TASK_S / t)))


class DaskExecutor:
    """Runs `pick_batch(work, batch)` tasks on a Dask cluster; a context manager that closes what it started."""

    def __init__(self, config: ClusterConfig | None = None, *, client: Any = None,
                 log: Callable[[str], None] | None = None, batch_function: Callable | None = None,
                 batch_size: int | None = None) -> None:
        if (config is None) == (client is None):
            raise ValueError("give a ClusterConfig or a running distributed.Client")
        self.config = config
        self.log = log or (lambda msg: None)
        self.batch_function = batch_function  # None: pupick.core.pipeline.pick_batch (another: the bench's no-op)
        self.fixed_batch = batch_size  # micrographs per task; None: sized from the measured time per micrograph
        self.client = client
        self._owns = client is None
        self._cluster: Any = None
        self.last_batch_sizes: list[int] = []
        self._jobs_seen: set = set()
        self._kept = 0.0

    # -- lifecycle

    def __enter__(self) -> "DaskExecutor":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> Any:
        """Start (or connect to) the cluster; returns the distributed.Client. Idempotent."""
        if self.client is not None:
            return self.client
        from distributed import Client

        cfg = self.config
        try:
            if cfg.kind == "local":
                with _workers_without_ctrl_c():
                    self._cluster = self._local_cluster(cfg.workers)
                self.client = Client(self._cluster)
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
                # registered before any task, so a restarted worker gets it too
                self.client.register_plugin(_LocalWorkerSetup(max(1, cores // cfg.workers), _visible_gpus()),
                                            name="pupick-local-setup")
            elif cfg.kind == "jobqueue":
                self._cluster = jobqueue_cluster(cfg)
                submit = (getattr(self._cluster.job_cls, "submit_command", None) or "").split()
                if submit and shutil.which(submit[0]) is None:  # else the jobs fail unseen, and we wait forever
                    raise PupickError(f"--cluster {cfg.spec}: {submit[0]} not found; run where the "
                                      f"{cfg.jobqueue_system} commands work (a login or submit node)")
                if cfg.jobqueue_system == "slurm":
                    _check_slurm_job(cfg.spec, self._cluster.job_script())
                self._cluster.scale(cfg.workers)
                self.client = Client(self._cluster)
                self.log(f"dask-jobqueue: asked {cfg.jobqueue_system} for {cfg.workers} worker(s); picking starts "
                         "as they join")
            else:
                self.client = Client(cfg.address, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (PupickError, KeyboardInterrupt):
            self.close()
            raise
        except (OSError, TimeoutError, ValueError, RuntimeError) as err:
            self.close()
            raise PupickError(f"--cluster {cfg.spec}: could not start or reach the Dask cluster "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        link = self.dashboard_link
        where = self.client.scheduler.address
        self.log(f"Dask scheduler {where}" + (f"; dashboard {link}" if link else ""))
        return self.client

    def _local_cluster(self, n: int) -> Any:
        import logging

        from distributed import LocalCluster

        nannies = logging.getLogger("distributed.nanny")  # its restart a closing cluster cancels may log even later
        if _not_cancelled not in nannies.filters:
            nannies.addFilter(_not_cancelled)
        dashboard = "127.0.0.1:0" if importlib.util.find_spec("bokeh") else None
        # loopback only: a Dask scheduler runs whatever its clients send
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", scheduler_port=0,
                            dashboard_address=dashboard, worker_dashboard_address=None, silence_logs=logging.ERROR,
                            preload=[__name__],  # dask_setup: the workers leave Ctrl-C to this process
                            # the scheduler's HTTP server (health, metrics) listens even without a dashboard
                            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})

    def close(self) -> None:
        """Close the client, and the cluster when this executor started it."""
        client, cluster, self.client, self._cluster = self.client, self._cluster, None, None
        if not self._owns:
            self.client = client  # not ours: leave it open
            return
        self._no_restarts(cluster)
        with _quiet_shutdown():
            for thing in (client, cluster):
                if thing is not None:
                    try:
                        thing.close()
                    except Exception:  # noqa: BLE001 - closing is best effort; the processes die with us anyway
                        pass

    def _no_restarts(self, cluster: Any = None) -> None:
        """Tell the nannies of our local cluster not to restart a worker that exits from now on. A worker can close
        itself first as a run is interrupted (an operation failing on a connection being closed); its nanny, still
        running, would start a new worker process just as this process exits, and that process dies in a traceback
        (its semaphores are already gone)."""
        cluster = cluster if cluster is not None else self._cluster
        if cluster is None:
            return
        from distributed import Nanny
        from distributed.core import Status

        async def mark() -> None:
            for worker in list(getattr(cluster, "workers", {}).values()):
                if isinstance(worker, Nanny) and worker.status == Status.running:
                    worker.close_gracefully(reason="pupick-closing")

        try:
            cluster.sync(mark)
        except Exception:  # noqa: BLE001 - a cluster already closed or broken restarts nothing
            pass

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard's URL, when one answers there (it needs bokeh where the scheduler runs)."""
        if self.client is None:
            return None
        import urllib.error
        import urllib.request

        try:
            link = self.client.dashboard_link
            with urllib.request.urlopen(link, timeout=2):
                return link
        except (OSError, ValueError, KeyError, urllib.error.URLError):
            return None

    # -- the Executor protocol

    def run(self, work: Any, items: Sequence[Any], should_stop: Callable[[], bool] | None = None) -> Iterator[Any]:
        """Yield one MicrographResult per item, as tasks complete; on should_stop() cancel what is pending and
        raise AbortRequested."""
        from distributed import wait

        items = list(items)
        if not items:
            return
        client = self.start()
        key = f"pupick-{uuid.uuid4().hex[:12]}"
        stop = should_stop or (lambda: False)
        self._register_work(client, key, work, __version__)
        queue: deque[tuple[int, ...]] = deque()  # items split out of a batch that killed workers: run alone
        isolated: set[int] = set()
        order = list(range(len(items)))
        inflight: dict[Any, tuple[int, ...]] = {}
        done: set[int] = set()
        seconds: list[float] = []
        threads, checked = 0, 0.0
        self.last_batch_sizes = []
        try:
            while order or queue or inflight:
                if stop():
                    raise AbortRequested("stop requested; the cluster's pending tasks were cancelled")
                now = time.monotonic()
                if now - checked > 1.0:
                    self._keep_jobs()
                    threads, checked = self._threads(client, waiting=not inflight, stop=stop), now
                # keep every worker thread busy with the next batch queued behind the running one
                while threads and len(inflight) < threads * TASKS_PER_THREAD:
                    # one isolated micrograph at a time: the one at fault then dies alone, not with the innocent
                    if queue and not any(b[0] in isolated for b in inflight.values()):
                        batch = queue.popleft()
                    elif order:
                        n = self.fixed_batch or batch_size(len(order), threads, _median(seconds))
                        batch, order = tuple(order[:n]), order[n:]
                    else:
                        break
                    fut = client.submit(_run_batch, key, [items[i] for i in batch], self.batch_function,
                                        key=f"{key}-{batch[0]}-{len(batch)}-{uuid.uuid4().hex[:6]}", pure=False)
                    inflight[fut] = batch
                    self.last_batch_sizes.append(len(batch))
                if not inflight:  # no worker yet
                    time.sleep(0.2)
                    continue
                try:  # wakes on the first completion; the timeout is for should_stop and joining workers
                    wait(list(inflight), timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                ready = [f for f in inflight if f.done()]
                for fut in ready:
                    batch = inflight.pop(fut)
                    for result in self._collect(fut, batch, items, queue, isolated):
                        i = result[0]
                        if i in done:  # a rerun task delivered twice: keep the first
                            continue
                        done.add(i)
                        res = result[1]
                        if getattr(res, "error", None) is None and getattr(res, "seconds", None):
                            seconds.append(float(res.seconds))
                        yield res
                    fut.release()
        except BaseException:
            if self._owns:  # our cluster closes next: its workers go with their plugin
                self._no_restarts()
                if inflight:
                    client.cancel(list(inflight), force=True)
                raise
            self._release(client, key, inflight)
            raise
        self._release(client, key, inflight)

    @staticmethod
    def _release(client: Any, key: str, inflight: dict) -> None:
        """Cancel what is left and take the run's work off the workers (of a cluster that stays up)."""
        if inflight:
            client.cancel(list(inflight), force=True)
        try:
            client.unregister_worker_plugin(key)
        except Exception:  # noqa: BLE001 - the cluster may be gone already; nothing to clean up then
            pass

    def _register_work(self, client: Any, key: str, work: Any, version: str) -> None:
        try:
            client.register_plugin(_WorkPlugin(key, work, version), name=key)
        except Exception as err:  # noqa: BLE001 - any failure here means the workers cannot run pupick
            raise PupickError(f"the Dask workers could not take pupick's work ({_one_line(err)}); install pupick "
                              f"{version} in the workers' environment") from None

    def _threads(self, client: Any, waiting: bool, stop: Callable[[], bool]) -> int:
        """Worker threads now in the cluster; while there are none, wait (logging once) for the first."""
        said = False
        while True:
            n = sum(client.nthreads().values())
            if n or not waiting:
                return n
            if stop():
                raise AbortRequested("stop requested while waiting for Dask workers")
            if not said:
                self.log(f"waiting for Dask workers to join {client.scheduler.address}")
                said = True
            self._keep_jobs()
            time.sleep(0.5)

    def _keep_jobs(self) -> None:
        """A jobqueue run keeps its --cluster-workers jobs: one that ended (its walltime, scancel, a failed node) is
        submitted again, once Dask has given its worker up (distributed.deploy.lost-worker-timeout)."""
        cluster = self._cluster
        if cluster is None or self.config is None or self.config.kind != "jobqueue":
            return
        now = time.monotonic()
        if now - self._kept < KEEP_JOBS_S:
            return
        self._kept = now
        jobs = set(list(cluster.workers))
        lost = self._jobs_seen - jobs
        if lost:
            self.log(f"{len(lost)} worker job(s) ended before the run did (walltime, scancel or a failed node); "
                     "submitting new ones")
        self._jobs_seen = jobs
        cluster.scale(self.config.workers)  # submits a job for each worker whose job is gone; else nothing

    def _collect(self, fut: Any, batch: tuple[int, ...], items: list, queue: deque,
                 isolated: set[int]) -> Iterator[tuple[int, Any]]:
        from distributed import KilledWorker

        if fut.status == "finished":
            results = fut.result()
            if len(results) != len(batch):
                raise PupickError(f"a worker returned {len(results)} results for {len(batch)} micrographs")
            yield from zip(batch, results)
            return
        if fut.status == "cancelled":
            raise PupickError("the Dask scheduler cancelled pupick's tasks (was it restarted or shut down?)")
        err = fut.exception()
        if isinstance(err, KilledWorker):
            if len(batch) > 1 or batch[0] not in isolated:  # find the micrograph at fault: each one alone
                isolated.update(batch)
                queue.extend((i,) for i in batch)
                self.log(f"Dask workers died running {len(batch)} micrograph(s) repeatedly; retrying each alone")
                return
            i = batch[0]
            yield i, _failed(items[i], "the Dask worker picking it died every time it was tried (out of memory, or "
                                       "killed)")
            return
        raise PupickError(f"a Dask task failed: {_one_line(err)}")


def _failed(item: Any, reason: str) -> Any:
    return failed(item, f"{item.path}: {reason}")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values[-200:])
    return s[len(s) // 2]


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (none on a CPU machine)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: no pinning
        return []


def executor_from_spec(spec: str, workers: int | None = None, *,
                       log: Callable[[str], None] | None = None) -> DaskExecutor:
    """A DaskExecutor for local[:N], tcp://HOST:PORT, tls://HOST:PORT or jobqueue:CONFIG.yaml (checked now, started
    on first use or on entering the context)."""
    return DaskExecutor(ClusterConfig(spec, workers), log=log)
