"""CNN architectures for particle scoring, registered by name, built from a small config dataclass.

Every network uses only *valid* (unpadded) convolutions and poolings, so geometry is exact:

* ``receptive_field(cfg)`` (odd, ``R``) input pixels give one logit; ``P = aligned_padding(cfg) = R // 2``.
* Native mode (the default, used for training): the network keeps its pooling strides; its total stride is
  ``native_stride(cfg)`` (``J``). Output ``[k, l]`` scores the window centred on input pixel ``(k*J + P, l*J + P)``.
* Dense mode (``module.set_dense(True)``): poolings run at stride 1 and every later layer is dilated instead
  (the "a trous" trick), so output ``[i, j]`` scores the window centred on input pixel ``(i + P, j + P)``; at the
  positions both modes compute, the logits are identical.

So to get a map aligned with an image of shape (H, W): pad it by ``P`` on every side (zero or reflect), then
``module.set_dense(True); module(x)`` returns an (H, W) map with ``map[i, j]`` scoring pixel (i, j), and
``module.set_dense(False); module(x)`` returns ``ceil(H / J) x ceil(W / J)`` with ``map[k, l]`` scoring pixel
``(k*J, l*J)``. ``score_positions(shape, cfg, dense)`` gives those centre coordinates.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
from torch import nn
import torch.nn.functional as F

from .config import FEATURE_LAYERS
from .errors import ModelFileError


@dataclass
class ModelConfig:
    """Which network and how wide."""

    arch: str = "resnet8"
    units: int = 32
    batchnorm: bool = True
    dropout: float = 0.0
    pooling: str = "max"  # max | stride (a learned stride-2 convolution instead of max-pooling)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class _Layer(nn.Module):
    """A layer whose dilation follows the network's mode; ``step`` is its input spacing in native pixels."""

    step: int = 1

    def set_dilation(self, d: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def trim(self) -> int:
        """Pixels lost on each side at the current dilation."""
        raise NotImplementedError


class ConvBlock(_Layer):
    """Valid conv -> [batch norm] -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int, batchnorm: bool, relu: bool = True) -> None:
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(cin, cout, k, bias=not batchnorm)
        self.bn = nn.BatchNorm2d(cout) if batchnorm else nn.Identity()
        self.relu = relu

    def set_dilation(self, d: int) -> None:
        self.conv.dilation = (d, d)

    def trim(self) -> int:
        return (self.k - 1) // 2 * self.conv.dilation[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if not self.relu:
            return x
        return F.relu(x) if x.requires_grad else x.relu_()  # no graph (a frozen layer, scoring): in place


class _Crop(torch.autograd.Function):
    """``x[:, :, t:-t, t:-t]`` whose gradient keeps the memory layout of ``x``.

    Plain slicing back-propagates into a fresh NCHW tensor of zeros; with channels-last activations every later
    backward op (batch norm, max-pool) then converts whole activations between layouts: a sixth of a CPU training
    step (BENCHMARKS.md). The values are the same either way.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, t: int) -> torch.Tensor:  # type: ignore[override]
        ctx.t, ctx.shape = t, x.shape
        ctx.channels_last = x.is_contiguous(memory_format=torch.channels_last)
        return x[:, :, t:-t, t:-t]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        t = ctx.t
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        out = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=layout)
        out.zero_()
        out[:, :, t:-t, t:-t] = grad
        return out, None


class ResBlock(_Layer):
    """Two valid 3x3 convolutions with a (cropped, projected if needed) identity shortcut."""

    def __init__(self, cin: int, cout: int, batchnorm: bool) -> None:
        super().__init__()
        self.a = ConvBlock(cin, cout, 3, batchnorm)
        self.b = ConvBlock(cout, cout, 3, batchnorm, relu=False)
        self.proj = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def set_dilation(self, d: int) -> None:
        self.a.set_dilation(d)
        self.b.set_dilation(d)

    def trim(self) -> int:
        return self.a.trim() + self.b.trim()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trim()
        y = self.b(self.a(x))
        shortcut = _Crop.apply(x, t) if x.requires_grad and torch.is_grad_enabled() else x[:, :, t:-t, t:-t]
        return F.relu(y + self.proj(shortcut))


class Pool(_Layer):
    """Stride-2 downsampling (3x3 max-pool, or a learned 3x3 stride-2 conv); stride 1 + dilation in dense mode."""

    def __init__(self, channels: int, kind: str, batchnorm: bool) -> None:
        super().__init__()
        if kind not in ("max", "stride"):
            raise ValueError(f"unknown pooling {kind!r} (max | stride)")
        self.kind = kind
        self.op = nn.MaxPool2d(3, stride=2) if kind == "max" else ConvBlock(channels, channels, 3, batchnorm)
        if kind == "stride":
            self.op.conv.stride = (2, 2)
        self.dense = False

    def set_mode(self, dense: bool, d: int) -> None:
        s = 1 if dense else 2
        if self.kind == "max":
            self.op.stride, self.op.dilation = s, d
        else:
            self.op.conv.stride, self.op.conv.dilation = (s, s), (d, d)

    def set_dilation(self, d: int) -> None:
        self.set_mode(self.dense, d)

    def trim(self) -> int:
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.kind == "max" and not self.dense and not x.requires_grad and x.device.type == "cpu"
                and not x.is_contiguous(memory_format=torch.channels_last)):
            return _max_pool_3x3_stride_2(x)
        return self.op(x)


def _max_pool_3x3_stride_2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 3, 2)`` (valid), value for value, as two separable passes of elementwise maxima.

    Used where no gradient is needed on NCHW CPU tensors (the PCA start), where torch's kernel, which also writes
    argmax indices, is 2-12x slower; on channels-last tensors torch's is as fast or faster (BENCHMARKS.md)."""
    n, m = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
    rows = torch.maximum(torch.maximum(x[:, :, 0:2 * n - 1:2], x[:, :, 1:2 * n:2]), x[:, :, 2:2 * n + 1:2])
    return torch.maximum(torch.maximum(rows[:, :, :, 0:2 * m - 1:2], rows[:, :, :, 1:2 * m:2]),
                         rows[:, :, :, 2:2 * m + 1:2])


class PickerNet(nn.Module):
    """A stack of valid layers and a 1x1 classifier; see the module docstring for geometry and modes."""

    def __init__(self, layers: list[_Layer], channels: int, dropout: float, receptive_field: int) -> None:
        super().__init__()
        self.features = nn.ModuleList(layers)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, 1, 1)
        self.receptive_field = receptive_field
        self.stride = 2 ** sum(isinstance(m, Pool) for m in layers)
        self.dense = False
        self.set_dense(False)

    def set_dense(self, dense: bool = True) -> "PickerNet":
        """Switch between native stride (False) and the dense stride-1 map (True); returns self."""
        self.dense = dense
        d = 1
        for layer in self.features:
            if isinstance(layer, Pool):
                layer.dense = dense
                layer.set_mode(dense, d)
                if dense:
                    d *= 2
            else:
                layer.set_dilation(d)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.features:
            x = layer(x)
        return self.classifier(self.dropout(x))


def _stack(cfg: ModelConfig, plan: list[tuple]) -> PickerNet:
    """Build a PickerNet from a plan of ('conv', k, width) / ('res', width) / ('pool',) entries (width x units)."""
    layers: list[_Layer] = []
    cin, rf, jump = 1, 1, 1
    for entry in plan:
        if entry[0] == "pool":
            layers.append(Pool(cin, cfg.pooling, cfg.batchnorm))
            rf += 2 * jump
            jump *= 2
            continue
        if entry[0] == "conv":
            _, k, width = entry
            cout = max(1, int(width * cfg.units))
            layers.append(ConvBlock(cin, cout, k, cfg.batchnorm))
            rf += (k - 1) * jump
        else:
            cout = max(1, int(entry[1] * cfg.units))
            layers.append(ResBlock(cin, cout, cfg.batchnorm))
            rf += 4 * jump
        cin = cout
    return PickerNet(layers, cin, cfg.dropout, rf)


# Layer plans. Receptive fields: resnet8 and resnet8n 71, resnet16 127, conv31 31, conv63 63, conv127 127.
# resnet8n is resnet8 with half the channels in the two residual blocks at half resolution: about half the training
# step with the first layer frozen, for up to 0.008 AP on the few-label cells (BENCHMARKS.md, issue 30).
PLANS: dict[str, list[tuple]] = {
    "resnet8": [("conv", 9, 1), ("pool",), ("res", 1), ("res", 2), ("pool",), ("res", 2), ("conv", 7, 2)],
    "resnet16": [("conv", 9, 1), ("pool",), ("res", 1), ("res", 2), ("pool",), ("res", 2), ("res", 2), ("res", 4),
                 ("res", 4), ("conv", 9, 4)],
    "conv31": [("conv", 9, 1), ("pool",), ("conv", 5, 2), ("conv", 5, 4), ("conv", 3, 4)],
    "conv63": [("conv", 9, 1), ("pool",), ("conv", 5, 2), ("conv", 5, 2), ("pool",), ("conv", 5, 4), ("conv", 5, 4)],
    "conv127": [("conv", 9, 1), ("pool",), ("conv", 5, 2), ("conv", 5, 2), ("pool",), ("conv", 5, 4), ("conv", 5, 4),
                ("conv", 9, 4), ("conv", 9, 4)],
    "resnet8n": [("conv", 9, 1), ("pool",), ("res", 0.5), ("res", 1), ("pool",), ("res", 2), ("conv", 7, 2)],
}


def _builder(name: str) -> Callable[[ModelConfig], PickerNet]:
    def build_named(cfg: ModelConfig) -> PickerNet:
        return _stack(cfg, PLANS[name])

    build_named.__name__ = f"build_{name}"
    return build_named


MODELS: dict[str, Callable[[ModelConfig], PickerNet]] = {name: _builder(name) for name in PLANS}
assert {name: len(plan) for name, plan in PLANS.items()} == FEATURE_LAYERS, "core.config.FEATURE_LAYERS: PLANS"


def build(cfg: ModelConfig) -> PickerNet:
    """Instantiate the named architecture (native-stride mode, fp32, train mode)."""
    if cfg.arch not in MODELS:
        raise ModelFileError(f"unknown architecture {cfg.arch!r}; known: {', '.join(MODELS)}")
    if cfg.units < 1:
        raise ValueError(f"units must be >= 1 (got {cfg.units})")
    return MODELS[cfg.arch](cfg)


def _geometry(cfg: ModelConfig) -> tuple[int, int]:
    rf, jump = 1, 1
    for entry in PLANS[cfg.arch]:
        if entry[0] == "pool":
            rf += 2 * jump
            jump *= 2
        elif entry[0] == "conv":
            rf += (entry[1] - 1) * jump
        else:
            rf += 4 * jump
    return rf, jump


def receptive_field(cfg: ModelConfig) -> int:
    """Side of the (square, odd) input window that one output logit sees."""
    if cfg.arch not in PLANS:
        raise ModelFileError(f"unknown architecture {cfg.arch!r}; known: {', '.join(MODELS)}")
    return _geometry(cfg)[0]


def native_stride(cfg: ModelConfig) -> int:
    """Output spacing (input pixels) of the network in native (pooled) mode."""
    return _geometry(cfg)[1]


def aligned_padding(cfg: ModelConfig) -> int:
    """Pad the input by this many pixels on each side so output [i, j] scores input pixel (i, j) (dense mode)."""
    return receptive_field(cfg) // 2


def output_shape(shape: tuple[int, int], cfg: ModelConfig, dense: bool) -> tuple[int, int]:
    """Map shape for an image of ``shape`` padded by ``aligned_padding`` (dense: same shape; native: ceil(n / J))."""
    if dense:
        return tuple(shape)  # type: ignore[return-value]
    j = native_stride(cfg)
    return tuple((n - 1) // j + 1 for n in shape)  # type: ignore[return-value]
