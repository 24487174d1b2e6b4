"""A model file's plain config, read without importing torch (the standard library only).

A model file is torch's zip archive: `<name>/data.pkl` holds the payload dict, whose tensors are references to
storages in the archive. Unpickling it with every torch name replaced by a placeholder gives the config (builtin
types only, see core.modelfile) without loading torch or the weights. Anything unexpected returns None: the caller
then waits for the real loader (core.modelfile.load_model), which reports problems properly.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

from .errors import MissingSetting, ModelFileError

# One registry of the models shipped inside the package: name -> file under core/shipped/ (package data).
SHIPPED_MODELS = {
    "general": "general.pt",  # trained on every shared set's labels (EMPIAR-10017, 10028, 10059); needs a diameter
}
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """The file of a shipped model's name (`general`), else the path as given."""
    if isinstance(name_or_path, str) and name_or_path in SHIPPED_MODELS:
        path = SHIPPED_DIR / SHIPPED_MODELS[name_or_path]
        if not path.is_file():
            raise ModelFileError(f"the shipped model {name_or_path!r} is missing from this installation ({path}); "
                                 "build it with `make general-model`")
        return path
    return Path(name_or_path)


FORMAT = "pupick-model"  # the payload marker of every model file (core.modelfile writes it)
MAX_PICKLE_BYTES = 1 << 20  # a payload pickle is a few kB; anything bigger is not ours


def _placeholder(*args: Any, **kwargs: Any) -> None:
    return None


class _ConfigUnpickler(pickle.Unpickler):
    """Builds builtins and OrderedDicts; every torch name (tensor rebuilders, storage types) is a placeholder."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch" or module.startswith("torch."):
            return _placeholder
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a model file")

    def persistent_load(self, pid: Any) -> None:  # a tensor's storage: not read
        return None


def read_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The plain config of a pupick model file, or None when the file cannot be read this way."""
    try:
        with zipfile.ZipFile(Path(path)) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(names) != 1 or archive.getinfo(names[0]).file_size > MAX_PICKLE_BYTES:
                return None
            payload = _ConfigUnpickler(archive.open(names[0])).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError):
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("config"), dict):
        return None
    return payload["config"]


def needs_particle_size(config: dict[str, Any]) -> bool:
    """True for a config not tied to one particle size (the general model): picking needs a diameter."""
    return bool(config.get("grid_diameter")) and not config.get("diameter_px")


def is_general_model(config: dict[str, Any]) -> bool:
    """True for a general model (trained at a fixed particle size in pixels, for any particle), before or after
    `for_particle` set it to one; a model fine-tuned from it is trained for its particle and is not one."""
    return bool(config.get("grid_diameter"))


NEEDS_DIAMETER = "the general model needs the particle diameter: give --diameter (Å) or --diameter-px"


def check_particle_size(config: dict[str, Any], diameter_px: float | None, diameter_A: float | None) -> None:
    """Before any work: a model not tied to one particle size is picked only with a diameter (MissingSetting)."""
    if needs_particle_size(config) and diameter_px is None and diameter_A is None:
        raise MissingSetting(NEEDS_DIAMETER)
