"""One scoring worker per device: takes the oldest queued job from the store and runs it through the engine.

Jobs run one at a time per device, micrograph by micrograph, so they queue instead of thrashing. A synchronous
upload (POST /v1/pick/upload) is served between two micrographs of a running job, on the same device.

A supervisor thread watches the workers. A worker that raises (anything but a PupickError, which fails its job with
one line) is restarted and its job put back; a job that kills workers MAX_STRIKES times fails with the reason. A
full or read-only --state (ENOSPC, EDQUOT, EROFS) is no strike: the workers pause, the supervisor looks again every
`disk_retry_s`, and work resumes by itself. A worker that cannot be restarted ends the process (exit 1).
"""
from __future__ import annotations

import errno
import inspect
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from ..allocator import release_free_memory
from ..errors import AbortRequested, PupickError, one_line
from ..names import check_micrograph_name
from ..io import atomic_path
from ..outputs import pick_to_dir
from ..pipeline import MicrographItem
from ..train import train
from . import settings as settings_map
from .jobs import Job, JobStore
from .metrics import Metrics
from .models import ModelRegistry, copy_atomic

log = logging.getLogger("pupick.serve")


MAX_STRIKES = 3  # a job that kills this many workers fails
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
SUPERVISE_S = 0.2  # how often the supervisor looks at the workers
TRIM_AFTER = 1000  # micrographs in a job or submission after which freed memory goes back to the kernel
DB_PROBE_S = 30.0  # how often an idle server checks that its state database takes a write
PROBE_BYTES = 1 << 20  # what must fit in --state before paused work resumes


def disk_full(err: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) says that --state has no space or cannot be written."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            return True
        if isinstance(err, sqlite3.Error):
            text = str(err).lower()
            if getattr(err, "sqlite_errorcode", None) in (8, 13) or "disk is full" in text or "readonly" in text:
                return True  # SQLITE_READONLY, SQLITE_FULL
        err = err.__cause__ or err.__context__
    return False


class Workers:
    """The device workers, their supervisor, and the queue of urgent (synchronous) tasks they share."""

    def __init__(self, devices: list[str], store: JobStore, registry: ModelRegistry, metrics: Metrics,
                 executor: Any = None, cache_dir: Path | None = None, roots: tuple = (),
                 disk_retry_s: float = 10.0, on_fatal: Callable[[str], None] | None = None) -> None:
        self.store, self.registry, self.metrics, self.executor = store, registry, metrics, executor
        self.roots = roots
        self.cache_dir = cache_dir
        self.urgent: queue.Queue[tuple[Callable[[str], Any], Future]] = queue.Queue()
        self.stopping = threading.Event()
        self.paused = threading.Event()  # --state is full: no job is claimed until it has room again
        self.disk_retry_s = disk_retry_s
        self.on_fatal = on_fatal or (lambda reason: os._exit(1))
        self.threads = [_Worker(self, device) for device in devices]
        self.devices = devices
        self.strikes: dict[str, int] = {}
        self.orphans: dict[str, tuple[str, str | None]] = {}  # job -> (state, error) not yet written (disk full)
        self.db_ok = True
        self._next_check = 0.0
        self._supervisor: threading.Thread | None = None

    def start(self, workers: bool = True) -> None:
        """Start the workers (unless `workers` is false: --no-workers) and the supervisor."""
        if workers:
            for t in self.threads:
                t.start()
        else:
            self.threads = []
        self._supervisor = threading.Thread(target=self._supervise, name="pupick-supervisor", daemon=True)
        self._supervisor.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the workers to stop between micrographs (a running job goes back to the queue) and wait."""
        self.stopping.set()
        self.store.notify()
        for t in list(self.threads):
            if t.is_alive():
                t.join(timeout)
        if self._supervisor is not None:
            self._supervisor.join(timeout)

    def alive(self) -> bool:
        """Whether at least one worker runs."""
        return any(t.is_alive() for t in self.threads)

    def healthy(self) -> bool:
        """A worker runs, --state takes writes, and the state database took the last write asked of it."""
        return self.alive() and not self.paused.is_set() and self.db_ok

    def call(self, fn: Callable[[str], Any], timeout: float | None = None) -> Any:
        """Run fn(device) on a worker (between micrographs when one is busy) and return its result."""
        return self.submit(fn).result(timeout)

    def submit(self, fn: Callable[[str], Any]) -> Future:
        """Queue fn(device) for a worker (between micrographs when one is busy); its Future, not waited for."""
        fut: Future = Future()
        self.urgent.put((fn, fut))
        self.store.notify()
        return fut

    # ---------------------------------------------------------------- supervision
    def pause(self, err: BaseException) -> None:
        """--state is full or read-only: stop claiming jobs until the supervisor finds room again."""
        if not self.paused.is_set():
            self.paused.set()
            self._next_check = time.monotonic() + self.disk_retry_s
            log.error(json.dumps({"event": "paused", "reason": one_line(err),
                                  "retry_seconds": self.disk_retry_s}))

    def _supervise(self) -> None:
        next_probe = time.monotonic() + DB_PROBE_S
        while not self.stopping.wait(SUPERVISE_S):
            for i, t in enumerate(list(self.threads)):
                if not t.is_alive() and not self.stopping.is_set():
                    self._replace(i, t)
            now = time.monotonic()
            if self.paused.is_set() and now >= self._next_check:
                self._try_resume()
                self._next_check = time.monotonic() + self.disk_retry_s
            elif now >= next_probe:
                self._probe_db()
                next_probe = now + DB_PROBE_S

    def _probe_db(self) -> None:
        try:
            self.store.probe()
            self.db_ok = True
        except Exception as err:  # any failure to write the store is a failing health check
            self.db_ok = False
            if disk_full(err):
                self.pause(err)
            log.error(json.dumps({"event": "state-database", "error": one_line(err)}))

    def _replace(self, index: int, dead: "_Worker") -> None:
        err, job_id = dead.death, dead.job_id
        if disk_full(err):
            self.pause(err)
            if job_id is not None:
                self.orphans[job_id] = ("queued", None)
        else:
            reason = one_line(f"{type(err).__name__}: {err}") if err is not None else "the worker stopped"
            log.error("worker on %s died%s:\n%s", dead.device, f" running job {job_id}" if job_id else "",
                      dead.trace or reason)
            if job_id is not None:
                strikes = self.strikes[job_id] = self.strikes.get(job_id, 0) + 1
                if strikes >= MAX_STRIKES:
                    settle = ("failed", f"the job stopped a worker {strikes} times; the last time: {reason}")
                else:
                    settle = ("queued", None)
                log.warning(json.dumps({"event": "worker-restart", "device": dead.device, "job": job_id,
                                        "strikes": strikes, "state": settle[0]}))
                self.orphans[job_id] = settle
            if not self.paused.is_set():
                self._settle()
        try:
            new = _Worker(self, dead.device)
            new.start()
        except BaseException as start_err:  # no thread to be had: the service manager restarts the process
            self._settle()
            self.on_fatal(f"cannot restart the worker on {dead.device} ({start_err})")
            return
        self.threads[index] = new

    def _settle(self) -> bool:
        """Write the orphaned jobs' new states; False (and paused) when --state still takes no writes."""
        for job_id, (state, error) in list(self.orphans.items()):
            try:
                self.store.finish(job_id, state, error)
            except Exception as err:  # the store is unwritable: try again on the next check
                if disk_full(err):
                    self.pause(err)
                    return False
                log.error("cannot put job %s back: %s", job_id, err)
            self.orphans.pop(job_id, None)
            if state != "queued":
                self.strikes.pop(job_id, None)
        return True

    def _try_resume(self) -> None:
        try:
            self.store.probe(PROBE_BYTES)
        except Exception as err:  # still no room (or still read-only): look again later
            if not disk_full(err):
                log.error("state check failed: %s", err)
            return
        if self._settle():
            self.db_ok = True
            self.paused.clear()
            self.store.notify()
            log.info(json.dumps({"event": "resumed"}))


class _Worker(threading.Thread):
    def __init__(self, pool: Workers, device: str) -> None:
        super().__init__(name=f"pupick-worker-{device}", daemon=True)
        self.pool, self.device = pool, device
        self.job_id: str | None = None
        self.death: BaseException | None = None
        self.trace: str | None = None

    def serve_urgent(self) -> None:
        while True:
            try:
                fn, fut = self.pool.urgent.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(self.device))
            except BaseException as err:  # handed to the waiting request, which reports it
                fut.set_exception(err)

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as err:  # the supervisor restarts this worker and settles its job
            self.death, self.trace = err, traceback.format_exc()

    def loop(self) -> None:
        store, pool = self.pool.store, self.pool
        while not pool.stopping.is_set():
            self.serve_urgent()
            if pool.paused.is_set():
                pool.stopping.wait(0.2)
                continue
            job = store.claim()
            if job is None:
                with store.wakeup:
                    if pool.urgent.empty():
                        store.wakeup.wait(0.5)
                continue
            self.job_id = job.id
            self.run_job(job)
            self.job_id = None

    # ---------------------------------------------------------------- one job
    def run_job(self, job: Job) -> None:
        store = self.pool.store
        t0 = time.perf_counter()
        state, error, result = "done", None, None
        try:
            if job.kind == "pick":
                result = self.pick(job)
            elif job.kind == "train":
                result = self.train(job)
            else:
                raise PupickError(f"unknown job kind {job.kind!r}")
        except AbortRequested:
            state = "queued" if self.pool.stopping.is_set() and not store.cancel_requested(job.id) else "cancelled"
        except PupickError as err:
            if disk_full(err):
                raise
            state, error = "failed", one_line(err)
        # anything else stops this worker: the supervisor restarts it and puts the job back (or fails it on strike 3)
        if state == "done" and job.kind == "pick" and result is not None:
            counts = store.get(job.id, with_failures=True)
            if counts is not None and counts.total and counts.failed == counts.total:
                first = counts.failures[0]["error"] if counts.failures else "no reason recorded"
                state, error = "failed", one_line(f"all {counts.total} micrographs failed; the first: {first}")
        store.finish(job.id, state, error, result)
        if job.total >= TRIM_AFTER:  # a large job's lists are freed now; the allocator would keep them resident
            release_free_memory()
        if state != "queued":
            self.pool.metrics.job_seconds.labels(job.kind).observe(time.time() - job.created)
        done = store.get(job.id)
        log.info(json.dumps({"event": "job", "job": job.id, "kind": job.kind, "state": state,
                             "device": self.device, "model": job.request.get("model"),
                             "micrographs": done.total if done else job.total,
                             "done": done.done if done else None, "failed": done.failed if done else None,
                             "seconds": round(time.perf_counter() - t0, 3), "client": job.client,
                             **({"error": error} if error else {})}))

    def should_stop(self, job_id: str) -> Callable[[], bool]:
        return lambda: self.pool.stopping.is_set() or self.pool.store.cancel_requested(job_id)

    def pick(self, job: Job) -> dict:
        store, metrics = self.pool.store, self.pool.metrics
        req = job.request
        config = settings_map.pick_config(req.get("settings"), device=self.device)
        model = None
        if config.method == "cnn":
            model = self.pool.registry.load(req["model"], req.get("model_sha256"), self.device)
        roots = tuple(str(r) for r in self.pool.roots)  # checked again where each file is opened, on any machine
        items = [MicrographItem(name, path, ps, roots) for name, path, ps in store.iter_items(job.id)]

        def finished(res) -> None:
            if res.error is None:
                store.mark(job.id, res.micrograph, True, picks=int(len(res.picks)))
            else:
                store.mark(job.id, res.micrograph, False, reason=one_line(res.error))
            metrics.picked(res.seconds, res.error is None)
            self.serve_urgent()

        run = pick_to_dir(items, model, config, store.job_dir(job.id), files=EXACT_FILES, executor=self.pool.executor,
                          on_result=finished, should_stop=self.should_stop(job.id), progress=False,
                          log=lambda m: log.info("%s", m))
        store.mark_done(job.id, run.micrographs)  # includes micrographs an interrupted earlier run finished
        try:  # the particle diameter in the micrographs' pixels, as the manifest records it for `pupick evaluate`
            manifest = json.loads((store.job_dir(job.id) / "pupick_pick.json").read_text())
            return {"diameter_px": _num(manifest.get("diameter_px"))}
        except (OSError, ValueError):
            return {}

    def train(self, job: Job) -> dict:
        store, registry = self.pool.store, self.pool.registry
        req = job.request
        config = settings_map.train_config(req.get("settings"), device=self.device,
                                           cache_dir=str(self.pool.cache_dir) if self.pool.cache_dir else None)
        out_dir = store.job_dir(job.id)
        labels = read_labels(req["labels_csv"])
        paths = [Path(p) for _, p, _ in store.micrographs(job.id)]
        target = out_dir / "model.pt"
        kwargs: dict[str, Any] = {}
        params = inspect.signature(train).parameters
        progress: dict[str, Any] = {}
        if "on_epoch" in params:
            def on_epoch(row: Any) -> None:
                progress.update(_epoch_fields(row))
                store.update_result(job.id, dict(progress))
                self.serve_urgent()
            kwargs["on_epoch"] = on_epoch
        if "should_stop" in params:
            kwargs["should_stop"] = self.should_stop(job.id)
        quiet = {"progress": False, "log": lambda m: log.info("%s", m)}
        if "output" in params:  # the engine's first train(): it writes the model itself
            result = train(paths, labels, config, target, **quiet, **kwargs)
        else:  # train(...) -> TrainResult, saved here
            result = train(paths, labels, config, **quiet, **kwargs)
            result.save(target)
        if self.should_stop(job.id)():
            raise AbortRequested("training stopped")
        name = req.get("name") or f"trained-{job.id}"
        staged = registry.own_dir / f".{name}.staged"
        copy_atomic(target, staged)
        entry, _ = registry.add_upload(name, staged, source="train")
        store.mark_done(job.id, (mic_name for mic_name, _, _ in store.micrographs(job.id)))
        history = result.history
        last = history.iloc[-1] if len(history) else None
        return {"model": entry.name, "model_sha256": entry.sha256,
                "epoch": int(result.best_epoch), "epochs": int(len(history)),
                "loss": _num(last["loss"]) if last is not None else None,
                "ap": _num(result.best_ap), "seconds": round(float(result.seconds), 3)}


EXACT_DIR = "exact"  # per-micrograph picks at full float64 precision (picks.csv keeps 6 digits), for format=json


def _write_exact(df, target: Path) -> None:
    with atomic_path(target) as tmp:
        df.to_csv(tmp, index=False, float_format="%.17g")  # 17 significant digits: every float64 round-trips


def read_exact(path: Path):
    """A job's full-precision picks of one micrograph."""
    import pandas as pd

    # pandas 3 parses floats exactly by default and deprecates the option; pandas 2 needs it to round-trip
    exact = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
    return pd.read_csv(path, dtype={"micrograph": str, "path": str}, keep_default_na=False,
                       na_values={"score": [""]}, **exact)


def _exact_target(item) -> Path:
    return Path(EXACT_DIR) / f"{check_micrograph_name(item.micrograph, 'micrograph name', path_ok=True)}.csv"


class _ExactFiles:
    target = staticmethod(_exact_target)
    write = staticmethod(_write_exact)


EXACT_FILES = _ExactFiles()


def read_labels(text: str):
    """The labels table a training job stored at submission (CSV micrograph,x,y)."""
    import io

    import pandas as pd

    return pd.read_csv(io.StringIO(text), dtype={"micrograph": str})


def _epoch_fields(row: Any) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else (lambda k, d=None: getattr(row, k, d))
    return {"epoch": get("epoch"), "epochs": get("epochs"), "loss": _num(get("loss")), "ap": _num(get("ap"))}


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


