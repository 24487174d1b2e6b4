"""Pictures for people: the precision-recall plot and picks drawn as circles on a micrograph (PNG, atomic)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from .io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_pr(result: Any, target: str | os.PathLike, title: str | None = None) -> None:
    """The PR curve of an EvalResult with its best-F1 point, as a PNG."""
    plt = _pyplot()
    curve = result.curve
    fig, ax = plt.subplots(figsize=(4.5, 4.2), dpi=110)
    if len(curve):
        ax.plot(np.r_[0.0, curve["recall"].to_numpy()], np.r_[1.0, curve["precision"].to_numpy()], lw=1.5,
                drawstyle="steps-pre", label=f"AP {result.ap:.3f}")
        if np.isfinite(result.precision):
            ax.plot([result.recall], [result.precision], "o", color="C3",
                    label=f"best F1 {result.best_f1:.3f} at {result.threshold:.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=title or f"{result.n_picks} picks, {result.n_labels} labels, {result.n_micrographs} micrograph(s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_overlay(image: np.ndarray, picks: pd.DataFrame, target: str | os.PathLike, radius: float,
                 labels: pd.DataFrame | None = None, title: str | None = None, max_side: int = 1024) -> None:
    """A micrograph (original pixels) with picks as circles (and labels as small crosses) as a PNG."""
    plt = _pyplot()
    img = np.asarray(image, dtype=np.float32)
    step = max(1, int(np.ceil(max(img.shape) / max_side)))
    from scipy.ndimage import gaussian_filter

    # a light low-pass (display only) so particles stand out of the shot noise
    shown = gaussian_filter(img, sigma=max(1.0, radius / 12))[::step, ::step]
    lo, hi = np.percentile(shown, [1, 99])
    h, w = img.shape
    fig, ax = plt.subplots(figsize=(8, 8 * h / w), dpi=max(60, int(min(max_side, max(h, w)) / 8)))
    ax.imshow(shown, cmap="gray", vmin=lo, vmax=hi, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    circles = [Circle((x, y), radius) for x, y in zip(picks["x"], picks["y"])]
    ax.add_collection(PatchCollection(circles, facecolor="none", edgecolor="#33dd55", linewidth=1.0))
    if labels is not None and len(labels):
        ax.plot(labels["x"], labels["y"], "+", color="#ff4444", ms=6, mew=1.2, label="labels")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
