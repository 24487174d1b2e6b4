"""The two entry points every wrapper calls: `pick` (read -> preprocess -> score -> extract, per micrograph) and `train`.

Reading and preprocessing run in a thread pool a few micrographs ahead of scoring (the FFTs, file reads and the
network all release the GIL). One bad micrograph is reported in `failures` and skipped; the caller decides the exit.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .config import PickConfig, PreprocessConfig, choose_factor
from .errors import AbortRequested, InputError
from .tables import duplicate_stems, empty_picks, make_picks, stem

PIXEL_SIZE_TOLERANCE = 0.01  # relative pixel-size difference below which no rescaling happens
PICK_TABLE_COLUMNS = ["micrograph", "x", "y", "score", "path"]


@dataclass
class PickRun:
    """What a pick run produced: all picks (micrograph, x, y, score, path), failures and speed."""

    picks: pd.DataFrame
    failures: list[tuple[Path, str]] = field(default_factory=list)
    seconds_per_micrograph: float = math.nan
    n_done: int = 0
    diameters: dict[str, float] = field(default_factory=dict)  # particle diameter in each micrograph's own pixels


@dataclass
class _Job:
    """One micrograph ready to score."""

    path: Path
    image: np.ndarray  # downsampled, normalised
    factor: float
    diameter_px: float | None  # particle diameter in this micrograph's original pixels
    pixel_size_ds: float | None
    source_shape: tuple[int, int]


class _Plan:
    """How each micrograph is preprocessed and its picks extracted, for a model or the blob picker."""

    def __init__(self, model: Any, config: PickConfig, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.warned: set = set()
        if config.method == "blob":
            if model is not None:
                raise InputError("the blob picker takes no model (drop --model or use --method cnn)")
            if config.diameter_px is None and config.diameter_A is None:
                raise InputError("the blob picker needs the particle diameter: --diameter (Å) or --diameter-px")
            self.model = None
            self.normalize = "gmm"
            self.edge_margin = 0.0
        elif config.method == "cnn":
            if model is None:
                raise InputError("picking with a CNN needs a model (--model MODEL.pt), or use --method blob")
            if isinstance(model, (str, os.PathLike)):
                from .modelfile import load_model

                model = load_model(model)
            self.model = model
            mc = model.config
            self.model_factor = float(mc.get("factor") or 1.0)
            self.model_ps = mc.get("pixel_size") or None
            self.model_diameter = mc.get("diameter_px") or None
            self.normalize = mc.get("normalize") or "gmm"
            self.edge_margin = float(mc.get("label_edge_margin") or 0.0)
        else:
            raise InputError(f"unknown picking method {config.method!r} (cnn | blob)")

    def sizes(self, path: Path, header_ps: float | None) -> tuple[float, float | None]:
        """(downsampling factor, particle diameter in original px) for one micrograph."""
        cfg = self.config
        ps = cfg.pixel_size or header_ps
        if self.model is None:
            d = PreprocessConfig(diameter_A=cfg.diameter_A, diameter_px=cfg.diameter_px, pixel_size=ps).diameter_in_px()
            factor = float(cfg.factor) if cfg.factor else float(choose_factor(d))
            return factor, d
        factor, d = self.model_factor, self.model_diameter
        if cfg.pixel_size and not self.model_ps and "unknown" not in self.warned:
            self.warned.add("unknown")
            self.log("warning: the model records no pixel size, so --pixel-size cannot rescale; micrographs are "
                     f"downsampled by the model's factor {self.model_factor:g}")
        if ps and self.model_ps and abs(ps / self.model_ps - 1) > PIXEL_SIZE_TOLERANCE:
            ratio = self.model_ps / ps  # original pixels of this micrograph per original pixel of the model's
            factor = self.model_factor * ratio
            d = d * ratio if d else None
            if ps not in self.warned:
                self.warned.add(ps)
                self.log(f"warning: {path.name}: pixel size {ps:g} Å differs from the model's {self.model_ps:g} Å; "
                         f"rescaling (downsampling by {factor:.3g} instead of {self.model_factor:g})")
            if factor < 1:
                raise InputError(f"{path}: pixel size {ps:g} Å is coarser than the model's downsampled pixel "
                                 f"({self.model_ps * self.model_factor:g} Å); cannot pick with this model")
        return factor, d

    def prepare(self, path: Path) -> _Job:
        """Read and preprocess one micrograph (runs in a worker thread)."""
        from .io import read_micrograph
        from .preprocess import preprocess_micrograph

        mic = read_micrograph(path)
        factor, d = self.sizes(path, mic.pixel_size)
        pre = preprocess_micrograph(mic, PreprocessConfig(factor=factor, pixel_size=self.config.pixel_size,
                                                          normalize=self.normalize, seed=self.config.seed))
        return _Job(path, pre.image, pre.factor, d, pre.pixel_size, tuple(mic.image.shape))


def _min_distance(config: PickConfig, job: _Job) -> float:
    if config.min_distance_px is not None:
        if not config.min_distance_px >= 0:
            raise InputError(f"--min-distance must be >= 0 (got {config.min_distance_px})")
        return float(config.min_distance_px)
    if job.diameter_px:
        return job.diameter_px / 2
    raise InputError("the model records no particle diameter: give --min-distance (original pixels)")


def _border(config: PickConfig, job: _Job, edge_margin: float = 0.0) -> float:
    """--border, else the particle radius or, when wider, the edge margin the model learned from its labels."""
    if config.border_px is not None:
        if not config.border_px >= 0:
            raise InputError(f"--border must be >= 0 (got {config.border_px})")
        return float(config.border_px)
    from .extract import default_border_px

    return default_border_px(job.diameter_px, edge_margin)


def _max_picks(config: PickConfig) -> int | None:
    limits = [n for n in (config.max_picks, config.top_n) if n is not None]
    return min(limits) if limits else None


def pick(
    micrographs: list[Path],
    model: Path | Any | None,
    config: PickConfig,
    on_done: Callable[[Path, pd.DataFrame], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    keep_picks: bool = True,
) -> PickRun:
    """Pick particles on micrographs with a model (path or LoadedModel), or with the blob picker (method='blob').

    With keep_picks=False the returned table is empty (the picks went to `on_done`), which bounds memory on long runs.
    """
    from tqdm import tqdm

    if log is None:
        def log(msg: str) -> None:
            tqdm.write(msg, file=sys.stderr)

    paths = [Path(p) for p in micrographs]
    stems = [stem(p) for p in paths]
    dupes = duplicate_stems(stems)
    if dupes:
        raise InputError(f"two micrographs share the name {dupes[0]!r}; their picks could not be told apart")
    if config.write_score_maps and not config.score_map_dir:
        raise InputError("write_score_maps needs score_map_dir (where to write the maps)")
    plan = _Plan(model, config, log)
    scorer = None
    if plan.model is not None:
        from .score import Scorer

        scorer = Scorer(plan.model, config)
    mask_carbon = config.exclude_carbon
    map_dir = Path(config.score_map_dir) if config.score_map_dir else None

    frames: list[pd.DataFrame] = []
    diameters: dict[str, float] = {}
    failures: list[tuple[Path, str]] = []
    t0 = time.perf_counter()
    n_done = 0
    ahead = max(1, int(config.workers))
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="pupick-read")
    pending: deque[tuple[Path, Future]] = deque()
    queue = deque(paths)
    bar = tqdm(total=len(paths), desc="pick", unit="mic", disable=not progress or None)
    try:
        while queue or pending:
            while queue and len(pending) < ahead + 1:  # keep the readers a little ahead of the scorer
                p = queue.popleft()
                pending.append((p, pool.submit(plan.prepare, p)))
            if should_stop is not None and should_stop():
                raise AbortRequested("stop requested; picking interrupted")
            path, fut = pending.popleft()
            try:
                job = fut.result()
                df = _pick_one(job, plan, scorer, config, mask_carbon, map_dir)
            except InputError as err:
                failures.append((path, str(err)))
                log(f"skipped {path}: {err}")
                bar.update()
                continue
            if keep_picks:
                frames.append(df)
            if job.diameter_px:
                diameters[stem(path)] = float(job.diameter_px)
            n_done += 1
            if on_done is not None:
                on_done(path, df)
            bar.update()
    finally:
        bar.close()
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    elapsed = time.perf_counter() - t0
    picks = pd.concat(frames, ignore_index=True) if frames else empty_picks(with_path=True)
    return PickRun(picks[PICK_TABLE_COLUMNS], failures, elapsed / n_done if n_done else math.nan, n_done,
                   diameters)


def _pick_one(job: _Job, plan: _Plan, scorer: Any, config: PickConfig, mask_carbon: bool,
              map_dir: Path | None) -> pd.DataFrame:
    from .extract import extract_picks

    d_ds = job.diameter_px / job.factor if job.diameter_px else None
    if scorer is None:
        from .blob import blob_score_map

        smap = blob_score_map(job.image, d_ds, dark=config.dark_particles, exclude_carbon=mask_carbon)
    else:
        smap = scorer(job.image)
        if mask_carbon:
            if d_ds is None:
                raise InputError("excluding carbon needs the particle diameter, which the model does not record")
            from .blob import ice_mask, mask_scores

            smap = mask_scores(smap, ice_mask(job.image, d_ds))  # no junk peaks along the mask's edge
    if map_dir is not None:
        from .io import write_mrc

        write_mrc(map_dir / f"{stem(job.path)}.mrc", smap, job.pixel_size_ds)
    x, y, s = extract_picks(smap, job.factor, _min_distance(config, job), config.threshold,
                            border_px=_border(config, job, plan.edge_margin), max_picks=_max_picks(config), original_shape=job.source_shape)
    return make_picks(stem(job.path), x, y, s, path=str(job.path))


MANIFEST = "pupick_pick.json"
RECORDS = ".pupick_records"  # one CSV per finished micrograph: the resume marker and the source of picks.csv
PICKS_TABLE = "picks.csv"
# PickConfig fields that change the picks; a rerun into the same directory must agree on them
RECORDED_FIELDS = ("method", "threshold", "min_distance_px", "max_picks", "border_px", "pixel_size", "stride", "views",
                   "seed", "diameter_A", "diameter_px", "dark_particles", "exclude_carbon", "top_n", "factor")


@dataclass
class DirRun:
    """A pick run into a directory: this run's result, the micrographs skipped as already done, all picks."""

    run: PickRun
    skipped: list[Path]
    picks: pd.DataFrame  # every requested micrograph's picks, including earlier runs'
    picks_path: Path
    model: Any  # the LoadedModel (None for the blob picker)
    micrographs: list[str] = field(default_factory=list)  # stems of every requested micrograph now done


def _read_record(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"micrograph": str, "path": str}, keep_default_na=False, na_values={"score": [""]})
    return df.reindex(columns=PICK_TABLE_COLUMNS)


def _write_record(df: pd.DataFrame, target: Path) -> None:
    from .io import atomic_path

    with atomic_path(target) as tmp:
        df[PICK_TABLE_COLUMNS].to_csv(tmp, index=False, float_format="%.6g")


def _gather(records: Path, names: list[str]) -> pd.DataFrame:
    """All finished micrographs' picks in one table; names and paths as categoricals, so 10^7 picks stay small."""
    frames = [f for f in (_read_record(records / f"{s}.csv") for s in names) if len(f)]
    if not frames:
        return empty_picks(with_path=True)[PICK_TABLE_COLUMNS]
    sizes = [len(f) for f in frames]
    codes = np.repeat(np.arange(len(frames)), sizes)
    mics = [str(f["micrograph"].iloc[0]) for f in frames]
    paths = [str(f["path"].iloc[0]) for f in frames]
    num = {c: np.concatenate([f[c].to_numpy(dtype=float) for f in frames]) for c in ("x", "y", "score")}
    path_index = {p: i for i, p in enumerate(dict.fromkeys(paths))}
    path_cats = list(path_index)
    path_codes = np.array([path_index[p] for p in paths])[codes]
    return pd.DataFrame({
        "micrograph": pd.Categorical.from_codes(codes, categories=mics),
        **num,
        "path": pd.Categorical.from_codes(path_codes, categories=path_cats),
    })


def pick_to_dir(
    micrographs: list[Path],
    model: Path | Any | None,
    config: PickConfig,
    out_dir: Path,
    writer: Callable[[pd.DataFrame, Path], None] | None = None,
    settings: dict | None = None,
    overwrite: bool = False,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> DirRun:
    """Resumable picking into OUT_DIR: per-micrograph outputs via `writer(picks, micrograph_path)`, then picks.csv.

    Micrographs finished by an earlier run with the same settings and model are skipped; a different model or
    settings (the picking fields of `config` plus `settings`, e.g. the output format) is refused unless `overwrite`.
    Every file is written under a temporary name and renamed, so an interrupted run leaves no partial file.
    """
    import json

    from . import __version__
    from .io import write_text_atomic

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a directory")
    if config.method == "cnn" and isinstance(model, (str, os.PathLike)):
        from .modelfile import load_model

        model = load_model(model)
    conf = config.to_dict()
    if config.method == "cnn":  # record what the default means, so 4 == default
        conf["views"] = config.resolved_views()
    wanted = {
        "model_sha256": getattr(model, "sha256", None) if config.method == "cnn" else None,
        "pick": {k: conf[k] for k in RECORDED_FIELDS},
        **(settings or {}),
    }
    manifest = out_dir / MANIFEST
    records = out_dir / RECORDS
    earlier: dict = {}
    if manifest.exists() and not overwrite:
        try:
            earlier = json.loads(manifest.read_text())
            previous = earlier.get("settings")
        except (OSError, ValueError, AttributeError) as err:
            raise InputError(f"{manifest}: unreadable ({err}); remove it or use --overwrite") from None
        if previous != wanted:
            previous = previous if isinstance(previous, dict) else {}
            before = previous.get("pick") if isinstance(previous.get("pick"), dict) else {}
            detail = [{"model_sha256": "model"}.get(k, k) for k in sorted(set(previous) | set(wanted))
                      if k != "pick" and previous.get(k) != wanted.get(k)]
            detail += [k for k in RECORDED_FIELDS if before.get(k) != wanted["pick"][k]]
            raise InputError(f"{out_dir}: holds picks made with a different {', '.join(detail)}; "
                             "use another output directory or --overwrite")
    if overwrite and records.is_dir():
        for old in records.glob("*.csv"):
            old.unlink()
    records.mkdir(parents=True, exist_ok=True)
    record = {"pupick_version": __version__, "settings": wanted, "model": str(getattr(model, "path", "") or "")}
    if earlier.get("diameter_px"):
        record["diameter_px"] = earlier["diameter_px"]
    write_text_atomic(manifest, json.dumps(record, indent=1))

    paths = [Path(p) for p in micrographs]
    done = {p for p in paths if (records / f"{stem(p)}.csv").exists()}
    todo = [p for p in paths if p not in done]
    if done and log is not None:
        log(f"{len(done)} micrograph(s) already picked in {out_dir}; skipping them")

    def finish(path: Path, df: pd.DataFrame) -> None:
        if writer is not None:
            writer(df, path)
        _write_record(df, records / f"{stem(path)}.csv")  # last: marks the micrograph done

    run = pick(todo, model, config, on_done=finish, should_stop=should_stop, progress=progress, log=log,
               keep_picks=False)
    finished = [stem(p) for p in paths if (records / f"{stem(p)}.csv").exists()]
    picks = _gather(records, finished)
    picks_path = out_dir / PICKS_TABLE
    _write_record(picks, picks_path)
    if run.diameters:  # in the micrographs' own pixels (after any pixel-size rescaling), for `pupick evaluate`
        record["diameter_px"] = float(np.median(list(run.diameters.values())))
        write_text_atomic(manifest, json.dumps(record, indent=1))
    return DirRun(run, sorted(done), picks, picks_path, model if config.method == "cnn" else None, finished)


def __getattr__(name: str) -> Any:
    # `train` is re-exported lazily so importing the pipeline does not pull in the training stack
    if name == "train":
        from .train import train

        return train
    raise AttributeError(name)
