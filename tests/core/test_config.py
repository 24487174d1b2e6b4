"""Configs are checked once, at construction: every option that cannot work is one InputError naming it."""
from __future__ import annotations

import math
import re

import pytest

from pupick.core.config import SETTINGS, PickConfig, ScoreConfig
from pupick.core.errors import InputError

BAD = [
    ({"threshold": math.nan}, "--threshold"),
    ({"threshold": math.inf}, "--threshold"),
    ({"max_picks": -5}, "--max-picks"),
    ({"max_picks": 0}, "--max-picks"),
    ({"top_n": -1}, "--max-picks"),
    ({"min_distance": -1}, "--min-distance"),
    ({"border": -2}, "--border"),
    ({"pixel_size": 0}, "--pixel-size"),
    ({"pixel_size": math.nan}, "--pixel-size"),
    ({"tile_size": 0}, "--tile-size"),
    ({"views": 3}, "--views"),
    ({"device": "mps"}, "--device"),
    ({"precision": "fp8"}, "--precision"),
    ({"stride": "fast"}, "stride"),
    ({"method": "magic"}, "--method"),
    ({"scale": 0.5}, "--scale"),
    ({"diameter_px": -56}, "--diameter-px"),
    ({"workers": 0}, "--workers"),
    ({"method": "blob"}, "diameter"),
    ({"min_distnace": 3}, "min_distnace"),
    ({"views": "four"}, "views"),
    ({"exclude_carbon": "yes"}, "exclude_carbon"),
    ({"blob_weight": -0.5}, "--blob-weight"),
    ({"blob_weight": math.nan}, "--blob-weight"),
    ({"blob_weight": 1e6}, "--blob-weight"),
    ({"blob_weight": "heavy"}, "blob_weight"),
    ({"method": "blob", "diameter_px": 56, "blob_weight": 1}, "--blob-weight"),
]


@pytest.mark.parametrize("settings,named", BAD, ids=[str(s) for s, _ in BAD])
def test_bad_settings_are_refused_naming_the_option(settings, named):
    with pytest.raises(InputError, match=named.replace("-", r"\-")):
        PickConfig.from_settings(settings)


def test_settings_reach_their_sections():
    c = PickConfig.from_settings({"threshold": -2, "min_distance": 12.5, "views": 8, "device": "cuda:1",
                                  "pixel_size": 1.1, "diameter": 150, "dense": None} if False else
                                 {"threshold": -2, "min_distance": 12.5, "views": 8, "device": "CUDA:1",
                                  "pixel_size": 1.1, "diameter": 150})
    assert c.extract.threshold == -2 and c.extract.min_distance_px == 12.5
    assert c.score.views == 8 and c.score.device == "cuda:1"
    assert c.preprocess.pixel_size == 1.1 and c.preprocess.diameter_A == 150
    assert c.replace(threshold=1).extract.threshold == 1 and c.extract.threshold == -2  # frozen: a copy
    assert PickConfig.from_settings({"top_n": 7}).extract.max_picks == 7  # the hidden alias


def test_every_setting_is_a_field_of_its_section():
    c = PickConfig()
    for key, (section, name, _) in SETTINGS.items():
        assert hasattr(getattr(c, section) if section else c, name), key


def test_default_views_follow_the_stride_mode():
    from pupick.core.config import DEFAULT_VIEWS

    assert ScoreConfig().resolved_views() == DEFAULT_VIEWS and ScoreConfig(stride="dense").resolved_views() == 1
    assert PickConfig().recorded()["views"] == DEFAULT_VIEWS


def test_the_blob_prior_is_on_for_the_general_model_only_unless_set_and_recorded_only_when_set():
    from pupick.core.config import GENERAL_BLOB_WEIGHT

    default = PickConfig()
    assert default.blob.resolved_weight(general_model=True) == GENERAL_BLOB_WEIGHT > 0
    assert default.blob.resolved_weight(general_model=False) == 0
    assert "blob_weight" not in default.recorded() and "dark_particles" not in default.recorded()  # as before it
    off = PickConfig.from_settings({"blob_weight": 0})
    assert off.blob.resolved_weight(general_model=True) == 0 and off.recorded()["blob_weight"] == 0
    assert default.blob.resolved_weight(general_model=True, model_weight=0.0) == 0  # the model's own weight
    assert off.blob.resolved_weight(general_model=False, model_weight=3.0) == 0  # the setting over that
    light = PickConfig.from_settings({"blob_weight": 2, "dark_particles": False})
    assert light.blob.resolved_weight(general_model=False) == 2
    assert light.recorded()["blob_weight"] == 2 and light.recorded()["dark_particles"] is False


# Issue 26: every setting that claims memory or time is bounded here, once, for the CLI, the service and the suites.
OVER_THE_BOUND = [
    ({"batch_size": 257}, "--batch-size must be a whole number from 1 to 256"),
    ({"tile_size": 1025}, "--tile-size must be a whole number from 1 to 1024"),
    ({"batch_size": 256, "tile_size": 512}, "--batch-size x --tile-size² must be at most 16777216"),
    ({"epochs": 1001, "steps_per_epoch": 100}, "--epochs x --steps-per-epoch must be at most 100000"),
    ({"unlabeled_samples": (1 << 20) + 1}, "--unlabeled-samples must be a whole number from 1"),
    ({"label_radius": 65.0}, "--label-radius must be at most 64"),
    ({"calibration_batches": 65}, "calibration_batches must be a whole number from 0 to 64"),
    ({"units": 129}, "--units must be at most 128"),
]


@pytest.mark.parametrize("settings,message", OVER_THE_BOUND, ids=[str(s) for s, _ in OVER_THE_BOUND])
def test_training_settings_over_their_bound_are_refused(settings, message):
    from pupick.core.config import TrainConfig

    with pytest.raises(InputError, match=re.escape(message)) as err:
        TrainConfig(**settings)
    assert "\n" not in str(err.value)


def test_the_largest_allowed_training_settings_are_accepted():
    from pupick.core.config import (MAX_BATCH_SIZE, MAX_LABEL_RADIUS, MAX_STEP_PIXELS, MAX_STEPS, MAX_TRAIN_TILE,
                                    MAX_UNITS, TrainConfig)

    TrainConfig(units=MAX_UNITS, batch_size=MAX_BATCH_SIZE, tile_size=256, epochs=MAX_STEPS // 10,
                steps_per_epoch=10, label_radius=MAX_LABEL_RADIUS)
    TrainConfig(batch_size=MAX_STEP_PIXELS // MAX_TRAIN_TILE ** 2, tile_size=MAX_TRAIN_TILE)


@pytest.mark.parametrize("settings,named", [({"tile_size": 8193}, "--tile-size must be a whole number from 16 to 8192"),
                                            ({"workers": 65}, "--workers must be a whole number from 1 to 64"),
                                            ({"max_picks": 1_000_001}, "--max-picks"), ({"views": 16}, "--views")])
def test_picking_settings_over_their_bound_are_refused(settings, named):
    with pytest.raises(InputError, match=named):
        PickConfig.from_settings(settings)
    assert PickConfig.from_settings({"tile_size": 8192, "workers": 64}).score.tile_size == 8192
