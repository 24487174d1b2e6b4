"""Training-free blob picker: a scale-normalised Laplacian-of-Gaussian band-pass at the particle size.

`blob_score_map` turns a downsampled, normalised micrograph into a score map on the same grid (map[i, j] scores a
particle centred on pixel (row i, col j)), so the CNN path's NMS and coordinate mapping (`core.extract`) apply
unchanged. `ice_mask` flags carbon, grid bars and other areas far from the ice, with the same two-component mixture
that the GMM normalisation fits; `mask_scores` applies such a mask to any score map (CNN or blob) without leaving
junk peaks along the mask's edge.

Measured on the three shared sets (bench/blob_bootstrap.py, test micrographs, match radius half a diameter): AP
0.72 / 0.76 / 0.72 on empiar10017 / 10028 / 10059, against 0.57 / 0.77 / 0.51 for the difference-of-Gaussians
picker quoted in issue 3.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .extract import local_maxima
from .gmm import MixtureFit, fit_mixture


def _fft():
    import scipy.fft  # here: importing scipy costs a nothing-new rerun ~0.2 s, and it only needs names

    return scipy.fft


def _ndimage():
    import scipy.ndimage

    return scipy.ndimage

# Gaussian width as a fraction of the particle radius. A uniform disk of radius R peaks at R/sqrt(2); projected
# particles are denser in the middle and often touch their neighbours, so a narrower band works better: measured on
# the three shared sets (AP), 0.5 is within about 0.03 of the best per-set choice on each.
SIGMA_PER_RADIUS = 0.5
MASKED_SCORE = -1000.0  # score of masked pixels (edge margin, carbon): far below any threshold in use
_MAD_TO_STD = 1.4826
_STATS_SAMPLES = 262_144  # pixels subsampled for the robust centre/scale of the response


def _band_pass(image: np.ndarray, sigma: float, workers: int) -> np.ndarray:
    """sigma^2 * Laplacian of the Gaussian-smoothed image, via FFT on a reflect-padded copy."""
    pad = int(np.ceil(4 * sigma))
    pad = min(pad, image.shape[0] - 1, image.shape[1] - 1)
    # a little more padding after the image up to sizes the FFT factors well (1755 + 2 x 24 = 3 x 601 is 2x slower
    # than 1800); the pixels it adds are more of the same reflection, past the filter's reach
    fft = _fft()
    ny, nx = (fft.next_fast_len(n + 2 * pad, real=True) for n in image.shape)
    padded = np.pad(image, ((pad, ny - image.shape[0] - pad), (pad, nx - image.shape[1] - pad)), mode="reflect")
    fy2 = fft.fftfreq(ny).astype(np.float32)[:, None] ** 2
    fx2 = fft.rfftfreq(nx).astype(np.float32)[None, :] ** 2
    f2 = fy2 + fx2
    # Fourier transform of sigma^2 * Laplacian(G_sigma): -sigma^2 (2 pi f)^2 exp(-2 pi^2 sigma^2 f^2)
    transfer = (-(sigma**2) * 4 * np.pi**2) * f2 * np.exp((-2 * np.pi**2 * sigma**2) * f2)
    spec = fft.rfft2(padded, workers=workers)
    spec *= transfer
    out = fft.irfft2(spec, s=(ny, nx), workers=workers)
    out = out[pad:pad + image.shape[0], pad:pad + image.shape[1]]
    return np.ascontiguousarray(out, dtype=np.float32)


def _robust_stats(values: np.ndarray, margin: int, seed: int = 0) -> tuple[float, float]:
    """(median, 1.4826 MAD) of `values`, taken away from the edges on a fixed-seed subsample."""
    inner = values[margin:values.shape[0] - margin, margin:values.shape[1] - margin] if margin > 0 else values
    flat = (inner if inner.size else values).ravel()
    if flat.size > _STATS_SAMPLES:
        flat = flat[np.random.default_rng(seed).choice(flat.size, _STATS_SAMPLES, replace=False)]
    centre = float(np.median(flat))
    scale = float(np.median(np.abs(flat - centre))) * _MAD_TO_STD
    if not scale > 0:
        scale = float(flat.std()) or 1.0
    return centre, scale


def _robust_standardise(values: np.ndarray, margin: int, seed: int = 0) -> np.ndarray:
    """(values - median) / (1.4826 MAD), the statistics taken away from the edges on a fixed-seed subsample."""
    centre, scale = _robust_stats(values, margin, seed)
    return ((values - np.float32(centre)) / np.float32(scale)).astype(np.float32, copy=False)


def blob_score_map(
    image_ds: np.ndarray,
    diameter_ds: float,
    dark: bool = True,
    exclude_carbon: bool = False,
    edge_margin: float | None = None,
    workers: int = -1,
) -> np.ndarray:
    """Score map (float32, same shape as `image_ds`) of particle-sized blobs: higher = more particle-like.

    The response is the scale-normalised Laplacian of Gaussian at sigma = SIGMA_PER_RADIUS * radius, signed so that
    dark particles (the usual cryo-EM contrast) score high when `dark` (light ones otherwise), and standardised per
    micrograph by its median and MAD: a score of 3 is three robust standard deviations above the background, so
    scores read like logits (0 = background level; threshold or take the top N). Pixels closer than `edge_margin`
    (downsampled px; default one particle radius) to the image edge, where a particle would be cut off and the
    filter sees padding, and with `exclude_carbon` the pixels that `ice_mask` flags, get MASKED_SCORE.
    """
    image = np.asarray(image_ds, dtype=np.float32)
    if image.ndim != 2:
        raise InputError(f"blob picker needs a 2-D image, got shape {image.shape}")
    if not (np.isfinite(diameter_ds) and diameter_ds > 0):
        raise InputError(f"blob picker needs a positive particle diameter (got {diameter_ds} px)")
    if diameter_ds > min(image.shape):
        raise InputError(
            f"particle diameter {diameter_ds:g} px (after downsampling) exceeds the image ({image.shape[1]}x"
            f"{image.shape[0]} px)"
        )
    margin = int(np.ceil(diameter_ds / 2.0 if edge_margin is None else max(0.0, edge_margin)))
    margin = min(margin, (min(image.shape) - 1) // 2)
    score = _blob_z(image, diameter_ds, dark, margin, workers)
    keep = np.ones(score.shape, dtype=bool)
    if margin > 0:
        keep[:margin] = keep[-margin:] = False
        keep[:, :margin] = keep[:, -margin:] = False
    if exclude_carbon:
        keep &= ice_mask(image, diameter_ds)
    return mask_scores(score, keep)


def _blob_z(image: np.ndarray, diameter_ds: float, dark: bool, margin: int, workers: int) -> np.ndarray:
    """The band-pass response at the particle size as a robust z-score (statistics `margin` px from the edges)."""
    sigma = max(SIGMA_PER_RADIUS * diameter_ds / 2.0, 0.5)
    response = _band_pass(image, sigma, workers)
    # LoG is positive at a local minimum of intensity (a dark blob); light particles flip the sign
    return _robust_standardise(response if dark else -response, margin)


def add_blob_prior(score: np.ndarray, image_ds: np.ndarray, diameter_ds: float, weight: float, dark: bool = True,
                   workers: int = -1) -> np.ndarray:
    """`score` (a CNN map on the grid of `image_ds`) plus `weight` x the blob response, in the map's own units.

    Both are measured in robust standard deviations over the micrograph (median and MAD, one particle radius from
    the edges): the result is score + weight x MAD(score) x blob z, so weight 1 counts one robust s.d. of blob
    response as much as one of the CNN's score, and the CNN's logit scale (thresholds) is kept. Where a model has
    seen few kinds of particles (the general model, zero labels) this prior of a particle-sized blob adds what the
    model misses (BENCHMARKS.md, "The blob prior").
    """
    image = np.asarray(image_ds, dtype=np.float32)
    score = np.asarray(score, dtype=np.float32)
    if score.shape != image.shape:
        raise ValueError(f"score map {score.shape} and image {image.shape} differ")
    margin = min(int(np.ceil(diameter_ds / 2.0)), (min(image.shape) - 1) // 2)
    _, scale = _robust_stats(score, margin)
    return score + np.float32(weight * scale) * _blob_z(image, diameter_ds, dark, margin, workers)


def mask_scores(score: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Set score to MASKED_SCORE outside `keep`, without creating peaks at the mask's edge.

    Cutting a map leaves the pixels just inside the cut as local maxima wherever the score was still rising across
    it; NMS would pick them (junk picks at every edge and carbon boundary). Such pixels, which were no peak before
    the cut, are masked too, repeatedly, so the surviving 3x3 peaks are exactly the original peaks inside `keep`.
    The loop visits only pixels next to the masked area, never the whole map.
    """
    out = np.array(score, dtype=np.float32, copy=True)
    keep = np.asarray(keep, dtype=bool)
    if keep.all():
        return out
    was_peak = local_maxima(out)
    out[~keep] = MASKED_SCORE
    ny, nx = out.shape
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    band = _ndimage().binary_dilation(~keep, structure=np.ones((3, 3), bool)) & keep & ~was_peak
    ys, xs = np.nonzero(band)
    while ys.size:
        v = out[ys, xs]
        peak = np.ones(ys.size, dtype=bool)
        for dy, dx in offsets:
            peak &= v >= out[np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)]
        ys, xs = ys[peak], xs[peak]
        out[ys, xs] = MASKED_SCORE
        # their neighbours may now be new peaks in turn
        nys = np.clip(ys[:, None] + np.array([o[0] for o in offsets]), 0, ny - 1).ravel()
        nxs = np.clip(xs[:, None] + np.array([o[1] for o in offsets]), 0, nx - 1).ravel()
        flat = np.unique(nys * nx + nxs)
        ys, xs = flat // nx, flat % nx
        live = (out[ys, xs] > MASKED_SCORE) & ~was_peak[ys, xs]
        ys, xs = ys[live], xs[live]
    return out


def ice_mask(
    image_ds: np.ndarray,
    diameter_ds: float,
    fit: MixtureFit | None = None,
    window_diameters: float = 2.0,
    min_separation: float = 3.0,
    min_contrast: float = 0.75,
    seed: int = 0,
) -> np.ndarray:
    """Boolean mask, True on ice: False where the local mean intensity belongs to a component far from the ice.

    The micrograph is smoothed over `window_diameters` particle diameters (so single particles and noise do not
    count), then the same two-component mixture as the GMM normalisation is fitted to the smoothed values (or `fit`
    is used when given, fitted to such smoothed values). A pixel is off-ice where the non-ice component is the more
    likely one AND it lies more than `min_separation` standard deviations of the smoothed ice AND more than
    `min_contrast` from the ice mean, in the units of the normalised image (its per-pixel ice noise is 1): a slow
    ice-thickness gradient is bimodal after smoothing too, but its contrast stays well below carbon's. Flagged regions
    are grown by one particle radius, since picks at a carbon edge are junk too. Without such a region the mask is all
    True.
    """
    image = np.asarray(image_ds, dtype=np.float32)
    if not (np.isfinite(diameter_ds) and diameter_ds > 0):
        raise InputError(f"carbon mask needs a positive particle diameter (got {diameter_ds} px)")
    smooth = _ndimage().uniform_filter(image, size=max(3, int(round(window_diameters * diameter_ds))),
                                          mode="reflect")
    if fit is None:
        fit = fit_mixture(smooth, seed=seed)
    far = np.abs(smooth - np.float32(fit.ice_mean)) > max(min_separation * fit.std, min_contrast)
    other = fit.ice_probability(smooth) < 0.5
    off = far & other
    if not off.any():
        return np.ones(image.shape, dtype=bool)
    grow = max(1, int(round(diameter_ds / 2)))
    off = _ndimage().binary_dilation(off, structure=np.ones((3, 3), bool), iterations=grow)
    return ~off
