"""Model files: ``torch.save({format, version, state_dict, config})`` with a config of builtin types only.

Loadable with ``torch.load(..., weights_only=True)``: no pickled modules, dataclasses or numpy scalars inside.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ModelFileError
from .io import atomic_path
from .models import ModelConfig, PickerNet, build, native_stride, receptive_field

FORMAT = "pupick-model"
FORMAT_VERSION = 1  # bump when a saved file can no longer be read by this code


@dataclass
class LoadedModel:
    """A model ready to score: the module (eval mode, native stride), its plain config and identity."""

    module: PickerNet
    config: dict[str, Any]
    receptive_field: int
    stride: int  # native output stride of the module
    sha256: str
    path: Path | None = None


def plain(value: Any, where: str = "config") -> Any:
    """Convert a config to builtin types (numpy scalars/arrays, tuples, Paths) or raise TypeError naming the key."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where}: {type(value).__name__} is not a plain type")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(path: str | os.PathLike, module: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write the module's state_dict (fp32, CPU) and the plain config atomically."""
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "state_dict": state, "config": plain(dict(config))}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Read a model file (weights_only) and rebuild the module in eval mode; ModelFileError if it is not ours."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, foreign pickle, or not a torch file at all
        raise ModelFileError(f"{path}: not a pupick model file ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a pupick model file (no '{FORMAT}' marker)")
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format version {version} is newer than this pupick reads ({FORMAT_VERSION}); "
            "upgrade pupick"
        )
    config = payload.get("config")
    state = payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict) or "arch" not in config:
        raise ModelFileError(f"{path}: model file is incomplete (missing config or weights)")
    return model_from_state(state, config, file_sha256(path), path=path, device=device)


def model_from_state(state: dict, config: dict[str, Any], sha256: str, path: Path | None = None,
                     device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a LoadedModel from weights and plain config (a model file's content, or one shipped to a worker)."""
    where = f"{path}: " if path is not None else ""
    mcfg = ModelConfig.from_dict(config)
    try:
        module = build(mcfg)
        module.load_state_dict(state)
    except ModelFileError as err:
        raise ModelFileError(f"{where}{err}") from None
    except (RuntimeError, ValueError, TypeError) as err:
        raise ModelFileError(f"{where}weights do not fit architecture {mcfg.arch!r}: {str(err).splitlines()[0]}") from None
    module.to(device).eval()
    return LoadedModel(module, config, receptive_field(mcfg), native_stride(mcfg), sha256, path)


def model_state(model: LoadedModel) -> dict[str, torch.Tensor]:
    """The model's weights as CPU tensors (what a model file or a worker payload holds)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.module.state_dict().items()}
