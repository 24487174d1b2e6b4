"""Prepare the first micrographs while torch and the model load: start-up overlap for short runs.

A fresh `pupick pick` spends its first one to two seconds importing torch, one thread holding the GIL. Reading a
micrograph and its Fourier crop run mostly outside the GIL, so a thread prepares the first micrographs on the other
core meanwhile, from the model's plain config read without torch (core.modelmeta). Each one is prepared by the
picker's own function (pipeline.prepare_micrograph); the picker takes a prepared micrograph only for the same item,
model config and pick config, so the picks are identical with or without the head start. Bounded: a few
micrographs and their images' bytes; anything that fails here is simply prepared again (and reported) later.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from typing import Any, Sequence

from .config import PickConfig
from .modelmeta import needs_particle_size, read_config
from .pipeline import MicrographItem, prepare_micrograph

MAX_ITEMS = 8
MAX_BYTES = 256 << 20  # prepared images held at once


class Prefetch:
    """Micrographs prepared ahead by one background thread; `take` hands each over once."""

    def __init__(self, items: Sequence[MicrographItem], model_config: dict | None, config: PickConfig,
                 max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES) -> None:
        self.model_config = model_config
        self.config = config
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._queue = list(items[:max_items])
        self._futures: dict[MicrographItem, Future] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pupick-prefetch", daemon=True)

    def start(self) -> "Prefetch":
        self._thread.start()
        return self

    def _run(self) -> None:
        held = 0
        while not self._stop.is_set() and held < self.max_bytes:
            with self._lock:
                if not self._queue:
                    return
                item = self._queue.pop(0)
                fut: Future = Future()
                fut.set_running_or_notify_cancel()
                self._futures[item] = fut
            try:
                job = prepare_micrograph(item, self.model_config, self.config)
            except BaseException as err:  # noqa: BLE001 - prepared again (and reported) by the picker
                fut.set_exception(err)
                continue
            held += job[0].image.nbytes
            fut.set_result(job)

    def take(self, item: MicrographItem, model_config: dict | None, config: PickConfig) -> Any | None:
        """The prepared (job, notes) of this item for the same model and pick config, else None (prepare it)."""
        if model_config != self.model_config or config != self.config:
            return None
        with self._lock:
            fut = self._futures.pop(item, None)
            if fut is None:
                if item in self._queue:  # not started: the caller prepares it now, not twice
                    self._queue.remove(item)
                return None
        try:
            return fut.result()
        except BaseException:  # noqa: BLE001
            return None

    def close(self) -> None:
        """Stop preparing and drop what was not taken."""
        self._stop.set()
        with self._lock:
            self._queue.clear()
            self._futures.clear()


def start_prefetch(items: Sequence[MicrographItem], model: Any, config: PickConfig) -> Prefetch | None:
    """A started Prefetch for the first items, or None where it cannot help: a model that is not a file whose
    config reads without torch, or a model picked at a size given at pick time (the general model)."""
    if not items:
        return None
    if config.method == "blob":
        model_config = None
    else:
        if not isinstance(model, (str, os.PathLike)):
            return None
        model_config = read_config(model)
        if model_config is None or needs_particle_size(model_config):
            return None  # the general model: its picking size comes from the diameter (modelfile.for_particle)
    return Prefetch(items, model_config, config).start()
