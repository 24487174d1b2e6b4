"""Zero-label picking: the general model plus one bootstrap round (core/zerolabel.py), on the bundled micrographs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pupick.core.config import PickConfig
from pupick.core.errors import InputError
from pupick.core.modelfile import for_particle, load_model, needs_particle_size
from pupick.core.zerolabel import BootstrapConfig, bootstrap_general, bootstrap_labels, split_score, spread_subset

QUICK = dict(micrographs=2, epochs=1, steps_per_epoch=4)


def test_spread_subset_takes_evenly_spaced_items_first_and_last_included():
    items = list(range(100))
    got = spread_subset(items, 5)
    assert got == [0, 25, 50, 74, 99]  # linspace(0, 99, 5) rounded
    assert spread_subset(items[:3], 5) == [0, 1, 2]
    assert spread_subset(items, 1) == [0]


def test_split_score_separates_two_groups_of_scores():
    rng = np.random.default_rng(0)
    low, high = rng.normal(-10, 1, 900), rng.normal(5, 1, 100)
    t = split_score(np.r_[low, high])
    assert low.max() < t < high.min()
    assert split_score(np.array([3.0, 3.0])) == 3.0


def test_bootstrap_labels_are_the_top_share_of_the_picks_above_the_split():
    scores = np.r_[np.linspace(-20, -15, 60), np.linspace(5, 10, 40)]  # 40 above the split, on 2 micrographs
    picks = pd.DataFrame({"micrograph": ["a", "b"] * 50, "x": np.arange(100.0), "y": np.arange(100.0),
                          "score": scores})
    labels, expected = bootstrap_labels(picks, 2, 0.5)
    assert expected == pytest.approx(20)  # 40 particles over 2 micrographs
    assert list(labels.columns) == ["micrograph", "x", "y"] and len(labels) == 20
    assert set(labels["x"]) == set(range(80, 100))  # the 20 best scores
    empty, n = bootstrap_labels(picks.iloc[:0], 2, 0.5)
    assert empty.empty and n == 0


@pytest.mark.parametrize("field,value", [("micrographs", 0), ("label_share", 0.0), ("label_share", 1.5),
                                         ("epochs", 0), ("min_labels", 2.5), ("seed", -1)])
def test_bootstrap_config_rejects_bad_values(field, value):
    with pytest.raises(InputError, match=field):
        BootstrapConfig(**{field: value})


@pytest.fixture(scope="module")
def general56():
    return for_particle(load_model("general"), diameter_px=56)


def test_bootstrap_round_gives_a_model_for_this_particle_size_and_is_deterministic(general56, demo_micrographs,
                                                                                   demo_labels, held_out_micrograph):
    """The adapted model is a per-size model (no diameter needed), the same for the same seed, and still finds the
    labelled particles of a micrograph it did not adapt on (the shipped model saw EMPIAR-10028's labels, so this is
    a wiring check, not a quality claim: BENCHMARKS.md has the leave-one-set-out numbers)."""
    from pupick.core.evaluate import evaluate
    from pupick.core.picking import pick

    mics = [p for p in demo_micrographs if p.stem != held_out_micrograph]
    config = PickConfig.from_settings({"diameter_px": 56})
    notes: list[str] = []
    a = bootstrap_general(mics, general56, config, BootstrapConfig(**QUICK), log=notes.append)
    b = bootstrap_general(mics, general56, config, BootstrapConfig(**QUICK))
    assert a is not general56 and not needs_particle_size(a)
    assert a.config["diameter_px"] == pytest.approx(56) and a.config["factor"] == pytest.approx(56 / 24)
    assert a.sha256 == b.sha256  # same seed, same weights
    assert a.config["score_lift"] >= 0  # scores are only ever lifted, so the threshold keeps the general's candidates
    assert any("labels from the general model's picks on 2 micrograph(s)" in n for n in notes)
    held = [p for p in demo_micrographs if p.stem == held_out_micrograph]
    run = pick(held, a, config, log=lambda m: None)
    ev = evaluate(run.picks, demo_labels, 28, micrographs=[held_out_micrograph])
    assert ev.ap > 0.5


def test_bootstrap_round_keeps_the_general_model_when_it_finds_too_few_particles(general56, demo_micrographs):
    notes: list[str] = []
    config = PickConfig.from_settings({"diameter_px": 56})
    got = bootstrap_general(demo_micrographs[:1], general56, config,
                            BootstrapConfig(**{**QUICK, "min_labels": 10_000}), log=notes.append)
    assert got is general56
    assert "bootstrap round skipped" in notes[0]


def test_bootstrap_round_needs_the_model_set_to_a_particle_size(demo_micrographs):
    with pytest.raises(InputError, match="set to the particle size"):
        bootstrap_general(demo_micrographs[:1], load_model("general"), PickConfig.from_settings({"diameter_px": 56}))
