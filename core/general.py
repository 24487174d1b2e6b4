"""The general model: one network for many particles, trained on several labelled sets at one particle size.

Every set is downsampled so that its particle spans `grid_diameter` pixels, times a scale jitter (each scale is a
separately preprocessed copy), and each step takes a batch of tiles from one (set, scale) chosen at random (sets
equally often), with random 90° rotations and flips, lower contrast and added noise (`core.tiles.degrade`), and that
set's own class prior in the PU objective. The weights saved are the steps' exponential moving average.
Picking with it needs the particle diameter (`modelfile.for_particle`); fine-tuning (`TrainConfig.init`) puts the
particle at the same size.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import __version__
from .config import TrainConfig
from .errors import InputError
from .modelfile import plain
from .models import ModelConfig, build, native_stride, receptive_field
from .objectives import OBJECTIVES
from .optim import scheduled_lr
from .score import autocast_context, choose_device, choose_precision
from .tables import stem
from .tiles import degrade
from .train import (TrainResult, TrainingDiverged, _class_prior, _Ema, _prepare_data, _recalibrate_batchnorm,
                    _sampler, _unlabeled_groups)

GRID_DIAMETER = 24.0  # pixels the particle spans in the network's input
SCALES = (0.8, 1.0, 1.2)  # scale jitter around the grid diameter (±20%)
LABEL_SHARE = 0.8  # the sets' labels are taken as this share of their particles (sets the prior)
# Added to the logits when picking (modelfile.for_particle): on a set it never saw, a leave-one-set-out general model
# scored EMPIAR-10059's particles far below picking's default threshold (-6): AP 0.31 at -6, 0.69 at -20.
SCORE_OFFSET = 14.0


@dataclass
class LabelledSet:
    """One training set: micrographs, their labels (original pixels) and the particle diameter.

    `weight`: how often its batches are drawn, relative to the other sets."""

    name: str
    micrographs: list[Path]
    labels: pd.DataFrame
    diameter_px: float
    weight: float = 1.0


@dataclass
class _Group:
    set_name: str
    scale: float
    sampler: object
    prior: object


def _groups(sets: list[LabelledSet], config: TrainConfig, grid: float, scales: tuple[float, ...],
            log: Callable[[str], None]) -> list[_Group]:
    mcfg = ModelConfig(config.arch, config.units, config.batchnorm, config.dropout, config.pooling)
    rf, stride = receptive_field(mcfg), native_stride(mcfg)
    groups = []
    for st in sets:
        paths = [Path(p) for p in st.micrographs]
        labels = st.labels[st.labels["micrograph"].astype(str).map(stem).isin({stem(p) for p in paths})]
        per_mic = len(labels) / max(1, len(paths))
        for scale in scales:
            factor = st.diameter_px / (grid * scale)
            if factor < 1:
                log(f"{st.name}: scale {scale:g} would need upsampling (factor {factor:.2f}); skipped")
                continue
            cfg = dataclasses.replace(config, test_split=0.0, expected_particles=per_mic / LABEL_SHARE,
                                      preprocess=dataclasses.replace(config.preprocess, factor=factor,
                                                                     diameter_px=st.diameter_px))
            data = _prepare_data(paths, labels, cfg, None, False, lambda m: None, lambda: None)
            prior = _class_prior(data, cfg, lambda m: None)
            groups.append(_Group(st.name, scale, _sampler(data, prior, cfg, rf, stride), prior))
            log(f"{st.name} at scale {scale:g}: factor {factor:.3f}, {len(paths)} micrographs, {len(labels)} labels, "
                f"π = {prior.pi:.4g}")
    if not groups:
        raise InputError("no set can be brought to the general model's particle size")
    return groups


def train_general(sets: list[LabelledSet], config: TrainConfig, grid_diameter: float = GRID_DIAMETER,
                  scales: tuple[float, ...] = SCALES, log: Callable[[str], None] = print, augment: bool = True):
    """Train the general model on several sets (deterministic for a seed on one device); returns a TrainResult.

    `augment=False` leaves out the contrast/noise augmentation (`core.tiles.degrade`): only for measuring what it adds.
    """
    t0 = time.perf_counter()
    groups = _groups(sets, config, grid_diameter, scales, log)
    names = sorted({g.set_name for g in groups})
    weight = {s.name: float(s.weight) for s in sets}
    if any(w <= 0 for w in weight.values()):
        raise InputError("every set's weight must be positive")
    # sets equally often unless weighted (the equal case keeps the draws of the models trained before weights)
    p = None if len({weight[n] for n in names}) == 1 else np.array([weight[n] for n in names]) / sum(
        weight[n] for n in names)
    device = choose_device(config.device)
    mcfg = ModelConfig(config.arch, config.units, config.batchnorm, config.dropout, config.pooling)
    torch.manual_seed(config.seed)
    module = build(mcfg)
    mean_pi = float(np.mean([g.prior.pi for g in groups]))
    with torch.no_grad():
        module.classifier.bias.fill_(math.log(mean_pi / (1 - mean_pi)))
    module = module.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    autocast = lambda: autocast_context(device, choose_precision(config.precision, device))  # noqa: E731
    ema = _Ema(module, config.ema_decay) if config.ema_decay > 0 else None
    rng = np.random.default_rng([config.seed, 2])
    gen = torch.Generator().manual_seed(config.seed + 3)
    objective = OBJECTIVES[config.objective]
    total = config.epochs * config.steps_per_epoch
    rows, losses = [], []
    module.train()
    for step in range(1, total + 1):
        name = names[int(rng.integers(len(names)))] if p is None else names[int(rng.choice(len(names), p=p))]
        options = [g for g in groups if g.set_name == name]
        g = options[int(rng.integers(len(options)))]
        xs, ys = g.sampler.sample(rng, config.batch_size)
        if augment:
            xs = degrade(xs, rng)
        x = torch.from_numpy(xs).to(device).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(ys).to(device)
        with autocast():
            scores = module(x)[:, 0].float()
        prior = g.prior.prior
        slack = config.slack if config.slack is not None else objective.default_slack
        loss = objective.fn(scores[y == 1], _unlabeled_groups(scores[y == 0], config.unlabeled_samples, gen), prior,
                            slack)
        for group in opt.param_groups:
            group["lr"] = scheduled_lr(config.lr_schedule, config.learning_rate, step - 1, total)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise TrainingDiverged(f"training diverged at step {step}: lower --learning-rate")
        if step % config.steps_per_epoch == 0:
            rows.append({"epoch": step // config.steps_per_epoch, "loss": float(np.mean(losses)), "ap": math.nan,
                         "best_f1": math.nan, "seconds": time.perf_counter() - t0})
            log(f"epoch {rows[-1]['epoch']}/{config.epochs}: loss {rows[-1]['loss']:.4f}")
            losses = []
    if ema is not None:
        ema.swap()
    calib_rng = np.random.default_rng([config.seed, 4])
    calibration = []
    for i in range(max(config.calibration_batches, 2 * len(groups))):  # every (set, scale) in the statistics
        xs, _ = groups[i % len(groups)].sampler.sample(calib_rng, config.batch_size)
        calibration.append(torch.from_numpy(xs).to(device).contiguous(memory_format=torch.channels_last))
    _recalibrate_batchnorm(module, calibration, autocast)
    state = {k: v.detach().to("cpu", copy=True).float() if v.is_floating_point() else v.detach().to("cpu", copy=True)
             for k, v in module.state_dict().items()}
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise TrainingDiverged("training diverged (non-finite weights): lower --learning-rate")
    config_out = {
        **mcfg.to_dict(), "receptive_field": receptive_field(mcfg), "stride": native_stride(mcfg),
        "grid_diameter": float(grid_diameter), "score_offset": SCORE_OFFSET, "factor": None, "pixel_size": None, "diameter_px": None,
        "diameter_A": None, "normalize": config.preprocess.normalize, "label_radius": float(config.label_radius),
        "label_edge_margin": None, "pi": mean_pi, "pi_u": math.nan, "expected_particles": None,
        "objective": config.objective, "slack": float(config.slack if config.slack is not None
                                                      else objective.default_slack),
        "version": __version__, "best_epoch": int(config.epochs), "best_ap": None,
        "provenance": {"general": True, "sets": names, "scales": list(scales), "augment": augment,
                       "micrographs": [stem(p) for s in sets for p in s.micrographs],
                       "n_labels": int(sum(len(s.labels) for s in sets)),
                       "train_config": plain(config.to_dict())},
    }
    history = pd.DataFrame(rows, columns=["epoch", "loss", "ap", "best_f1", "seconds"])
    return TrainResult(state, config_out, history, int(config.epochs), math.nan, mean_pi, math.nan,
                       time.perf_counter() - t0)
