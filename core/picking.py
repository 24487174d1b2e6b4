"""`pick`: many micrographs through an executor, the engine's picking entry point (core/api.py exports it).

The per-micrograph work is core/pipeline.py's; where it runs is the executor's (core/executors.py: this process by
default; core/cluster.py: a Dask cluster). Results stream back through `on_result` as each micrograph finishes; one
bad micrograph is a failed result, not an exception, and the caller decides the exit.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import pandas as pd

from .config import PickConfig
from .executors import LocalExecutor
from .pipeline import (PICK_TABLE_COLUMNS, Executor, MicrographItem, MicrographResult, PickResult, PickWork,
                       check_model, micrograph_items)
from .tables import empty_picks


def pick(
    micrographs: pd.DataFrame | Sequence[str | os.PathLike | MicrographItem],
    model: Any,
    config: PickConfig,
    *,
    executor: Executor | None = None,
    on_result: Callable[[MicrographResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    keep_picks: bool = True,
) -> PickResult:
    """Pick particles on micrographs with a loaded model, or with the blob picker (config.method == "blob").

    Results stream through `on_result` as each micrograph finishes (failures too, with `.error` set); `should_stop`
    is polled between micrographs. With keep_picks=False the returned table is empty, which bounds memory.
    """
    from tqdm import tqdm

    if log is None:
        def log(msg: str) -> None:
            tqdm.write(msg, file=sys.stderr)

    items = micrograph_items(micrographs)
    work = PickWork(check_model(model, config, items), config)
    executor = executor if executor is not None else LocalExecutor(config.workers)
    frames: list[pd.DataFrame] = []
    diameters: dict[str, float] = {}
    failures: list[tuple[str, str]] = []
    said: set[str] = set()
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    n_done = 0
    bar = tqdm(total=len(items), desc="pick", unit="mic", disable=not progress or None)
    try:
        for res in executor.run(work, items, should_stop):
            for note in res.warnings:
                if note not in said:
                    said.add(note)
                    log(note)
            if res.error is not None:
                failures.append((res.path, res.error))
                log(f"skipped {res.path}: {res.error}")
            else:
                n_done += 1
                if keep_picks:
                    frames.append(res.picks)
                if res.diameter_px:
                    diameters[res.micrograph] = float(res.diameter_px)
                for k, v in res.timings.items():
                    stages[k] = stages.get(k, 0.0) + v
            if on_result is not None:
                on_result(res)
            bar.update()
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    picks = pd.concat(frames, ignore_index=True) if frames else empty_picks(with_path=True)
    timings = {"seconds_total": elapsed, "seconds_per_micrograph": elapsed / n_done if n_done else math.nan,
               **{f"seconds_{k}": v for k, v in stages.items()}}
    return PickResult(picks[PICK_TABLE_COLUMNS], failures, timings, n_done, diameters)
