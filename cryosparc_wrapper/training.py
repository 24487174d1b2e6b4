"""Training a model from cryoSPARC particle picks on cryoSPARC exposures (no server involved)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pupick.core.config import TrainConfig
from pupick.core.errors import InputError

from .picking import resolve_paths


def training_inputs(exposures: pd.DataFrame, labels: pd.DataFrame, project_dir: str | os.PathLike,
                    source: str = "particles") -> tuple[list[Path], pd.DataFrame]:
    """The labelled exposures' absolute paths and the labels keyed by those paths (exact matching in train)."""
    if "micrograph_uid" not in labels.columns:
        raise InputError(f"{source}: particles carry no micrograph uid (read them with the exposures)")
    paths = resolve_paths(exposures, project_dir)
    row_of = {int(u): i for i, u in enumerate(exposures["uid"].to_numpy(dtype=np.uint64))}
    rows = np.array([row_of.get(int(u), -1) for u in labels["micrograph_uid"].to_numpy(dtype=np.uint64)])
    if (rows < 0).any():
        raise InputError(f"{source}: {int((rows < 0).sum())} particle(s) lie on micrographs "
                         "that are not in the exposures")
    used = sorted(set(rows.tolist()))
    if not used:
        raise InputError(f"{source}: no particles to train on")
    keyed = pd.DataFrame({
        "micrograph": pd.Series([str(paths[i]) for i in rows], dtype=object),
        "x": labels["x"].to_numpy(dtype=float), "y": labels["y"].to_numpy(dtype=float),
    })
    return [paths[i] for i in used], keyed


def train_on_exposures(exposures: pd.DataFrame, labels: pd.DataFrame, project_dir: str | os.PathLike,
                       config: TrainConfig, output: str | os.PathLike, log: Callable[[str], None] = print,
                       progress: bool = False):
    """Train on the labelled exposures' micrographs and write the model to `output`; returns the TrainResult."""
    import dataclasses

    from pupick.core.train import train

    output = Path(output)
    micrographs, keyed = training_inputs(exposures, labels, project_dir)
    log(f"training on {len(keyed)} labelled particles on {len(micrographs)} of {len(exposures)} micrographs")
    if config.cache_dir is None:
        config = dataclasses.replace(config, cache_dir=str(output.with_name(output.stem + ".cache")))
    result = train(micrographs, keyed, config, progress=progress, log=log)
    result.save(output)
    return result


def train_summary(result) -> str:
    """One line with the validation AP (or why there is none)."""
    ap = float(result.best_ap)
    if np.isfinite(ap):
        return f"validation AP {ap:.3f} at epoch {result.best_epoch}; model saved to {result.path}"
    return f"no validation split (test split 0); model saved to {result.path}"
