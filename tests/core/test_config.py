"""Configs are checked once, at construction: every option that cannot work is one InputError naming it."""
from __future__ import annotations

import math

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
    assert ScoreConfig().resolved_views() == 4 and ScoreConfig(stride="dense").resolved_views() == 1
    assert PickConfig().recorded()["views"] == 4
