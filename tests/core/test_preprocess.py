"""Fourier-crop downsampling, the factor rule, and the normalisations on the bundled micrographs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pupick.core.config import PreprocessConfig, choose_factor
from pupick.core.errors import InputError
from pupick.core.io import read_micrograph
from pupick.core.preprocess import downsample, normalize, preprocess_micrograph

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo" / "micrographs"


def _band_limited(ny: int, nx: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    # a periodic image whose frequencies all lie below the Nyquist limit of a 4x downsampled grid
    return (np.cos(2 * np.pi * (3 * x / nx + 5 * y / ny)) + 0.5 * np.sin(2 * np.pi * 60 * x / nx)
            + 0.3 * np.cos(2 * np.pi * 40 * y / ny + 1.0))


@pytest.mark.parametrize("factor", [2, 4, 5])
def test_downsample_matches_band_limited_resample_on_non_square(factor):
    ny, nx = 700, 1000
    yy, xx = np.mgrid[0:ny, 0:nx]
    image = _band_limited(ny, nx, yy, xx).astype(np.float32)
    small = downsample(image, factor)
    assert small.shape == (ny // factor, nx // factor)
    if ny % factor == 0 and nx % factor == 0:
        # pixel 0 fixed, spacing = factor: sample the continuous image at x = i * factor
        ref = _band_limited(ny, nx, np.arange(small.shape[0])[:, None] * factor, np.arange(small.shape[1])[None, :] * factor)
        np.testing.assert_allclose(small, ref, atol=1e-4)


def _reference_resample(image: np.ndarray, factor: int) -> np.ndarray:
    """Band-limit to the new Nyquist frequency (inclusive) with a full 2-D FFT, then take every factor-th pixel."""
    ny, nx = image.shape
    ky = np.abs(np.fft.fftfreq(ny) * ny)[:, None]
    kx = np.abs(np.fft.fftfreq(nx) * nx)[None, :]
    keep = (ky <= (ny // factor) / 2) & (kx <= (nx // factor) / 2)
    filtered = np.fft.ifft2(np.fft.fft2(image.astype(np.float64)) * keep).real
    return filtered[::factor, ::factor]


@pytest.mark.parametrize("shape", [(1024, 1024), (700, 1000)])
def test_downsample_matches_reference_resample_on_real_data(shape):
    image = read_micrograph(DEMO / "061_10028.mrc").image[: shape[0], : shape[1]]
    ours = downsample(image, 4)
    ref = _reference_resample(image, 4)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-3 * float(np.abs(ref).max()))


def test_downsample_non_integer_factor_keeps_pixel_zero():
    ny, nx = 600, 900
    yy, xx = np.mgrid[0:ny, 0:nx]
    image = _band_limited(ny, nx, yy, xx).astype(np.float32)
    small = downsample(image, 1.5)
    assert small.shape == (400, 600)
    assert small[0, 0] == pytest.approx(image[0, 0], abs=1e-3)


def test_factor_one_is_identity_and_bad_factor_refused():
    image = np.random.default_rng(0).normal(size=(64, 80)).astype(np.float32)
    np.testing.assert_array_equal(downsample(image, 1), image)
    with pytest.raises(InputError):
        downsample(image, 0.5)


@pytest.mark.parametrize("diameter,expected", [(40, 1), (41, 2), (56, 2), (27, 1), (36, 1), (108, 3), (224, 6)])
def test_factor_rule(diameter, expected):
    assert choose_factor(diameter) == expected
    assert diameter / expected <= 40


def test_factor_from_angstrom_needs_a_pixel_size():
    cfg = PreprocessConfig(diameter_A=300.0)
    assert cfg.resolve_factor(5.36) == 2  # 300 Å / 5.36 Å/px = 56 px -> 2
    with pytest.raises(InputError, match="pixel size is unknown"):
        cfg.resolve_factor(None)
    assert PreprocessConfig(diameter_A=300.0, pixel_size=1.34).resolve_factor(None) == 6
    assert PreprocessConfig(factor=3, diameter_px=56).resolve_factor(None) == 3


@pytest.mark.parametrize("path", sorted(DEMO.glob("*.mrc")), ids=lambda p: p.stem)
def test_gmm_centres_the_ice_peak_on_bundled_micrographs(path):
    image = downsample(read_micrograph(path).image, 2)
    out = normalize(image, "gmm", seed=0)
    hist, edges = np.histogram(out, bins=200, range=(-5, 5))
    peak = 0.5 * (edges[np.argmax(hist)] + edges[np.argmax(hist) + 1])
    assert abs(peak) < 0.25  # the ice peak sits at 0 ...
    assert 0.7 < float(np.std(out[np.abs(out) < 4])) < 1.3  # ... with unit width


def test_gmm_is_not_washed_out_by_carbon_where_affine_is():
    image = read_micrograph(DEMO / "061_10028.mrc").image.copy()
    image[:, :400] = image[:, :400] * 0.7 - 30  # a dark carbon region over 40% of the micrograph
    ice = np.s_[:, 450:]
    gmm, affine = normalize(image, "gmm"), normalize(image, "affine")
    assert abs(float(gmm[ice].mean())) < 0.15 and 0.8 < float(gmm[ice].std()) < 1.3
    # affine normalisation shifts the ice off zero and squeezes its contrast (the particles)
    assert float(affine[ice].mean()) > 0.5 and float(affine[ice].std()) < 0.4


def test_gmm_is_deterministic_for_a_seed():
    image = read_micrograph(DEMO / "311_10028.mrc").image
    np.testing.assert_array_equal(normalize(image, "gmm", seed=3), normalize(image, "gmm", seed=3))


def test_unknown_normalisation():
    with pytest.raises(InputError, match="unknown normalisation"):
        normalize(np.ones((4, 4)), "zscore")


def test_preprocess_micrograph_reports_factor_and_pixel_size():
    mic = read_micrograph(DEMO / "061_10028.mrc")
    pre = preprocess_micrograph(mic, PreprocessConfig(diameter_A=300, pixel_size=5.36))
    assert pre.factor == 2 and pre.image.shape == (512, 512) and pre.pixel_size == pytest.approx(10.72)
    assert pre.source_shape == (1024, 1024)
