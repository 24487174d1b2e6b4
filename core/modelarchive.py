"""Model files bounded before anything is allocated: `check_archive(path)` runs before torch.load.

A model file is torch's zip archive: `<name>/data.pkl` (the payload dict, whose tensors reference storages) and one
entry `<name>/data/<key>` per storage. torch.load allocates every storage at the size the archive declares and
inflates a compressed entry into it, so a 3.4 MB file holding 2 GB of deflated zeros costs 2 GB of memory. Here the
archive is read first: its entries (uncompressed, as torch.save writes them; a bounded count and total size: the
largest registered architecture at the widest `units`, with a margin), then data.pkl through an unpickler that
builds no tensor, only each tensor's declaration (storage, dtype, shape, stride), and every declaration is compared
with the architecture that the file's config names, built on the meta device (no memory). Only then is the file
loaded. Checks on the values (NaN weights, factors) are core.modelfile's.
"""
from __future__ import annotations

import collections
import functools
import os
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any

from .config import ARCHITECTURES, MAX_UNITS
from .errors import InvalidModel, ModelFileError, ModelTooLarge
from .modelmeta import FORMAT, MAX_PICKLE_BYTES

MAX_ENTRIES = 4096  # a resnet16 file has ~200; a few thousand is not ours
MARGIN = 1.25  # over the largest architecture's weights: the pickle, zip headers, BatchNorm counters

# torch's storage classes as data.pkl names them -> (dtype name as torch.dtype prints it without 'torch.', bytes)
STORAGES = {"FloatStorage": ("float32", 4), "DoubleStorage": ("float64", 8), "HalfStorage": ("float16", 2),
            "BFloat16Storage": ("bfloat16", 2), "LongStorage": ("int64", 8), "IntStorage": ("int32", 4),
            "ShortStorage": ("int16", 2), "CharStorage": ("int8", 1), "ByteStorage": ("uint8", 1),
            "BoolStorage": ("bool", 1)}


@dataclass(frozen=True)
class _StorageType:
    dtype: str
    itemsize: int


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    itemsize: int
    numel: int


@dataclass(frozen=True)
class TensorSpec:
    """What data.pkl declares for one tensor: no memory behind it."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return self.storage.dtype


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, stride: Any, *rest: Any) -> TensorSpec:
    if not isinstance(storage, _Storage) or not isinstance(offset, int) or not isinstance(shape, tuple) \
            or not isinstance(stride, tuple) or not all(isinstance(v, int) and v >= 0 for v in (*shape, *stride)):
        raise pickle.UnpicklingError("a tensor declaration is malformed")
    return TensorSpec(storage, offset, shape, stride)


class _SpecUnpickler(pickle.Unpickler):
    """Builds builtins, dicts and TensorSpecs; any other global is refused (nothing is imported or run)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict  # a state_dict's carries attributes (_metadata): plain dict would not
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in STORAGES:
            return _StorageType(*STORAGES[name])
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a model file")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError("a storage reference is malformed")
        return _Storage(pid[2], pid[1].dtype, pid[1].itemsize, pid[4])


@functools.lru_cache(maxsize=None)
def max_archive_bytes() -> int:
    """The most bytes a model file's entries may hold: the largest registered architecture at MAX_UNITS, with margin."""
    return int(MARGIN * max(sum(t.nbytes for t in _expected(arch, MAX_UNITS, True).values())
                            for arch in ARCHITECTURES))


def _expected(arch: str, units: int, batchnorm: Any) -> dict[str, Any]:
    import torch

    from .models import ModelConfig, build

    with torch.device("meta"):
        return dict(build(ModelConfig(arch=arch, units=units, batchnorm=batchnorm)).state_dict())


def _invalid(path: Any, reason: str) -> InvalidModel:
    return InvalidModel(f"{path}: not a valid pupick model: {reason}")


def check_archive(path: str | os.PathLike) -> None:
    """Raise ModelTooLarge / InvalidModel / ModelFileError unless `path` is a torch archive whose entries are bounded
    and whose tensors are exactly those of the architecture its config names. Allocates no tensor memory."""
    limit = max_archive_bytes()
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ModelFileError(f"{path}: not a pupick model file (not a torch file)") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise ModelTooLarge(f"{path}: not a valid pupick model: {len(infos)} archive entries (at most "
                                f"{MAX_ENTRIES})")
        packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise ModelTooLarge(f"{path}: not a valid pupick model: compressed entry {packed[0]!r} (torch.save stores "
                                "tensors uncompressed; a compressed one could inflate to any size)")
        total = sum(i.file_size for i in infos)
        if total > limit:
            raise ModelTooLarge(f"{path}: not a valid pupick model: its entries hold {total / 1e6:.1f} MB, more "
                                f"than the largest architecture needs ({limit / 1e6:.1f} MB)")
        sizes = {i.filename: i.file_size for i in infos}
        pickles = [n for n in sizes if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1 or sizes[pickles[0]] > MAX_PICKLE_BYTES:
            raise ModelFileError(f"{path}: not a pupick model file (not a torch file)")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            payload = _SpecUnpickler(archive.open(pickles[0])).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                RecursionError, MemoryError, OSError, zipfile.BadZipFile):
            raise ModelFileError(f"{path}: not a pupick model file (holds more than weights and plain settings)") \
                from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a pupick model file (no '{FORMAT}' marker)")
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        return  # core.modelfile names what is missing
    _check_tensors(path, config, state, sizes, prefix)


def _check_tensors(path: Any, config: dict, state: dict, sizes: dict[str, int], prefix: str) -> None:
    arch, units, batchnorm = config.get("arch"), config.get("units", 32), config.get("batchnorm", True)
    if arch not in ARCHITECTURES:
        raise _invalid(path, f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    if isinstance(units, bool) or not isinstance(units, int) or not 1 <= units <= MAX_UNITS:
        raise _invalid(path, f"units {units!r} is not a whole number from 1 to {MAX_UNITS}")
    if not isinstance(batchnorm, bool):
        raise _invalid(path, f"batchnorm {batchnorm!r} is not true or false")
    expected = _expected(arch, units, batchnorm)
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {extra[0]!r}"
        raise _invalid(path, f"{what} for architecture {arch!r} with {units} units")
    for name, spec in state.items():
        want = expected[name]
        if not isinstance(spec, TensorSpec):
            raise _invalid(path, f"{name!r} is not a tensor")
        shape, dtype = tuple(want.shape), str(want.dtype).removeprefix("torch.")
        if spec.shape != shape or spec.dtype != dtype:
            raise _invalid(path, f"tensor {name!r} is {spec.dtype} {list(spec.shape)}, architecture {arch!r} with "
                                 f"{units} units needs {dtype} {list(shape)}")
        storage = spec.storage
        if sizes.get(f"{prefix}data/{storage.key}") != storage.numel * storage.itemsize:
            raise _invalid(path, f"tensor {name!r}: its storage entry is missing or not the size it declares")
        last = spec.offset + sum((n - 1) * st for n, st in zip(shape, spec.stride)) if all(shape) else -1
        if len(spec.stride) != len(shape) or spec.offset < 0 or last >= storage.numel:
            raise _invalid(path, f"tensor {name!r} reaches past its storage")
