"""Int8 scoring on CPU: u8 activations and s8 per-channel weights in oneDNN convolutions (VNNI: twice the bf16 rate).

The activation scales are set per micrograph: a bf16 pass over a central crop records the largest value each layer
gives there, and `MARGIN` times it maps to 255. So the scores depend only on the micrograph itself, not on the order of
micrographs, the tiling or the worker. The first layer (one input channel, a poor fit for int8) runs in the compute
precision with its output scaled and clamped to 0-255 in the same call; the 1x1 classifier is an int8 convolution
with fp32 output. Integer sums make the logits the same whatever the thread count or tiling. Residual sums are fused
into the second convolution (oneDNN sum post-op, in place).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .hardware import cpu_has
from .models import ConvBlock, Pool, ResBlock

# the scales come from four crops of this side (downsampled pixels, plus the halo), one at the centre of each quarter
# of the micrograph: spread out, so one empty or contaminated spot does not set them; about 9% of a bf16 pass on 1024²
CALIBRATION_CROP = 96
# headroom over the crops' largest value: activations elsewhere on the micrograph may run higher; 1.5 keeps 170 of the
# 255 levels for the crops' range (relative error of a 1024² map 1.5e-3 against fp32; bf16's is 2.6e-3)
MARGIN = 1.5
_CL = torch.channels_last


def cpu_has_vnni() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return cpu_has("avx512_vnni", "avx_vnni", "amx_int8")


def available() -> bool:
    """True when this torch build has the oneDNN int8 convolutions the int8 path uses."""
    ops = getattr(torch.ops, "onednn", None)
    return (ops is not None and hasattr(ops, "qconv2d_pointwise") and hasattr(ops, "qconv_prepack")
            and torch.backends.mkldnn.is_available())


class _QConv:
    """One convolution with s8 per-output-channel weights, prepacked for oneDNN."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        w = conv.weight.detach().float()
        self.w_scale = (w.abs().amax((1, 2, 3)) / 127).clamp_min(1e-12)
        wq = torch.round(w / self.w_scale.view(-1, 1, 1, 1)).clamp_(-127, 127).to(torch.int8)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        # the packed layout does not depend on the input scale (zero point 0): one pack serves every micrograph
        self.packed = torch.ops.onednn.qconv_prepack(wq, self.w_scale, 1.0, 0, self.stride, self.padding,
                                                     self.dilation, self.groups, None)
        self.w_zp = torch.zeros(self.w_scale.shape, dtype=torch.int32)
        self.bias = conv.bias.detach().float() if conv.bias is not None else None
        self.weight_lp = _channels_last(conv.weight.detach())  # the float weights, for the calibration pass
        self.bias_lp = conv.bias.detach() if conv.bias is not None else None
        self._float: dict[torch.dtype, tuple] = {}  # (weight, bias) per input precision, converted once

    def __call__(self, x: torch.Tensor, x_scale: float, out_scale: float, out_zp: int = 0, relu: bool = True,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.ops.onednn.qconv2d_pointwise(
            x, x_scale, 0, self.packed, self.w_scale, self.w_zp, self.bias, self.stride, self.padding, self.dilation,
            self.groups, out_scale, out_zp, out_dtype, "relu" if relu else "none", [], "")

    def add(self, x: torch.Tensor, x_scale: float, accum: torch.Tensor, accum_scale: float, accum_zp: int,
            out_scale: float) -> torch.Tensor:
        """relu(conv(x) + accum) as u8 at `out_scale`, written into `accum`."""
        return torch.ops.onednn.qconv2d_pointwise.binary(
            x, x_scale, 0, self.packed, self.w_scale, self.w_zp, accum, self.bias, self.stride, self.padding,
            self.dilation, self.groups, out_scale, 0, None, accum_scale, accum_zp, "sum", 1.0, "relu", [], "")

    def float_relu(self, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
        """The same convolution in x's float precision (oneDNN, fused ReLU): the calibration pass."""
        if x.dtype not in self._float:
            self._float[x.dtype] = (_channels_last(self.weight_lp.to(x.dtype)),
                                    self.bias_lp.to(x.dtype) if self.bias_lp is not None else None)
        w, b = self._float[x.dtype]
        return torch.ops.mkldnn._convolution_pointwise.default(x, w, b, self.padding, self.stride, self.dilation,
                                                                self.groups, "relu" if relu else "none", [], "")


def calibration_crops(padded: torch.Tensor, h: int, w: int, pad: int) -> torch.Tensor:
    """The crops the scales come from: [n, 1, c + 2 pad, c' + 2 pad] out of one padded image [1, H, W] (or
    [1, 1, H, W]) of h x w pixels; one per quarter (per half, or the whole image, where it is small)."""
    image = padded.reshape(1, 1, *padded.shape[-2:])
    side = CALIBRATION_CROP
    ch, cw = min(side, h), min(side, w)
    ny, nx = (2 if h >= 2 * side else 1), (2 if w >= 2 * side else 1)
    crops = []
    for i in range(ny):
        for j in range(nx):
            y0 = min(max(h * (2 * i + 1) // (2 * ny) - ch // 2, 0), h - ch)
            x0 = min(max(w * (2 * j + 1) // (2 * nx) - cw // 2, 0), w - cw)
            crops.append(image[:, :, y0:y0 + ch + 2 * pad, x0:x0 + cw + 2 * pad])
    return torch.cat(crops).contiguous(memory_format=_CL)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """A channels-last copy with channels-last strides even for one input channel (where `.contiguous` keeps NCHW
    strides, and oneDNN then picks a slow NCHW plan for the whole convolution)."""
    return torch.empty(t.shape, dtype=t.dtype, memory_format=_CL).copy_(t)


def _coarse_up(x: float) -> float:
    """x rounded up to 5 significant bits (steps of at most 6%)."""
    m, e = math.frexp(x)
    return math.ldexp(math.ceil(m * 32) / 32, e)


def _pool_u8(x: torch.Tensor) -> torch.Tensor:
    """3x3 max-pool, stride 2, no padding (valid) on any dtype: strided maxima (max_pool2d has no uint8 kernel)."""
    ny, nx = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
    r = torch.maximum(torch.maximum(x[:, :, 0:2 * ny:2], x[:, :, 1:2 * ny + 1:2]), x[:, :, 2:2 * ny + 2:2])
    out = torch.maximum(torch.maximum(r[..., 0:2 * nx:2], r[..., 1:2 * nx + 1:2]), r[..., 2:2 * nx + 2:2])
    return out.contiguous(memory_format=_CL)


class Int8Net:
    """A folded, native-stride PickerNet as int8 steps; `scales(crop)` per micrograph, then `net(x, scales)`."""

    def __init__(self, first: _QConv, first_pool: bool, steps: list[tuple], classifier: torch.nn.Conv2d) -> None:
        self.first, self.first_pool, self.steps = first, first_pool, steps
        self.classifier = _QConv(classifier)

    @classmethod
    def build(cls, module: Any) -> "Int8Net | None":
        """The int8 form of a folded eval-mode module in native mode; None for anything it does not cover."""
        if not available() or getattr(module, "dense", True):
            return None
        layers = list(module.features)
        head = layers[0] if layers else None
        if not (isinstance(head, ConvBlock) and head.relu and isinstance(head.bn, torch.nn.Identity)
                and head.conv.in_channels == 1):
            return None
        rest = layers[1:]
        first_pool = bool(rest) and isinstance(rest[0], Pool) and rest[0].kind == "max"
        rest = rest[1:] if first_pool else rest

        def plain(b: Any) -> bool:
            return isinstance(b, ConvBlock) and isinstance(b.bn, torch.nn.Identity)

        steps: list[tuple] = []
        for layer in rest:
            if isinstance(layer, Pool) and layer.kind == "max":
                steps.append(("pool",))
            elif isinstance(layer, Pool) and plain(layer.op) and layer.op.relu:
                steps.append(("conv", _QConv(layer.op.conv)))
            elif plain(layer) and layer.relu:
                steps.append(("conv", _QConv(layer.conv)))
            elif isinstance(layer, ResBlock) and plain(layer.a) and plain(layer.b) and layer.a.relu \
                    and not layer.b.relu:
                proj = None if isinstance(layer.proj, torch.nn.Identity) else _QConv(layer.proj)
                steps.append(("res", _QConv(layer.a.conv), _QConv(layer.b.conv), proj, layer.trim()))
            else:
                return None
        return cls(_QConv(head.conv), first_pool, steps, module.classifier)

    def scales(self, crop: torch.Tensor) -> list[float]:
        """Activation scales from a float pass over `crop` (padded inputs [n, 1, H, W] in the compute precision; see
        `calibration_crops`): per layer, the largest value over all of them."""
        maxima: list[float] = []

        def record(t: torch.Tensor, signed: bool = False) -> None:
            top = float((t.abs() if signed else t).amax()) if t.numel() else 0.0
            # rounded up to 5 significant bits: a last-bit difference in the float pass (another thread count)
            # leaves the scale, and so the int8 arithmetic, unchanged
            maxima.append(_coarse_up(max(top * MARGIN, 1e-6) / (127 if signed else 255)))

        with torch.inference_mode():
            x = self.first.float_relu(crop)
            record(x)
            if self.first_pool:
                x = F.max_pool2d(x, 3, 2)
            for step in self.steps:
                if step[0] == "pool":
                    x = F.max_pool2d(x, 3, 2)
                elif step[0] == "conv":
                    x = step[1].float_relu(x)
                    record(x)
                else:
                    _, a, b, proj, t = step
                    y = a.float_relu(x)
                    record(y)
                    shortcut = x[:, :, t:-t, t:-t].contiguous(memory_format=_CL)
                    if proj is not None:
                        shortcut = proj.float_relu(shortcut, relu=False)
                        record(shortcut, signed=True)
                    x = F.relu(b.float_relu(y, relu=False) + shortcut)
                    record(x)
        return maxima

    def __call__(self, x: torch.Tensor, scales: list[float]) -> torch.Tensor:
        """Logits [n, 1, h', w'] (fp32) of a padded input [n, 1, H, W] in the compute precision, channels-last."""
        it = iter(scales)
        s = next(it)
        w = _channels_last((self.first.weight_lp / s).to(x.dtype))
        b = (self.first.bias_lp / s).to(x.dtype) if self.first.bias_lp is not None else None
        y = torch.ops.mkldnn._convolution_pointwise.default(
            x, w, b, self.first.padding, self.first.stride, self.first.dilation, self.first.groups, "hardtanh",
            [0.0, 255.0], "")
        if self.first_pool:
            y = F.max_pool2d(y, 3, 2)
        q = torch.round(y).to(torch.uint8).contiguous(memory_format=_CL)
        for step in self.steps:
            if step[0] == "pool":
                q = _pool_u8(q)
            elif step[0] == "conv":
                so = next(it)
                q, s = step[1](q, s, so), so
            else:
                _, a, bconv, proj, t = step
                sa = next(it)
                ya = a(q, s, sa)
                shortcut = q[:, :, t:-t, t:-t].contiguous(memory_format=_CL)
                if proj is not None:
                    sp = next(it)
                    accum, acc_s, acc_zp = proj(shortcut, s, sp, out_zp=128, relu=False), sp, 128
                else:
                    accum, acc_s, acc_zp = shortcut, s, 0
                so = next(it)
                q, s = bconv.add(ya, sa, accum, acc_s, acc_zp, so), so
        # the classifier in int8 too: integer sums, the same logits whatever the thread count
        return self.classifier(q, s, 1.0, relu=False, out_dtype=torch.float32)


def build(module: Any, precision: str) -> Int8Net | None:
    """The int8 network for a scoring precision: always for 'int8', for 'auto' where the CPU has VNNI; None where
    int8 does not apply (fp32, bf16, the dense mode, a torch build without the kernels)."""
    if precision == "int8" or (precision == "auto" and cpu_has_vnni()):
        return Int8Net.build(module)
    return None
