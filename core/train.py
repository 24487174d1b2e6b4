"""PU training loop: preprocess (cached), dense-tile minibatches, objective, Adam, per-epoch validation AP.

Each step draws `batch_size` tiles (random micrograph by area, random position, random 90° rotation and flip) and
takes the loss over every output of the network on them at its native stride: positives are outputs within
`label_radius` of a label, the unlabeled outputs are shuffled into groups of `unlabeled_samples` for the GE penalty.
Mixed precision (bf16 autocast, fp32 master weights) where the hardware runs it natively. The classifier bias
starts at logit(π); batch-norm statistics are re-estimated for the weights that are kept (the averaged ones with
`ema_decay`): after each epoch when validating, once at the end otherwise.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import pandas as pd
import torch

from . import __version__
from .allocator import keep_freed_memory
from .config import ScoreConfig, TrainConfig, check_frozen_layers
from .errors import AbortRequested, InputError, PupickError
from .evaluate import default_match_radius, evaluate
from .extract import default_border_px, extract_picks
from .io import atomic_path, check_output, read_micrograph
from .lossplot import write_training_plot
from .models import MODELS, ModelConfig, build, native_stride, receptive_field
from .modelfile import LoadedModel, load_model, loaded_from_state, plain, save_state
from .objectives import OBJECTIVES, class_prior
from .optim import Adam, scheduled_lr
from .preprocess import MANIFEST, preprocess_micrograph
from .score import Scorer, autocast_context, choose_device, choose_precision
from .tables import assign_micrographs, duplicate_stems, stem, validate_picks
from .tiles import TileSampler, positive_mask
from .weightinit import grid_tiles, pca_init

MicrographsLike = Union[Sequence[Union[str, os.PathLike]], pd.DataFrame]  # paths, or a Micrographs table

CACHE_VERSION = 1


class TrainingDiverged(PupickError):
    """The loss or the weights became NaN or infinite (too high a learning rate, as a rule)."""


@dataclass
class EpochReport:
    """What `on_epoch` receives after each epoch."""

    epoch: int
    epochs: int
    loss: float  # mean training loss of the epoch
    ap: float  # validation AP (NaN without validation)
    best_f1: float
    seconds: float


@dataclass
class TrainResult:
    """A trained model in memory (fp32 CPU weights + plain config) and how training went; `save` writes it."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    history: pd.DataFrame  # epoch, loss, ap, best_f1, seconds
    best_epoch: int
    best_ap: float  # NaN without validation
    pi: float
    pi_u: float = math.nan
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    path: Path | None = None  # where `save` last wrote the model

    def save(self, path: str | os.PathLike, history: bool = True) -> Path:
        """Write the model file atomically; with `history`, also PATH.train.tsv and the plot PATH.train.png."""
        path = Path(path)
        for target, kind in output_files(path)[: 3 if history else 1]:  # never over another kind of file
            check_output(target, kind)
        save_state(path, self.state_dict, self.config)
        self.path = path
        if history:
            with atomic_path(path.with_suffix(".train.tsv")) as tmp:
                self.history.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
            h = self.history
            write_training_plot(h["epoch"].tolist(), h["loss"].tolist(), h["ap"].tolist(), path.with_suffix(".train.png"))
        return path

    def load(self, device: str | torch.device = "cpu") -> LoadedModel:
        """The model ready to pick with, as `load_model` would give it from the saved file."""
        return loaded_from_state(self.state_dict, self.config, device)


@dataclass
class _Mic:
    path: Path
    image: np.ndarray  # preprocessed (downsampled, normalised)
    factor: float
    pixel_size: float | None  # original Å/px
    source_shape: tuple[int, int]
    labels: pd.DataFrame  # original-pixel labels inside the image


# ---------------------------------------------------------------- preprocessing with a cache


def _cache_key(path: Path, config: TrainConfig) -> str:
    st = path.stat()
    pre = config.preprocess
    ident = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, pre.factor, pre.diameter_A, pre.diameter_px,
                        pre.pixel_size, pre.normalize, pre.seed, pre.gmm_samples, CACHE_VERSION], sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _read_manifest(manifest: Path, mtime_ns: int, size: int) -> dict:
    """A preprocessing manifest, parsed once per version of the file (not once per micrograph it lists)."""
    from .confine import open_confined

    try:
        with open_confined(manifest) as fh:  # beside a micrograph: confined like it (a server's data roots)
            return json.loads(fh.read())
    except (OSError, ValueError):
        raise InputError(f"{manifest}: unreadable preprocessing manifest") from None


def _preprocessed_entry(path: Path) -> dict | None:
    """The manifest entry when `path` is an output of `pupick preprocess` (its folder holds the manifest)."""
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return None
    st = manifest.stat()
    doc = _read_manifest(manifest, st.st_mtime_ns, st.st_size)
    entry = doc.get("micrographs", {}).get(stem(path))
    if entry is None:
        return None
    return {**entry, "normalize": doc.get("settings", {}).get("normalize")}


def _load_one(path: Path, config: TrainConfig, cache: Path | None) -> tuple[np.ndarray, float, float | None, tuple]:
    entry = _preprocessed_entry(path)
    if entry is not None:  # already downsampled and normalised: use as is; labels stay in the source's pixels
        if entry.get("normalize") != config.preprocess.normalize:
            raise InputError(f"{path}: preprocessed with normalisation {entry.get('normalize')!r}, "
                             f"but training asks for {config.preprocess.normalize!r}")
        image = read_micrograph(path).image
        ps = entry.get("pixel_size")
        return image, float(entry["factor"]), (float(ps) if ps else None), tuple(int(v) for v in entry["shape"])
    target = cache / f"{stem(path)}-{_cache_key(path, config)}.npz" if cache is not None else None
    if target is not None and target.exists():
        try:
            with np.load(target) as z:
                ps = float(z["pixel_size"])
                return z["image"], float(z["factor"]), (ps if ps > 0 else None), tuple(int(v) for v in z["shape"])
        except Exception:  # noqa: BLE001 - a corrupt .npz raises zip, pickle, OS or value errors: rebuild it
            pass  # unreadable cache entry: recompute and overwrite
    mic = read_micrograph(path)
    pre = preprocess_micrograph(mic, config.preprocess)
    ps = config.preprocess.pixel_size or mic.pixel_size
    if target is not None:
        with atomic_path(target) as tmp:  # a full disk: one line naming the cache file
            with open(tmp, "wb") as fh:
                np.savez(fh, image=pre.image, factor=pre.factor, pixel_size=ps or 0.0, shape=np.array(pre.source_shape))
    return pre.image.astype(np.float32, copy=False), float(pre.factor), ps, tuple(pre.source_shape)


def _preprocess_all(paths: list[Path], config: TrainConfig, cache: Path | None, progress: bool,
                    stop: Callable[[], None] = lambda: None) -> list[tuple[np.ndarray, float, float | None, tuple]]:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    workers = max(1, min(len(paths), os.cpu_count() or 1, 4))
    pool = ThreadPoolExecutor(max_workers=workers)
    out = []
    try:
        for item in tqdm(pool.map(lambda p: _load_one(p, config, cache), paths), total=len(paths), desc="preprocess",
                         unit="mic", disable=not progress or None, leave=False):
            out.append(item)
            stop()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


# ---------------------------------------------------------------- setup helpers


def _load_validation(validation: tuple[list[Path], pd.DataFrame], config: TrainConfig, cache: Path | None,
                     progress: bool, stop: Callable[[], None]) -> list[_Mic]:
    paths = [Path(p) for p in validation[0]]
    labels = validate_picks(validation[1], "validation labels")
    groups, _ = assign_micrographs(labels, paths, "validation labels")
    pre = _preprocess_all(paths, config, cache, progress, stop)
    return [_Mic(p, im, f, ps, sh, groups[i]) for i, (p, (im, f, ps, sh)) in enumerate(zip(paths, pre)) if i in groups]


def label_edge_margin(mics: list[_Mic], diameter_px: float | None) -> float | None:
    """How close to a micrograph edge the user labels particles, in particle diameters (0 to 1); None if unknown.

    Users seldom label a particle whose extraction box would leave the micrograph, so picks nearer the edge than every
    label are mostly unwanted. Estimated as the smallest label-to-edge distance m over n labels, less its expected
    excess for labels spread uniformly over the area left (side L - 2m): L' / (4 n); capped at one diameter, so a few
    labels bunched in the middle cannot blank a wide frame.
    """
    labeled = [m for m in mics if len(m.labels)]
    if not diameter_px or not labeled:
        return None
    edge = np.concatenate([np.minimum.reduce([m.labels["x"].to_numpy(), m.labels["y"].to_numpy(),
                                              m.source_shape[1] - 1 - m.labels["x"].to_numpy(),
                                              m.source_shape[0] - 1 - m.labels["y"].to_numpy()])
                           for m in labeled])
    nearest = float(edge.min())
    side = min(min(m.source_shape) for m in labeled)
    excess = max(side - 2 * nearest, 0.0) / (4 * len(edge))
    return float(np.clip((nearest - excess) / diameter_px, 0.0, 1.0))


def _split(labeled: list[int], fraction: float, seed: int) -> list[int]:
    """Indices of validation micrographs: round(fraction * labeled), at least 1 when fraction > 0, never all."""
    if fraction <= 0 or len(labeled) < 2:
        return []
    n = min(len(labeled) - 1, max(1, int(round(fraction * len(labeled)))))
    rng = np.random.default_rng([seed, 1])
    return sorted(rng.choice(labeled, size=n, replace=False).tolist())


def _unlabeled_groups(s_u: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Shuffle the unlabeled outputs and cut them into [G, n] groups (the remainder is dropped)."""
    g = s_u.numel() // n
    if g == 0:
        return s_u.reshape(1, -1)
    perm = torch.randperm(s_u.numel(), generator=gen)[: g * n].to(s_u.device)
    return s_u[perm].reshape(g, n)


def _validate(module: torch.nn.Module, mics: list[_Mic], radius_px: float, border_px: float,
              score_config: ScoreConfig) -> tuple[float, float]:
    """AP and best F1 of the current module on the validation micrographs (picking's scorer, extractor, evaluator)."""
    scorer = Scorer(module, score_config)  # once per call: the weights change between epochs
    frames = []
    labels = []
    for m in mics:
        smap = scorer(m.image)
        x, y, s = extract_picks(smap, m.factor, radius_px, -1e9, border_px=border_px,
                                original_shape=m.source_shape)
        frames.append(pd.DataFrame({"micrograph": stem(m.path), "x": x, "y": y, "score": s}))
        labels.append(m.labels.assign(micrograph=stem(m.path)))
    result = evaluate(pd.concat(frames, ignore_index=True), pd.concat(labels, ignore_index=True), radius_px,
                      micrographs=[stem(m.path) for m in mics])
    return float(result.ap), float(result.best_f1)


def _recalibrate_batchnorm(module: torch.nn.Module, batches: list[torch.Tensor],
                           autocast: Callable[[], contextlib.AbstractContextManager]) -> None:
    """Re-estimate batch-norm running statistics as plain averages over `batches` with the final weights.

    With few steps, the exponential running averages still mix in statistics of much earlier weights, which makes
    eval-mode scores drift from what training saw.
    """
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    module.train()
    with torch.no_grad(), autocast():
        for x in batches:
            module(x)
    for m, mom in zip(norms, momenta):
        m.momentum = mom


# ---------------------------------------------------------------- the steps of train()


def _stopper(should_stop: Callable[[], bool] | None) -> Callable[[], None]:
    """A check to call between steps: raises AbortRequested once `should_stop()` is true."""
    def check() -> None:
        if should_stop is not None and should_stop():
            raise AbortRequested("training stopped on request; nothing was written")
    return check


def _micrograph_paths(micrographs: MicrographsLike, config: TrainConfig) -> tuple[list[Path], TrainConfig]:
    """Paths from a list or a Micrographs table; the table's pixel size fills in an unset --pixel-size."""
    if not isinstance(micrographs, pd.DataFrame):
        return [Path(p) for p in micrographs], config
    if "path" not in micrographs.columns:
        raise InputError("the micrographs table has no 'path' column")
    paths = [Path(p) for p in micrographs["path"]]
    if config.preprocess.pixel_size is None and "pixel_size" in micrographs.columns:
        sizes = sorted({round(float(v), 4) for v in pd.to_numeric(micrographs["pixel_size"], errors="coerce")
                        if math.isfinite(v) and v > 0})
        if len(sizes) > 1:
            raise InputError(f"the micrographs have several pixel sizes ({', '.join(map(str, sizes))} Å); train on "
                             "micrographs of one pixel size (e.g. one optics group)")
        if sizes:
            config = dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess,
                                                                                pixel_size=sizes[0]))
    return paths, config


def _initial_model(config: TrainConfig, log: Callable[[str], None]) -> tuple[LoadedModel | None, TrainConfig]:
    """The model to fine-tune from (`config.init`), with the config set to its architecture and particle scale.

    A general model (trained at a fixed particle size in pixels, `grid_diameter`) sets the downsampling factor to
    diameter / grid_diameter, unless --scale is given, so the particle looks the size the model knows.
    """
    if not config.init:
        return None, config
    init = load_model(config.init)
    mc = ModelConfig.from_dict(init.config)
    config = dataclasses.replace(config, arch=mc.arch, units=mc.units, batchnorm=mc.batchnorm, dropout=mc.dropout,
                                 pooling=mc.pooling)
    grid = init.config.get("grid_diameter")
    pre = config.preprocess
    if grid and pre.factor is None:
        try:
            diameter = pre.diameter_in_px()
        except InputError:
            diameter = None  # Å without a pixel size yet: the factor rule applies
        if diameter is not None and diameter / grid >= 1:
            config = dataclasses.replace(config, preprocess=dataclasses.replace(pre, factor=diameter / grid))
        else:
            log(f"--init {config.init}: cannot put the particle at the model's {grid:g} px "
                f"({'diameter unknown' if diameter is None else f'diameter {diameter:g} px is smaller'}); "
                "using the usual downsampling")
    log(f"fine-tuning from {config.init} ({mc.arch}, {mc.units} units)")
    return init, config


def _check_inputs(paths: list[Path], labels: pd.DataFrame, config: TrainConfig) -> tuple[pd.DataFrame, ModelConfig]:
    """Options and inputs that need no file read: the valid labels and the network's config."""
    if not paths:
        raise InputError("no micrographs given to train on")
    if config.objective not in OBJECTIVES:
        raise InputError(f"unknown objective {config.objective!r}; choose from {', '.join(OBJECTIVES)}")
    if config.arch not in MODELS:
        raise InputError(f"unknown architecture {config.arch!r}; choose from {', '.join(MODELS)}")
    check_frozen_layers(config)  # with --init, against the init model's architecture
    labels = validate_picks(labels, "labels")
    if labels.empty:
        raise InputError("labels: no particle coordinates (need at least one labeled particle)")
    dupes = duplicate_stems([stem(p) for p in paths])
    if dupes:
        raise InputError(f"two micrographs share the name {dupes[0]!r}; labels could not tell them apart")
    return labels, ModelConfig(config.arch, config.units, config.batchnorm, config.dropout, config.pooling)


@dataclass
class _Data:
    """The preprocessed micrographs with their labels, split into training and validation."""

    paths: list[Path]
    mics: list[_Mic]
    train: list[_Mic]
    val: list[_Mic]
    factor: float
    diameter_px: float | None
    radius_px: float  # NMS distance and match radius (original px)
    edge_margin: float | None
    border_px: float


def _prepare_data(paths: list[Path], labels: pd.DataFrame, config: TrainConfig,
                  validation: tuple[list[Path], pd.DataFrame] | None, progress: bool, log: Callable[[str], None],
                  stop: Callable[[], None]) -> _Data:
    """Match labels to micrographs, preprocess (cached), drop out-of-image labels, split off validation."""
    groups, unmatched = assign_micrographs(labels, paths, "labels")
    if unmatched:
        log(f"{unmatched} label(s) name micrographs that were not given; ignored")
    cache = Path(config.cache_dir) if config.cache_dir else None
    pre = _preprocess_all(paths, config, cache, progress, stop)
    mics: list[_Mic] = []
    dropped = 0
    for i, (p, (image, factor, ps, shape)) in enumerate(zip(paths, pre)):
        lab = groups.get(i, labels.iloc[:0])
        inside = (lab["x"] >= 0) & (lab["y"] >= 0) & (lab["x"] <= shape[1] - 1) & (lab["y"] <= shape[0] - 1)
        dropped += int((~inside).sum())
        mics.append(_Mic(p, image, factor, ps, shape, lab[inside].reset_index(drop=True)))
    if dropped:
        log(f"{dropped} label(s) lie outside their micrograph; dropped")
    factors = sorted({m.factor for m in mics})
    if len(factors) > 1:
        raise InputError(f"micrographs were downsampled by different factors {factors}; give --scale or --pixel-size")
    labeled = [i for i, m in enumerate(mics) if len(m.labels)]
    if not labeled:
        raise InputError("labels: every labeled coordinate lies outside its micrograph (check x = column, y = row)")
    if validation is not None:
        train_mics, val_mics = mics, _load_validation(validation, config, cache, progress, stop)
    else:
        val_idx = _split(labeled, config.test_split, config.seed)
        train_mics = [m for i, m in enumerate(mics) if i not in val_idx]
        val_mics = [mics[i] for i in val_idx]
    if config.test_split > 0 and not val_mics:
        log("only one labeled micrograph: no validation split, keeping the last epoch")
    factor = factors[0]
    diameter = config.preprocess.diameter_in_px(mics[0].pixel_size)
    radius_px = default_match_radius(diameter) or 20.0 * factor  # NMS distance and match radius (original px)
    edge_margin = label_edge_margin(mics, diameter)
    border_px = default_border_px(diameter, edge_margin) if diameter else radius_px  # as picking will use
    if edge_margin is not None and edge_margin > 0.5:
        log(f"labels keep at least {edge_margin * diameter:.0f} px ({edge_margin:.2f} diameters) from the micrograph "
            "edges; picks will too (pupick pick --border to change)")
    return _Data(paths, mics, train_mics, val_mics, factor, diameter, radius_px, edge_margin, border_px)


@dataclass
class _Prior:
    """The class prior and what the objective takes."""

    pi: float
    pi_u: float
    prior: float  # what the objective gets: pi or pi_u
    slack: float
    expected: float
    masks: list[np.ndarray]  # positive masks of the training micrographs (downsampled grid)
    n_train_labels: int


def _class_prior(data: _Data, config: TrainConfig, log: Callable[[str], None]) -> _Prior:
    """π from the expected particle count (downsampled pixels), π_U = π − labeled share; refuse impossible ones."""
    r = float(config.label_radius)
    n_train_labels = sum(len(m.labels) for m in data.train)
    per_mic = n_train_labels / len(data.train)
    expected = config.expected_particles
    if expected is None:
        expected = 2.0 * sum(len(m.labels) for m in data.mics) / len(data.mics)
        log(f"--expected-particles not given: assuming labels cover half the particles ({expected:.1f} per "
            "micrograph); give the expected count per micrograph for a better prior")
    masks = [positive_mask(m.image.shape, m.labels["y"].to_numpy() / data.factor,
                           m.labels["x"].to_numpy() / data.factor, r) for m in data.train]
    pixels = sum(m.size for m in masks)
    pi = class_prior(expected, r, pixels / len(masks))
    p_obs = float(sum(int(m.sum()) for m in masks)) / pixels
    pi_u = pi - p_obs
    objective = OBJECTIVES[config.objective]
    if not 0 < pi < 1:
        raise InputError(f"class prior π = {pi:.3g} is not in (0, 1): --expected-particles {expected:g} is too "
                         "large for the micrograph size and label radius")
    if per_mic >= expected:
        msg = (f"the labels already hold {per_mic:.1f} particles per training micrograph, at least the expected "
               f"{expected:g} (--expected-particles)")
        if objective.prior == "pi_u":
            raise InputError(msg + f"; objective {config.objective} learns from the particles left UNLABELED "
                             "(π_U = π − labeled share ≤ 0). Raise --expected-particles to the true count per "
                             "micrograph, or use --objective pn if the labels are complete")
        log("warning: " + msg + "; the prior assumes few unlabeled particles")
    if objective.prior == "pi_u" and pi_u <= 0:
        raise InputError(f"π_U = π − labeled share = {pi:.4g} − {p_obs:.4g} ≤ 0: raise --expected-particles")
    slack = config.slack if config.slack is not None else objective.default_slack
    log(f"{len(data.train)} training micrograph(s) with {n_train_labels} labels, {len(data.val)} for validation; "
        f"factor {data.factor:g}, π = {pi:.4g}, π_U = {pi_u:.4g}, objective {config.objective}")
    return _Prior(pi, pi_u, pi_u if objective.prior == "pi_u" else pi, slack, float(expected), masks, n_train_labels)


@dataclass
class _Session:
    """The network, its optimiser and the tile sampler, with their random streams."""

    module: torch.nn.Module
    model_cfg: ModelConfig
    opt: Adam
    sampler: TileSampler
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    calibration: list[torch.Tensor]
    rng: np.random.Generator
    gen: torch.Generator


def _build_session(data: _Data, prior: _Prior, config: TrainConfig, model_cfg: ModelConfig,
                   init: LoadedModel | None = None) -> _Session:
    """Seeded network (or the init model's weights; classifier bias at logit π), Adam, the tile sampler and the
    batch-norm calibration tiles."""
    device = choose_device(config.device)
    if device.type == "cpu":
        keep_freed_memory()
    rf, stride = receptive_field(model_cfg), native_stride(model_cfg)
    torch.manual_seed(config.seed)
    module = build(model_cfg)
    # the label grid follows the outputs: every pixel when training dense (a dilated network), else the native stride
    sampler = _sampler(data, prior, config, rf, 1 if config.train_stride == "dense" else stride)
    if init is not None:
        module.load_state_dict(init.module.state_dict())
    elif config.weight_init == "pca":
        pca_init(module, torch.from_numpy(grid_tiles(sampler.images, sampler.input_size)))
    with torch.no_grad():  # start calibrated at the prior: otherwise the first hundreds of steps only move this bias
        module.classifier.bias.fill_(math.log(prior.pi / (1 - prior.pi)))
    module = module.to(device).to(memory_format=torch.channels_last)
    for layer in module.features[:config.frozen_layer_count()]:
        layer.requires_grad_(False)
    opt = Adam(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.train_stride == "dense":
        module.set_dense(True)
    dtype = choose_precision(config.precision, device)
    autocast = functools.partial(autocast_context, device, dtype)
    calib_rng = np.random.default_rng([config.seed, 4])  # its own stream: calibration never shifts training's draws
    calibration = [torch.from_numpy(sampler.sample(calib_rng, config.batch_size)[0]).to(device).contiguous(
        memory_format=torch.channels_last) for _ in range(config.calibration_batches)]
    return _Session(module, model_cfg, opt, sampler, device, autocast, calibration,
                    np.random.default_rng([config.seed, 2]), torch.Generator().manual_seed(config.seed + 3))


def _sampler(data: _Data, prior: _Prior, config: TrainConfig, rf: int, stride: int) -> TileSampler:
    """Tiles of the training micrographs with the label grid of the outputs at `stride`."""
    pad = rf // 2
    out = max(stride, min(config.tile_size, max(max(m.shape) for m in prior.masks)) // stride * stride)
    return TileSampler([np.pad(m.image, pad) for m in data.train], prior.masks, out, pad, stride,
                       config.augment_rotations, config.tile_sampling)


def _train_step(s: _Session, config: TrainConfig, prior: _Prior) -> float:
    """One optimiser step on a fresh batch of tiles; returns the loss."""
    xs, ys = s.sampler.sample(s.rng, config.batch_size)
    x = torch.from_numpy(xs).to(s.device).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(ys).to(s.device)
    with s.autocast():
        scores = s.module(x)[:, 0].float()
    s_p, s_u = scores[y == 1], scores[y == 0]
    loss = OBJECTIVES[config.objective].fn(s_p, _unlabeled_groups(s_u, config.unlabeled_samples, s.gen),
                                           prior.prior, prior.slack)
    s.opt.zero_grad()
    loss.backward()
    s.opt.step()
    return float(loss.detach())


class _Ema:
    """Exponential moving average of the parameters over steps, bias-corrected (as Adam's moments are)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay, self.steps = decay, 0
        self.params = [p for p in module.parameters()]
        self.shadow = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.live: list[torch.Tensor] = []

    def update(self) -> None:
        self.steps += 1
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - self.decay)

    def swap(self) -> None:
        """Put the (corrected) average into the module; a second swap brings back the live weights, bit for bit."""
        with torch.no_grad():
            if self.live:
                for p, live in zip(self.params, self.live):
                    p.copy_(live)
                self.live = []
                return
            correction = 1 - self.decay ** max(1, self.steps)
            self.live = [p.detach().clone() for p in self.params]
            for p, avg in zip(self.params, self.shadow):
                p.copy_(avg / correction)


def _diverged(epoch: int, step: int, loss: float, config: TrainConfig) -> TrainingDiverged:
    return TrainingDiverged(f"training diverged (loss {loss} at epoch {epoch}, step {step}); no model was written: "
                            f"lower --learning-rate (now {config.learning_rate:g}, default {TrainConfig.learning_rate:g})")


def _run_epochs(s: _Session, data: _Data, prior: _Prior, config: TrainConfig,
                on_epoch: Callable[[EpochReport], None] | None, stop: Callable[[], None],
                progress: bool) -> tuple[pd.DataFrame, int, float]:
    """The epochs: steps, batch-norm recalibration, validation AP; keeps the best epoch's weights in the module.

    Returns the history, the best epoch and its validation AP (the last epoch and NaN without validation).
    """
    from tqdm import tqdm

    score_config = ScoreConfig(device=str(s.device), precision=config.precision, stride=config.validation_stride,
                               views=1)
    rows, best_state, best_ap, best_epoch = [], None, -math.inf, 0
    total = config.epochs * config.steps_per_epoch  # the average spans at most about half of a short run
    ema = _Ema(s.module, min(config.ema_decay, 1 - 2 / total)) if config.ema_decay > 0 and total > 2 else None
    bar = tqdm(total=config.epochs * config.steps_per_epoch, desc="train", unit="step", disable=not progress or None)
    try:
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            s.module.train()
            losses = []
            for step in range(1, config.steps_per_epoch + 1):
                stop()
                s.opt.lr = scheduled_lr(config.lr_schedule, config.learning_rate,
                                        (epoch - 1) * config.steps_per_epoch + step - 1, total)
                losses.append(_train_step(s, config, prior))
                if not math.isfinite(losses[-1]):
                    raise _diverged(epoch, step, losses[-1], config)
                if ema is not None:
                    ema.update()
                bar.update()
            ap = f1 = math.nan
            last = epoch == config.epochs
            if data.val or last:  # without validation only the final weights need averaging and statistics
                if ema is not None:  # validate (and keep) the averaged weights
                    ema.swap()
                _recalibrate_batchnorm(s.module, s.calibration, s.autocast)
            if data.val:
                stop()
                s.module.eval()
                ap, f1 = _validate(s.module, data.val, data.radius_px, data.border_px, score_config)
                if ap > best_ap:
                    best_ap, best_epoch = ap, epoch
                    best_state = copy.deepcopy(s.module.state_dict())
                if ema is not None and not last:
                    ema.swap()  # train on from the live weights
            report = EpochReport(epoch, config.epochs, float(np.mean(losses)), ap, f1, time.perf_counter() - t0)
            rows.append(dataclasses.asdict(report))
            bar.set_postfix(loss=f"{report.loss:.4f}", ap=f"{ap:.3f}")
            if on_epoch is not None:
                on_epoch(report)
    finally:
        bar.close()
    if best_state is None:
        best_epoch, best_ap = config.epochs, math.nan
    else:
        s.module.load_state_dict(best_state)
    if not all(torch.isfinite(v).all() for v in s.module.state_dict().values() if v.is_floating_point()):
        raise _diverged(best_epoch, config.steps_per_epoch, math.nan, config)
    history = pd.DataFrame(rows, columns=["epoch", "loss", "ap", "best_f1", "seconds"])
    return history, best_epoch, best_ap


def _model_config(s: _Session, data: _Data, prior: _Prior, config: TrainConfig, best_epoch: int,
                  best_ap: float) -> dict[str, Any]:
    """The plain config saved with the weights: architecture, scale, prior and where the model came from."""
    ps0 = data.mics[0].pixel_size
    diameter = data.diameter_px
    return {
        **s.model_cfg.to_dict(),
        "receptive_field": receptive_field(s.model_cfg),
        "stride": native_stride(s.model_cfg),
        "factor": float(data.factor),
        "pixel_size": float(ps0) if ps0 else None,
        "diameter_px": float(diameter) if diameter else None,
        "diameter_A": float(diameter * ps0) if diameter and ps0 else None,
        "normalize": config.preprocess.normalize,
        "label_radius": float(config.label_radius),
        "label_edge_margin": data.edge_margin,  # diameters; picking's default border is max(radius, this)
        "pi": float(prior.pi),
        "pi_u": float(prior.pi_u),
        "expected_particles": prior.expected,
        "objective": config.objective,
        "slack": float(prior.slack),
        "version": __version__,
        "best_epoch": int(best_epoch),
        "best_ap": None if math.isnan(best_ap) else float(best_ap),
        "provenance": {  # no date: the same inputs and seed give the same file
            "micrographs": [stem(p) for p in data.paths],
            "validation": [stem(m.path) for m in data.val],
            "n_labels": int(prior.n_train_labels),
            # where the cache was changes nothing in the model: not recorded
            "train_config": {k: v for k, v in plain(config.to_dict()).items() if k != "cache_dir"},
        },
    }


def train(
    micrographs: MicrographsLike,
    labels: pd.DataFrame,
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    validation: tuple[list[Path], pd.DataFrame] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a picker on labeled positions (PU); nothing is written but the preprocessing cache (config.cache_dir).

    `micrographs` is a list of paths or a Micrographs table (`path`, optional `pixel_size`). Validation micrographs
    are a seeded `config.test_split` share of the labeled ones, or, when `validation` (micrographs, labels) is given,
    those instead (all given micrographs then train). `on_epoch` gets an EpochReport after each epoch;
    `should_stop` is polled between steps and stops with AbortRequested. Save the result with `TrainResult.save`.
    """
    t_start = time.perf_counter()
    stop = _stopper(should_stop)
    paths, config = _micrograph_paths(micrographs, config)
    init, config = _initial_model(config, log)
    labels, model_cfg = _check_inputs(paths, labels, config)
    stop()
    data = _prepare_data(paths, labels, config, validation, progress, log, stop)
    prior = _class_prior(data, config, log)
    session = _build_session(data, prior, config, model_cfg, init)
    history, best_epoch, best_ap = _run_epochs(session, data, prior, config, on_epoch, stop, progress)
    session.module.set_dense(False)
    state = {k: v.detach().to("cpu", copy=True).float() if v.is_floating_point() else v.detach().to("cpu", copy=True)
             for k, v in session.module.state_dict().items()}
    result = TrainResult(state, _model_config(session, data, prior, config, best_epoch, best_ap), history,
                         best_epoch, best_ap, prior.pi, prior.pi_u, time.perf_counter() - t_start)
    if data.val:
        log(f"best epoch {best_epoch}: validation AP {best_ap:.3f}; trained in {result.seconds:.1f} s")
    else:
        log(f"trained in {result.seconds:.1f} s")
    return result


def output_files(output: Path) -> list[tuple[Path, str]]:
    """The files train writes for OUTPUT, each with its kind (see io.check_output)."""
    output = Path(output)
    return [(output, "torch"), (output.with_suffix(".train.tsv"), "text"), (output.with_suffix(".train.png"), "png")]


