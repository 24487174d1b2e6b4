"""The engine API in one import: what a Python user (and every front end) calls.

    from pupick.core.api import PickConfig, TrainConfig, pick, train

Importing it loads torch (training and the model files come with it); the torch-free paths (the CLI's start,
`--server` mode) import the modules they need instead.
"""
from __future__ import annotations

from .config import SETTINGS, PickConfig, PreprocessConfig, ScoreConfig, TrainConfig
from .errors import AbortRequested, InputError, ModelFileError, PupickError
from .evaluate import evaluate
from .executors import LocalExecutor
from .modelfile import load_model
from .outputs import pick_to_dir
from .picking import pick
from .pipeline import MicrographItem, MicrographResult, PickResult, PickWork, micrograph_items, pick_batch
from .train import TrainResult, train

__all__ = [
    "SETTINGS", "PickConfig", "PreprocessConfig", "ScoreConfig", "TrainConfig", "AbortRequested", "InputError",
    "ModelFileError", "PupickError", "MicrographItem", "MicrographResult", "PickResult", "PickWork",
    "micrograph_items", "pick", "pick_batch", "train", "TrainResult", "pick_to_dir", "load_model", "evaluate",
    "LocalExecutor",
]
