"""Full-convolution score maps over whole micrographs: tiled (bounded memory), device and precision choice.

Geometry (see core.models): the network uses valid convolutions; padding the image by P = receptive_field // 2
aligns output [i, j] with input pixel (i, j) in dense mode, and with pixel (k J, l J) at the native stride J. Each
output depends only on the input window centred on it, so tiles cut from the padded image (overlapping by 2 P) stitch
into exactly the untiled map. The fast mode scores at the native stride and refines peak positions by bicubic
interpolation of the coarse map onto the dense grid; the dense mode computes every pixel. Test-time views average
the map over rotated/mirrored copies of the micrograph (each mapped back): a particle's score should not depend on
its orientation, and the average is a smoother, better-ranked map (fast mode default: core.config.DEFAULT_VIEWS;
dense mode 1).

Speed: the views of a micrograph are stacked into one padded batch (kept between micrographs of the same shape) and
go through the network together, tile by tile, in channels-last layout and the compute precision throughout; the
interpolation and the mapping back run on the whole batch on the device. On CPU the weights are converted to the
compute precision once (the same arithmetic as autocast, without a cast per call) and each convolution runs with its
ReLU and residual sum fused (oneDNN post-ops), and the batch is cut to the views per network call that run fastest
there (one: a bigger working set leaves the cache); on CUDA every view of a tile goes in one call, under autocast.
On CPUs with int8 dot products (VNNI), 'auto' scores in int8 (core.quantized): the network 1.6x faster than in bf16,
AP within 0.0025 of bf16 in every run on the shared sets (BENCHMARKS.md, pick_speed).

Out of GPU memory, the tile side halves (down to MIN_TILE) and the micrograph is scored again; the smaller tile stays
for the scorer's later micrographs (`tile`), and `notes` says so once per size.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .config import STRIDE_MODES, VIEW_COUNTS, ScoreConfig
from . import quantized
from .allocator import keep_freed_memory
from .hardware import cpu_has
from .errors import InputError, PupickError
from .models import ConvBlock, Pool, ResBlock

# test-time views: (quarter turns, mirror first); scores are averaged over the dihedral copies of the image.
# Two views: the half turn, whose native-stride grid lands 3 px off the first in both axes (the vertical mirror's only
# in one): AP at or above the mirror pair's in 8 of 9 (set, seed) runs on the shared sets, -0.003 to +0.012, and
# within 0.004 of four views in every run (BENCHMARKS.md, pick_speed)
VIEWS = {1: [(0, False)], 2: [(0, False), (2, False)], 4: [(0, False), (1, False), (2, False), (3, False)],
         8: [(t, f) for f in (False, True) for t in range(4)]}
assert tuple(VIEWS) == VIEW_COUNTS
# downsampled pixels per tile side (at most; core.score._even_tile evens them out). CPU 1024: a 1024² image in one
# tile, 8% faster than four of 512 (their halos: 2 x receptive field each) once freed memory is reused
# (core.allocator; before that, fresh pages made 1024 slower than 512); 76 MB per activation. CUDA: 2048² in one call
DEFAULT_TILE = {"cpu": 1024, "cuda": 2048}
# views per network call: CPU 1 (four views in one call cost 1.3-1.5x more per view: the working set leaves the
# cache); elsewhere (GPU) all the views of a tile at once
VIEW_BATCH = {"cpu": 1}
# the smallest tile side (downsampled pixels) tried after running out of GPU memory; below it the micrograph fails
MIN_TILE = 256
# torch >= 2.5 names it torch.OutOfMemoryError; older releases only torch.cuda.OutOfMemoryError (the same class)
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


class OutOfDeviceMemory(PupickError):
    """The device ran out of memory even at the smallest scoring tile."""


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


def check_scoring_device(config: ScoreConfig) -> torch.device:
    """The device `config` scores on, refused (InputError) where it is absent or cannot run its precision."""
    device = choose_device(config.device)
    inference_precision(config.precision, device)
    return device


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX or AVX512-BF16) and torch's oneDNN may use them."""
    return cpu_has("amx_bf16", "avx512_bf16") and _onednn_runs_bf16()


@functools.lru_cache(maxsize=1)
def _onednn_runs_bf16() -> bool:
    # a site may cap oneDNN below the CPU (ONEDNN_MAX_CPU_ISA=AVX2, e.g. for the same numbers on every node of a
    # mixed cluster); its bf16 convolutions then refuse to run, so 'auto' must not choose bf16
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else True
    except RuntimeError:
        return True


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


def inference_precision(spec: str, device: torch.device) -> torch.dtype:
    """`choose_precision` for scoring: 'auto' on a GPU without bf16 scores in fp16 (no gradients, so no overflow
    of the kind training must guard against); otherwise the same choice. For 'int8', the precision of the input and
    the first layer (and of the whole network where int8 cannot run)."""
    if spec == "int8":
        if device.type != "cpu":
            raise InputError(f"--precision int8 runs on CPU only (this run's device is {device}; choose auto or bf16)")
        spec = "auto"
    dtype = choose_precision(spec, device)
    if spec == "auto" and device.type == "cuda" and dtype == torch.float32:
        return torch.float16
    return dtype


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


class _FusedCPU:
    """The network's forward pass as oneDNN convolutions with fused ReLU / residual-sum post-ops (CPU only).

    Same layers, weights and order as the module's forward; saves the separate memory passes of ReLU and the
    residual add (about 5% of the scoring time) and their temporaries. Built only for the layer kinds of
    core.models with folded batch norm; `build` returns None for anything else, and the module runs as it is.
    """

    def __init__(self, steps: list[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.steps = steps

    @classmethod
    def build(cls, module: torch.nn.Module) -> "_FusedCPU | None":
        ops = getattr(torch.ops, "mkldnn", None)
        if ops is None or not hasattr(ops, "_convolution_pointwise") or not torch.backends.mkldnn.is_available():
            return None
        conv_pw = ops._convolution_pointwise

        def conv_step(conv: torch.nn.Conv2d, relu: bool) -> Callable:
            args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
            attr = "relu" if relu else "none"
            return lambda x: conv_pw.default(x, conv.weight, conv.bias, *args, attr, [], "")

        def block(b: Any) -> Callable | None:
            if not isinstance(b, ConvBlock) or not isinstance(b.bn, torch.nn.Identity):
                return None
            return conv_step(b.conv, b.relu)

        steps: list[Callable] = []
        for layer in module.features:
            if isinstance(layer, ConvBlock):
                step = block(layer)
            elif isinstance(layer, Pool):
                step = (cls._max_step(layer.op) if layer.kind == "max" else block(layer.op))
            elif isinstance(layer, ResBlock):
                step = cls._res_step(layer, block(layer.a), conv_pw) if layer.a.relu and not layer.b.relu else None
            else:
                step = None
            if step is None:
                return None
            steps.append(step)
        steps.append(conv_step(module.classifier, False))  # dropout: a no-op in eval mode
        return cls(steps)

    @staticmethod
    def _max_step(pool: torch.nn.MaxPool2d) -> Callable:
        if pool.stride not in (1, (1, 1)) or pool.padding not in (0, (0, 0)) or pool.kernel_size not in (3, (3, 3)):
            return pool
        d = pool.dilation if isinstance(pool.dilation, int) else pool.dilation[0]
        # dense mode: a dilated 3x3 max at stride 1 as two separable passes (3-6x faster than max_pool2d, same values)
        return lambda x: _max3(_max3(x, 3, d), 2, d)

    @staticmethod
    def _res_step(layer: Any, first: Callable | None, conv_pw: Any) -> Callable | None:
        b = layer.b
        if first is None or not isinstance(b.bn, torch.nn.Identity):
            return None
        args = (list(b.conv.padding), list(b.conv.stride), list(b.conv.dilation), b.conv.groups)
        proj = layer.proj

        def step(x: torch.Tensor) -> torch.Tensor:
            t = layer.trim()
            shortcut = x[:, :, t:-t, t:-t]
            shortcut = shortcut.contiguous(memory_format=torch.channels_last) if isinstance(
                proj, torch.nn.Identity) else proj(shortcut)
            # relu(conv_b(relu(conv_a(x))) + shortcut) in two oneDNN calls
            return conv_pw.binary(first(x), shortcut, b.conv.weight, b.conv.bias, *args, "add", None, "relu", [], "")

        return step

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


def _max3(x: torch.Tensor, dim: int, d: int) -> torch.Tensor:
    """max(x[i], x[i + d], x[i + 2d]) along `dim` (valid positions only)."""
    n = x.shape[dim] - 2 * d
    out = torch.maximum(x.narrow(dim, 0, n), x.narrow(dim, d, n))
    return torch.maximum(out, x.narrow(dim, 2 * d, n), out=out)


class Scorer:
    """A model prepared once for inference (device, layout, precision, folded batch norm); call it on images."""

    def __init__(self, model: Any, config: ScoreConfig | None = None) -> None:
        config = config or ScoreConfig()
        if config.stride not in STRIDE_MODES:
            raise InputError(f"stride {config.stride!r}: choose {' or '.join(STRIDE_MODES)}")
        self.dense = config.stride == "dense"
        self.device = choose_device(config.device)
        self.dtype = inference_precision(config.precision, self.device)
        module = getattr(model, "module", model)
        self.receptive_field = int(getattr(model, "receptive_field", None) or module.receptive_field)
        self.pad = self.receptive_field // 2
        module = _fold_batchnorm(module)  # a copy: the caller's module keeps its mode
        module.set_dense(self.dense)
        self.stride = 1 if self.dense else int(module.stride)
        module = module.to(self.device).to(memory_format=torch.channels_last).eval()
        cpu = self.device.type == "cpu"
        self.int8 = quantized.build(module, config.precision) if cpu else None  # None: the float path below
        if cpu:  # weights in the compute precision: autocast's arithmetic without its per-call weight casts
            module = module.to(self.dtype)
            keep_freed_memory()
        self.module = module
        self.net: Callable[[torch.Tensor], torch.Tensor] = (_FusedCPU.build(module) if cpu else None) or module
        tile = config.tile_size or DEFAULT_TILE.get(self.device.type, DEFAULT_TILE["cuda"])
        self.tile = self.configured_tile = self._tile_side(int(tile))
        self.notes: list[str] = []  # said by the caller: the tile halved after running out of device memory
        views = config.resolved_views()
        if views not in VIEWS:
            raise InputError(f"views {views!r}: choose {', '.join(map(str, VIEWS))}")
        self.views = VIEWS[views]
        self.view_batch = VIEW_BATCH.get(self.device.type, len(self.views))  # views per network call
        self._buffers: dict[tuple, torch.Tensor] = {}  # kept between micrographs: padded inputs, coarse maps

    def _tile_side(self, tile: int) -> int:
        return max(self.stride, tile // self.stride * self.stride)

    def _retrying(self, score: Callable[[], Any]) -> Any:
        """score(), again with tiles half the side after each out-of-memory error, down to MIN_TILE."""
        while True:
            try:
                return score()
            except RuntimeError as err:  # OUT_OF_MEMORY, or a CUDA library's own "out of memory" (cuDNN, cuBLAS)
                if not isinstance(err, OUT_OF_MEMORY) and "out of memory" not in str(err).lower():
                    raise
            # out of the handler: its frame held the error's tensors, now released
            self._buffers.clear()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            smaller = self._tile_side(self.tile // 2)
            if self.tile // 2 < MIN_TILE or smaller >= self.tile:
                raise OutOfDeviceMemory(f"out of memory on {self.device} with {self.tile} px scoring tiles (none "
                                        f"under {MIN_TILE} px is tried); free the device's memory or use another")
            self.notes.append(f"warning: out of memory on {self.device} with {self.tile} px scoring tiles; "
                              f"scoring with {smaller} px tiles from now on")
            self.tile = smaller

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cpu":  # the weights are already in the compute precision
            return contextlib.nullcontext()
        return autocast_context(self.device, self.dtype)

    def _buffer(self, kind: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A zero-filled tensor kept for the next micrograph of the same shape (the last two shapes per kind: a
        non-square micrograph's views come in two)."""
        key = (kind, shape, dtype)
        buf = self._buffers.pop(key, None)
        if buf is None:
            same_kind = [k for k in self._buffers if k[0] == kind]
            for old in same_kind[:-1]:
                del self._buffers[old]
            buf = torch.zeros(shape, dtype=dtype, device=self.device)
        self._buffers[key] = buf  # most recently used last
        return buf

    def _forward(self, x: torch.Tensor, scales: list[float] | None = None) -> torch.Tensor:
        if self.int8 is not None and scales is not None:
            try:
                return self.int8(x, scales)
            except RuntimeError:  # a oneDNN build without these int8 kernels: the float path, from now on
                self.int8 = None
        if self.net is self.module:
            return self.module(x)
        try:
            return self.net(x)
        except RuntimeError:  # a oneDNN build without these fusions: the module's own forward, from now on
            self.net = self.module
            return self.module(x)

    def _int8_scales(self, batch: torch.Tensor, h: int, w: int) -> list[float] | None:
        """Int8 activation scales from crops of the first view (None: not scoring in int8)."""
        if self.int8 is None:
            return None
        return self.int8.scales(quantized.calibration_crops(batch[0], h, w, self.pad))

    def _coarse_batch(self, batch: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Maps at the scorer's stride of a padded batch [n, 1, h + 2P, w + 2P]: [n, ceil(h / J), ceil(w / J)]."""
        j, p, t, n = self.stride, self.pad, self.tile, batch.shape[0]
        out = self._buffer("coarse", (n, (h - 1) // j + 1, (w - 1) // j + 1), torch.float32)
        ty, tx = _even_tile(h, t, j), _even_tile(w, t, j)
        scales = self._int8_scales(batch, h, w)  # one set per micrograph: every tile and view scaled alike
        with torch.inference_mode(), self._autocast():
            for y0 in range(0, h, ty):
                for x0 in range(0, w, tx):
                    th, tw = min(ty, h - y0), min(tx, w - x0)
                    oh, ow = (th - 1) // j + 1, (tw - 1) // j + 1
                    for b0 in range(0, n, self.view_batch):
                        crop = batch[b0:b0 + self.view_batch, :, y0:y0 + th + 2 * p, x0:x0 + tw + 2 * p]
                        x = crop.contiguous(memory_format=torch.channels_last)
                        y = self._forward(x, scales)
                        out[b0:b0 + self.view_batch, y0 // j:y0 // j + oh, x0 // j:x0 // j + ow] = y[:, 0, :oh, :ow]
        return out

    def _padded(self, image: torch.Tensor, views: list[tuple[int, bool]]) -> torch.Tensor:
        """The views of an image (same shape), each zero-padded by P, stacked in the kept input buffer."""
        p = self.pad
        first = _view_t(image, *views[0])
        h, w = first.shape
        batch = self._buffer("input", (len(views), 1, h + 2 * p, w + 2 * p), self.dtype)
        with torch.inference_mode():
            for i, (turns, flip) in enumerate(views):
                batch[i, 0, p:p + h, p:p + w] = first if i == 0 else _view_t(image, turns, flip)
        return batch

    def _maps(self, image: np.ndarray, views: list[tuple[int, bool]]) -> torch.Tensor:
        """Score maps of the views (same shape), each on its view's full grid: [n, h, w] float32 on the device."""
        img = torch.from_numpy(image).to(self.device)
        batch = self._padded(img, views)
        h, w = batch.shape[2] - 2 * self.pad, batch.shape[3] - 2 * self.pad
        coarse = self._coarse_batch(batch, h, w)
        return coarse if self.stride == 1 else _upsample_t(coarse, self.stride, (h, w))

    def coarse(self, image: np.ndarray) -> np.ndarray:
        """Map at the scorer's stride of the image as given (one view): [k, l] scores pixel (k * stride, l * stride)."""
        image = _checked(image)

        def score() -> np.ndarray:
            batch = self._padded(torch.from_numpy(image).to(self.device), [(0, False)])
            return self._coarse_batch(batch, *image.shape)[0].cpu().numpy().copy()

        return self._retrying(score)

    def single(self, image: np.ndarray) -> np.ndarray:
        """Score map of the image as given (one view)."""
        image = _checked(image)
        return self._retrying(lambda: self._maps(image, [(0, False)])[0].cpu().numpy().copy())

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Score map on the image's grid (float32, same shape): map[i, j] scores a particle centred on pixel (i, j).

        With several views, the mean logit over rotated/flipped copies of the image, each mapped back.
        """
        image = _checked(image)
        return self._retrying(lambda: self._views_mean(image))

    def _views_mean(self, image: np.ndarray) -> np.ndarray:
        views = self.views
        # views of one shape go through the network together (all of them for a square micrograph)
        groups: dict[bool, list[int]] = {}
        for i, (turns, _) in enumerate(views):
            groups.setdefault(bool(turns % 2) and image.shape[0] != image.shape[1], []).append(i)
        maps: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for members in groups.values():
                batch_maps = self._maps(image, [views[i] for i in members])
                for k, i in enumerate(members):
                    maps[i] = batch_maps[k]
            total = _unview_t(maps[0], *views[0]).clone()
            for i in range(1, len(views)):  # summed in view order, as the per-view loop did
                total += _unview_t(maps[i], *views[i])
            if len(views) > 1:
                total /= float(len(views))
            return np.ascontiguousarray(total.cpu().numpy())


def _even_tile(n: int, most: int, stride: int) -> int:
    """Tile side that covers n pixels in the fewest tiles of at most `most`, all about equal (multiples of stride):
    a last sliver tile would cost its whole halo for few outputs."""
    parts = -(-n // most)
    return -(-n // parts // stride) * stride if parts > 1 else -(-n // stride) * stride


def _checked(image: np.ndarray) -> np.ndarray:
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise InputError(f"expected a 2-D image, got shape {image.shape}")
    return image


def _view_t(image: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """`view` on a tensor (a copy where the turn needs one)."""
    return torch.rot90(image.flip(-1) if flip else image, turns, (0, 1)) if (turns or flip) else image


def _unview_t(score_map: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """`unview` on a tensor."""
    back = torch.rot90(score_map, -turns, (0, 1)) if turns else score_map
    return back.flip(-1) if flip else back


def view(image: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """The image mirrored left-right (if `flip`), then turned by `turns` quarter turns (a numpy view, no copy)."""
    return np.rot90(image[:, ::-1] if flip else image, turns)


def unview(score_map: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """Map a view's score map back onto the original image's grid (the inverse of `view`)."""
    back = np.rot90(score_map, -turns)
    return back[:, ::-1] if flip else back


def _upsample_t(coarse: torch.Tensor, stride: int, shape: tuple[int, int]) -> torch.Tensor:
    """`upsample_map` on a batch of maps [n, k, l] (float32, any device) -> [n, shape[0], shape[1]]."""
    c = F.pad(coarse[:, None], (0, 1, 0, 1), mode="replicate")  # the last samples may fall short of the last pixels
    ny, nx = (c.shape[2] - 1) * stride + 1, (c.shape[3] - 1) * stride + 1
    up = F.interpolate(c, size=(ny, nx), mode="bicubic", align_corners=True)
    return up[:, 0, : shape[0], : shape[1]]


def upsample_map(coarse: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic interpolation of a map sampled at (k * stride, l * stride) onto every pixel of `shape`."""
    c = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))[None]
    with torch.inference_mode():
        return np.ascontiguousarray(_upsample_t(c, stride, shape)[0].numpy())


def score_micrograph(model: Any, image_ds: np.ndarray, config: ScoreConfig | None = None) -> np.ndarray:
    """Score map (downsampled grid, float32) of one preprocessed micrograph; see `Scorer` to reuse a prepared model."""
    return Scorer(model, config)(image_ds)
