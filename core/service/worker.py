"""One scoring worker per device: takes the oldest queued job from the store and runs it through the engine.

Jobs run one at a time per device, micrograph by micrograph, so they queue instead of thrashing. A synchronous
upload (POST /v1/pick/upload) is served between two micrographs of a running job, on the same device.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from ..errors import AbortRequested, PupickError
from ..io import atomic_path
from ..outputs import pick_to_dir
from ..pipeline import MicrographItem
from ..tables import stem
from ..train import train
from . import settings as settings_map
from .jobs import Job, JobStore
from .metrics import Metrics
from .models import ModelRegistry, copy_atomic

log = logging.getLogger("pupick.serve")


class Workers:
    """The device workers and the queue of urgent (synchronous) tasks they share."""

    def __init__(self, devices: list[str], store: JobStore, registry: ModelRegistry, metrics: Metrics,
                 executor: Any = None, cache_dir: Path | None = None) -> None:
        self.store, self.registry, self.metrics, self.executor = store, registry, metrics, executor
        self.cache_dir = cache_dir
        self.urgent: queue.Queue[tuple[Callable[[str], Any], Future]] = queue.Queue()
        self.stopping = threading.Event()
        self.threads = [_Worker(self, device) for device in devices]
        self.devices = devices

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the workers to stop between micrographs (a running job goes back to the queue) and wait."""
        self.stopping.set()
        self.store.notify()
        for t in self.threads:
            t.join(timeout)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self.threads)

    def call(self, fn: Callable[[str], Any], timeout: float | None = None) -> Any:
        """Run fn(device) on a worker (between micrographs when one is busy) and return its result."""
        fut: Future = Future()
        self.urgent.put((fn, fut))
        self.store.notify()
        return fut.result(timeout)


class _Worker(threading.Thread):
    def __init__(self, pool: Workers, device: str) -> None:
        super().__init__(name=f"pupick-worker-{device}", daemon=True)
        self.pool, self.device = pool, device

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
        store = self.pool.store
        while not self.pool.stopping.is_set():
            self.serve_urgent()
            job = store.claim()
            if job is None:
                with store.wakeup:
                    if self.pool.urgent.empty():
                        store.wakeup.wait(0.5)
                continue
            self.run_job(job)

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
            state, error = "failed", _one_line(str(err))
        except Exception as err:  # a bug must not kill the worker: the job fails with one line, the log has the rest
            state, error = "failed", _one_line(f"internal error: {type(err).__name__}: {err}")
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
        store.finish(job.id, state, error, result)
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
        items = [MicrographItem(name, path, ps) for name, path, ps in store.items(job.id)]

        def finished(res) -> None:
            if res.error is None:
                store.mark(job.id, res.micrograph, True, picks=int(len(res.picks)))
            else:
                store.mark(job.id, res.micrograph, False, reason=_one_line(res.error))
            metrics.picked(res.seconds, res.error is None)
            self.serve_urgent()

        run = pick_to_dir(items, model, config, store.job_dir(job.id), files=EXACT_FILES, executor=self.pool.executor,
                          on_result=finished, should_stop=self.should_stop(job.id), progress=False,
                          log=lambda m: log.info("%s", m))
        for name in run.micrographs:  # includes micrographs an interrupted earlier run finished
            store.mark(job.id, name, True)
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
        for mic_name, _, _ in store.micrographs(job.id):
            store.mark(job.id, mic_name, True)
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

    return pd.read_csv(path, dtype={"micrograph": str, "path": str}, keep_default_na=False,
                       na_values={"score": [""]}, float_precision="round_trip")


def _exact_target(item) -> Path:
    return Path(EXACT_DIR) / f"{item.micrograph}.csv"


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


def _one_line(msg: str) -> str:
    return " ".join(msg.split())
