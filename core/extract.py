"""Score map -> picks: peak finding by max filtering, greedy suppression over the peaks, original-pixel coordinates.

numpy only (no scipy): `pupick pick` imports this module at start-up, and scipy.ndimage + scipy.spatial cost ~0.1 s.
"""
from __future__ import annotations

import numpy as np

_MAX_PARALLEL_ROUNDS = 64  # after this many vectorised rounds, finish the (rare) long chains one by one


def local_maxima(score_map: np.ndarray) -> np.ndarray:
    """Mask of the 3x3 local maxima (plateaus give several; NaN never is one, nor is a NaN's neighbour): the peaks
    every picker extracts. The edge pixels are repeated outwards (scipy's maximum_filter mode 'nearest')."""
    p = np.pad(score_map, 1, mode="edge")
    rows = np.maximum(np.maximum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
    return score_map == np.maximum(np.maximum(rows[:-2], rows[1:-1]), rows[2:])


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
    a, b = pairs_within(np.asarray(rows, dtype=float), np.asarray(cols, dtype=float), float(min_distance))
    if len(a) == 0:
        return order
    # orient each pair (better, worse)
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


def pairs_within(rows: np.ndarray, cols: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i != j, each unordered pair once, of the points no farther apart than r (r > 0).

    A grid of r-sized cells: a pair within r lies in one cell or two adjacent ones, so each point meets the points
    of its own cell (later ones only) and of four of its neighbours; work is proportional to the candidate pairs.
    """
    n = len(rows)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cy = np.floor((rows - rows.min()) / r).astype(np.int64)
    cx = np.floor((cols - cols.min()) / r).astype(np.int64) + 1  # a free column on each side
    width = int(cx.max()) + 2
    key = cy * width + cx
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    r2 = r * r
    firsts, seconds = [], []
    for dy, dx in ((0, 0), (0, 1), (1, -1), (1, 0), (1, 1)):
        target = key + (dy * width + dx)
        lo = np.searchsorted(sorted_key, target, "left")
        counts = np.searchsorted(sorted_key, target, "right") - lo
        total = int(counts.sum())
        if total == 0:
            continue
        i = np.repeat(np.arange(n), counts)
        ends = np.cumsum(counts)
        j = order[np.repeat(lo, counts) + np.arange(total) - np.repeat(ends - counts, counts)]
        keep = (rows[i] - rows[j]) ** 2 + (cols[i] - cols[j]) ** 2 <= r2
        if dy == 0 and dx == 0:
            keep &= i < j
        firsts.append(i[keep])
        seconds.append(j[keep])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


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
