"""Initial weights from the principal components of the training tiles (core/weightinit.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pupick.core.cli.train import command
from pupick.core.config import ARCHITECTURES, PreprocessConfig, TrainConfig
from pupick.core.io import read_micrograph
from pupick.core.models import ModelConfig, build, receptive_field
from pupick.core.preprocess import preprocess_micrograph
from pupick.core.train import train
from pupick.core.weightinit import MAX_TILES, grid_tiles, pca_init, principal_components

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_image(demo_micrographs) -> np.ndarray:
    """A bundled micrograph, downsampled and normalised as training sees it."""
    return preprocess_micrograph(read_micrograph(demo_micrographs[0]), PreprocessConfig(diameter_px=56)).image


def _convs(module: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in module.features.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("d, n", [(6, 4000), (40, 25)])  # the covariance path, and the Gram-matrix path (d > n)
def test_components_are_the_leading_axes_largest_first(d, n):
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.r_[8.0, 4.0, 2.0, np.full(d - 3, 0.05)]
    data = torch.from_numpy((basis * scales) @ rng.standard_normal((d, n)) + 3.0)  # an offset: centred first
    comps = principal_components(data, 3).double()
    assert comps.shape == (3, d)
    np.testing.assert_allclose(comps.norm(dim=1).numpy(), 1.0, atol=1e-5)
    overlap = np.abs(comps.numpy() @ basis[:, :3])  # |cos| with the true axes, in order
    assert np.all(np.diag(overlap) > 0.97), overlap
    rows = np.arange(3)
    assert np.all(comps.numpy()[rows, np.abs(comps.numpy()).argmax(1)] > 0)  # the sign convention


def test_more_filters_than_directions_repeat_the_components():
    data = torch.randn(4, 500, generator=torch.Generator().manual_seed(1))
    comps = principal_components(data, 6)
    torch.testing.assert_close(comps[4:], comps[:2])


def test_grid_tiles_reach_every_edge_and_pad_small_images():
    big = np.arange(300 * 250, dtype=np.float32).reshape(300, 250)
    assert grid_tiles([big], 60).shape == (MAX_TILES, 1, 60, 60)  # 5 x 5 cells, capped
    tiles = grid_tiles([big], 120)  # 3 x 3 = 9 cells, all taken
    assert tiles.shape == (9, 1, 120, 120)
    assert tiles[0, 0, 0, 0] == big[0, 0] and tiles[-1, 0, -1, -1] == big[-1, -1]  # both corners covered
    small = grid_tiles([np.ones((40, 30), np.float32)], 64)
    assert small.shape == (1, 1, 64, 64) and small[0, 0, :40, :30].all() and not small[0, 0, 40:].any()


def test_grid_tiles_spread_over_all_micrographs():
    images = [np.full((200, 200), float(i), np.float32) for i in range(20)]  # 20 cells, one per micrograph
    tiles = grid_tiles(images, 200)
    assert len(tiles) == MAX_TILES
    assert tiles[0, 0, 0, 0] == 0 and tiles[-1, 0, 0, 0] == 19  # first and last micrograph both used


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("pooling", ["max", "stride"])
def test_pca_init_is_the_same_for_every_seed(arch, pooling, demo_image):
    cfg = ModelConfig(arch=arch, units=8, pooling=pooling)
    size = receptive_field(cfg) + 31
    tiles = torch.from_numpy(grid_tiles([demo_image], size, 4))
    weights = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        module = build(cfg)
        module.eval()
        pca_init(module, tiles)
        assert not module.training and not module.dense  # the module's mode is left as it was
        weights.append([c.weight.detach().clone() for c in _convs(module)])
        for conv in _convs(module):
            norms = conv.weight.flatten(1).norm(dim=1)
            torch.testing.assert_close(norms, torch.full_like(norms, 1 / math.sqrt(3)))
            w = conv.weight.flatten(1)
            if conv.out_channels >= 2:
                torch.testing.assert_close(w[1], -w[0])  # the +v, -v pair: ReLU passes both signs
        for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            assert int(bn.num_batches_tracked) == 0 and torch.all(bn.running_var == 1)
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_first_layer_filters_follow_the_data(demo_image):
    """The first filter is the micrograph's leading 9 x 9 component: a smooth, single-signed blob (particles and ice
    gradients), not noise."""
    torch.manual_seed(0)
    module = build(ModelConfig(units=8))
    pca_init(module, torch.from_numpy(grid_tiles([demo_image], 135)))
    first = module.features[0].conv.weight[0, 0].detach()
    assert bool((first > 0).all())
    rough = (first[1:] - first[:-1]).abs().mean() + (first[:, 1:] - first[:, :-1]).abs().mean()
    assert float(rough) < 0.5 * float(first.abs().mean())


@pytest.mark.parametrize("weight_init, same", [("pca", True), ("random", False)])
def test_training_starts_from_the_same_weights_for_every_seed(tmp_path, demo_micrographs, demo_labels, weight_init,
                                                              same):
    """With a negligible learning rate the trained weights are the starting ones: pca's feature layers do not depend
    on the seed, random's do (the classifier is seeded in both)."""
    from tests.core.test_train import tiny

    runs = [train(demo_micrographs[:1], demo_labels, tiny(tmp_path, seed=seed, learning_rate=1e-12, ema_decay=0.0,
                                                          weight_init=weight_init), log=lambda m: None)
            for seed in (0, 1)]
    features = [{k: v for k, v in r.state_dict.items() if k.startswith("features") and k.endswith("conv.weight")}
                for r in runs]
    assert features[0].keys() and features[0].keys() == features[1].keys()
    equal = all(torch.allclose(features[0][k], features[1][k], atol=1e-9) for k in features[0])
    assert equal is same
    saved = runs[0].save(tmp_path / "m.pt")
    assert torch.load(saved, weights_only=True)["config"]["provenance"]["train_config"]["weight_init"] == weight_init


def test_cli_weight_init_reaches_the_model_file_and_refuses_unknown_names(tmp_path, demo_micrographs, demo_dir):
    args = [str(demo_micrographs[0]), "--labels", str(demo_dir / "particles.csv"), "--diameter-px", "56",
            "--arch", "conv31", "--units", "4", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
            "--tile-size", "64", "--quiet"]
    out = tmp_path / "m.pt"
    res = CliRunner().invoke(command, [*args, "-o", str(out), "--weight-init", "random", "--tile-sampling", "random"])
    assert res.exit_code == 0, res.output
    config = torch.load(out, weights_only=True)["config"]["provenance"]["train_config"]
    assert (config["weight_init"], config["tile_sampling"]) == ("random", "random")
    bad = CliRunner().invoke(command, [*args, "-o", str(tmp_path / "n.pt"), "--weight-init", "zeros"])
    assert bad.exit_code == 2 and "--weight-init" in bad.output and not (tmp_path / "n.pt").exists()


def test_defaults_are_pca_and_grid():
    assert (TrainConfig().weight_init, TrainConfig().tile_sampling) == ("pca", "grid")
