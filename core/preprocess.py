"""Fourier-crop downsampling and per-micrograph normalisation (no torch)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

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


@dataclass
class BatchResult:
    """What a batch run did: written, skipped (already there), failed (path, reason), factor per micrograph."""

    written: list[str]
    skipped: list[str]
    failures: list[tuple[str, str]]
    factors: dict[str, float]


def _manifest_settings(config: PreprocessConfig) -> dict:
    return {"factor": config.factor, "diameter_A": config.diameter_A, "diameter_px": config.diameter_px,
            "pixel_size": config.pixel_size, "normalize": config.normalize, "seed": config.seed}


def preprocess_to_dir(
    paths: list, out_dir, config: PreprocessConfig, workers: int = 1, overwrite: bool = False, progress: bool = True
) -> BatchResult:
    """Preprocess micrographs into OUT_DIR/<stem>.mrc (float32, downsampled pixel size in the header).

    Existing outputs are skipped unless `overwrite`; a manifest records the settings and each factor, and a rerun with
    different settings is refused unless `overwrite`. Failures are collected, not raised, so one bad file does not
    stop the batch. Threads, not processes: the FFTs and file reads release the GIL and memory stays shared.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import pandas as pd
    from tqdm import tqdm

    from .io import Protected, check_output, check_output_dir, read_micrograph, write_mrc
    from .outputs import OutputDir
    from .tables import duplicate_stems, stem

    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    stems = [stem(p) for p in paths]
    dupes = duplicate_stems(stems)
    if dupes:
        raise InputError(f"two input micrographs share the name {dupes[0]!r}; outputs would collide")
    inputs = Protected(paths)
    check_output(out_dir / "pupick_preprocess.json", "text", inputs)
    for name in stems:  # never over an input (e.g. OUT_DIR is where the micrographs are), nor another kind of file
        check_output(out_dir / f"{name}.mrc", "mrc", inputs, probe=False)

    fft_workers = max(1, (os.cpu_count() or 1) // max(1, workers))
    result = BatchResult([], [], [], {})
    with OutputDir(out_dir, "preprocess", _manifest_settings(config), overwrite=overwrite) as out:
        entries: dict = dict(out.manifest.get("micrographs", {}))

        def one(path: Path) -> tuple[str, str, float | None, str | None]:
            name = stem(path)
            target = out.path / f"{name}.mrc"
            if out.is_done(name, [target]):
                return name, "skipped", entries.get(name, {}).get("factor"), None
            try:
                mic = read_micrograph(path)
                factor = config.resolve_factor(mic.pixel_size)
                small = downsample(mic.image, factor, workers=fft_workers)
                image = normalize(small, config.normalize, config.seed, config.gmm_samples)
                ps = config.pixel_size or mic.pixel_size
                write_mrc(target, image, ps * factor if ps else None)
                entry = {"source": str(path), "factor": factor, "pixel_size": ps,
                         "shape": [int(mic.image.shape[0]), int(mic.image.shape[1])]}
                entries[name] = entry
                out.record(name, pd.DataFrame([{**entry, "shape": None, "ny": entry["shape"][0],
                                                "nx": entry["shape"][1]}]), [target])
                return name, "written", factor, None
            except InputError as err:
                out.fail(name, str(err))
                return name, "failed", None, str(err)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            bar = tqdm(total=len(paths), unit="mic", desc="preprocess", disable=not progress or None)
            for name, status, factor, error in pool.map(one, [Path(p) for p in paths]):
                bar.update()
                if status == "failed":
                    result.failures.append((name, error or "failed"))
                else:
                    getattr(result, status).append(name)
                    if factor is not None:
                        result.factors[name] = factor
            bar.close()
        out.manifest["micrographs"] = {k: v for k, v in entries.items() if k in set(out.finished())}
        out.save_manifest()
    return result
