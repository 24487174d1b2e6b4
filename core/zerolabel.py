"""Zero-label picking with the general model plus one bootstrap round (issue 19 §3).

The general model, set to the particle size, picks a few micrographs spread evenly over the input; its confident
picks there become the labels of a short fine-tune from the general model itself (`train` with `init`), and that
model picks everything. The micrographs it adapts on are a small fixed number, so the extra cost does not grow with
the data set. Opt-in (`PickConfig.bootstrap`, `pupick pick --bootstrap`): it gained up to 0.02 AP where the general
model separates particles clearly and lost up to 0.11 on crowded or low-contrast sets (BENCHMARKS.md, issue 19 §3).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .config import DEFAULT_THRESHOLD, TrainConfig
from .errors import InputError
from .picking import pick
from .pipeline import MicrographItem, micrograph_items

BOOTSTRAP_MODEL = "general_bootstrap.pt"  # the adapted model, kept in a pick directory


@dataclass(frozen=True)
class BootstrapConfig:
    """How the one bootstrap round runs: how many micrographs it adapts on, the label rule and the fine-tune."""

    micrographs: int = 8  # adapt on at most this many micrographs (evenly spread over the input, in its order)
    label_share: float = 0.5  # the labels: this top share of the picks above the split score (see `bootstrap_labels`)
    min_labels: int = 20  # fewer confident picks than this: keep the general model as it is
    epochs: int = 6
    steps_per_epoch: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("micrographs", "min_labels", "epochs", "steps_per_epoch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"bootstrap {name} must be a whole number >= 1 (got {value!r})")
        if not (isinstance(self.label_share, (int, float)) and 0 < self.label_share <= 1):
            raise InputError(f"bootstrap label_share must be in (0, 1] (got {self.label_share!r})")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"bootstrap seed must be a whole number >= 0 (got {self.seed!r})")


def spread_subset(items: Sequence[Any], n: int) -> list[Any]:
    """At most n items, evenly spaced over the sequence (first and last included), in order."""
    if len(items) <= n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def split_score(scores: np.ndarray) -> float:
    """Otsu's threshold of the pick scores: the score that best separates them into two groups."""
    s = np.sort(np.asarray(scores, dtype=float))
    if len(s) < 2 or s[0] == s[-1]:
        return float(s[0]) if len(s) else math.nan
    csum = np.cumsum(s)
    n = len(s)
    k = np.arange(1, n)  # the first k scores form the low group
    mean_lo = csum[:-1] / k
    mean_hi = (csum[-1] - csum[:-1]) / (n - k)
    between = k * (n - k) * (mean_hi - mean_lo) ** 2
    between[s[1:] == s[:-1]] = -1  # split only between distinct values
    i = int(np.argmax(between))
    return float((s[i] + s[i + 1]) / 2)


def bootstrap_labels(picks: pd.DataFrame, n_micrographs: int, label_share: float) -> tuple[pd.DataFrame, float]:
    """(labels, expected particles per micrograph) from the general model's picks.

    The picks above the split score (`split_score`) count as particles (the expected number per micrograph); the
    top `label_share` of those are the labels, so the labels are the cleaner end.
    """
    if picks.empty:
        return picks[["micrograph", "x", "y"]].copy(), 0.0
    scores = picks["score"].to_numpy(dtype=float)
    above = picks[scores >= split_score(scores)]
    expected = len(above) / max(1, n_micrographs)
    n_labels = int(math.ceil(label_share * len(above)))
    labels = above.sort_values("score", ascending=False, kind="stable").head(n_labels)
    return labels[["micrograph", "x", "y"]].reset_index(drop=True), expected


def bootstrap_general(micrographs: Sequence[Any], model: Any, config: Any, boot: BootstrapConfig = BootstrapConfig(),
                      *, log: Callable[[str], None] | None = None) -> Any:
    """The general model (set to the particle size) after one bootstrap round on a subset of `micrographs`.

    Returns a LoadedModel tied to this particle size (its provenance names the general model and the round's
    settings); the general model unchanged when too few confident picks. Deterministic for a seed on one device.
    """
    from .train import train  # torch: here, since `pupick pick --server` imports this module (cli/pick.py)

    log = log or (lambda m: None)
    if not is_general_for_size(model):
        raise InputError("the bootstrap round needs the general model set to the particle size (for_particle)")
    if model.path is None:
        raise InputError("the bootstrap round fine-tunes from the general model's file; this model has none")
    items = list(micrographs) if _are_items(micrographs) else micrograph_items(micrographs)
    subset = spread_subset(items, boot.micrographs)
    first = pick(subset, model, config.replace(threshold=DEFAULT_THRESHOLD), log=lambda m: None)
    labels, expected = bootstrap_labels(first.picks, len(subset), boot.label_share)
    if len(labels) < boot.min_labels:
        log(f"bootstrap round skipped: {len(labels)} confident picks on {len(subset)} micrograph(s) (need "
            f"{boot.min_labels}); picking with the general model alone")
        return model
    diameter = float(model.config["diameter_px"])
    train_cfg = TrainConfig(
        preprocess=dataclasses.replace(config.preprocess, factor=None, diameter_px=diameter, diameter_A=None),
        init=str(model.path), expected_particles=max(expected, len(labels) / len(subset)), epochs=boot.epochs,
        steps_per_epoch=boot.steps_per_epoch, seed=boot.seed, device=config.score.device,
        precision=config.score.precision)
    log(f"bootstrap round: {len(labels)} labels from the general model's picks on {len(subset)} micrograph(s) "
        f"({expected:.0f} particles per micrograph expected); fine-tuning {boot.epochs} x {boot.steps_per_epoch} steps")
    result = train([it.path for it in subset], labels, train_cfg, log=lambda m: None)
    device = next(model.module.parameters()).device
    adapted = result.load(device)
    # The round changes the ranking, not how many candidates the default threshold keeps: a fine-tune on too few
    # labels (a low π) would push true particles below it. Lift the scores so that the adapted model keeps at least
    # as many picks on the subset as the general model did (never lowered).
    again = pick(subset, adapted, config.replace(threshold=-1e9), log=lambda m: None).picks
    lift = 0.0
    if len(first.picks) and len(again) >= len(first.picks):
        kth = float(np.sort(again["score"].to_numpy(dtype=float))[::-1][len(first.picks) - 1])
        lift = max(0.0, DEFAULT_THRESHOLD - kth + 1e-3)
    if lift:
        result.state_dict["classifier.bias"] = result.state_dict["classifier.bias"] + lift
        adapted = result.load(device)
    result.config["score_lift"] = lift
    result.config["provenance"] = {**result.config.get("provenance", {}),
                                   "bootstrap": round_key(model, boot), "bootstrap_micrographs": [
                                       it.micrograph for it in subset]}
    log(f"bootstrap round: fine-tuned in {result.seconds:.1f} s" + (f"; scores lifted by {lift:.2f}" if lift else ""))
    return result.load(device)


def is_general_for_size(model: Any) -> bool:
    """True for the general model set to a particle size (`modelfile.for_particle`), not yet adapted."""
    cfg = getattr(model, "config", None) or {}
    return bool(cfg.get("grid_diameter")) and bool(cfg.get("diameter_px"))


def adapts(model: Any, config: Any) -> bool:
    """True when picking with this model and config starts with the bootstrap round (`PickConfig.bootstrap`)."""
    return config.method == "cnn" and bool(getattr(config, "bootstrap", False)) and is_general_for_size(model)


def round_key(model: Any, boot: BootstrapConfig) -> dict[str, Any]:
    """What decides the round's result besides the micrographs: the general model, the diameter, the settings."""
    return {"general_sha256": model.sha256, "diameter_px": float(model.config["diameter_px"]),
            **dataclasses.asdict(boot)}


def round_settings(model: Any, config: Any) -> dict[str, Any]:
    """The round's settings for a pick directory's manifest ({} when there is no round)."""
    return {"bootstrap": dataclasses.asdict(BootstrapConfig(seed=config.seed))} if adapts(model, config) else {}


def prepare(model: Any, config: Any, micrographs: Sequence[Any], out_dir: Any = None, *, overwrite: bool = False,
            log: Callable[[str], None] | None = None) -> Any:
    """The model to pick with: after the bootstrap round when `adapts(model, config)`, else `model` itself.

    With `out_dir`, the adapted model is kept there as BOOTSTRAP_MODEL and reused by later runs into that directory
    (a resumed or continued job picks new micrographs with the same model) unless `overwrite`.
    """
    from pathlib import Path

    from .modelfile import load_model, model_state, save_state  # torch: as in bootstrap_general

    if not adapts(model, config):
        return model
    log = log or (lambda m: None)
    boot = BootstrapConfig(seed=config.seed)
    kept = Path(out_dir) / BOOTSTRAP_MODEL if out_dir is not None else None
    if kept is not None and kept.is_file() and not overwrite:
        try:
            earlier = load_model(kept, device=next(model.module.parameters()).device)
        except Exception:  # noqa: BLE001 - a damaged file of ours is redone
            earlier = None
        if earlier is not None and earlier.config.get("provenance", {}).get("bootstrap") == round_key(model, boot):
            log(f"bootstrap round: reusing {kept}")
            return earlier
    adapted = bootstrap_general(micrographs, model, config, boot, log=log)
    if kept is not None and adapted is not model:
        save_state(kept, model_state(adapted), adapted.config)
    return adapted


def _are_items(micrographs: Sequence[Any]) -> bool:
    return bool(micrographs) and all(isinstance(m, MicrographItem) for m in micrographs)
