"""Request `settings` -> engine configs: keys are the CLI option names with `_` for `-`; unknown keys are refused.

Picking goes through the engine's one settings registry (`PickConfig.from_settings`); the server only withholds the
keys it decides itself (device, reader threads). Training has no such registry yet, so its mapping lives here.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from ..config import (ARCHITECTURES, LR_SCHEDULES, NORMALIZATIONS, PRECISIONS, SETTINGS, TILE_SAMPLINGS, WEIGHT_INITS,
                      PickConfig, PreprocessConfig, TrainConfig, check_removed)
from ..errors import InputError

SERVER_KEYS = ("device", "workers", "score_maps", "output", "model", "overwrite", "format", "quiet", "cache")
PICK_KEYS = {k: v for k, v in SETTINGS.items() if k not in SERVER_KEYS}


def _num(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"setting {key!r} must be a finite number (got {v!r})")
    return float(v)


def _int(key: str, v: Any) -> int:
    if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
        raise InputError(f"setting {key!r} must be an integer (got {v!r})")
    return int(v)


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(key: str, v: Any) -> str:
        if v not in choices:
            raise InputError(f"setting {key!r} must be one of {', '.join(choices)} (got {v!r})")
        return v
    return check


TRAIN_PRE_KEYS: dict[str, tuple[str, Callable]] = {
    "scale": ("factor", _num),
    "diameter": ("diameter_A", _num),
    "diameter_px": ("diameter_px", _num),
    "pixel_size": ("pixel_size", _num),
    "normalize": ("normalize", _choice(*NORMALIZATIONS)),
}
TRAIN_KEYS: dict[str, tuple[str, Callable]] = {
    "expected_particles": ("expected_particles", _num),
    "label_radius": ("label_radius", _num),
    "arch": ("arch", _choice(*ARCHITECTURES)),
    "units": ("units", _int),
    "objective": ("objective", _choice("ge-binomial", "ge-kl", "nnpu", "pn")),
    "slack": ("slack", _num),
    "epochs": ("epochs", _int),
    "steps_per_epoch": ("steps_per_epoch", _int),
    "batch_size": ("batch_size", _int),
    "tile_size": ("tile_size", _int),
    "learning_rate": ("learning_rate", _num),
    "ema_decay": ("ema_decay", _num),
    "lr_schedule": ("lr_schedule", _choice(*LR_SCHEDULES)),
    "weight_init": ("weight_init", _choice(*WEIGHT_INITS)),
    "frozen_layers": ("frozen_layers", _int),
    "tile_sampling": ("tile_sampling", _choice(*TILE_SAMPLINGS)),
    "test_split": ("test_split", _num),
    "seed": ("seed", _int),
    "precision": ("precision", _choice(*PRECISIONS)),
}


def _check_keys(settings: Any, known: dict) -> dict:
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise InputError("settings must be a JSON object of option names and values")
    check_removed((str(k) for k in settings), lambda key: f"setting {key!r}")
    unknown = sorted(str(k) for k in settings if k not in known)
    if unknown:
        server = [k for k in unknown if k in SERVER_KEYS]
        if server:
            raise InputError(f"unknown setting {server[0]!r}: the server decides it")
        raise InputError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(sorted(known))})")
    return settings


def pick_config(settings: dict | None, device: str = "auto") -> PickConfig:
    """A PickConfig from request settings on this server's device (missing keys take the CLI's defaults)."""
    settings = _check_keys(settings, PICK_KEYS)
    return PickConfig.from_settings(settings, base=PickConfig.from_settings({"device": device}))


def train_config(settings: dict | None, device: str = "auto", cache_dir: str | None = None) -> TrainConfig:
    """A TrainConfig from request settings (missing keys take the CLI's defaults)."""
    settings = _check_keys(settings, {**TRAIN_PRE_KEYS, **TRAIN_KEYS})
    pre: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in settings.items():
        if value is None:
            continue
        if key in TRAIN_PRE_KEYS:
            field_name, parse = TRAIN_PRE_KEYS[key]
            pre[field_name] = parse(key, value)
        if key in TRAIN_KEYS:
            field_name, parse = TRAIN_KEYS[key]
            rest[field_name] = parse(key, value)
    if "seed" in rest:
        pre["seed"] = rest["seed"]
    if not 0 <= rest.get("test_split", TrainConfig.test_split) < 1:
        raise InputError("setting 'test_split' must be in [0, 1)")
    return TrainConfig(preprocess=PreprocessConfig(**pre), device=device, cache_dir=cache_dir, **rest)
