"""Model files: ``torch.save({format, version, state_dict, config})`` with a config of builtin types only.

Loadable with ``torch.load(..., weights_only=True)``: no pickled modules, dataclasses or numpy scalars inside.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
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


def content_sha256(state: dict[str, torch.Tensor], config: dict[str, Any]) -> str:
    """A model's identity: SHA-256 of its weights (name, dtype, shape, values) and its canonical config JSON.

    The save date (config provenance.date) is left out, so retraining with the same seed is the same model, and
    re-saving or copying a file does not change it.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    ident = dict(config)
    if isinstance(ident.get("provenance"), dict):
        ident["provenance"] = {k: v for k, v in ident["provenance"].items() if k != "date"}
    h.update(json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str).encode())
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
        reason = "not a torch file" if not zipfile.is_zipfile(path) else "holds more than weights and plain settings"
        raise ModelFileError(f"{path}: not a pupick model file ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a pupick model file (no '{FORMAT}' marker)")
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: model file format version {version!r} is not valid (this pupick reads "
                             f"whole-number versions 1 to {FORMAT_VERSION}); the file was not written by pupick")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format version {version} is newer than this pupick reads ({FORMAT_VERSION}); "
            "upgrade pupick"
        )
    config = payload.get("config")
    state = payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict) or "arch" not in config:
        raise ModelFileError(f"{path}: model file is incomplete (missing config or weights)")
    mcfg = ModelConfig.from_dict(config)
    try:
        module = build(mcfg)
        module.load_state_dict(state)
    except ModelFileError as err:
        raise ModelFileError(f"{path}: {err}") from None
    except (RuntimeError, ValueError, TypeError) as err:
        raise ModelFileError(f"{path}: weights do not fit architecture {mcfg.arch!r}: {str(err).splitlines()[0]}") from None
    module.to(device).eval()
    return LoadedModel(module, config, receptive_field(mcfg), native_stride(mcfg), content_sha256(state, config), path)

