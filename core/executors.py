"""Where the per-micrograph work of `pick` runs. The default is this process: reader threads a few micrographs
ahead of one scorer (file reads, FFTs and the network all release the GIL). The Dask executor (core/cluster.py)
implements the same protocol (pipeline.Executor) on a cluster.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from .pipeline import MicrographItem, MicrographResult, PickWork, picker_for, read_ahead

if TYPE_CHECKING:
    from .prefetch import Prefetch


class LocalExecutor:
    """This process: `workers` reader threads ahead of one scorer on the configured device; optionally a Prefetch
    (core/prefetch.py) that prepared the first micrographs while the model loaded."""

    def __init__(self, workers: int = 1, prefetch: "Prefetch | None" = None) -> None:
        self.workers = max(1, int(workers))
        self.prefetch = prefetch

    def run(self, work: PickWork, items: Sequence[MicrographItem],
            should_stop: Callable[[], bool] | None = None) -> Iterator[MicrographResult]:
        if not items:
            return iter(())
        take = self.prefetch.take if self.prefetch is not None else None
        return read_ahead(picker_for(work), items, self.workers, should_stop, take)
