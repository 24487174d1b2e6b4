"""Full-convolution score maps over whole micrographs: tiled (bounded memory), device and precision choice.

Geometry (see core.models): the network uses valid convolutions; padding the image by P = receptive_field // 2
aligns output [i, j] with input pixel (i, j) in dense mode, and with pixel (k J, l J) at the native stride J. Each
output depends only on the input window centred on it, so tiles cut from the padded image (overlapping by 2 P) stitch
into exactly the untiled map. The fast mode scores at the native stride and refines peak positions by bicubic
interpolation of the coarse map onto the dense grid; the dense mode computes every pixel. Test-time views average
the map over rotated/mirrored copies of the micrograph (each mapped back): a particle's score should not depend on
its orientation, and the average is a smoother, better-ranked map (fast mode default 4; dense mode default 1).
"""
from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import STRIDE_MODES, VIEW_COUNTS, ScoreConfig
from .errors import InputError

# test-time views: (quarter turns, mirror first); scores are averaged over the dihedral copies of the image
VIEWS = {1: [(0, False)], 2: [(0, False), (2, True)], 4: [(0, False), (1, False), (2, False), (3, False)],
         8: [(t, f) for f in (False, True) for t in range(4)]}
assert tuple(VIEWS) == VIEW_COUNTS
DEFAULT_TILE = {"native": 512, "dense": 512}  # downsampled pixels per tile side (512: same speed as 1024, ~100 MB less peak memory)


def choose_device(spec: str | None = "auto") -> torch.device:
    """'auto' -> the first CUDA device if present, else CPU; 'cpu', 'cuda', 'cuda:N' as given (checked)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device {spec!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: no CUDA device is available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise InputError(f"--device {spec}: unsupported device type (use auto, cpu, cuda or cuda:N)")
    return device


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def choose_precision(spec: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 where the hardware runs it natively (AMX/AVX512-BF16 CPUs, bf16-capable GPUs), else fp32."""
    if spec == "fp32":
        return torch.float32
    if spec == "bf16":
        return torch.bfloat16
    if spec != "auto":
        raise InputError(f"precision {spec!r}: choose auto, fp32 or bf16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision in `dtype` on `device` (weights stay fp32); a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy with every BatchNorm that directly follows a conv (as `.conv` then `.bn`) folded into it."""
    module = copy.deepcopy(module).eval()
    for sub in module.modules():
        conv, bn = getattr(sub, "conv", None), getattr(sub, "bn", None)
        if not (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)):
            continue
        if bn.running_mean is None or bn.running_var is None:
            continue
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(
                bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
            w = conv.weight * scale.reshape(-1, 1, 1, 1)
            b = shift + (conv.bias * scale if conv.bias is not None else 0.0)
            conv.weight = torch.nn.Parameter(w)
            conv.bias = torch.nn.Parameter(b)
        sub.bn = torch.nn.Identity()
    return module


class Scorer:
    """A model prepared once for inference (device, layout, precision, folded batch norm); call it on images."""

    def __init__(self, model: Any, config: ScoreConfig | None = None) -> None:
        config = config or ScoreConfig()
        if config.stride not in STRIDE_MODES:
            raise InputError(f"stride {config.stride!r}: choose {' or '.join(STRIDE_MODES)}")
        self.dense = config.stride == "dense"
        self.device = choose_device(config.device)
        self.dtype = choose_precision(config.precision, self.device)
        module = getattr(model, "module", model)
        self.receptive_field = int(getattr(model, "receptive_field", None) or module.receptive_field)
        self.pad = self.receptive_field // 2
        module = _fold_batchnorm(module)  # a copy: the caller's module keeps its mode
        module.set_dense(self.dense)
        self.stride = 1 if self.dense else int(module.stride)
        self.module = module.to(self.device).to(memory_format=torch.channels_last).eval()
        tile = config.tile_size or DEFAULT_TILE[config.stride]
        self.tile = max(self.stride, int(tile) // self.stride * self.stride)
        views = config.resolved_views()
        if views not in VIEWS:
            raise InputError(f"views {views!r}: choose {', '.join(map(str, VIEWS))}")
        self.views = VIEWS[views]

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.dtype)

    def coarse(self, image: np.ndarray) -> np.ndarray:
        """Map at the scorer's stride: [k, l] scores pixel (k * stride, l * stride); tiled, exact."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise InputError(f"expected a 2-D image, got shape {image.shape}")
        h, w = image.shape
        j, p, t = self.stride, self.pad, self.tile
        padded = torch.from_numpy(np.pad(image, p, mode="constant"))
        out = np.empty(((h - 1) // j + 1, (w - 1) // j + 1), dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            for y0 in range(0, h, t):
                for x0 in range(0, w, t):
                    th, tw = min(t, h - y0), min(t, w - x0)
                    crop = padded[y0:y0 + th + 2 * p, x0:x0 + tw + 2 * p]
                    x = crop[None, None].to(self.device).contiguous(memory_format=torch.channels_last)
                    y = self.module(x)[0, 0].float().cpu().numpy()
                    oh, ow = (th - 1) // j + 1, (tw - 1) // j + 1
                    out[y0 // j:y0 // j + oh, x0 // j:x0 // j + ow] = y[:oh, :ow]
        return out

    def single(self, image: np.ndarray) -> np.ndarray:
        """Score map of the image as given (one view)."""
        coarse = self.coarse(image)
        if self.stride == 1:
            return coarse
        return upsample_map(coarse, self.stride, np.asarray(image).shape)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Score map on the image's grid (float32, same shape): map[i, j] scores a particle centred on pixel (i, j).

        With several views, the mean logit over rotated/flipped copies of the image, each mapped back.
        """
        image = np.asarray(image, dtype=np.float32)
        if len(self.views) == 1:
            return self.single(image)
        total = np.zeros(image.shape, dtype=np.float32)
        for turns, flip in self.views:
            total += unview(self.single(view(image, turns, flip)), turns, flip)
        return total / np.float32(len(self.views))


def view(image: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """The image mirrored left-right (if `flip`), then turned by `turns` quarter turns (a numpy view, no copy)."""
    return np.rot90(image[:, ::-1] if flip else image, turns)


def unview(score_map: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """Map a view's score map back onto the original image's grid (the inverse of `view`)."""
    back = np.rot90(score_map, -turns)
    return back[:, ::-1] if flip else back


def upsample_map(coarse: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic interpolation of a map sampled at (k * stride, l * stride) onto every pixel of `shape`."""
    c = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))[None, None]
    c = F.pad(c, (0, 1, 0, 1), mode="replicate")  # the last samples may fall short of the last pixels
    ny, nx = (c.shape[2] - 1) * stride + 1, (c.shape[3] - 1) * stride + 1
    with torch.inference_mode():
        up = F.interpolate(c, size=(ny, nx), mode="bicubic", align_corners=True)
    return np.ascontiguousarray(up[0, 0, : shape[0], : shape[1]].numpy())


def score_micrograph(model: Any, image_ds: np.ndarray, config: ScoreConfig | None = None) -> np.ndarray:
    """Score map (downsampled grid, float32) of one preprocessed micrograph; see `Scorer` to reuse a prepared model."""
    return Scorer(model, config)(image_ds)
