"""Every registered model: forward shapes, receptive field by a gradient check, dense/native agreement, alignment."""
from __future__ import annotations

import pytest
import torch

from pupick.core.models import (MODELS, ModelConfig, aligned_padding, build, native_stride, output_shape,
                                receptive_field)

EXPECTED_RF = {"resnet8": 71, "resnet8n": 71, "resnet16": 127, "conv31": 31, "conv63": 63, "conv127": 127}
CONFIGS = [pytest.param(ModelConfig(arch=a, units=2, pooling=p), id=f"{a}-{p}") for a in MODELS
           for p in ("max", "stride")]


def test_registry_has_the_named_models():
    assert set(MODELS) == set(EXPECTED_RF)
    for arch, rf in EXPECTED_RF.items():
        assert receptive_field(ModelConfig(arch=arch)) == rf


def _support(module: torch.nn.Module, size: int, seed: int = 0) -> tuple[int, int, int, int]:
    """Rows/cols of input pixels with a nonzero gradient for the centre output (union over random inputs)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, size, size, generator=g).requires_grad_()
    y = module(x)
    cy, cx = y.shape[2] // 2, y.shape[3] // 2
    y[:, 0, cy, cx].sum().backward()
    hit = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = torch.nonzero(hit.any(1)).flatten(), torch.nonzero(hit.any(0)).flatten()
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dense", [False, True], ids=["native", "dense"])
def test_receptive_field_by_gradient(cfg: ModelConfig, dense: bool):
    rf = receptive_field(cfg)
    torch.manual_seed(0)
    module = build(cfg).eval().set_dense(dense)
    size = rf + 2 * native_stride(cfg)
    r0, r1, c0, c1 = _support(module, size)
    assert r1 - r0 + 1 == rf and c1 - c0 + 1 == rf
    # the window is centred on the output's nominal position
    j = 1 if dense else native_stride(cfg)
    n = (size - rf) // j + 1
    centre = (n // 2) * j + rf // 2
    assert (r0 + r1) // 2 == centre and (c0 + c1) // 2 == centre


@pytest.mark.parametrize("cfg", CONFIGS)
def test_dense_map_equals_native_map_at_its_positions(cfg: ModelConfig):
    torch.manual_seed(0)
    module = build(cfg).eval()
    j = native_stride(cfg)
    x = torch.randn(1, 1, 21 + 2 * aligned_padding(cfg), 14 + 2 * aligned_padding(cfg))
    with torch.no_grad():
        native = module.set_dense(False)(x)
        dense = module.set_dense(True)(x)
    assert tuple(dense.shape[2:]) == output_shape((21, 14), cfg, dense=True) == (21, 14)
    assert tuple(native.shape[2:]) == output_shape((21, 14), cfg, dense=False)
    torch.testing.assert_close(dense[:, :, ::j, ::j], native, rtol=1e-4, atol=1e-5)


def test_padded_dense_map_is_aligned_with_the_image():
    """A bright spot at (row 20, col 33): the map of a shifted image shifts by the same amount."""
    cfg = ModelConfig(arch="conv31", units=4)
    torch.manual_seed(0)
    module = build(cfg).eval().set_dense(True)
    p = aligned_padding(cfg)
    img = torch.zeros(1, 1, 64, 80)
    img[0, 0, 20, 33] = 1.0
    shifted = torch.roll(img, shifts=(5, -7), dims=(2, 3))
    with torch.no_grad():
        a = module(torch.nn.functional.pad(img, (p, p, p, p)))
        b = module(torch.nn.functional.pad(shifted, (p, p, p, p)))
    assert a.shape[2:] == img.shape[2:]
    torch.testing.assert_close(torch.roll(a, shifts=(5, -7), dims=(2, 3))[..., 10:50, 10:60], b[..., 10:50, 10:60])
    # the outputs the spot changes lie in the window centred on it, and include the one at the spot
    zero = module(torch.zeros_like(torch.nn.functional.pad(img, (p, p, p, p))))
    diff = (a - zero).abs()[0, 0] > 0
    rows, cols = torch.nonzero(diff.any(1)).flatten(), torch.nonzero(diff.any(0)).flatten()
    assert bool(diff[20, 33])
    assert int(rows.min()) >= 20 - p and int(rows.max()) <= 20 + p
    assert int(cols.min()) >= 33 - p and int(cols.max()) <= 33 + p


def test_options_change_the_network():
    base = build(ModelConfig(units=4))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in build(ModelConfig(units=4, batchnorm=False)).modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in base.modules())
    assert any(isinstance(m, torch.nn.Dropout2d) for m in build(ModelConfig(units=4, dropout=0.2)).modules())
    wide = build(ModelConfig(units=8))
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in base.parameters())
    with pytest.raises(Exception, match="unknown architecture"):
        build(ModelConfig(arch="resnet9"))


def test_shortcut_gradient_keeps_the_channels_last_layout():
    """A residual block's input gradient is the plain slice's gradient, in the layout of its (channels-last) input."""
    from pupick.core.models import ResBlock

    torch.manual_seed(0)
    block = ResBlock(3, 3, batchnorm=True)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    weights = torch.randn(2, 3, 12, 12)
    (block(x) * weights).sum().backward()
    t = block.trim()
    ref_x = x.detach().clone().requires_grad_()
    y = block.b(block.a(ref_x))
    (torch.relu(y + ref_x[:, :, t:-t, t:-t]) * weights).sum().backward()  # the block by hand, with plain slicing
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-6)
    with torch.no_grad():  # scoring (no gradients): the same map
        assert torch.equal(block(x), torch.relu(block.b(block.a(x)) + x[:, :, t:-t, t:-t]))


@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 1, 3, 3), (2, 4, 8, 9), (3, 5, 40, 41)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pooling_without_a_gradient_gives_max_pool2d_values(shape, dtype, channels_last):
    from pupick.core.models import Pool, _max_pool_3x3_stride_2

    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    x[0, 0, 1, 1], x[-1, -1, -1, 0] = float("nan"), float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # NCHW takes the separable maxima; channels-last, torch's kernel (the function: both)
        fast = Pool(shape[1], "max", True)(x) if not channels_last else _max_pool_3x3_stride_2(x)
    plain = torch.nn.functional.max_pool2d(x, 3, 2)
    assert fast.shape == plain.shape and fast.dtype == plain.dtype
    assert torch.equal(fast.nan_to_num(7.0), plain.nan_to_num(7.0)) and torch.isnan(fast).sum() == 1


def test_pooling_with_a_gradient_routes_it_as_max_pool2d():
    from pupick.core.models import Pool

    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(2), requires_grad=True)
    Pool(3, "max", True)(x).square().sum().backward()
    ref = x.detach().clone().requires_grad_()
    torch.nn.functional.max_pool2d(ref, 3, 2).square().sum().backward()
    assert torch.equal(x.grad, ref.grad)


def test_narrow_resnet8_keeps_one_channel_at_the_fewest_units():
    net = build(ModelConfig(arch="resnet8n", units=1))
    assert min(m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)) == 1
    assert net.eval()(torch.zeros(1, 1, 71, 71)).shape == (1, 1, 1, 1)
