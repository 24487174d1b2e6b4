"""Model files: ``torch.save({format, version, state_dict, config})`` with a config of builtin types only.

Loadable with ``torch.load(..., weights_only=True)``: no pickled modules, dataclasses or numpy scalars inside.
"""
from __future__ import annotations

import hashlib
import dataclasses
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError, ModelFileError
from .io import atomic_path
from .config import ARCHITECTURES, MAX_BLOB_WEIGHT
from .modelarchive import check_archive
from .models import ModelConfig, PickerNet, build, native_stride, receptive_field
from .hashing import file_sha256  # noqa: F401 (callers import it from here)

from .modelmeta import FORMAT, SHIPPED_DIR, SHIPPED_MODELS, resolve_model  # noqa: F401 (torch-free)
from .modelmeta import check_particle_size, needs_particle_size as config_needs_size
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



def save_state(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write weights (fp32, CPU) and the plain config atomically as a model file."""
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "state_dict": state, "config": plain(dict(config))}
    buffer = io.BytesIO()  # not torch.save(path): the archive would be named after the (random) temporary file
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def save_model(path: str | os.PathLike, module: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write the module's state_dict (fp32, CPU) and the plain config atomically."""
    save_state(path, module.state_dict(), config)


def content_sha256(state: dict[str, torch.Tensor], config: dict[str, Any]) -> str:
    """A model's identity: SHA-256 of its weights (name, dtype, shape, values) and its canonical config JSON.

    The save date (config provenance.date) and the preprocessing cache's place are left out, so retraining with the same seed is the same model, and
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
        train_config = ident["provenance"].get("train_config")
        if isinstance(train_config, dict):  # files written before cache_dir was left out
            ident["provenance"]["train_config"] = {k: v for k, v in train_config.items() if k != "cache_dir"}
    h.update(json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str).encode())
    return h.hexdigest()


# The settings a model file may lack, and what a missing one means. Format version 1 files written before a field
# existed lack it; picking reads each with config.get(), so missing and None behave alike:
MISSING_DEFAULTS: dict[str, Any] = {
    "factor": None,  # only with grid_diameter (the general model: the diameter sets it); else required
    "grid_diameter": None,  # a model tied to one particle size
    "diameter_px": None,  # particle size unknown: picking needs --min-distance, and a general model --diameter
    "diameter_A": None,
    "pixel_size": None,  # micrographs are downsampled by the model's factor, whatever their pixel size
    "label_edge_margin": None,  # the pick border is the particle radius
    "expected_particles": None,  # no threshold suggestion
    "pi": None,  # the class prior, informational
    "score_offset": 0.0,
    "stride": None,  # the architecture's native stride
    "normalize": "gmm",
    "blob_weight": None,  # the blob prior picking adds: a general model's GENERAL_BLOB_WEIGHT, another model's 0
}


def _number(config: dict[str, Any], key: str) -> float | None:
    """A config field as a float (None when absent or null); a non-number is a reason to reject the file."""
    value = config.get(key, MISSING_DEFAULTS.get(key))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelFileError(f"{key} is {value!r}, not a number")
    return float(value)


def _check_settings(config: dict[str, Any]) -> None:
    """Every rule a model's settings must meet (ModelFileError with the reason, no path)."""
    arch = config.get("arch")
    if not isinstance(arch, str):
        raise ModelFileError(f"arch is {arch!r}, not an architecture name")
    grid = _number(config, "grid_diameter")
    if grid is not None and not (grid > 0 and math.isfinite(grid)):
        raise ModelFileError(f"grid_diameter is {grid:g}; it must be a finite number > 0")
    factor = _number(config, "factor")
    if factor is None and grid is None:
        raise ModelFileError("factor (the downsampling it was trained at) is missing")
    if factor is not None and not (factor >= 1 and math.isfinite(factor)):
        raise ModelFileError(f"factor is {factor:g}; it must be a finite number >= 1")
    for key in ("diameter_px", "diameter_A", "pixel_size"):
        value = _number(config, key)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ModelFileError(f"{key} is {value:g}; it must be a finite number > 0")
    pi = _number(config, "pi")
    if pi is not None and not 0 < pi < 1:
        raise ModelFileError(f"pi is {pi:g}; the class prior must lie strictly between 0 and 1")
    expected = _number(config, "expected_particles")
    if expected is not None and not (expected > 0 and math.isfinite(expected)):
        raise ModelFileError(f"expected_particles is {expected:g}; it must be a finite number > 0")
    margin = _number(config, "label_edge_margin")
    if margin is not None and not (margin >= 0 and math.isfinite(margin)):
        raise ModelFileError(f"label_edge_margin is {margin:g}; it must be a finite number >= 0")
    offset = _number(config, "score_offset")
    if offset is not None and not math.isfinite(offset):
        raise ModelFileError(f"score_offset is {offset:g}; it must be a finite number")
    blob = _number(config, "blob_weight")
    if blob is not None and not (0 <= blob <= MAX_BLOB_WEIGHT):
        raise ModelFileError(f"blob_weight is {blob:g}; it must be a finite number from 0 to {MAX_BLOB_WEIGHT:g}")
    stride = _number(config, "stride")
    if stride is not None:
        native = native_stride(ModelConfig.from_dict(config)) if arch in ARCHITECTURES else None
        if not (stride >= 1 and stride == int(stride)) or (native is not None and stride != native):
            raise ModelFileError(f"stride is {stride:g}; architecture {arch!r} has stride {native}")


def validate_model(config: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None,
                   where: str | os.PathLike = "model") -> None:
    """Check a model's settings and weights; ModelFileError "not a valid pupick model: WHERE: REASON" if unusable.

    The one check every loader runs (files, fresh trainings, cluster workers, the service's uploads). A field that
    the file lacks takes its MISSING_DEFAULTS value.
    """
    try:
        if not isinstance(config, dict):
            raise ModelFileError("the settings are not a mapping")
        _check_settings(config)
        for name, tensor in (state_dict or {}).items():
            if not isinstance(tensor, torch.Tensor):
                raise ModelFileError(f"weight {name} is not a tensor")
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise ModelFileError(f"weight {name} holds {bad} non-finite value(s) (NaN or infinity)")
    except ModelFileError as err:
        raise ModelFileError(f"not a valid pupick model: {where}: {err}") from None


def _build_loaded(state: dict, config: dict, device: str | torch.device, where: str, sha: str,
                  path: Path | None) -> LoadedModel:
    validate_model(config, state, where)
    mcfg = ModelConfig.from_dict(config)
    try:
        module = build(mcfg)
        module.load_state_dict(state)
    except ModelFileError as err:
        raise ModelFileError(f"{where}: {err}") from None
    except (RuntimeError, ValueError, TypeError) as err:
        raise ModelFileError(f"{where}: weights do not fit architecture {mcfg.arch!r}: {str(err).splitlines()[0]}") from None
    module.to(device).eval()
    return LoadedModel(module, config, receptive_field(mcfg), native_stride(mcfg), sha, path)


def loaded_from_state(state_dict: dict[str, torch.Tensor], config: dict[str, Any],
                      device: str | torch.device = "cpu") -> LoadedModel:
    """A LoadedModel from weights and config in memory (a fresh training's result); sha256 is the content's."""
    config = plain(dict(config))
    return _build_loaded(state_dict, config, device, "trained model", content_sha256(state_dict, config), None)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Read a model file or a shipped model by name (weights_only); the module in eval mode; ModelFileError if not ours."""
    path = resolve_model(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    check_archive(path)  # entries, sizes, tensor shapes and dtypes: before torch.load allocates anything
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # corrupt, foreign pickle, or not a torch file at all
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
    return _build_loaded(state, config, device, str(path), content_sha256(state, config), path)


def needs_particle_size(model: LoadedModel) -> bool:
    """True for a model that is not tied to one particle size (the general model): picking needs a diameter."""
    return config_needs_size(model.config)


def for_particle(model: LoadedModel, diameter_px: float | None = None, diameter_A: float | None = None,
                 pixel_size: float | None = None) -> LoadedModel:
    """The model set to pick particles of this diameter: micrographs are downsampled so that the particle spans the
    model's `grid_diameter` pixels. The diameter in original pixels, or in Å with the micrographs' pixel size.

    A model trained for one size (no `grid_diameter`) is returned as it is when no diameter is given, and rescaled
    the same way otherwise (its grid diameter is diameter_px / factor).
    """
    cfg = model.config
    if diameter_px is None and diameter_A is None:
        check_particle_size(cfg, diameter_px, diameter_A)
        return model
    if diameter_px is None:
        if not pixel_size or not pixel_size > 0:
            raise InputError("--diameter is in Å but the pixel size is unknown: give --pixel-size, or --diameter-px")
        diameter_px = float(diameter_A) / float(pixel_size)
    if not (diameter_px > 0 and np.isfinite(diameter_px)):
        raise InputError(f"--diameter-px must be a finite number > 0 (got {diameter_px})")
    grid = cfg.get("grid_diameter") or (cfg["diameter_px"] / (cfg.get("factor") or 1.0) if cfg.get("diameter_px")
                                        else None)
    if not grid:
        raise InputError("this model records no particle diameter, so it cannot be rescaled to another")
    factor = float(diameter_px) / float(grid)
    if factor < 1:
        raise InputError(f"a particle of {diameter_px:.1f} px is smaller than the {grid:g} px this model was trained "
                         "on; it would need upsampling (bin the micrographs less, or train a model)")
    new = {**cfg, "factor": factor, "diameter_px": float(diameter_px),
           "pixel_size": float(pixel_size) if diameter_A is not None else None,
           "diameter_A": float(diameter_A) if diameter_A is not None else None}
    module = model.module
    offset = float(cfg.get("score_offset") or 0.0)
    if offset:  # unseen data score lower: lift every logit alike, so picking's threshold keeps the particles
        import copy

        module = copy.deepcopy(module)
        with torch.no_grad():
            module.classifier.bias.add_(offset)
        new["score_offset"] = 0.0  # applied
    return dataclasses.replace(model, module=module, config=new)


def model_from_state(state: dict, config: dict[str, Any], sha256: str, path: Path | None = None,
                     device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a LoadedModel from weights and plain config with a known identity (one shipped to a worker)."""
    return _build_loaded(state, config, device, str(path) if path else "model", sha256, path)


def model_state(model: LoadedModel) -> dict[str, torch.Tensor]:
    """The model's weights as CPU tensors (what a model file or a worker payload holds)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.module.state_dict().items()}
