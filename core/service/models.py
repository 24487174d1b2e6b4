"""The model registry: names -> model files (--models DIR, uploads and trained models under STATE/models), plus an
LRU of models loaded on the device.

Every file is checked like a model file before it is registered: a zip archive written by torch.save, loaded with
`weights_only=True` (so a pickle's code never runs), with the pupick format marker and weights that fit the config.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import modelfile
from ..errors import InputError, ModelFileError, PupickError
from ..hashing import file_sha256
from ..io import atomic_path
from ..modelfile import load_model

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


class UnknownModel(PupickError):
    """No model of that name (HTTP 404)."""


class ModelConflict(PupickError):
    """The name is taken by another model, or the model cannot be removed (HTTP 409)."""


@dataclass
class ModelEntry:
    """One registered model: where its file is and what it is."""

    name: str
    path: Path
    source: str  # models-dir | upload | train | shipped
    sha256: str  # the model's identity (weights + config), as pick manifests record it
    file_sha256: str  # the file's bytes (what a client's local copy hashes to)
    arch: str | None
    diameter_px: float | None
    pixel_size: float | None
    size: int
    created: float
    grid_diameter: float | None = None  # set for a model not tied to one particle size (general): picking needs one

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "architecture": self.arch, "diameter_px": self.diameter_px,
                "grid_diameter": self.grid_diameter, "pixel_size": self.pixel_size, "sha256": self.sha256, "file_sha256": self.file_sha256,
                "source": self.source, "size": self.size, "created": self.created}


def check_name(name: Any) -> str:
    """A model name: letters, digits, '.', '_' and '-' (1-80 characters, not starting with a dot)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(f"model name {name!r} is invalid: use 1-80 letters, digits, '.', '_' or '-'")
    return name


def inspect_model_file(path: Path) -> dict[str, Any]:
    """Check a file like a model file (zip archive, weights-only load, pupick marker); its config and hash."""
    if not zipfile.is_zipfile(path):
        raise ModelFileError("not a pupick model file (not a torch.save zip archive)")
    try:
        loaded = load_model(path, device="cpu")
    except ModelFileError as err:
        raise type(err)(str(err).replace(f"{path}: ", "")) from None  # keeps the kind: 413 / 422 / 400
    return {"config": loaded.config, "sha256": loaded.sha256, "file_sha256": file_sha256(path)}


class ModelRegistry:
    """Named models, safe to use from any thread."""

    def __init__(self, state_dir: Path, models_dir: Path | None = None, cache_size: int = 4,
                 log: Callable[[str], None] = print) -> None:
        self.own_dir = Path(state_dir) / "models"
        self.own_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir = Path(models_dir) if models_dir else None
        self.cache_size = max(1, cache_size)
        self.log = log
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()
        self._loaded: OrderedDict[tuple[str, str], Any] = OrderedDict()  # (sha256, device) -> LoadedModel
        self._load_lock = threading.Lock()
        self._used: dict[str, float] = {}  # name -> when a job last loaded it (or it was stored)
        self.scan()

    # ---------------------------------------------------------------- registration
    def scan(self) -> None:
        """Register the shipped models, every *.pt in --models and every model this server stored."""
        for name, path in _shipped_models():
            self._add_file(name, path, "shipped")
        if self.models_dir is not None:
            for path in sorted(self.models_dir.glob("*.pt")):
                self._add_file(path.stem, path, "models-dir")
        for path in sorted(self.own_dir.glob("*.pt")):
            source = "train" if path.with_suffix(".train").exists() else "upload"
            self._add_file(path.stem, path, source)

    def _add_file(self, name: str, path: Path, source: str) -> None:
        try:
            check_name(name)
            info = inspect_model_file(path)
        except PupickError as err:
            self.log(f"pupick serve: skipped model {path}: {err}")
            return
        with self._lock:
            if name in self._entries:
                self.log(f"pupick serve: skipped model {path}: the name {name!r} is taken by "
                         f"{self._entries[name].path}")
                return
            self._entries[name] = _entry(name, path, source, info)
            try:
                st = path.stat()
                self._used[name] = max(st.st_atime, st.st_mtime)
            except OSError:
                self._used[name] = time.time()

    def add_upload(self, name: str, data_path: Path, source: str = "upload") -> tuple[ModelEntry, bool]:
        """Register the model file at `data_path` (moved into STATE/models) as `name`; (entry, created)."""
        check_name(name)
        info = inspect_model_file(data_path)
        with self._lock:
            old = self._entries.get(name)
            if old is not None:
                if old.sha256 == info["sha256"]:
                    data_path.unlink(missing_ok=True)
                    return old, False
                raise ModelConflict(f"model {name!r} exists with other weights; delete it first or pick another name")
            target = self.own_dir / f"{name}.pt"
            os.replace(data_path, target)
            if source == "train":
                (target.with_suffix(".train")).write_text("trained by this server\n")
            entry = _entry(name, target, source, info)
            self._entries[name] = entry
            self._used[name] = time.time()
        return entry, True

    def purge_unused(self, older_than_s: float, keep: set[str]) -> list[str]:
        """Delete the uploaded and trained models no job has loaded for `older_than_s` seconds (never those in
        --models, the shipped ones, or the names in `keep`: models of jobs still queued or running)."""
        cutoff = time.time() - older_than_s
        with self._lock:
            stale = [e.name for e in self._entries.values() if e.source in ("upload", "train")
                     and e.name not in keep and self._used.get(e.name, 0.0) < cutoff]
            for name in stale:
                self.delete(name)
        return stale

    def delete(self, name: str) -> None:
        """Remove an uploaded or trained model; files in --models and shipped models stay (409)."""
        with self._lock:
            entry = self.get(name)
            if entry.source in ("models-dir", "shipped"):
                where = f" in {self.models_dir}" if entry.source == "models-dir" else ""
                raise ModelConflict(f"model {name!r} is a {entry.source} model{where}; the server does not delete it")
            del self._entries[name]
            self._used.pop(name, None)
            entry.path.unlink(missing_ok=True)
            entry.path.with_suffix(".train").unlink(missing_ok=True)
            if self._by_sha(entry.sha256) is None:  # no other name shares these weights: drop them from the LRU
                for key in [k for k in self._loaded if k[0] == entry.sha256]:
                    self._loaded.pop(key, None)

    # ---------------------------------------------------------------- lookup
    def get(self, name: Any) -> ModelEntry:
        if not isinstance(name, str):
            raise InputError("model must be a model name (a string)")
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise UnknownModel(f"unknown model {name!r}: GET /v1/models lists the registered ones")
        return entry

    def _by_sha(self, sha: str) -> ModelEntry | None:
        with self._lock:
            return next((e for e in self._entries.values() if e.sha256 == sha), None)

    def list(self) -> list[ModelEntry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.name)

    def load(self, name: str, sha256: str | None, device: str) -> Any:
        """The LoadedModel for a registered name on `device`, from the LRU when warm; checks the weights did not
        change since the job was submitted."""
        entry = self.get(name) if sha256 is None else (self._entries.get(name) or self._by_sha(sha256))
        if entry is None or (sha256 is not None and entry.sha256 != sha256):
            raise UnknownModel(f"model {name!r} was deleted or replaced after the job was submitted")
        key = (entry.sha256, device)
        now = time.time()
        self._used[entry.name] = now
        try:  # the last use survives a restart as the file's access time (its mtime stays the creation time)
            os.utime(entry.path, (now, entry.path.stat().st_mtime))
        except OSError:
            pass
        with self._load_lock:
            model = self._loaded.get(key)
            if model is not None:
                self._loaded.move_to_end(key)
                return model
            model = load_model(entry.path, device=device)
            self._loaded[key] = model
            while len(self._loaded) > self.cache_size:
                self._loaded.popitem(last=False)
            return model

    def loaded_count(self) -> int:
        return len(self._loaded)


def _entry(name: str, path: Path, source: str, info: dict) -> ModelEntry:
    cfg = info["config"]
    st = path.stat()
    return ModelEntry(name, path, source, info["sha256"], info["file_sha256"], cfg.get("arch"),
                      cfg.get("diameter_px"), cfg.get("pixel_size"), st.st_size, st.st_mtime, cfg.get("grid_diameter"))


def _shipped_models() -> list[tuple[str, Path]]:
    """The shipped model(s) (`general`, ...) this installation has: core.modelfile.SHIPPED_MODELS, resolved to files."""
    names = getattr(modelfile, "SHIPPED_MODELS", None)
    resolve = getattr(modelfile, "resolve_model", None)
    if not isinstance(names, dict) or resolve is None:
        return []
    found = []
    for name in names:
        try:
            path = Path(resolve(name))
        except PupickError:  # not built into this installation: nothing to offer
            continue
        if path.is_file():
            found.append((name, path))
    return found


def copy_atomic(src: Path, target: Path) -> None:
    """Copy a file under a temporary name and rename it into place."""
    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)

