"""Where the per-micrograph work of `pick` runs. The default is this process: reader threads a few micrographs
ahead of one scorer (file reads, FFTs and the network all release the GIL). The Dask executor (core/cluster.py)
implements the same protocol on a cluster.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterator, Protocol, Sequence

from .errors import AbortRequested, PupickError

if TYPE_CHECKING:
    from .pipeline import MicrographItem, MicrographResult, PickWork, _Picker
    from .prefetch import Prefetch


class Executor(Protocol):
    """Runs the per-micrograph work: one result per item, in any order."""

    def run(self, work: "PickWork", items: Sequence["MicrographItem"],
            should_stop: Callable[[], bool] | None) -> Iterator["MicrographResult"]:
        """Yield each item's result; when should_stop() turns true, cancel what is pending and raise AbortRequested."""
        ...


def read_ahead(picker: "_Picker", items: Sequence["MicrographItem"], workers: int = 1,
               should_stop: Callable[[], bool] | None = None,
               prefetch: "Prefetch | None" = None,
               observe: Callable[[int, int], None] | None = None) -> Iterator["MicrographResult"]:
    """Results in input order; `workers` reader threads prepare the next micrographs while one is scored (or take
    them from a prefetch started before the model loaded). `observe(i, ready)`, if given, hears as the scorer turns
    to micrograph i how many prepared micrographs wait in the reader queue (0: the scorer waits for the readers)."""
    from .pipeline import failed

    def prepare(item: "MicrographItem") -> tuple:
        early = prefetch.take(item, picker.model_config, picker.config) if prefetch is not None else None
        return early if early is not None else picker.prepare(item)

    ahead = max(1, int(workers))
    queue = deque(items)
    pending: deque[tuple["MicrographItem", Future]] = deque()
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="pupick-read")
    taken = 0
    try:
        while queue or pending:
            while queue and len(pending) < ahead + 1:  # keep the readers a little ahead of the scorer
                item = queue.popleft()
                pending.append((item, pool.submit(prepare, item)))
            if should_stop is not None and should_stop():
                raise AbortRequested("stop requested; picking interrupted")
            if observe is not None:
                observe(taken, sum(1 for _ in _leading_done(pending)))
            taken += 1
            item, fut = pending.popleft()
            try:
                result = picker.finish(*fut.result())
            except (PupickError, OSError) as err:
                result = failed(item, err)
            yield result
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _leading_done(pending: deque) -> Iterator[Future]:
    """The prepared micrographs at the head of the queue, in order (the scorer takes them without waiting)."""
    for _, fut in pending:
        if not fut.done():
            return
        yield fut


class LocalExecutor:
    """This process: `workers` reader threads ahead of one scorer on the configured device; optionally a Prefetch
    (core/prefetch.py) that prepared the first micrographs while the model loaded; optionally an observer of the
    reader queue (read_ahead's `observe`: bench/gpu_check.py measures with it)."""

    def __init__(self, workers: int = 1, prefetch: "Prefetch | None" = None,
                 observe: Callable[[int, int], None] | None = None) -> None:
        self.workers = max(1, int(workers))
        self.prefetch = prefetch
        self.observe = observe

    def run(self, work: "PickWork", items: Sequence["MicrographItem"],
            should_stop: Callable[[], bool] | None = None) -> Iterator["MicrographResult"]:
        from .pipeline import picker_for

        if not items:
            return iter(())
        return read_ahead(picker_for(work), items, self.workers, should_stop, self.prefetch, self.observe)
