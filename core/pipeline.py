"""The per-micrograph pick: read -> preprocess -> score -> extract, and the executor protocol.

`picking.pick` hands this work to an executor (core/executors.py: local threads; core/cluster.py: a Dask cluster).
One bad micrograph is a failed result, not an exception. `pick_batch` is what an executor runs: anywhere, a Dask
worker included. Importing this module loads no torch (the model file and the scorer are imported where used).
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import pandas as pd

from .blob import add_blob_prior, blob_score_map, ice_mask, mask_scores
from .config import PickConfig, PreprocessConfig, choose_factor
from .errors import AbortRequested, InputError, MissingSetting, PupickError
from .extract import default_border_px, extract_picks
from .names import check_micrograph_name
from .io import read_micrograph, write_mrc
from .modelmeta import check_particle_size, is_general_model, needs_particle_size
from .preprocess import preprocess_micrograph
from .tables import duplicate_stems, empty_picks, make_picks, stem

PIXEL_SIZE_TOLERANCE = 0.01  # relative pixel-size difference below which no rescaling happens
PICK_TABLE_COLUMNS = ["micrograph", "x", "y", "score", "path"]


@dataclass(frozen=True)
class MicrographItem:
    """One micrograph to pick: its stem, path, and pixel size from the suite's table (None: the file header)."""

    micrograph: str
    path: str
    pixel_size: float | None = None
    roots: tuple[str, ...] = ()  # the data roots the file must lie under when it is opened (core.confine); ()
    # means this process's read roots


@dataclass
class MicrographResult:
    """What one micrograph gave; `error` is a one-line reason when it failed (then `picks` is empty)."""

    micrograph: str
    path: str
    picks: pd.DataFrame
    error: str | None = None
    seconds: float = 0.0
    diameter_px: float | None = None  # particle diameter in this micrograph's own original pixels
    timings: dict[str, float] = field(default_factory=dict)  # read, score, extract seconds
    warnings: tuple[str, ...] = ()  # said once per run by the caller (they may come from another process)
    min_distance_px: float | None = None  # the NMS distance it was picked with (original pixels)
    tile_size: int | None = None  # scoring tile side (downsampled px) when out of device memory made it smaller


@dataclass
class PickResult:
    """A pick run: all picks (micrograph, x, y, score, path), failures (path, reason), timings."""

    picks: pd.DataFrame
    failures: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    n_done: int = 0
    diameters: dict[str, float] = field(default_factory=dict)  # particle diameter in each micrograph's own pixels

    @property
    def seconds_per_micrograph(self) -> float:
        return self.timings.get("seconds_per_micrograph", math.nan)


def micrograph_items(micrographs: pd.DataFrame | Iterable[str | os.PathLike]) -> list[MicrographItem]:
    """Items from a Micrographs table (micrograph, path, pixel_size, ...) or from plain paths."""
    if isinstance(micrographs, pd.DataFrame):
        if "path" not in micrographs.columns:
            raise InputError("the micrographs table has no 'path' column")
        paths = [str(p) for p in micrographs["path"]]
        names = ([str(m) for m in micrographs["micrograph"]] if "micrograph" in micrographs.columns
                 else [stem(p) for p in paths])
        sizes = (micrographs["pixel_size"] if "pixel_size" in micrographs.columns
                 else pd.Series([None] * len(paths)))
        items = [MicrographItem(n, p, known_pixel_size(v)) for n, p, v in zip(names, paths, sizes)]
    else:
        items = [m if isinstance(m, MicrographItem) else MicrographItem(stem(m), str(m)) for m in micrographs]
    for item in items:  # a name becomes files (records, per-micrograph picks): checked before any is made
        check_micrograph_name(item.micrograph, f"{item.path}: micrograph name", path_ok=True)
    dupes = duplicate_stems(i.micrograph for i in items)
    if dupes:
        a, b = [i.path for i in items if i.micrograph == dupes[0]][:2]
        raise InputError(f"micrographs {a} and {b} share the name {dupes[0]!r}; their picks could not be told apart")
    return items


def known_pixel_size(value: Any) -> float | None:
    """A pixel size from a table cell (Å), None when unknown (empty, NaN, zero or negative)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


class PickWork:
    """Everything a worker needs to pick: the model and the config. Pickles as weights + plain config + hash, so it
    ships to another process; there the model is rebuilt once per process (cached by its hash)."""

    def __init__(self, model: Any, config: PickConfig) -> None:
        self.config = config
        self._model = model
        self._payload: tuple[dict, dict, str] | None = None

    @property
    def sha256(self) -> str | None:
        return getattr(self._model, "sha256", None) if self._model is not None else (
            self._payload[2] if self._payload else None)

    @property
    def model(self) -> Any:
        if self._model is None and self._payload is not None:
            self._model = _cached_model(*self._payload)
        return self._model

    def __getstate__(self) -> dict:
        payload = self._payload
        if payload is None and self._model is not None:
            from .modelfile import model_state  # here, not at the top: torch stays out of `pupick pick --server`

            payload = (model_state(self._model), dict(self._model.config), self._model.sha256)
        return {"config": self.config, "payload": payload}

    def __setstate__(self, state: dict) -> None:
        self.config = state["config"]
        self._payload = state["payload"]
        self._model = None


_MODELS: OrderedDict[str, Any] = OrderedDict()
_PICKERS: OrderedDict[tuple, "_Picker"] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _cached_model(state: dict, config: dict, sha256: str) -> Any:
    from .modelfile import model_from_state  # torch: only where a model is rebuilt (see PickWork.__getstate__)

    with _CACHE_LOCK:
        if sha256 not in _MODELS:
            _MODELS[sha256] = model_from_state(state, config, sha256)
            while len(_MODELS) > 2:
                _MODELS.popitem(last=False)
        _MODELS.move_to_end(sha256)
        return _MODELS[sha256]


class Executor(Protocol):
    """Where the per-micrograph work runs (core/executors.py, core/cluster.py): one result per item, in any order."""

    def run(self, work: PickWork, items: Sequence[MicrographItem],
            should_stop: Callable[[], bool] | None) -> Iterator[MicrographResult]:
        """Yield each item's result; when should_stop() turns true, cancel what is pending and raise AbortRequested."""
        ...


@dataclass
class _Job:
    """One micrograph ready to score."""

    item: MicrographItem
    image: np.ndarray  # downsampled, normalised
    factor: float
    diameter_px: float | None  # particle diameter in this micrograph's original pixels
    pixel_size_ds: float | None
    source_shape: tuple[int, int]
    seconds_read: float = 0.0


def micrograph_sizes(item: MicrographItem, header_ps: float | None, model_config: dict | None,
                     config: PickConfig) -> tuple[float, float | None, list[str]]:
    """(downsampling factor, particle diameter in original px, warnings) for one micrograph; `model_config` is the
    model's plain config (None for the blob picker)."""
    pre = config.preprocess
    ps = pre.pixel_size or item.pixel_size or header_ps
    notes: list[str] = []
    if model_config is None:
        d = replace_ps(pre, ps).diameter_in_px()
        factor = float(pre.factor) if pre.factor else float(choose_factor(d))
        return factor, d, notes
    model_factor = float(model_config.get("factor") or 1.0)
    model_ps = model_config.get("pixel_size") or None
    factor, d = model_factor, model_config.get("diameter_px") or None
    if ps and not model_ps and (pre.pixel_size or item.pixel_size):
        notes.append("warning: the model records no pixel size, so the micrographs' pixel size cannot rescale; "
                     f"micrographs are downsampled by the model's factor {model_factor:g}")
    if ps and model_ps and abs(ps / model_ps - 1) > PIXEL_SIZE_TOLERANCE:
        ratio = model_ps / ps  # original pixels of this micrograph per original pixel of the model's
        factor = model_factor * ratio
        d = d * ratio if d else None
        notes.append(f"warning: pixel size {ps:g} Å differs from the model's {model_ps:g} Å; rescaling "
                     f"(downsampling by {factor:.3g} instead of {model_factor:g})")
        if factor < 1:
            raise InputError(f"{item.path}: pixel size {ps:g} Å is coarser than the model's downsampled pixel "
                             f"({model_ps * model_factor:g} Å); cannot pick with this model")
    return factor, d, notes


def prepare_micrograph(item: MicrographItem, model_config: dict | None,
                       config: PickConfig) -> tuple[_Job, list[str]]:
    """Read and preprocess one micrograph for a model's plain config (None: the blob picker); thread-safe, no torch."""
    t0 = time.perf_counter()
    mic = read_micrograph(item.path, item.roots or None)
    factor, d, notes = micrograph_sizes(item, mic.pixel_size, model_config, config)
    ps = config.preprocess.pixel_size or item.pixel_size
    normalize = (model_config.get("normalize") if model_config is not None else None) or "gmm"
    # one FFT thread: this runs next to the scorer's threads (more readers: --workers)
    pre = preprocess_micrograph(mic, PreprocessConfig(factor=factor, pixel_size=ps, normalize=normalize,
                                                      seed=config.seed), fft_workers=1)
    job = _Job(item, pre.image, pre.factor, d, pre.pixel_size, tuple(mic.image.shape), time.perf_counter() - t0)
    return job, notes


class _Picker:
    """Picks single micrographs for one model and config: sizes, preprocessing, scoring, extraction."""

    def __init__(self, model: Any, config: PickConfig) -> None:
        self.config = config
        self.model = model
        self.model_config: dict | None = None if config.method == "blob" else model.config
        self.blob_weight = 0.0
        if config.method == "blob":
            self.edge_margin = 0.0
            self.scorer = None
        else:
            self.blob_weight = blob_prior_weight(model.config, config)
            self.edge_margin = float(model.config.get("label_edge_margin") or 0.0)
            from .score import Scorer  # torch: imported by the picker that scores, not by this module's importers

            self.scorer = Scorer(model, config.score)
        self.lock = threading.Lock()  # one micrograph at a time through the scorer (its buffers are reused)

    def prepare(self, item: MicrographItem) -> tuple[_Job, list[str]]:
        """Read and preprocess one micrograph (thread-safe: runs in reader threads)."""
        return prepare_micrograph(item, self.model_config, self.config)

    def finish(self, job: _Job, notes: list[str]) -> MicrographResult:
        """Score and extract one prepared micrograph."""
        cfg, ex = self.config, self.config.extract
        d_ds = job.diameter_px / job.factor if job.diameter_px else None
        t0 = time.perf_counter()
        if self.scorer is None:
            smap = blob_score_map(job.image, d_ds, dark=cfg.blob.dark_particles, exclude_carbon=cfg.exclude_carbon)
        else:
            with self.lock:
                smap = self.scorer(job.image)
            if self.blob_weight > 0:
                if d_ds is None:
                    raise InputError(NO_DIAMETER_BLOB_PRIOR)
                smap = add_blob_prior(smap, job.image, d_ds, self.blob_weight, dark=cfg.blob.dark_particles)
            if cfg.exclude_carbon:
                if d_ds is None:
                    raise InputError(NO_DIAMETER_CARBON)
                smap = mask_scores(smap, ice_mask(job.image, d_ds))  # no junk peaks along the mask's edge
        t1 = time.perf_counter()
        tile = None
        if self.scorer is not None and self.scorer.tile != self.scorer.configured_tile:
            notes, tile = [*notes, *self.scorer.notes], self.scorer.tile
        if cfg.score_map_dir:
            write_mrc(Path(cfg.score_map_dir) / f"{job.item.micrograph}.mrc", smap, job.pixel_size_ds)
        if ex.min_distance_px is not None:
            min_distance = float(ex.min_distance_px)
        elif ex.min_distance_A is not None:
            if not job.pixel_size_ds:
                raise InputError(f"{job.item.path}: the pixel size is unknown, so a distance in Å cannot be used")
            min_distance = ex.min_distance_A / (job.pixel_size_ds / job.factor)
        elif job.diameter_px:
            min_distance = job.diameter_px / 2
        else:
            raise InputError(NO_DIAMETER)
        border = ex.border_px if ex.border_px is not None else default_border_px(job.diameter_px, self.edge_margin)
        x, y, s = extract_picks(smap, job.factor, min_distance, ex.threshold, border_px=border,
                                max_picks=ex.max_picks, original_shape=job.source_shape)
        t2 = time.perf_counter()
        picks = make_picks(job.item.micrograph, x, y, s, path=job.item.path)
        return MicrographResult(job.item.micrograph, job.item.path, picks[PICK_TABLE_COLUMNS], None,
                                job.seconds_read + (t2 - t0), job.diameter_px,
                                {"read": job.seconds_read, "score": t1 - t0, "extract": t2 - t1}, tuple(notes),
                                float(min_distance), tile)

    def one(self, item: MicrographItem) -> MicrographResult:
        """Pick one micrograph; a problem with it becomes a failed result."""
        try:
            return self.finish(*self.prepare(item))
        except (PupickError, OSError) as err:
            return failed(item, err)


def replace_ps(pre: PreprocessConfig, pixel_size: float | None) -> PreprocessConfig:
    from dataclasses import replace

    return replace(pre, pixel_size=pixel_size)


def failed(item: MicrographItem, err: BaseException | str) -> MicrographResult:
    """A failed micrograph's result: no picks, one line naming the file."""
    msg = str(err)
    if isinstance(err, OSError) and not isinstance(err, PupickError):
        msg = f"{item.path}: {err.strerror or err}"
    elif item.path not in msg and item.micrograph not in msg:
        msg = f"{item.path}: {msg}"
    return MicrographResult(item.micrograph, item.path, empty_picks(with_path=True)[PICK_TABLE_COLUMNS], msg)


def picker_for(work: PickWork) -> _Picker:
    """The process's picker for this model and config (built once; keeps the scorer's buffers between batches)."""
    model = work.model
    key = (work.sha256, repr(sorted(model.config.items())) if model is not None else None, repr(work.config))
    with _CACHE_LOCK:
        found = _PICKERS.get(key)
    if found is None:
        found = _Picker(model, work.config)
        with _CACHE_LOCK:
            _PICKERS[key] = found
            while len(_PICKERS) > 2:
                _PICKERS.popitem(last=False)
    return found


def read_ahead(picker: _Picker, items: Sequence[MicrographItem], workers: int = 1,
               should_stop: Callable[[], bool] | None = None,
               take: Callable[[MicrographItem, dict | None, PickConfig], Any] | None = None,
               observe: Callable[[int, int], None] | None = None) -> Iterator[MicrographResult]:
    """Results in input order; `workers` reader threads prepare the next micrographs while one is scored (or `take`
    them from a prefetch started before the model loaded: `prefetch.Prefetch.take`). `observe(i, ready)`, if given,
    hears as the scorer turns to micrograph i how many prepared micrographs wait in the reader queue (0: the scorer
    waits for the readers)."""

    def prepare(item: MicrographItem) -> tuple:
        early = take(item, picker.model_config, picker.config) if take is not None else None
        return early if early is not None else picker.prepare(item)

    ahead = max(1, int(workers))
    queue = deque(items)
    pending: deque[tuple[MicrographItem, Future]] = deque()
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="pupick-read")
    taken = 0
    try:
        while queue or pending:
            while queue and len(pending) < ahead + 1:  # keep the readers a little ahead of the scorer
                item = queue.popleft()
                pending.append((item, pool.submit(prepare, item)))
            if should_stop is not None and should_stop():
                raise AbortRequested("stop requested; picking interrupted")
            if observe is not None:
                observe(taken, _leading_done(pending))
            taken += 1
            item, fut = pending.popleft()
            try:
                result = picker.finish(*fut.result())
            except (PupickError, OSError) as err:
                result = failed(item, err)
            yield result
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _leading_done(pending: deque) -> int:
    """How many prepared micrographs stand at the head of the queue (the scorer takes them without waiting)."""
    ready = 0
    for _, fut in pending:
        if not fut.done():
            break
        ready += 1
    return ready


def pick_batch(work: PickWork, items: Sequence[MicrographItem]) -> list[MicrographResult]:
    """Pick a batch of micrographs in order, in this process (a Dask worker too); never raises for one micrograph."""
    picker = picker_for(work)
    return list(read_ahead(picker, items, workers=1))


def check_model(model: Any, config: PickConfig, items: Sequence[MicrographItem] = ()) -> Any:
    """The model `pick` will use: loaded once (a path or shipped name is read here), set to the particle size when
    it is a general model, None for the blob picker; clear errors."""
    if config.method == "blob":
        if model is not None:
            raise InputError("the blob picker takes no model (drop --model or use --method cnn)")
        return None
    if model is None:
        raise InputError("picking with a CNN needs a model (--model MODEL.pt), or use --method blob")
    # torch: here, not at the top, since `pupick pick --server` imports this module and never calls this
    from .modelfile import for_particle, load_model, needs_particle_size

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)  # a file, or a shipped model's name (`general`)
    if needs_particle_size(model):  # a general model picks any size: the diameter sets the downsampling
        pre = config.preprocess
        pixel_size = pre.pixel_size
        if pre.diameter_px is None and pre.diameter_A is not None and not pixel_size and items:
            pixel_size = items[0].pixel_size or _header_pixel_size(items[0].path)
        model = for_particle(model, diameter_px=pre.diameter_px, diameter_A=pre.diameter_A, pixel_size=pixel_size)
    check_spacing(model.config, config)
    return model


NO_DIAMETER = "the model records no particle diameter: give --min-distance (original pixels)"
NO_DIAMETER_CARBON = "excluding carbon needs the particle diameter, which the model does not record"
NO_DIAMETER_BLOB_PRIOR = "--blob-weight needs the particle diameter, which the model does not record"


def check_spacing(model_config: dict, config: PickConfig) -> None:
    """Before any work: a model that records no particle diameter needs an explicit minimum distance between picks,
    and cannot exclude carbon (every micrograph would fail alike)."""
    if model_config.get("diameter_px"):
        return
    if config.extract.min_distance_px is None and config.extract.min_distance_A is None:
        raise MissingSetting(NO_DIAMETER)
    if config.exclude_carbon:
        raise MissingSetting(NO_DIAMETER_CARBON)
    if blob_prior_weight(model_config, config) > 0:
        raise MissingSetting(NO_DIAMETER_BLOB_PRIOR)


def blob_prior_weight(model_config: dict, config: PickConfig) -> float:
    """The blob prior's weight for picking with this model: the setting, else the model's own, else the rule."""
    return config.blob.resolved_weight(is_general_model(model_config), model_config.get("blob_weight"))


def check_model_settings(model_config: dict, config: PickConfig) -> None:
    """Before any work, from a model's plain config alone (no torch, no weights): the settings picking with it needs.
    The general model needs the particle diameter; a model that records no diameter needs a minimum distance."""
    if needs_particle_size(model_config):
        check_particle_size(model_config, config.preprocess.diameter_px, config.preprocess.diameter_A)
    else:
        check_spacing(model_config, config)


def _header_pixel_size(path: str) -> float | None:
    try:
        return read_micrograph(path).pixel_size
    except PupickError:
        return None
