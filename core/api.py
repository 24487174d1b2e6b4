"""The engine API in one import: what every front end (CLI, wrappers, service, browser pages) calls.

    from pupick.core.api import PickConfig, TrainConfig, pick, train
"""
from __future__ import annotations

from typing import Any

from .config import SETTINGS, PickConfig, PreprocessConfig, ScoreConfig, TrainConfig
from .errors import AbortRequested, InputError, ModelFileError, PupickError
from .pipeline import MicrographItem, MicrographResult, PickResult, PickWork, micrograph_items, pick, pick_batch

__all__ = [
    "SETTINGS", "PickConfig", "PreprocessConfig", "ScoreConfig", "TrainConfig", "AbortRequested", "InputError",
    "ModelFileError", "PupickError", "MicrographItem", "MicrographResult", "PickResult", "PickWork",
    "micrograph_items", "pick", "pick_batch", "train", "TrainResult", "pick_to_dir", "load_model", "evaluate",
    "LocalExecutor",
]


def __getattr__(name: str) -> Any:
    # the training stack, torch and the model files load only when asked for
    if name in ("train", "TrainResult"):
        from . import train as module
    elif name == "pick_to_dir":
        from . import outputs as module
    elif name == "load_model":
        from . import modelfile as module
    elif name == "evaluate":
        from . import evaluate as module
    elif name == "LocalExecutor":
        from . import executors as module
    else:
        raise AttributeError(name)
    return getattr(module, name)
