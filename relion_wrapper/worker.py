"""Training inside the job's own process; RELION's Abort stops it between optimiser steps (via `should_stop`)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd

from .common import say, set_threads
from .job import RelionJob


def run_training(job: RelionJob, micrographs: list[Path], labels: pd.DataFrame, config: Any, output: Path,
                 threads: int) -> dict[str, Any]:
    """Train (stopping with AbortRequested when RELION's abort file appears), write the model; best_epoch/best_ap/pi.

    Nothing is written on abort or failure but the preprocessing cache (OUTPUT.cache/ beside the model).
    """
    from pupick.core.train import train

    set_threads(threads)
    if config.cache_dir is None:
        config = dataclasses.replace(config, cache_dir=str(output.with_name(output.stem + ".cache")))
    result = train(micrographs, labels, config, should_stop=job.abort_requested, log=say,
                   on_epoch=lambda e: say(f"epoch {e.epoch}/{e.epochs}: loss {e.loss:.4f}"
                                          + ("" if math.isnan(e.ap) else f", validation AP {e.ap:.3f}")))
    result.save(output)
    best_ap = float(result.best_ap)
    return {"best_epoch": int(result.best_epoch), "best_ap": best_ap if math.isfinite(best_ap) else None,
            "pi": float(result.pi)}
