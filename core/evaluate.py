"""Precision-recall evaluation of picks against labels: one-to-one matching within a radius, AP and best F1."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .errors import InputError
from .tables import stem, validate_picks

def default_match_radius(diameter_px: float | None) -> float | None:
    """The match radius when none is given: half the particle diameter (original pixels), the one rule."""
    return float(diameter_px) / 2 if diameter_px else None


CURVE_COLUMNS = ["threshold", "precision", "recall", "f1"]
PER_MIC_COLUMNS = ["micrograph", "n_labels", "n_picks", "n_matched", "n_picks_at_threshold", "n_matched_at_threshold"]


@dataclass
class EvalResult:
    """AP, the best-F1 operating point and the full curve of one evaluation."""

    ap: float
    best_f1: float
    precision: float  # at the best-F1 threshold
    recall: float  # at the best-F1 threshold
    threshold: float  # score at which F1 is best (keep picks with score >= threshold)
    n_picks: int  # picks on the evaluated micrographs
    n_labels: int
    n_micrographs: int
    curve: pd.DataFrame = field(repr=False)  # threshold, precision, recall, f1 at each distinct score
    per_micrograph: pd.DataFrame = field(repr=False)
    n_picks_ignored: int = 0  # picks on micrographs outside the evaluated set

    def to_json_dict(self) -> dict[str, Any]:
        """The summary numbers as builtin types (NaN becomes None)."""
        out: dict[str, Any] = {}
        for key in ("ap", "best_f1", "precision", "recall", "threshold"):
            v = float(getattr(self, key))
            out[key] = v if math.isfinite(v) else None
        for key in ("n_picks", "n_labels", "n_micrographs", "n_picks_ignored"):
            out[key] = int(getattr(self, key))
        return out


def match_one(px: np.ndarray, py: np.ndarray, lx: np.ndarray, ly: np.ndarray, radius: float) -> np.ndarray:
    """Maximum one-to-one matching of picks to labels within `radius` (least total distance among maximum ones).

    Returns a boolean array over the picks: True where the pick is matched to a label.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial import cKDTree

    matched = np.zeros(len(px), dtype=bool)
    ok_p = np.isfinite(px) & np.isfinite(py)
    ok_l = np.isfinite(lx) & np.isfinite(ly)
    if not ok_p.any() or not ok_l.any():
        return matched
    pidx = np.flatnonzero(ok_p)
    lab = np.column_stack([lx[ok_l], ly[ok_l]])
    pts = np.column_stack([px[pidx], py[pidx]])
    hits = cKDTree(lab).query_ball_point(pts, radius)
    lens = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
    if lens.sum() == 0:
        return matched
    pr = np.repeat(np.arange(len(pts)), lens)
    lc = np.concatenate([np.asarray(h, dtype=np.int64) for h in hits if h])
    dist = np.hypot(pts[pr, 0] - lab[lc, 0], pts[pr, 1] - lab[lc, 1])
    # only picks and labels with a partner in range take part; the rest cannot match
    rows, rinv = np.unique(pr, return_inverse=True)
    cols, cinv = np.unique(lc, return_inverse=True)
    # any forbidden pair costs more than every allowed pairing together, so cardinality comes first
    forbidden = radius * (min(len(rows), len(cols)) + 1) + 1.0
    cost = np.full((len(rows), len(cols)), forbidden)
    cost[rinv, cinv] = dist
    allowed = np.zeros(cost.shape, dtype=bool)
    allowed[rinv, cinv] = True
    r_, c_ = linear_sum_assignment(cost)
    good = allowed[r_, c_]
    matched[pidx[rows[r_[good]]]] = True
    return matched


def _keys(names: Iterable[str]) -> list[str]:
    return [stem(str(n)) for n in names]


def _key_series(names: pd.Series) -> pd.Series:
    """Stems of a name column, computed once per distinct name (tables hold millions of rows, few names)."""
    lookup = {n: stem(str(n)) for n in names.unique()}
    return names.map(lookup).astype(object)


def evaluate(
    picks: pd.DataFrame,
    labels: pd.DataFrame,
    match_radius: float,
    micrographs: list[str] | None = None,
) -> EvalResult:
    """Evaluate picks against labels: per-micrograph Hungarian matching within `match_radius`, then a threshold sweep.

    The evaluated micrographs are `micrographs` (names or paths, matched by stem) when given, else every micrograph
    that has labels; picks elsewhere are ignored (counted in n_picks_ignored). Labels on an evaluated micrograph without
    picks count as misses. AP = sum over distinct score thresholds of (recall gain x precision there), which equals
    sum_k precision@k * [pick k matched] / n_labels when scores are distinct.
    """
    if not (match_radius is not None and math.isfinite(match_radius) and match_radius > 0):
        raise InputError(f"match radius must be a positive number of pixels (got {match_radius})")
    picks = validate_picks(picks, "picks")
    labels = validate_picks(labels, "labels")
    pkeys = _key_series(picks["micrograph"])
    lkeys = _key_series(labels["micrograph"])
    if micrographs is not None:
        evaluated = list(dict.fromkeys(_keys(micrographs)))
    else:
        evaluated = list(dict.fromkeys(lkeys))
    eval_set = set(evaluated)
    labels = labels[lkeys.isin(eval_set).to_numpy()]
    lkeys = lkeys[lkeys.isin(eval_set)]
    keep = pkeys.isin(eval_set).to_numpy()
    n_ignored = int((~keep).sum())
    picks = picks[keep]
    pkeys = pkeys[keep]

    scores = picks["score"].to_numpy(dtype=float)
    matched = np.zeros(len(picks), dtype=bool)
    px, py = picks["x"].to_numpy(dtype=float), picks["y"].to_numpy(dtype=float)
    lx, ly = labels["x"].to_numpy(dtype=float), labels["y"].to_numpy(dtype=float)
    p_groups = pd.Series(np.arange(len(picks))).groupby(pkeys.to_numpy()).indices if len(picks) else {}
    l_groups = pd.Series(np.arange(len(labels))).groupby(lkeys.to_numpy()).indices if len(labels) else {}
    for key in evaluated:
        pi, li = p_groups.get(key), l_groups.get(key)
        if pi is None or li is None:
            continue
        matched[pi] = match_one(px[pi], py[pi], lx[li], ly[li], float(match_radius))

    n_labels = len(labels)
    curve = _curve(scores, matched, n_labels)
    ap = _average_precision(curve, n_labels)
    if len(curve) and n_labels:
        best = int(np.nanargmax(curve["f1"].to_numpy())) if curve["f1"].notna().any() else len(curve) - 1
        row = curve.iloc[best]
        best_f1, prec, rec, thr = float(row.f1), float(row.precision), float(row.recall), float(row.threshold)
        # all picks are kept at the bottom of a NaN-score group; report -inf there so "score >= threshold" holds
        if not math.isfinite(thr):
            thr = -math.inf
    else:
        best_f1, prec, rec, thr = (0.0 if n_labels else math.nan), math.nan, (0.0 if n_labels else math.nan), math.nan

    kept = (scores >= thr) | (thr == -math.inf)  # NaN threshold (no picks) keeps nothing
    per_mic = pd.DataFrame({
        "micrograph": pd.Series(evaluated, dtype=object),
        "n_labels": [len(l_groups.get(k, ())) for k in evaluated],
        "n_picks": [len(p_groups.get(k, ())) for k in evaluated],
        "n_matched": [int(matched[p_groups[k]].sum()) if k in p_groups else 0 for k in evaluated],
        "n_picks_at_threshold": [int(kept[p_groups[k]].sum()) if k in p_groups else 0 for k in evaluated],
        "n_matched_at_threshold": [int((kept & matched)[p_groups[k]].sum()) if k in p_groups else 0 for k in evaluated],
    }, columns=PER_MIC_COLUMNS)
    return EvalResult(
        ap=ap, best_f1=best_f1, precision=prec, recall=rec, threshold=thr,
        n_picks=len(picks), n_labels=n_labels, n_micrographs=len(evaluated),
        curve=curve, per_micrograph=per_mic, n_picks_ignored=n_ignored,
    )


def _curve(scores: np.ndarray, matched: np.ndarray, n_labels: int) -> pd.DataFrame:
    """Precision/recall/F1 after keeping every pick with score >= t, for each distinct t (NaN scores rank last)."""
    if len(scores) == 0:
        return pd.DataFrame({c: pd.Series([], dtype=float) for c in CURVE_COLUMNS})
    s = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-s, kind="stable")
    s_sorted, m_sorted = s[order], matched[order]
    tp = np.cumsum(m_sorted)
    k = np.arange(1, len(s_sorted) + 1)
    # the last index of each run of equal scores: a threshold keeps whole runs
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp, k, thr = tp[last], k[last], s_sorted[last]
    precision = tp / k
    recall = tp / n_labels if n_labels else np.full(len(tp), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    thr = np.where(np.isneginf(thr), np.nan, thr)
    return pd.DataFrame({"threshold": thr, "precision": precision, "recall": recall, "f1": f1})


def _average_precision(curve: pd.DataFrame, n_labels: int) -> float:
    if n_labels == 0:
        return math.nan
    if len(curve) == 0:
        return 0.0
    recall = curve["recall"].to_numpy()
    gain = np.diff(np.r_[0.0, recall])
    return float(np.sum(gain * curve["precision"].to_numpy()))
