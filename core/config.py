"""Typed configuration dataclasses: the only thing wrappers and the CLI build before calling core."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InputError

TARGET_DIAMETER_PX = 40  # the factor rule: smallest integer s >= 1 with diameter_px / s <= 40


@dataclass
class PreprocessConfig:
    """How micrographs are turned into the network's input."""

    factor: float | None = None  # downsampling factor s (None: derived from the diameter)
    diameter_A: float | None = None  # particle diameter in Å (needs a pixel size)
    diameter_px: float | None = None  # particle diameter in original pixels
    pixel_size: float | None = None  # Å per original pixel; overrides the file header
    normalize: str = "gmm"  # gmm | affine | none
    seed: int = 0
    gmm_samples: int = 200_000  # pixels subsampled for the mixture fit

    def diameter_in_px(self, header_pixel_size: float | None = None) -> float | None:
        """The particle diameter in original pixels, from --diameter-px or --diameter with a pixel size."""
        if self.diameter_px is not None:
            return float(self.diameter_px)
        if self.diameter_A is not None:
            ps = self.pixel_size or header_pixel_size
            if not ps or not math.isfinite(ps) or ps <= 0:
                raise InputError(
                    "--diameter is in Å but the pixel size is unknown (MRC header unset): "
                    "give --pixel-size, or the diameter in pixels with --diameter-px"
                )
            return float(self.diameter_A) / float(ps)
        return None

    def resolve_factor(self, header_pixel_size: float | None = None) -> float:
        """The downsampling factor: --scale if given, else the rule applied to the diameter, else 1."""
        if self.factor is not None:
            if not self.factor >= 1:
                raise InputError(f"--scale must be >= 1 (got {self.factor})")
            return float(self.factor)
        d = self.diameter_in_px(header_pixel_size)
        return float(choose_factor(d)) if d is not None else 1.0


def choose_factor(diameter_px: float, target: float = TARGET_DIAMETER_PX) -> int:
    """Smallest integer s >= 1 with diameter_px / s <= target."""
    if not diameter_px > 0:
        raise InputError(f"particle diameter must be positive (got {diameter_px} px)")
    return max(1, math.ceil(diameter_px / target - 1e-9))


@dataclass
class TrainConfig:
    """Everything `train` needs besides micrographs and labels."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    arch: str = "resnet8"
    units: int = 32
    batchnorm: bool = True
    dropout: float = 0.0
    pooling: str = "max"  # max | stride
    objective: str = "ge-binomial"
    slack: float | None = None  # None: the objective's default (1 for ge-binomial, 10 for ge-kl)
    expected_particles: float | None = None  # per micrograph; None: twice the labeled mean (with a warning)
    label_radius: int = 3  # positive-label radius, downsampled pixels
    unlabeled_samples: int = 256  # N, unlabeled outputs per step in the GE penalty
    epochs: int = 4
    steps_per_epoch: int = 12
    batch_size: int = 8  # tiles per step
    tile_size: int = 128  # downsampled pixels, output tile (input adds the receptive field)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    test_split: float = 0.2
    augment_rotations: str = "90"  # 90 (random 90° rotations and flips) | none
    seed: int = 0
    device: str = "auto"
    workers: int = 0  # unused: tiles are cut in the training thread (cheap next to a step)
    cache_dir: str | None = None
    precision: str = "auto"  # auto (bf16 autocast where the hardware has it) | fp32 | bf16; weights stay fp32
    calibration_batches: int = 2  # batches that re-estimate batch-norm statistics after each epoch
    train_stride: str = "native"  # outputs in the loss: native (network stride) | dense (every pixel, dilated)
    validation_stride: str = "fast"  # scorer mode for per-epoch validation AP: fast (native stride) | dense

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


VIEW_COUNTS = (1, 2, 4, 8)  # test-time views the scorer offers (see core.score.VIEWS)
DEFAULT_VIEWS = 2  # fast mode: the half-turn pair, within 0.005 AP of 4 views on every shared set at half the network time (issue 15, BENCHMARKS.md pick_speed)


@dataclass
class PickConfig:
    """Everything `pick` needs besides micrographs and a model."""

    threshold: float = -6.0  # logit; low on purpose so recall (and AP) is not capped
    min_distance_px: float | None = None  # original pixels; None: the model's particle radius
    max_picks: int | None = None  # per micrograph
    border_px: float | None = None  # original pixels; picks closer to the edge are dropped. None: the particle radius,
    # or the model's learned label edge margin when wider (at most a diameter)
    # (a particle centred nearer the edge is cut by it: its box cannot be extracted, and experts do not label it)
    pixel_size: float | None = None  # Å/px override for the micrographs (rescales if it differs from the model's)
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16
    stride: str = "fast"  # fast (native stride + refinement) | dense (exact dense map)
    views: int | None = None  # test-time augmentation: mean score over 1, 2, 4 or 8 rotated/mirrored copies of the
    # micrograph; None: DEFAULT_VIEWS in the fast mode, 1 (the exact map) in the dense mode
    tile_size: int | None = None  # downsampled pixels per scoring tile side; None: 512
    workers: int = 1  # reader/preprocessor threads overlapping with scoring
    write_score_maps: bool = False  # kept for callers; maps are written when score_map_dir is set
    score_map_dir: str | None = None  # write each score map as <dir>/<stem>.mrc (downsampled grid)
    seed: int = 0
    # training-free blob picker (method="blob"): no model; needs the diameter
    method: str = "cnn"  # cnn | blob
    diameter_A: float | None = None
    diameter_px: float | None = None  # original pixels
    dark_particles: bool = True
    exclude_carbon: bool = False  # drop picks on pixels far from the GMM ice component
    top_n: int | None = None  # keep the N best per micrograph (blob picker's usual mode)
    factor: float | None = None  # blob picker's downsampling factor (None: the rule applied to the diameter)

    def resolved_views(self) -> int:
        """`views`, else the default: DEFAULT_VIEWS in the fast mode, 1 (the exact map) in the dense mode."""
        if self.views is not None:
            return self.views
        return 1 if self.stride == "dense" else DEFAULT_VIEWS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
