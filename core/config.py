"""Typed configuration dataclasses: the only thing wrappers and the CLI build before calling core."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable

from .errors import InputError, RemovedOption

NORMALIZATIONS = ("gmm", "affine", "none")
# the architectures core.models.MODELS builds (names here, so front ends offer them without importing torch)
# network name -> its feature layers (convolution, residual block or pooling; core.models.PLANS holds the plans)
FEATURE_LAYERS = {"resnet8": 7, "resnet16": 10, "conv31": 5, "conv63": 7, "conv127": 9, "resnet8n": 7}
ARCHITECTURES = tuple(FEATURE_LAYERS)
MAX_UNITS = 128  # the widest network (--units) pupick trains or loads; bounds a model file (core.modelarchive)
TARGET_DIAMETER_PX = 40  # the factor rule: smallest integer s >= 1 with diameter_px / s <= 40
# Bounds on what one training may claim (a client of `pupick serve` chooses these; issue 26). Each is far above any
# real run (defaults 8 tiles of 128 px, 6 x 12 steps; the general model 12 x 50; benchmarks at most 8 tiles of 160).
MAX_BATCH_SIZE = 256  # tiles per step: 32x the default
MAX_TRAIN_TILE = 1024  # training tile side, downsampled px: a whole 4k micrograph at the factor rule's usual s >= 4
MAX_STEP_PIXELS = 1 << 24  # batch x tile²: 128x the default step (256 tiles of 256², 16 of 1024²); one fp32
# activation of such a step at --units 128 is 8.6 GB and the network keeps several: about what one GPU holds
MAX_STEPS = 100_000  # epochs x steps per epoch: ~1400x the default, days of training on a CPU
MAX_UNLABELED_SAMPLES = 1 << 20  # outputs per GE group (default 256), cut from the step's own outputs: a larger N
# is one group of them all, so memory does not grow with it; the cap only keeps it a plausible count
MAX_LABEL_RADIUS = 64.0  # downsampled px: the disk is drawn around every label (a (2r+1)² stencil); the factor rule
# brings particles to <= 40 px across, so a wider disk only labels ice
MAX_CALIBRATION_BATCHES = 64  # batches re-estimating batch-norm statistics after each epoch (default 2)


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

    def __post_init__(self) -> None:
        _finite(self.factor, "--scale", minimum=1)
        _finite(self.diameter_A, "--diameter", minimum=0, strict=True)
        _finite(self.diameter_px, "--diameter-px", minimum=0, strict=True)
        _finite(self.pixel_size, "--pixel-size", minimum=0, strict=True)
        _one_of(self.normalize, "--normalize", NORMALIZATIONS)
        _whole(self.seed, "--seed", 0)
        _whole(self.gmm_samples, "gmm_samples", 1000)

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
    arch: str = "resnet8"  # resnet8n: half the channels at half resolution, faster, a little lower AP (BENCHMARKS.md)
    units: int = 32
    batchnorm: bool = True
    dropout: float = 0.0
    pooling: str = "max"  # max | stride
    objective: str = "ge-binomial"
    slack: float | None = None  # None: the objective's default (1 for ge-binomial, 10 for ge-kl)
    expected_particles: float | None = None  # per micrograph; None: twice the labeled mean (with a warning)
    label_radius: int = 3  # positive-label radius, downsampled pixels
    unlabeled_samples: int = 256  # N, unlabeled outputs per step in the GE penalty
    epochs: int = 6  # with the weight average and the PCA start below: BENCHMARKS.md, seed spread (issue 19)
    steps_per_epoch: int = 12
    batch_size: int = 8  # tiles per step
    tile_size: int = 128  # downsampled pixels, output tile (input adds the receptive field)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    test_split: float = 0.0  # a validation micrograph costs more AP than epoch selection gains (BENCHMARKS.md)
    augment_rotations: str = "90"  # 90 (random 90° rotations and flips) | none
    tile_sampling: str = "grid"  # grid (shuffled passes of a jittered grid) | random (uniform tile positions)
    seed: int = 0
    device: str = "auto"
    workers: int = 0  # unused: tiles are cut in the training thread (cheap next to a step)
    cache_dir: str | None = None
    precision: str = "auto"  # auto (bf16 autocast where the hardware has it) | fp32 | bf16; weights stay fp32
    calibration_batches: int = 2  # batches that re-estimate batch-norm statistics after each epoch
    train_stride: str = "native"  # outputs in the loss: native (network stride) | dense (every pixel, dilated)
    validation_stride: str = "native"  # scorer mode for per-epoch validation AP (STRIDE_MODES)
    init: str | None = None  # fine-tune from this model: a file or a shipped name (`general`); None: from scratch
    ema_decay: float = 0.97  # weights saved = exponential moving average over steps with this decay (0: last step)
    lr_schedule: str = "constant"  # constant | cosine: learning_rate decays to 0 over all epochs x steps (LR_SCHEDULES)
    weight_init: str = "pca"  # pca (principal components of the training tiles: core.weightinit) | random (seeded)
    frozen_layers: int | None = None  # the first N feature layers keep their starting weights (no gradient);
    # None: the first layer when it starts as the data's principal components (issue 30, BENCHMARKS.md), else none

    def __post_init__(self) -> None:
        _check_train_config(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def frozen_layer_count(self) -> int:
        """--frozen-layers, or by default 1 when training starts from the PCA weights (no --init), else 0."""
        if self.frozen_layers is not None:
            return self.frozen_layers
        return 1 if self.init is None and self.weight_init == "pca" else 0


def _check_train_config(c: "TrainConfig") -> None:
    """Raise InputError (one line naming the option as `pupick train` spells it) for a config that cannot work."""
    _finite(c.learning_rate, "--learning-rate", minimum=0, strict=True)
    for option, value in (("--units", c.units), ("--epochs", c.epochs), ("--steps-per-epoch", c.steps_per_epoch),
                          ("--batch-size", c.batch_size), ("--tile-size", c.tile_size),
                          ("--unlabeled-samples", c.unlabeled_samples)):
        _whole(value, option, 1)
    if c.units > MAX_UNITS:
        raise InputError(f"--units must be at most {MAX_UNITS} (got {c.units})")
    _whole(c.batch_size, "--batch-size", 1, MAX_BATCH_SIZE)
    _whole(c.tile_size, "--tile-size", 1, MAX_TRAIN_TILE)
    if c.batch_size * c.tile_size ** 2 > MAX_STEP_PIXELS:
        raise InputError(f"--batch-size x --tile-size² must be at most {MAX_STEP_PIXELS} pixels per step "
                         f"(got {c.batch_size} x {c.tile_size}² = {c.batch_size * c.tile_size ** 2})")
    if c.epochs * c.steps_per_epoch > MAX_STEPS:
        raise InputError(f"--epochs x --steps-per-epoch must be at most {MAX_STEPS} steps "
                         f"(got {c.epochs} x {c.steps_per_epoch} = {c.epochs * c.steps_per_epoch})")
    _whole(c.unlabeled_samples, "--unlabeled-samples", 1, MAX_UNLABELED_SAMPLES)
    _whole(c.calibration_batches, "calibration_batches", 0, MAX_CALIBRATION_BATCHES)
    _whole(c.seed, "--seed", 0)
    _whole(c.frozen_layers, "--frozen-layers", 0)
    if c.init is None:  # with --init the architecture is the init model's: train checks it once that is read
        check_frozen_layers(c)
    if not (isinstance(c.test_split, (int, float)) and 0 <= c.test_split < 1):
        raise InputError(f"--test-split must be in [0, 1) (got {c.test_split!r})")
    _finite(c.label_radius, "--label-radius", minimum=0)
    if c.label_radius is not None and c.label_radius > MAX_LABEL_RADIUS:
        raise InputError(f"--label-radius must be at most {MAX_LABEL_RADIUS:g} downsampled px (got {c.label_radius:g})")
    _finite(c.weight_decay, "--weight-decay", minimum=0)
    _finite(c.dropout, "--dropout", minimum=0)
    if c.dropout >= 1:
        raise InputError(f"--dropout must be below 1 (got {c.dropout:g})")
    _finite(c.expected_particles, "--expected-particles", minimum=0, strict=True)
    _finite(c.slack, "--slack", minimum=0)
    if not (isinstance(c.ema_decay, (int, float)) and 0 <= c.ema_decay < 1):
        raise InputError(f"--ema-decay must be in [0, 1) (got {c.ema_decay!r})")
    _one_of(c.lr_schedule, "--lr-schedule", LR_SCHEDULES)
    _one_of(c.weight_init, "--weight-init", WEIGHT_INITS)
    if c.init is not None and not (isinstance(c.init, str) and c.init.strip()):
        raise InputError(f"--init must be a model file or a shipped model's name (got {c.init!r})")
    _one_of(c.arch, "--arch", ARCHITECTURES)
    _one_of(c.pooling, "--pooling", ("max", "stride"))
    _one_of(c.augment_rotations, "--augment", ("90", "none"))
    _one_of(c.tile_sampling, "--tile-sampling", TILE_SAMPLINGS)
    _one_of(c.train_stride, "--train-stride", STRIDE_MODES)
    _one_of(c.validation_stride, "--validation-stride", STRIDE_MODES)
    _one_of(c.precision, "--precision", PRECISIONS)
    check_device(c.device)


MAX_PICKS = 1_000_000  # per micrograph: a 4k micrograph holds a few thousand particles at most
MAX_SCORE_TILE = 8192  # scoring tile side, downsampled px (default 1024 CPU, 2048 GPU): a K3 super-resolution
# micrograph whole at factor 1; larger micrographs are scored in tiles, so no picks are lost by the cap
MAX_PICK_WORKERS = 64  # reader threads, each holding a micrograph: more than any machine's cores keep busy
VIEW_COUNTS = (1, 2, 4, 8)  # test-time views the scorer offers (see core.score.VIEWS)
DEFAULT_VIEWS = 2  # native stride: the half-turn pair, within 0.005 AP of 4 views on every shared set at half the
# network time (issue 15, BENCHMARKS.md pick_speed); 4 and 8 views score alike
STRIDE_MODES = ("native", "dense")  # one name in training and picking: the network's own stride, or every pixel
PRECISIONS = ("auto", "fp32", "bf16")  # training (autocast) and scoring
# scoring also offers int8 on CPU (core.quantized): u8 activations scaled per micrograph, s8 weights
SCORE_PRECISIONS = PRECISIONS + ("int8",)
LR_SCHEDULES = ("constant", "cosine")  # learning rate per training step: core.optim.scheduled_lr
TILE_SAMPLINGS = ("random", "grid")  # where training tiles are cut: core.tiles.TileSampler
WEIGHT_INITS = ("random", "pca")  # a network's starting weights when not fine-tuning: core.weightinit
METHODS = ("cnn", "blob")
DEFAULT_THRESHOLD = -6.0  # logit; low on purpose so recall (and AP) is not capped
# The blob prior (core.blob.add_blob_prior): the general model's map plus this x the blob response, both in robust
# s.d.; the weight with the best mean gain that lowered no cell of the leave-one-set-out models of EMPIAR-10028 and
# 10059 (clean and low contrast), confirmed on 10017 (BENCHMARKS.md, "The blob prior"). It fits the shipped recipe
# (the real sets): a model trained on simulated sets alone lost with it, so a general model made another way records
# its own weight (`blob_weight` in its file), which replaces this one.
GENERAL_BLOB_WEIGHT = 0.25
MAX_BLOB_WEIGHT = 100.0  # 100 robust s.d. of blob per s.d. of CNN score: the blob picker, in all but name


def check_frozen_layers(c: TrainConfig) -> None:
    """Refuse more frozen layers than the network has (InputError naming --frozen-layers)."""
    layers = FEATURE_LAYERS.get(c.arch)
    if layers is not None and c.frozen_layer_count() > layers:
        raise InputError(f"--frozen-layers must be at most {layers}, the feature layers of {c.arch} "
                         f"(got {c.frozen_layers})")


def _finite(value: float, option: str, *, minimum: float | None = None, strict: bool = False) -> None:
    """Refuse NaN/inf and values below the minimum, naming the option as the command line spells it."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else (f" > {minimum:g}" if strict else f" >= {minimum:g}")
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise InputError(f"{option} must be a finite number{bound} (got {shown})")


def _whole(value: int | None, option: str, minimum: int, maximum: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{option} must be a whole number >= {minimum} (got {value})")
    if maximum is not None and value > maximum:
        raise InputError(f"{option} must be a whole number from {minimum} to {maximum} (got {value})")


def _one_of(value: Any, option: str, choices: tuple) -> None:
    if value not in choices:
        raise InputError(f"{option} must be one of {', '.join(map(str, choices))} (got {value!r})")


def check_device(spec: str) -> str:
    """A device the engine accepts: auto, cpu, cuda or cuda:N (the one rule every front end offers)."""
    s = str(spec).strip().lower()
    if s in DEVICES or (s.startswith("cuda:") and s[5:].isdigit()):
        return s
    raise InputError(f"--device must be one of {', '.join(DEVICES)} or cuda:N (got {spec!r})")


DEVICES = ("auto", "cpu", "cuda")  # plus cuda:N


@dataclass(frozen=True)
class ScoreConfig:
    """How the CNN scores a micrograph: device, precision, stride mode, test-time views, tile size."""

    device: str = "auto"
    precision: str = "auto"  # auto (int8 on VNNI CPUs, else bf16 where the hardware has it) | fp32 | bf16 | int8
    stride: str = "native"  # native (network stride + sub-pixel refinement) | dense (exact map at every pixel)
    views: int | None = None  # mean score over 1, 2, 4 or 8 rotated/mirrored copies; None: DEFAULT_VIEWS native, 1 dense
    tile_size: int | None = None  # downsampled pixels per scoring tile side (at most); None: 1024 on CPU, 2048 on GPU

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_device(self.device))
        _one_of(self.precision, "--precision", SCORE_PRECISIONS)
        _one_of(self.stride, "stride", STRIDE_MODES)
        if self.precision == "int8" and self.stride != "native":
            raise InputError("--precision int8 scores at the native stride only (drop --dense, or choose bf16)")
        if self.precision == "int8" and self.device.startswith("cuda"):
            raise InputError(f"--precision int8 runs on CPU only (--device {self.device}: choose auto or bf16)")
        if self.views is not None:
            _one_of(self.views, "--views", VIEW_COUNTS)
        _whole(self.tile_size, "--tile-size", 16, MAX_SCORE_TILE)

    def resolved_views(self) -> int:
        """`views`, else the default: DEFAULT_VIEWS at the native stride, 1 (the exact map) in the dense mode."""
        if self.views is not None:
            return self.views
        return 1 if self.stride == "dense" else DEFAULT_VIEWS


@dataclass(frozen=True)
class ExtractConfig:
    """How a score map becomes coordinates (all lengths in original pixels)."""

    threshold: float = DEFAULT_THRESHOLD
    min_distance_px: float | None = None  # None: min_distance_A, else the particle radius
    min_distance_A: float | None = None  # the same in Å, converted with each micrograph's own pixel size
    max_picks: int | None = None  # per micrograph
    border_px: float | None = None  # None: the particle radius, or the model's learned label edge margin when wider
    # (a particle centred nearer the edge is cut by it: its box cannot be extracted, and experts do not label it)

    def __post_init__(self) -> None:
        _finite(self.threshold, "--threshold")
        _finite(self.min_distance_px, "--min-distance", minimum=0)
        _finite(self.min_distance_A, "min_distance (Å)", minimum=0)
        _whole(self.max_picks, "--max-picks", 1, MAX_PICKS)
        _finite(self.border_px, "--border", minimum=0)


@dataclass(frozen=True)
class BlobConfig:
    """The training-free blob picker (method "blob")."""

    dark_particles: bool = True  # particles darker than the ice (the usual cryo-EM contrast)
    weight: float | None = None  # method cnn: the blob prior's weight; None: GENERAL_BLOB_WEIGHT for the general
    # model (zero labels), 0 (off) for a model trained on labels

    def __post_init__(self) -> None:
        _finite(self.weight, "--blob-weight", minimum=0)
        if self.weight is not None and self.weight > MAX_BLOB_WEIGHT:
            raise InputError(f"--blob-weight must be at most {MAX_BLOB_WEIGHT:g} (got {self.weight:g})")

    def resolved_weight(self, general_model: bool, model_weight: float | None = None) -> float:
        """`weight`; else the model's own (`blob_weight` in its file); else GENERAL_BLOB_WEIGHT for a general
        model, 0 for one trained on labels."""
        if self.weight is not None:
            return float(self.weight)
        if model_weight is not None:
            return float(model_weight)
        return GENERAL_BLOB_WEIGHT if general_model else 0.0


@dataclass(frozen=True)
class PickConfig:
    """Everything `pick` needs besides micrographs and a model, in four concerns kept apart."""

    method: str = "cnn"  # cnn | blob
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)  # pixel size, diameter, scale, seed
    score: ScoreConfig = field(default_factory=ScoreConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    blob: BlobConfig = field(default_factory=BlobConfig)
    exclude_carbon: bool = False  # drop picks on pixels far from the GMM ice component
    workers: int = 1  # reader/preprocessor threads overlapping with scoring
    score_map_dir: str | None = None  # write each score map as <dir>/<stem>.mrc (downsampled grid)

    def __post_init__(self) -> None:
        _one_of(self.method, "--method", METHODS)
        _whole(self.workers, "--workers", 1, MAX_PICK_WORKERS)
        pre = self.preprocess
        if self.method == "blob" and pre.diameter_A is None and pre.diameter_px is None:
            raise InputError("the blob picker needs the particle diameter: --diameter (Å) or --diameter-px")
        if self.method == "blob" and self.blob.weight is not None:
            raise InputError("--blob-weight weighs the blob prior added to a CNN's map; --method blob takes none")

    @property
    def seed(self) -> int:
        return self.preprocess.seed

    def recorded(self) -> dict[str, Any]:
        """The settings that change the picks (a rerun into the same directory must agree on them)."""
        out = {"method": self.method, **{k: v for k, v in asdict(self.extract).items()},
               "pixel_size": self.preprocess.pixel_size, "diameter_A": self.preprocess.diameter_A,
               "diameter_px": self.preprocess.diameter_px, "downsample_factor": self.preprocess.factor,
               "seed": self.preprocess.seed, "stride": self.score.stride, "views": self.score.resolved_views(),
               "exclude_carbon": self.exclude_carbon}
        if self.method == "blob":
            out["dark_particles"] = self.blob.dark_particles
        else:  # the blob prior's: recorded when not the default, so directories picked before it still match
            if self.blob.weight is not None:
                out["blob_weight"] = self.blob.weight
            if not self.blob.dark_particles:
                out["dark_particles"] = False
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **settings: Any) -> "PickConfig":
        """A copy with CLI-named settings changed (see SETTINGS)."""
        return PickConfig.from_settings(settings, base=self)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], base: "PickConfig | None" = None) -> "PickConfig":
        """Build from CLI-named keys (`min_distance`, `views`, ...); an unknown key is an InputError naming it."""
        check_removed(settings, lambda key: f"setting {key}")
        unknown = sorted(k for k in settings if k not in SETTINGS)
        if unknown:
            raise InputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(SETTINGS))}")
        base = base or cls()
        parts: dict[str, dict[str, Any]] = {s: {} for s in ("", "preprocess", "score", "extract", "blob")}
        for key, value in settings.items():
            section, name, convert = SETTINGS[key]
            if value is None and key not in NULLABLE:
                continue
            try:
                parts[section][name] = convert(value) if value is not None else None
            except (TypeError, ValueError):
                raise InputError(f"setting {key}: {value!r} is not a valid value") from None
        return replace(
            base, **parts[""],
            preprocess=replace(base.preprocess, **parts["preprocess"]),
            score=replace(base.score, **parts["score"]),
            extract=replace(base.extract, **parts["extract"]),
            blob=replace(base.blob, **parts["blob"]),
        )


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(value)
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, float) and not (value.is_integer() and abs(value) <= 2 ** 53):  # 1e300 is no count
        raise ValueError(value)
    return int(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(value)
    return value


# The one registry of picking settings: CLI option name (dashes as underscores) -> (section, field, converter).
# `pupick pick`, the service's `settings` body and the wrappers all build a PickConfig through it.
SETTINGS: dict[str, tuple[str, str, Any]] = {
    "method": ("", "method", str),
    "threshold": ("extract", "threshold", _number),
    "min_distance": ("extract", "min_distance_px", _number),
    "min_distance_A": ("extract", "min_distance_A", _number),
    "max_picks": ("extract", "max_picks", _integer),
    "top_n": ("extract", "max_picks", _integer),  # hidden alias of max_picks
    "border": ("extract", "border_px", _number),
    "pixel_size": ("preprocess", "pixel_size", _number),
    "diameter": ("preprocess", "diameter_A", _number),
    "diameter_px": ("preprocess", "diameter_px", _number),
    "scale": ("preprocess", "factor", _number),
    "seed": ("preprocess", "seed", _integer),
    "device": ("score", "device", str),
    "precision": ("score", "precision", str),
    "stride": ("score", "stride", str),
    "views": ("score", "views", _integer),
    "tile_size": ("score", "tile_size", _integer),
    "dark_particles": ("blob", "dark_particles", _flag),
    "blob_weight": ("blob", "weight", _number),
    "exclude_carbon": ("", "exclude_carbon", _flag),
    "workers": ("", "workers", _integer),
}
NULLABLE = frozenset()  # None always means "the default"

# The one registry of options and settings pupick had and removed: name -> why, and what to use instead. Every front
# end (`pupick pick`, the service's settings, the RELION, cryoSPARC and Scipion wrappers) refuses such a name, with
# any value, through `check_removed` before any work starts: one line, the same words everywhere.
REMOVED: dict[str, str] = {
    "bootstrap": "it never beat the general model alone (BENCHMARKS.md). With zero labels pick with the general "
                 "model alone (--model general); for a better model label ~20 particles on one micrograph in "
                 "`pupick view` and Train",
}


def removed_message(name: str, spelled: str) -> str:
    """The one line refusing removed option `name`, as this front end spells it (`--bootstrap`, `setting ...`)."""
    return f"{spelled} was removed: {REMOVED[name]}"


def check_removed(names: Iterable[str], spell: Callable[[str], str]) -> None:
    """Raise RemovedOption for the first removed option among `names` (spelled by `spell`), naming its replacement."""
    for name in names:
        if name in REMOVED:
            raise RemovedOption(removed_message(name, spell(name)))
