"""The settings contract between the client and the service: a config sent as settings comes back as itself, and
bad keys or values are refused with a message naming them."""
from __future__ import annotations

import pytest

from pupick.core.client import pick_settings, train_settings
from pupick.core.config import PickConfig, PreprocessConfig, TrainConfig
from pupick.core.errors import InputError
from pupick.core.service import settings


@pytest.mark.parametrize("config", [
    PickConfig(),
    PickConfig(threshold=-2.5, min_distance_px=20, max_picks=300, border_px=0, pixel_size=1.3, views=8,
               precision="fp32", seed=4),
    PickConfig(stride="dense", views=None, top_n=50),
    PickConfig(method="blob", diameter_px=56, dark_particles=False, exclude_carbon=True, top_n=10),
    PickConfig(method="blob", diameter_A=300, pixel_size=5.36),
])
def test_pick_config_round_trip(config):
    sent = pick_settings(config)
    assert settings.pick_config(sent, device=config.device) == config


@pytest.mark.parametrize("config", [
    TrainConfig(),
    TrainConfig(preprocess=PreprocessConfig(diameter_px=56, factor=2, normalize="affine", seed=5), seed=5, units=16,
                epochs=2, steps_per_epoch=8, batch_size=4, expected_particles=150, test_split=0.0, arch="conv31",
                objective="nnpu", slack=2.0, learning_rate=2e-3, tile_size=96, label_radius=2, precision="fp32"),
])
def test_train_config_round_trip(config):
    assert settings.train_config(train_settings(config), device=config.device) == config


@pytest.mark.parametrize("bad, words", [
    ({"min_distanse": 3}, "'min_distanse'"),
    ({"device": "cuda"}, "server decides"),
    ({"threshold": "x"}, "'threshold' must be a finite number"),
    ({"threshold": float("nan")}, "finite"),
    ({"views": 5}, "'views' must be one of 1, 2, 4, 8"),
    ({"dense": 1}, "'dense' must be true or false"),
    ({"max_picks": 2.5}, "'max_picks' must be an integer"),
    ({"method": "blob"}, "needs the particle diameter"),
    ([1, 2], "JSON object"),
])
def test_bad_pick_settings(bad, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        settings.pick_config(bad)
