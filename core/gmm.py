"""Two-component 1-D Gaussian mixture (shared variance, Beta prior on the ice weight), fitted by EM.

Used by `preprocess.normalize("gmm")`: the dominant component is the ice; carbon, grid bars and other large
dark or bright areas fall into the second component and stop pulling the normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BINS = 1024  # EM runs on a histogram of the subsample: exact up to bin width, and ~1000x cheaper than per pixel


@dataclass(frozen=True)
class MixtureFit:
    """Fitted parameters: component 0 is the dominant (ice) one after the fit."""

    means: tuple[float, float]
    std: float  # shared standard deviation
    weights: tuple[float, float]
    iterations: int

    @property
    def ice_mean(self) -> float:
        return self.means[0]

    def ice_probability(self, values: np.ndarray) -> np.ndarray:
        """Posterior probability that each value belongs to the ice component."""
        z0 = (values - self.means[0]) / self.std
        z1 = (values - self.means[1]) / self.std
        log0 = np.log(self.weights[0]) - 0.5 * z0 * z0
        log1 = np.log(max(self.weights[1], 1e-300)) - 0.5 * z1 * z1
        return 1.0 / (1.0 + np.exp(np.clip(log1 - log0, -60, 60)))


def fit_mixture(
    values: np.ndarray,
    seed: int = 0,
    samples: int = 200_000,
    prior_weight: float = 0.9,
    prior_strength: float = 0.1,
    max_iter: int = 200,
    tol: float = 1e-7,
) -> MixtureFit:
    """Fit the two-component shared-variance mixture to `values` (any shape) by MAP-EM on a seeded subsample.

    The ice weight w has a Beta(a, b) prior with pseudo-counts a - 1 = prior_weight * prior_strength * n and
    b - 1 = (1 - prior_weight) * prior_strength * n for a subsample of n pixels, so the M-step is
    w = (n_0 + a - 1) / (n + a + b - 2): the mixture prefers one dominant component, as micrographs are mostly ice.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    if flat.size > samples:
        flat = flat[rng.choice(flat.size, samples, replace=False)]
    n = float(flat.size)
    lo, hi = float(flat.min()), float(flat.max())
    if hi <= lo:
        return MixtureFit((lo, lo), 1.0, (1.0, 0.0), 0)
    counts, edges = np.histogram(flat, bins=N_BINS, range=(lo, hi))
    x = 0.5 * (edges[:-1] + edges[1:])
    c = counts.astype(np.float64)
    width = edges[1] - edges[0]

    # Initialise the ice at the histogram's peak with a robust width; the second component at the heavier tail.
    med = float(np.median(flat))
    mad = float(np.median(np.abs(flat - med))) * 1.4826 or float(flat.std()) or 1.0
    mode = float(x[np.argmax(np.convolve(c, np.ones(9) / 9, mode="same"))])
    far = np.abs(flat - mode) > 2.5 * mad
    mu = np.array([mode, float(flat[far].mean()) if far.sum() > 0.01 * n else mode + mad])
    var = mad**2
    w0 = prior_weight
    a1 = prior_weight * prior_strength * n
    b1 = (1.0 - prior_weight) * prior_strength * n
    prev = -np.inf
    it = 0
    for it in range(1, max_iter + 1):
        # E-step on bin centres, weighted by bin counts
        d0 = x - mu[0]
        d1 = x - mu[1]
        log0 = np.log(w0) - 0.5 * d0 * d0 / var
        log1 = np.log(max(1.0 - w0, 1e-300)) - 0.5 * d1 * d1 / var
        top = np.maximum(log0, log1)
        norm = top + np.log(np.exp(log0 - top) + np.exp(log1 - top))
        r0 = np.exp(log0 - norm)
        r1 = 1.0 - r0
        loglik = float(np.sum(c * norm)) - 0.5 * n * np.log(2 * np.pi * var)
        # M-step (MAP for the weight)
        n0 = float(np.sum(c * r0))
        n1 = n - n0
        if n0 > 0:
            mu[0] = float(np.sum(c * r0 * x)) / n0
        if n1 > 1e-9:
            mu[1] = float(np.sum(c * r1 * x)) / n1
        # Sheppard's correction removes the histogram's bin-width variance
        var = max(float(np.sum(c * (r0 * (x - mu[0]) ** 2 + r1 * (x - mu[1]) ** 2))) / n - width**2 / 12, width**2)
        w0 = min(max((n0 + a1) / (n + a1 + b1), 1e-6), 1.0 - 1e-12)
        if abs(loglik - prev) <= tol * abs(loglik):
            break
        prev = loglik
    means, weights = (float(mu[0]), float(mu[1])), (w0, 1.0 - w0)
    if weights[1] > weights[0]:  # the dominant component is the ice
        means, weights = means[::-1], weights[::-1]
    return MixtureFit(means, float(np.sqrt(var)), weights, it)
