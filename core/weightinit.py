"""Initial weights computed from the training micrographs (`--weight-init pca`) instead of drawn at random.

Layer by layer, from the input up, every convolution gets the principal components of the patches it sees: its
filters are the leading components of the k x k x C windows of its input, each as a pair +v and -v so that the ReLU
after it passes both signs. The next layer's patches come from the network as initialised so far. The tiles are cut
on a fixed grid over the training micrographs, so the initial weights depend on the data only, not on the seed.
Each filter gets the norm that torch's default initialisation gives on average, so the learning rate means the same.
The classifier (a 1x1 convolution to one logit) keeps its seeded random weights: a zero classifier narrowed the
seed-to-seed range on four benchmark cells but made one fail (EMPIAR-10059 standard, AP 0.52-0.71; BENCHMARKS.md).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .models import ConvBlock, PickerNet, Pool, ResBlock

MAX_TILES = 16  # grid tiles that the components are estimated from
PRIMAL_VALUES = 1024  # a window with at most this many values: components of the D x D covariance of the windows
WINDOWS_PER_VALUE = 16  # ... estimated from 16 D windows, within [MIN_WINDOWS, MAX_WINDOWS], at a fixed stride
MIN_WINDOWS, MAX_WINDOWS = 2048, 8192
DUAL_WINDOWS = 1024  # a larger window: components from the Gram matrix of this many windows


def grid_tiles(images: list[np.ndarray], size: int, count: int = MAX_TILES) -> np.ndarray:
    """Up to `count` tiles of side `size` cut on a regular grid over the (padded) images, spread evenly over all of
    the grid's cells: [N, 1, size, size] float32. Images smaller than a tile are padded with 0 (the ice level)."""
    cells = []
    for i, image in enumerate(images):
        h, w = image.shape
        ys = np.linspace(0, max(0, h - size), max(1, -(-h // size))).round().astype(int)
        xs = np.linspace(0, max(0, w - size), max(1, -(-w // size))).round().astype(int)
        cells += [(i, int(y), int(x)) for y in ys for x in xs]
    chosen = [cells[k] for k in np.unique(np.linspace(0, len(cells) - 1, min(count, len(cells))).round().astype(int))]
    tiles = np.zeros((len(chosen), 1, size, size), dtype=np.float32)
    for t, (i, y, x) in enumerate(chosen):
        crop = images[i][y:y + size, x:x + size]
        tiles[t, 0, :crop.shape[0], :crop.shape[1]] = crop
    return tiles


def _windows(x: torch.Tensor, k: int) -> torch.Tensor:
    """[D, n] k x k windows of x (D = C k k), at a fixed stride that keeps n near the layer's budget."""
    d = x.shape[1] * k * k
    budget = min(MAX_WINDOWS, max(MIN_WINDOWS, WINDOWS_PER_VALUE * d)) if d <= PRIMAL_VALUES else DUAL_WINDOWS
    positions = x.shape[0] * max(1, x.shape[2] - k + 1) * max(1, x.shape[3] - k + 1)
    stride = max(1, math.ceil(math.sqrt(positions / budget)))
    cols = F.unfold(x.float().contiguous(), k, stride=stride)  # [B, D, L]
    return cols.permute(1, 0, 2).reshape(d, -1)


def principal_components(a: torch.Tensor, m: int) -> torch.Tensor:
    """[m, D] unit vectors: the m leading principal components of the columns of a ([D, n]), largest first, each
    with its largest entry positive; repeats from the first when the data have fewer than m directions."""
    a = a.float()
    a = a - a.mean(1, keepdim=True)
    d, n = a.shape
    if d <= n:
        _, vecs = torch.linalg.eigh((a @ a.T).double())
        vecs = vecs.flip(1)[:, :min(m, d)]
    else:  # more values per window than windows: components from the windows' Gram matrix
        vals, u = torch.linalg.eigh((a.T @ a).double())
        keep = min(m, n)
        vals, u = vals.flip(0)[:keep], u.flip(1)[:, :keep]
        vecs = (a.double() @ u) / vals.clamp_min(1e-12).sqrt()
    vecs = vecs.T
    rows = torch.arange(vecs.shape[0])
    flip = torch.sign(vecs[rows, vecs.abs().argmax(1)])
    vecs = vecs * torch.where(flip == 0, 1.0, flip)[:, None]
    if vecs.shape[0] < m:
        vecs = vecs[torch.arange(m) % vecs.shape[0]]
    return vecs.float()


@torch.no_grad()
def init_conv(conv: torch.nn.Conv2d, x: torch.Tensor) -> None:
    """Set conv's filters to +/- pairs of the principal components of its input windows (x: its input batch)."""
    k, cout = conv.kernel_size[0], conv.out_channels
    comps = principal_components(_windows(x, k), (cout + 1) // 2)
    filters = torch.stack([comps, -comps], 1).reshape(-1, comps.shape[1])[:cout]
    # torch's default (Kaiming-uniform, a = sqrt(5)) gives each filter an expected norm of 1/sqrt(3)
    conv.weight.copy_((filters / math.sqrt(3)).reshape(conv.weight.shape).to(conv.weight.dtype))
    if conv.bias is not None:
        conv.bias.zero_()


@torch.no_grad()
def pca_init(module: PickerNet, tiles: torch.Tensor) -> None:
    """Initialise every convolution of `module`'s feature layers from `tiles` ([N, 1, S, S]), first layer first (the
    classifier keeps its weights). Batch-norm statistics seen on the way are discarded (training re-estimates them)."""
    was_training, was_dense = module.training, module.dense
    module.train()
    module.set_dense(False)
    x = tiles.float()
    for layer in module.features:
        if isinstance(layer, ConvBlock):
            init_conv(layer.conv, x)
        elif isinstance(layer, ResBlock):
            init_conv(layer.a.conv, x)
            init_conv(layer.b.conv, layer.a(x))
            if isinstance(layer.proj, torch.nn.Conv2d):
                t = layer.trim()
                init_conv(layer.proj, x[:, :, t:-t, t:-t])
        elif isinstance(layer, Pool) and isinstance(layer.op, ConvBlock):
            init_conv(layer.op.conv, x)
        x = layer(x)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    module.set_dense(was_dense)
    module.train(was_training)
