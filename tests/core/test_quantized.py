"""Int8 scoring (core.quantized): close to fp32 on a real micrograph for every architecture, exact tiling, scales
that depend only on the micrograph, and the options that refuse it."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from pupick.core import quantized
from pupick.core.config import ARCHITECTURES, PickConfig, ScoreConfig
from pupick.core.errors import InputError
from pupick.core.modelfile import load_model
from pupick.core.models import ModelConfig, build
from pupick.core.pipeline import MicrographItem, prepare_micrograph
from pupick.core.score import Scorer, inference_precision

pytestmark = [pytest.mark.skipif(not quantized.available(), reason="this torch build has no oneDNN int8 convolutions"),
              pytest.mark.usefixtures("one_torch_thread")]




@pytest.fixture(scope="module")
def model(trained_model):
    return load_model(trained_model)


@pytest.fixture(scope="module")
def images(model, demo_micrographs, held_out_micrograph):
    """Two bundled micrographs preprocessed for the session model (the held-out one first)."""
    paths = sorted(demo_micrographs, key=lambda p: p.stem != held_out_micrograph)[:2]
    config = PickConfig.from_settings({"device": "cpu"})
    return [prepare_micrograph(MicrographItem(p.stem, str(p)), model.config, config)[0].image for p in paths]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_int8_map_of_a_real_micrograph_is_close_to_fp32(model, images):
    int8 = Scorer(model, ScoreConfig(precision="int8", device="cpu", views=1))
    assert int8.int8 is not None
    got = int8.coarse(images[0])
    ref = Scorer(model, ScoreConfig(precision="fp32", device="cpu", views=1)).coarse(images[0])
    bf16 = Scorer(model, ScoreConfig(precision="bf16", device="cpu", views=1)).coarse(images[0])
    assert got.shape == ref.shape
    assert _rel(got, ref) < 1e-2
    assert _rel(got, ref) < 3 * _rel(bf16, ref) + 1e-3  # the same order of error as bf16
    # the peaks that become picks: the 200 best coarse positions are nearly all the same
    top = lambda m: set(np.argsort(m, axis=None)[-200:].tolist())  # noqa: E731
    assert len(top(got) & top(ref)) >= 180


@pytest.mark.parametrize("arch, pooling, batchnorm", [(a, "max", True) for a in ARCHITECTURES]
                         + [("resnet8", "stride", True), ("conv31", "max", False)])
def test_every_architecture_scores_in_int8_close_to_fp32(images, arch, pooling, batchnorm):
    torch.manual_seed(0)
    net = build(ModelConfig(arch=arch, units=4, pooling=pooling, batchnorm=batchnorm))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    crop = images[0][:192, :160]
    scorer = Scorer(net, ScoreConfig(precision="int8", device="cpu", views=1))
    assert scorer.int8 is not None, f"{arch} has no int8 form"
    ref = Scorer(net, ScoreConfig(precision="fp32", device="cpu", views=1)).coarse(crop)
    bf16 = Scorer(net, ScoreConfig(precision="bf16", device="cpu", views=1)).coarse(crop)
    # untrained nets give nearly flat maps: judge the error against bf16's on the same map
    assert _rel(scorer.coarse(crop), ref) < 4 * _rel(bf16, ref) + 5e-3


def test_int8_tiles_stitch_into_the_untiled_map_exactly(model, images):
    image = images[0][:300, :260]
    whole = Scorer(model, ScoreConfig(precision="int8", device="cpu", tile_size=4096)).coarse(image)
    for tile in (40, 48, 100):
        got = Scorer(model, ScoreConfig(precision="int8", device="cpu", tile_size=tile)).coarse(image)
        np.testing.assert_array_equal(got, whole)  # integer sums: no rounding differences between tilings


def test_scales_come_from_each_micrograph_alone(model, images):
    a, b = images
    scorer = Scorer(model, ScoreConfig(precision="int8", device="cpu"))
    first_a = scorer(a)
    after_b = (scorer(b), scorer(a))[1]
    np.testing.assert_array_equal(first_a, after_b)
    fresh = Scorer(model, ScoreConfig(precision="int8", device="cpu"))
    np.testing.assert_array_equal(fresh(b), scorer(b))
    crop_a = lambda img: torch.from_numpy(np.pad(img, fresh.pad))[None, None].to(fresh.dtype)  # noqa: E731
    assert fresh.int8.scales(crop_a(a)) != fresh.int8.scales(crop_a(b))


def test_int8_logits_do_not_depend_on_the_thread_count(model, images):
    maps = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            maps.append(Scorer(model, ScoreConfig(precision="int8", device="cpu")).coarse(images[1]))
        finally:
            torch.set_num_threads(1)
    np.testing.assert_array_equal(maps[0], maps[1])


def test_int8_takes_fp32_input_where_the_cpu_has_no_bf16(model, images):
    """On a CPU without bf16 the first layer and the calibration run in fp32; the int8 layers are the same."""
    scorer = Scorer(model, ScoreConfig(precision="int8", device="cpu"))
    net, p = scorer.int8, scorer.pad
    image = images[0][:200, :180]
    padded = torch.from_numpy(np.pad(image, p))[None, None]
    maps = []
    # the bf16 leg needs a CPU whose oneDNN runs bf16 convolutions (AVX-512 or AVX-NE-CONVERT); an AVX2 CPU has none
    dtypes = (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)
    for dtype in dtypes:
        x = padded.to(dtype).contiguous(memory_format=torch.channels_last)
        crops = quantized.calibration_crops(x[0], *image.shape, p)
        maps.append(net(x, net.scales(crops))[0, 0].numpy())
    ref = Scorer(model, ScoreConfig(precision="fp32", device="cpu", views=1)).coarse(image)
    assert all(_rel(m, ref) < 1e-2 for m in maps)


def test_int8_picks_where_onednn_is_capped_below_the_cpu(trained_model, demo_micrographs, tmp_path):
    """ONEDNN_MAX_CPU_ISA=AVX2 (a site's cap, or what an AVX2 CPU has): 'auto' does not choose bf16, which oneDNN
    would refuse, so int8 picking takes fp32 input and runs."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    probe = subprocess.run([sys.executable, "-c", "from pupick.core.score import cpu_has_fast_bf16 as f; print(f())"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "False", probe.stderr
    out = tmp_path / "picks"
    run = subprocess.run([sys.executable, "-m", "pupick.core.cli", "pick", str(demo_micrographs[0]), "--model",
                          str(trained_model), "--precision", "int8", "-o", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert len(pd.read_csv(out / "picks.csv")) > 0


def test_auto_scores_in_int8_where_the_cpu_has_int8_dot_products(model):
    auto = Scorer(model, ScoreConfig(device="cpu"))
    assert (auto.int8 is not None) == quantized.cpu_has_vnni()
    assert Scorer(model, ScoreConfig(device="cpu", precision="bf16")).int8 is None
    assert Scorer(model, ScoreConfig(device="cpu", stride="dense")).int8 is None  # dense: the float path


@pytest.mark.parametrize("h, w, n, side", [(300, 260, 4, (96, 96)), (300, 150, 2, (96, 96)), (150, 111, 1, (96, 96)),
                                           (50, 40, 1, (50, 40))])
def test_calibration_crops_spread_over_the_micrograph(h, w, n, side):
    pad = 5
    padded = torch.arange((h + 2 * pad) * (w + 2 * pad), dtype=torch.float32).reshape(1, h + 2 * pad, w + 2 * pad)
    crops = quantized.calibration_crops(padded, h, w, pad)
    assert tuple(crops.shape) == (n, 1, side[0] + 2 * pad, side[1] + 2 * pad)
    # each crop is a window of the padded image, centred in its part of the micrograph
    width = w + 2 * pad
    corners = [(int(c[0, 0, 0]) // width, int(c[0, 0, 0]) % width) for c in crops]
    assert len(set(corners)) == n
    for y0, x0 in corners:
        assert 0 <= y0 <= h - side[0] and 0 <= x0 <= w - side[1]
        np.testing.assert_array_equal(crops[corners.index((y0, x0)), 0].numpy(),
                                      padded[0, y0:y0 + side[0] + 2 * pad, x0:x0 + side[1] + 2 * pad].numpy())
    if n == 4:  # one per quarter
        assert {(y0 + side[0] // 2 >= h // 2, x0 + side[1] // 2 >= w // 2) for y0, x0 in corners} == {
            (False, False), (False, True), (True, False), (True, True)}


@pytest.mark.parametrize("value", [0.0, 50.0])
def test_a_blank_micrograph_gives_finite_scores_close_to_fp32(model, value):
    """All-zero crops make every scale tiny, an all-bright one saturates the first layer: still finite, still close."""
    image = np.full((160, 150), value, dtype=np.float32)
    got = Scorer(model, ScoreConfig(precision="int8", device="cpu"))(image)
    ref = Scorer(model, ScoreConfig(precision="fp32", device="cpu"))(image)
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() < 0.1 * max(1.0, float(np.abs(ref).max()))


def test_int8_is_refused_where_it_cannot_run():
    with pytest.raises(InputError, match="native stride"):
        ScoreConfig(precision="int8", stride="dense")
    with pytest.raises(InputError, match="CPU only"):
        inference_precision("int8", torch.device("cuda"))
    with pytest.raises(InputError, match="--precision"):
        ScoreConfig(precision="int4")
