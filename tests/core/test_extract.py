"""Extraction: NMS equals greedy suppression; synthetic peaks round-trip to original pixels."""
from __future__ import annotations

import numpy as np
import pytest

from pupick.core.extract import extract_picks, find_peaks, non_max_suppression
from pupick.core.preprocess import downsample


def greedy_reference(rows, cols, scores, d):
    kept = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if all(np.hypot(rows[i] - rows[j], cols[i] - cols[j]) > d for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_nms_equals_greedy_reference(seed):
    rng = np.random.default_rng(seed)
    n = 300
    rows, cols = rng.integers(0, 80, n), rng.integers(0, 80, n)
    scores = rng.normal(size=n).round(1)  # rounding makes ties
    kept = non_max_suppression(rows, cols, scores, 6.5)
    assert kept.tolist() == greedy_reference(rows, cols, scores, 6.5)


def test_nms_long_chain_falls_back_correctly():
    # a chain whose scores fall along it needs one round per link; more links than the vectorised round cap
    n = 200
    rows, cols, scores = np.zeros(n), np.arange(n) * 1.0, -np.arange(n) * 1.0
    kept = non_max_suppression(rows, cols, scores, 1.0)
    assert kept.tolist() == list(range(0, n, 2))


def synthetic_micrograph(ny, nx, centres, sigma=6.0):
    """Gaussian blobs at sub-pixel centres (x, y), each drawn within 5 sigma of its centre."""
    img = np.zeros((ny, nx), np.float32)
    w = int(5 * sigma)
    for (x, y) in centres:
        y0, y1, x0, x1 = max(0, int(y) - w), min(ny, int(y) + w + 1), max(0, int(x) - w), min(nx, int(x) + w + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return img


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_synthetic_peaks_round_trip_on_non_square_micrograph(factor):
    rng = np.random.default_rng(1)
    ny, nx = 700, 1000  # 1000 wide, 700 tall
    # well-separated centres with sub-pixel positions
    grid = [(x, y) for x in range(80, 930, 120) for y in range(80, 640, 120)]
    centres = np.array(grid, float) + rng.uniform(-20, 20, (len(grid), 2))
    img = synthetic_micrograph(ny, nx, centres)
    score = downsample(img, factor)
    x, y, s = extract_picks(score, factor, min_distance_px=40, threshold=0.5)
    assert len(x) == len(centres)
    for cx, cy in centres:
        d = np.hypot(x - cx, y - cy)
        assert d.min() <= factor / 2 * np.sqrt(2) + 1e-6  # within half a downsampled pixel per axis
        j = int(np.argmin(d))
        assert abs(x[j] - cx) <= factor / 2 + 1e-6 and abs(y[j] - cy) <= factor / 2 + 1e-6
    assert np.all(np.diff(s) <= 0)  # best first
    assert np.all(x <= nx - 1) and np.all(y <= ny - 1)


def test_threshold_border_and_max_picks():
    img = synthetic_micrograph(300, 400, [(10, 150), (200, 150), (300, 100)])
    x, y, s = extract_picks(img, 1, min_distance_px=20, threshold=0.5)
    assert sorted(x.tolist()) == [10, 200, 300]
    x, _, _ = extract_picks(img, 1, min_distance_px=20, threshold=0.5, border_px=20)
    assert sorted(x.tolist()) == [200, 300]
    x, _, _ = extract_picks(img, 1, min_distance_px=20, threshold=0.5, max_picks=1)
    assert len(x) == 1
    x, _, _ = extract_picks(img, 1, min_distance_px=20, threshold=2.0)
    assert len(x) == 0 and x.dtype.kind == "f"


def test_min_distance_is_in_original_pixels():
    # two peaks 12 downsampled px apart at factor 2 = 24 original px
    img = synthetic_micrograph(100, 100, [(40, 50), (52, 50)], sigma=2)
    img[50, 52] -= 0.1
    x, _, _ = extract_picks(img, 2, min_distance_px=20, threshold=0.2)
    assert len(x) == 2
    x, _, _ = extract_picks(img, 2, min_distance_px=30, threshold=0.2)
    assert x.tolist() == [80.0]


def test_find_peaks_on_flat_map_is_bounded_by_threshold():
    rows, cols = find_peaks(np.zeros((20, 30), np.float32), threshold=1.0)
    assert len(rows) == 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("r", [1.0, 3.375, 5.0, 13.5])
def test_pairs_within_are_the_kd_tree_pairs(seed, r):
    from scipy.spatial import cKDTree

    from pupick.core.extract import pairs_within

    rng = np.random.default_rng(seed)
    pts = np.column_stack([rng.integers(-20, 200, 1500), rng.integers(0, 90, 1500)]).astype(float)
    if seed == 3:
        pts += rng.normal(scale=0.3, size=pts.shape)  # off the integer grid too
    a, b = pairs_within(pts[:, 0], pts[:, 1], r)
    got = {(min(i, j), max(i, j)) for i, j in zip(a.tolist(), b.tolist())}
    assert len(got) == len(a)  # each pair once
    assert got == {tuple(p) for p in cKDTree(pts).query_pairs(r, output_type="ndarray").tolist()}


def test_local_maxima_equal_scipy_maximum_filter():
    from scipy import ndimage

    from pupick.core.extract import local_maxima

    rng = np.random.default_rng(7)
    s = rng.normal(size=(97, 130)).astype(np.float32).round(1)  # rounding makes plateaus
    np.testing.assert_array_equal(local_maxima(s), s == ndimage.maximum_filter(s, size=3, mode="nearest"))
