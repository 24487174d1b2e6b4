"""Scoring: tiles stitch into the untiled map, modes agree, maps align with the image, devices are checked."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pupick.core.config import DEFAULT_VIEWS, ScoreConfig
from pupick.core.errors import InputError
from pupick.core.models import ModelConfig, build
from pupick.core.score import Scorer, choose_device, choose_precision, score_micrograph, upsample_map

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    """A narrow ResNet8 with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(0)
    m = build(ModelConfig(arch="resnet8", units=4))
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).normal(size=(150, 111)).astype(np.float32)


def reference(module, image, dense):
    """The unprepared module on the whole padded image (no tiles, no folding, fp32)."""
    p = module.receptive_field // 2
    module.set_dense(dense)
    with torch.no_grad():
        out = module(torch.from_numpy(np.pad(image, p))[None, None])[0, 0].numpy()
    module.set_dense(False)
    return out


@pytest.mark.parametrize("stride", ["dense", "native"])
def test_stitched_tiles_equal_the_untiled_map(tiny, image, stride):
    ref = reference(tiny, image, stride == "dense")
    for tile in (40, 48, 100, 4096):
        got = Scorer(tiny, ScoreConfig(stride=stride, precision="fp32", device="cpu", tile_size=tile)).coarse(image)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("n, most, stride", [(1024, 1024, 4), (1023, 1024, 4), (1440, 1024, 4), (2049, 1024, 4),
                                             (100, 48, 1), (97, 40, 4)])
def test_tiles_are_even_and_cover_the_image(n, most, stride):
    from pupick.core.score import _even_tile

    side = _even_tile(n, most, stride)
    parts = -(-n // side)
    assert side % stride == 0 and side <= max(most, stride)
    assert parts == -(-n // most)  # as few tiles as the limit allows
    assert n - (parts - 1) * side > side - parts * stride  # the last tile is not a sliver


def test_fast_map_samples_the_dense_map_and_keeps_the_image_grid(tiny, image):
    cfg = dict(precision="fp32", device="cpu")
    dense = Scorer(tiny, ScoreConfig(stride="dense", **cfg))(image)
    fast_scorer = Scorer(tiny, ScoreConfig(stride="native", views=1, **cfg))
    coarse = fast_scorer.coarse(image)
    j = fast_scorer.stride
    assert j == 4
    np.testing.assert_allclose(coarse, dense[::j, ::j], atol=2e-5)
    fast = fast_scorer(image)
    assert fast.shape == dense.shape == image.shape
    np.testing.assert_allclose(fast[::j, ::j], coarse, atol=1e-5)  # interpolation passes through the samples


def test_views_default_to_the_configured_count_in_fast_mode_and_one_in_dense_mode(tiny, image):
    cfg = dict(precision="fp32", device="cpu")
    assert len(Scorer(tiny, ScoreConfig(stride="native", **cfg)).views) == DEFAULT_VIEWS
    assert len(Scorer(tiny, ScoreConfig(stride="dense", **cfg)).views) == 1
    with pytest.raises(InputError, match="views"):
        Scorer(tiny, ScoreConfig(views=3, **cfg))


@pytest.mark.parametrize("views", [4, 8])
def test_averaged_views_make_the_map_follow_the_micrograph_when_turned(tiny, image, views):
    # the views form a group, so scoring a turned (or mirrored) micrograph gives the turned map, which one view
    # does not at the native stride (the coarse grid lands on other pixels)
    cfg = dict(precision="fp32", device="cpu", stride="native")
    many = Scorer(tiny, ScoreConfig(views=views, **cfg))
    one = Scorer(tiny, ScoreConfig(views=1, **cfg))
    turned = np.ascontiguousarray(np.rot90(image))
    np.testing.assert_allclose(many(turned), np.rot90(many(image)), atol=1e-4)
    assert np.abs(one(turned) - np.rot90(one(image))).max() > 1e-2
    if views == 8:
        mirrored = np.ascontiguousarray(image[:, ::-1])
        np.testing.assert_allclose(many(mirrored), many(image)[:, ::-1], atol=1e-4)


def test_averaged_views_are_the_mean_of_the_single_view_maps(tiny, image):
    cfg = dict(precision="fp32", device="cpu", stride="native")
    one = Scorer(tiny, ScoreConfig(views=1, **cfg))
    expected = (one(image) + np.rot90(one(np.ascontiguousarray(np.rot90(image, 2))), -2)) / 2  # the half turn
    np.testing.assert_allclose(Scorer(tiny, ScoreConfig(views=2, **cfg))(image), expected, atol=1e-5)


def test_map_is_aligned_with_the_image(tiny):
    # a window-local network: moving the image content moves the map by the same pixels
    rng = np.random.default_rng(2)
    img = np.zeros((160, 160), np.float32)
    img[40:120, 40:120] = rng.normal(size=(80, 80))
    shifted = np.roll(img, (7, -5), axis=(0, 1))
    s = Scorer(tiny, ScoreConfig(stride="dense", precision="fp32", device="cpu"))
    a, b = s(img), s(shifted)
    np.testing.assert_allclose(np.roll(a, (7, -5), axis=(0, 1))[20:140, 20:140], b[20:140, 20:140], atol=2e-5)


def test_scoring_leaves_the_callers_module_alone(tiny, image):
    tiny.train()
    score_micrograph(tiny, image, ScoreConfig(stride="dense", precision="fp32", device="cpu"))
    assert tiny.training and not tiny.dense
    tiny.eval()


def test_bf16_is_close_to_fp32(tiny, image):
    a = score_micrograph(tiny, image, ScoreConfig(precision="fp32", device="cpu"))
    b = score_micrograph(tiny, image, ScoreConfig(precision="bf16", device="cpu"))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_upsample_passes_through_samples_and_covers_the_edge():
    coarse = np.arange(12, dtype=np.float32).reshape(3, 4)
    up = upsample_map(coarse, 4, (11, 15))
    assert up.shape == (11, 15)
    np.testing.assert_allclose(up[::4, ::4], coarse, atol=1e-5)


def test_device_and_precision_choice():
    assert choose_device("cpu").type == "cpu"
    assert choose_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InputError, match="device"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            choose_device("cuda:0")
    assert choose_precision("fp32", torch.device("cpu")) == torch.float32
    assert choose_precision("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)
    with pytest.raises(InputError, match="precision"):
        choose_precision("fp8", torch.device("cpu"))
    with pytest.raises(InputError, match="stride"):
        Scorer(build(ModelConfig(units=2)), ScoreConfig(stride="sparse"))


def per_view_loop(module, image, views, stride):
    """The per-view reference: each rotated/mirrored copy through the unprepared module (fp32, whole image), mapped
    back with numpy and averaged in view order."""
    from pupick.core.score import VIEWS, unview, view

    total = np.zeros(image.shape, np.float32)
    for turns, flip in VIEWS[views]:
        v = np.ascontiguousarray(view(image, turns, flip))
        coarse = reference(module, v, dense=stride == 1)
        full = coarse if stride == 1 else upsample_map(coarse, stride, v.shape)
        total += unview(full, turns, flip)
    return total / np.float32(len(VIEWS[views]))


@pytest.mark.parametrize("view_batch", [1, 4])
@pytest.mark.parametrize("shape", [(150, 111), (96, 96)])
def test_batched_views_equal_the_per_view_loop(tiny, view_batch, shape):
    image = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    expected = per_view_loop(tiny, image, 4, 4)
    for precision, tol in (("fp32", 2e-5), ("bf16", 3e-2)):
        scorer = Scorer(tiny, ScoreConfig(views=4, precision=precision, device="cpu", tile_size=48))
        scorer.view_batch = view_batch
        got = scorer(image)
        assert got.shape == image.shape and got.dtype == np.float32
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= tol * max(1.0, scale), precision


def test_fp32_picks_are_those_of_the_per_view_loop(tiny):
    from pupick.core.extract import extract_picks

    rng = np.random.default_rng(4)
    image = rng.normal(size=(160, 200)).astype(np.float32)
    expected = extract_picks(per_view_loop(tiny, image, 4, 4), 2.0, 12.0, -1e9)
    for view_batch in (1, 4):
        scorer = Scorer(tiny, ScoreConfig(views=4, precision="fp32", device="cpu", tile_size=64))
        scorer.view_batch = view_batch
        got = extract_picks(scorer(image), 2.0, 12.0, -1e9)
        assert len(got[0]) == len(expected[0]) > 20
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[2], expected[2], atol=1e-4)


def test_kept_buffers_give_the_same_map_as_a_fresh_scorer(tiny):
    rng = np.random.default_rng(5)
    a, b = (rng.normal(size=(120, 90)).astype(np.float32) for _ in range(2))
    c = rng.normal(size=(64, 80)).astype(np.float32)
    cfg = ScoreConfig(views=4, precision="fp32", device="cpu")
    reused = Scorer(tiny, cfg)
    first = reused(a)
    reused(c)  # another shape in between
    np.testing.assert_array_equal(reused(b), Scorer(tiny, cfg)(b))
    np.testing.assert_array_equal(reused(a), first)
    assert not np.shares_memory(reused(a), reused(a))  # each call returns its own array


def test_cpu_scoring_runs_fused_convolutions_that_match_the_module(tiny):
    scorer = Scorer(tiny, ScoreConfig(stride="dense", precision="fp32", device="cpu"))
    assert scorer.net is not scorer.module  # the fused oneDNN path is in use on this CPU
    x = torch.from_numpy(np.random.default_rng(6).normal(size=(2, 1, 90, 90)).astype(np.float32))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        np.testing.assert_allclose(scorer.net(x).numpy(), scorer.module(x).numpy(), atol=1e-5)


@pytest.mark.cuda
def test_cuda_maps_match_the_cpu_map(tiny, image):
    cpu = Scorer(tiny, ScoreConfig(views=4, precision="fp32", device="cpu"))(image)
    scale = np.abs(cpu).max()
    for precision, tol in (("fp32", 1e-2), ("auto", 5e-2)):  # fp32 convolutions may run in TF32 on the GPU
        scorer = Scorer(tiny, ScoreConfig(views=4, precision=precision, device="cuda"))
        assert scorer.view_batch == 4  # every view of a tile in one call
        got = scorer(image)
        assert got.shape == image.shape and got.dtype == np.float32
        assert np.abs(got - cpu).max() <= tol * max(1.0, scale), precision
        np.testing.assert_array_equal(scorer(image), got)  # deterministic with kept buffers
