"""Evaluation against hand-worked cases: matching, AP, best F1, micrograph restriction."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from pupick.core.errors import InputError
from pupick.core.evaluate import evaluate, match_one


def table(rows):
    return pd.DataFrame(rows, columns=["micrograph", "x", "y", "score"][: len(rows[0])] if rows else None)


def test_hand_worked_ap_and_best_f1():
    picks = table([("a", 0, 0, 3.0), ("a", 10, 0, 2.0), ("a", 50, 0, 1.0), ("b", 5, 5, 0.5)])
    labels = table([("a", 0, 0), ("a", 12, 0), ("c", 0, 0)])
    r = evaluate(picks, labels, match_radius=5)
    # micrographs a and c are evaluated (they have labels); b's pick is ignored; c's label is a miss.
    # ranks: 1 matched (P=1), 2 matched (P=1), 3 unmatched -> AP = (1 + 1) / 3
    assert r.ap == pytest.approx(2 / 3)
    assert r.best_f1 == pytest.approx(0.8)  # P = 1, R = 2/3 at threshold 2
    assert (r.precision, r.recall, r.threshold) == (pytest.approx(1.0), pytest.approx(2 / 3), 2.0)
    assert (r.n_picks, r.n_labels, r.n_micrographs, r.n_picks_ignored) == (3, 3, 2, 1)
    pm = r.per_micrograph.set_index("micrograph")
    assert pm.loc["a"].tolist() == [2, 3, 2, 2, 2]
    assert pm.loc["c"].tolist() == [1, 0, 0, 0, 0]
    assert r.curve["recall"].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert r.curve["precision"].tolist() == pytest.approx([1, 1, 2 / 3])


def test_hungarian_beats_greedy_nearest():
    # the better pick sits between two labels; nearest-first matching would strand the second pick
    labels = table([("m", 0, 0), ("m", 8, 0)])
    picks = table([("m", 3, 0, 2.0), ("m", -2, 0, 1.0)])
    r = evaluate(picks, labels, match_radius=5)
    assert r.ap == pytest.approx(1.0)
    assert r.best_f1 == pytest.approx(1.0)


def test_scores_do_not_steer_matching_and_duplicates_count_once():
    labels = table([("m", 100, 100)])
    picks = table([("m", 101, 100, 0.0), ("m", 99, 100, 5.0), ("m", 300, 300, 9.0)])
    r = evaluate(picks, labels, match_radius=3)
    # exactly one of the two close picks is matched; ranks: 9 (miss), 5 (?), 0 (?)
    assert r.per_micrograph["n_matched"].tolist() == [1]
    assert r.ap in (pytest.approx(0.5), pytest.approx(1 / 3))


def test_radius_is_inclusive_and_exact_hits_match():
    labels = table([("m", 10, 10), ("m", 50, 50)])
    picks = table([("m", 10, 10, 1.0), ("m", 53, 54, 0.5), ("m", 60, 60, 0.2)])
    r = evaluate(picks, labels, match_radius=5)
    assert r.per_micrograph["n_matched"].tolist() == [2]
    assert r.ap == pytest.approx(1.0)


def test_tied_scores_do_not_depend_on_order():
    labels = table([("m", 0, 0)])
    for order in ([("m", 0, 0, 1.0), ("m", 90, 90, 1.0)], [("m", 90, 90, 1.0), ("m", 0, 0, 1.0)]):
        r = evaluate(table(order), labels, match_radius=4)
        assert r.ap == pytest.approx(0.5)  # one threshold: P = 1/2, R = 1
        assert r.best_f1 == pytest.approx(2 / 3)


def test_micrographs_restrict_both_sides_and_absent_ones_are_misses():
    picks = table([("a", 0, 0, 1.0), ("b", 0, 0, 2.0), ("x", 0, 0, 3.0)])
    labels = table([("a", 0, 0), ("b", 40, 40), ("c", 0, 0), ("c", 30, 30)])
    r = evaluate(picks, labels, match_radius=5, micrographs=["a", "b"])
    # evaluated a, b: ranks b(2.0, miss), a(1.0, hit) -> AP = 1/2 * 1/2
    assert (r.n_labels, r.n_picks, r.n_micrographs, r.n_picks_ignored) == (2, 2, 2, 1)
    assert r.ap == pytest.approx(0.25)
    # a listed micrograph without labels makes its picks false positives
    r2 = evaluate(picks, labels, match_radius=5, micrographs=["a", "x"])
    assert r2.ap == pytest.approx(0.5)  # x (3.0, miss), a (1.0, hit): P@2 = 1/2, R = 1
    # c has labels but no picks: its 2 labels are misses
    r3 = evaluate(picks, labels, match_radius=5)
    assert r3.n_labels == 4 and r3.ap == pytest.approx(1 / 4 * 1 / 2)


def test_names_match_by_stem():
    picks = table([("run/mics/a.mrc", 0, 0, 1.0)])
    labels = table([("a", 1, 1)])
    r = evaluate(picks, labels, match_radius=5, micrographs=["/data/a.tiff"])
    assert r.ap == pytest.approx(1.0)


def test_no_picks_and_no_labels():
    labels = table([("a", 0, 0)])
    r = evaluate(pd.DataFrame(columns=["micrograph", "x", "y", "score"]), labels, match_radius=5)
    assert r.ap == 0.0 and r.best_f1 == 0.0 and r.n_labels == 1
    r = evaluate(table([("a", 0, 0, 1.0)]), pd.DataFrame(columns=["micrograph", "x", "y"]), match_radius=5)
    assert math.isnan(r.ap) and r.to_json_dict()["ap"] is None


def test_picks_without_scores_rank_as_one_group():
    picks = pd.DataFrame({"micrograph": ["a", "a"], "x": [0, 100], "y": [0, 100]})
    r = evaluate(picks, table([("a", 0, 0), ("a", 50, 50)]), match_radius=5)
    assert r.ap == pytest.approx(0.25)  # one threshold: P = 1/2, R = 1/2
    assert r.per_micrograph["n_picks_at_threshold"].tolist() == [2]


def test_bad_radius():
    with pytest.raises(InputError, match="match radius"):
        evaluate(table([("a", 0, 0, 1.0)]), table([("a", 0, 0)]), match_radius=0)


def brute_max_matching(p, l, r):
    best = 0
    assert len(p) >= len(l)
    for perm in itertools.permutations(range(len(p)), len(l)):  # pick perm[j] goes with label j
        best = max(best, sum(np.hypot(*(p[i] - l[j])) <= r for j, i in enumerate(perm)))
    return best


def test_matching_is_maximum_and_ap_matches_the_definition():
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = rng.uniform(0, 20, (5, 2))
        lab = rng.uniform(0, 20, (4, 2))
        m = match_one(p[:, 0], p[:, 1], lab[:, 0], lab[:, 1], 4.0)
        assert m.sum() == brute_max_matching(p, lab, 4.0)
        scores = rng.permutation(5).astype(float)
        picks = pd.DataFrame({"micrograph": "a", "x": p[:, 0], "y": p[:, 1], "score": scores})
        labels = pd.DataFrame({"micrograph": "a", "x": lab[:, 0], "y": lab[:, 1]})
        r = evaluate(picks, labels, match_radius=4.0)
        hit = m[np.argsort(-scores)]
        expected = sum(hit[:k + 1].mean() for k in range(5) if hit[k]) / 4
        assert r.ap == pytest.approx(expected)
