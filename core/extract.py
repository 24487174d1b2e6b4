"""Score map -> picks: peak finding by max filtering, greedy suppression over the peaks, original-pixel coordinates."""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

_MAX_PARALLEL_ROUNDS = 64  # after this many vectorised rounds, finish the (rare) long chains one by one


def local_maxima(score_map: np.ndarray) -> np.ndarray:
    """Mask of the 3x3 local maxima (plateaus give several; NaN never is one): the peaks every picker extracts."""
    return score_map == ndimage.maximum_filter(score_map, size=3, mode="nearest")


def find_peaks(score_map: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the 3x3 local maxima with score >= threshold (plateaus give several)."""
    s = np.asarray(score_map, dtype=np.float32)
    return np.nonzero(local_maxima(s) & (s >= threshold))


def non_max_suppression(
    rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, min_distance: float
) -> np.ndarray:
    """Greedy NMS over candidate points: indices kept, best first; no two kept within `min_distance` (same units).

    Equivalent to visiting candidates by decreasing score (ties: input order) and keeping each one that has no kept
    candidate within `min_distance`; done in vectorised rounds (a candidate is decided once every better neighbour
    is), so the work is proportional to the candidates and their neighbour pairs.
    """
    n = len(scores)
    order = np.lexsort((np.arange(n), -np.asarray(scores, dtype=float)))
    if n == 0 or min_distance <= 0:
        return order
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    pts = np.column_stack([rows, cols]).astype(float)
    pairs = cKDTree(pts).query_pairs(min_distance, output_type="ndarray")
    if len(pairs) == 0:
        return order
    # orient each pair (better, worse)
    a, b = pairs[:, 0], pairs[:, 1]
    swap = rank[a] > rank[b]
    better, worse = np.where(swap, b, a), np.where(swap, a, b)
    state = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 kept, -1 suppressed
    for _ in range(_MAX_PARALLEL_ROUNDS):
        undecided = state == 0
        if not undecided.any():
            break
        # a candidate waits while any better neighbour is still undecided
        waiting = np.zeros(n, dtype=bool)
        waiting[worse[undecided[better]]] = True
        decide = undecided & ~waiting
        state[decide] = 1
        # every undecided neighbour of a newly kept candidate is suppressed
        newly = state[better] == 1
        hit = worse[newly & decide[better]]
        state[hit[state[hit] == 0]] = -1
    if (state == 0).any():
        _finish_serially(state, order, better, worse, n)
    kept = state[order] == 1
    return order[kept]


def _finish_serially(state: np.ndarray, order: np.ndarray, better: np.ndarray, worse: np.ndarray, n: int) -> None:
    """Decide the remaining candidates one by one in score order (a loop over candidates, not pixels)."""
    nb_order = np.argsort(worse, kind="stable")
    starts = np.searchsorted(worse[nb_order], np.arange(n + 1))
    for i in order:
        if state[i] != 0:
            continue
        above = better[nb_order[starts[i]:starts[i + 1]]]
        state[i] = -1 if (state[above] == 1).any() else 1


def default_border_px(diameter_px: float | None, edge_margin: float | None = None) -> float:
    """Picking's default border (original px): the particle radius, or the model's learned label edge margin (in
    diameters) when that is wider; 0 without a diameter."""
    if not diameter_px:
        return 0.0
    return float(diameter_px) * max(0.5, edge_margin or 0.0)


def extract_picks(
    score_map: np.ndarray,
    factor: float,
    min_distance_px: float,
    threshold: float,
    border_px: float = 0,
    max_picks: int | None = None,
    original_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Picks (x, y, score) in ORIGINAL pixels from a score map on the downsampled grid, best first.

    Peaks are 3x3 local maxima at or above `threshold`; greedy suppression keeps no two closer than
    `min_distance_px` (original pixels); picks closer than `border_px` to an edge of the original micrograph
    (shape `original_shape`, default the map's shape times the factor) are dropped; at most `max_picks` are kept.
    x_original = column * factor, y_original = row * factor.
    """
    s = np.asarray(score_map, dtype=np.float32)
    rows, cols = find_peaks(s, threshold)
    if border_px > 0:
        ny, nx = original_shape if original_shape is not None else (s.shape[0] * factor, s.shape[1] * factor)
        y, x = rows * factor, cols * factor
        inside = (x >= border_px) & (y >= border_px) & (x <= nx - 1 - border_px) & (y <= ny - 1 - border_px)
        rows, cols = rows[inside], cols[inside]
    scores = s[rows, cols]
    keep = non_max_suppression(rows, cols, scores, float(min_distance_px) / float(factor))
    if max_picks is not None:
        keep = keep[: max(0, int(max_picks))]
    return cols[keep] * float(factor), rows[keep] * float(factor), scores[keep].astype(np.float64)
