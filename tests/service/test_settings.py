"""The settings contract between the client and the service: a config sent as settings comes back as itself, and
bad keys or values are refused with a message naming them."""
from __future__ import annotations

import pytest

from pupick.core.client import pick_settings, train_settings
from pupick.core.config import PickConfig, PreprocessConfig, TrainConfig
from pupick.core.errors import InputError
from pupick.core.service import settings


def P(**settings) -> PickConfig:
    return PickConfig.from_settings(settings)


@pytest.mark.parametrize("config", [
    P(),
    P(threshold=-2.5, min_distance=20, max_picks=300, border=0, pixel_size=1.3, views=8, precision="fp32", seed=4),
    P(stride="dense", tile_size=256, scale=2, min_distance_A=80),
    P(method="blob", diameter_px=56, dark_particles=False, exclude_carbon=True, max_picks=10),
    P(method="blob", diameter=300, pixel_size=5.36),
    P(diameter_px=56),  # the general model set to the particle size
])
def test_pick_config_round_trip(config):
    sent = pick_settings(config)
    assert "device" not in sent and "workers" not in sent
    assert settings.pick_config(sent, device=config.score.device) == config


def test_the_server_chooses_the_device():
    assert settings.pick_config({"views": 2}, device="cpu").score.device == "cpu"


def test_int8_is_refused_for_a_cuda_worker():
    """What makes `pupick serve --device cuda` answer an int8 request 422 (tests/service/test_serve_cuda.py)."""
    assert settings.pick_config({"precision": "int8"}, device="cpu").score.precision == "int8"
    for device in ("cuda", "cuda:1"):
        with pytest.raises(InputError, match="int8 runs on CPU only"):
            settings.pick_config({"precision": "int8"}, device=device)


@pytest.mark.parametrize("config", [
    TrainConfig(),
    TrainConfig(preprocess=PreprocessConfig(diameter_px=56, factor=2, normalize="affine", seed=5), seed=5, units=16,
                epochs=2, steps_per_epoch=8, batch_size=4, expected_particles=150, test_split=0.0, arch="conv31",
                objective="nnpu", slack=2.0, learning_rate=2e-3, tile_size=96, label_radius=2, precision="fp32",
                ema_decay=0.9, lr_schedule="cosine", weight_init="random", tile_sampling="random", frozen_layers=3),
    TrainConfig(arch="resnet8n", frozen_layers=0),
])
def test_train_config_round_trip(config):
    assert settings.train_config(train_settings(config), device=config.device) == config


@pytest.mark.parametrize("bad, words", [
    ({"min_distanse": 3}, "min_distanse"),
    ({"device": "cuda"}, "server decides"),
    ({"workers": 4}, "server decides"),
    ({"threshold": "x"}, "threshold"),
    ({"threshold": float("nan")}, "finite"),
    ({"views": 5}, "views must be one of 1, 2, 4, 8"),
    ({"dark_particles": 1}, "dark_particles"),
    ({"max_picks": 2.5}, "max_picks"),
    ({"method": "blob"}, "needs the particle diameter"),
    ([1, 2], "JSON object"),
])
def test_bad_pick_settings(bad, words):
    with pytest.raises(InputError, match=words):
        settings.pick_config(bad)
