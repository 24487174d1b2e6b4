"""Fourier-crop downsampling and per-micrograph normalisation (no torch)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import PreprocessConfig, choose_factor  # noqa: F401  (choose_factor re-exported for callers)
from .errors import InputError
from .gmm import MixtureFit, fit_mixture
from .io import Micrograph

NORMALIZE_METHODS = ("gmm", "affine", "none")


@dataclass
class Preprocessed:
    """A micrograph ready for the network: downsampled, normalised, float32."""

    image: np.ndarray
    factor: float  # x_original = x_downsampled * factor
    pixel_size: float | None  # Å per DOWNSAMPLED pixel (None if unknown)
    source_shape: tuple[int, int]  # (ny, nx) of the original micrograph
    mixture: MixtureFit | None = None  # the GMM fit, when normalize == "gmm"


def downsampled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """(my, mx) = floor(n / factor) per axis."""
    return int(shape[0] // factor), int(shape[1] // factor)


def _crop_axis(spectrum: np.ndarray, m: int, axis: int) -> np.ndarray:
    """Keep the m lowest frequencies (FFT order: 0..ceil(m/2)-1 then the m//2 most negative) along `axis`."""
    n = spectrum.shape[axis]
    head = (m + 1) // 2
    tail = m // 2
    index = np.r_[0:head, n - tail:n] if tail else np.arange(head)
    return np.take(spectrum, index, axis=axis)


def downsample(image: np.ndarray, factor: float, workers: int = -1) -> np.ndarray:
    """Downsample by Fourier cropping; pixel 0 stays fixed, so x_original = x_downsampled * factor.

    The output has floor(n / factor) pixels per axis. The input is first trimmed to round(m * factor) pixels
    per axis (at most factor - 1 edge pixels for integer factors) so the sample spacing is exactly `factor`.
    Mean intensity is preserved.
    """
    if not factor >= 1:
        raise InputError(f"downsampling factor must be >= 1 (got {factor})")
    image = np.asarray(image, dtype=np.float32)
    if factor == 1:
        return image.copy()
    my, mx = downsampled_shape(image.shape, factor)
    if my < 1 or mx < 1:
        raise InputError(f"image of shape {image.shape} is too small for factor {factor}")
    ny, nx = min(image.shape[0], round(my * factor)), min(image.shape[1], round(mx * factor))
    trimmed = image[:ny, :nx]
    # Transform columns first and crop before the row transform: the row FFT then runs on 1/factor of the data.
    import scipy.fft  # here: a nothing-new rerun imports this module, not scipy

    spec = scipy.fft.rfft(trimmed, axis=1, workers=workers)[:, : mx // 2 + 1]
    spec = scipy.fft.fft(spec, axis=0, workers=workers, overwrite_x=True)
    # An even output size has one Nyquist bin per axis; sampling the band-limited image puts both the +m/2 and the
    # -m/2 component of the input into it, so it holds their sum (the -m/2 column is implied by Hermitian symmetry).
    if mx % 2 == 0 and nx > mx:
        col = spec[:, -1]
        spec[:, -1] = col + np.conj(col[(-np.arange(ny)) % ny])
    if my % 2 == 0 and ny > my:
        spec[ny - my // 2] += spec[my // 2]
    spec = _crop_axis(spec, my, axis=0)
    out = scipy.fft.irfft2(spec, s=(my, mx), workers=workers)
    out *= (my * mx) / (ny * nx)
    return out.astype(np.float32, copy=False)


def normalize(image: np.ndarray, method: str = "gmm", seed: int = 0, samples: int = 200_000) -> np.ndarray:
    """Normalise a micrograph: 'gmm' centres on the ice component and divides by its std; 'affine' by mean/std."""
    return normalize_with_fit(image, method, seed, samples)[0]


def normalize_with_fit(
    image: np.ndarray, method: str = "gmm", seed: int = 0, samples: int = 200_000
) -> tuple[np.ndarray, MixtureFit | None]:
    """As `normalize`, also returning the mixture fit (None unless method is 'gmm')."""
    image = np.asarray(image, dtype=np.float32)
    if method == "none":
        return image, None
    if method == "affine":
        std = float(image.std())
        return ((image - float(image.mean())) / (std if std > 0 else 1.0)).astype(np.float32), None
    if method == "gmm":
        fit = fit_mixture(image, seed=seed, samples=samples)
        return ((image - np.float32(fit.ice_mean)) / np.float32(fit.std)).astype(np.float32), fit
    raise InputError(f"unknown normalisation {method!r} (choose from {', '.join(NORMALIZE_METHODS)})")


def preprocess_micrograph(mic: Micrograph, config: PreprocessConfig, fft_workers: int = -1) -> Preprocessed:
    """Downsample (factor from the config, the diameter rule, or 1) and normalise one micrograph."""
    header_ps = mic.pixel_size
    factor = config.resolve_factor(header_ps)
    ps = config.pixel_size or header_ps
    small = downsample(mic.image, factor, workers=fft_workers)
    if min(small.shape) < 8:
        raise InputError(f"{mic.path}: too small after downsampling by {factor:g} ({small.shape[1]}x{small.shape[0]} px)")
    image, fit = normalize_with_fit(small, config.normalize, config.seed, config.gmm_samples)
    return Preprocessed(image, factor, ps * factor if ps else None, tuple(mic.image.shape), fit)


MANIFEST = "pupick_preprocess.json"
