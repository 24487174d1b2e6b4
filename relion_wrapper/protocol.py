"""RELION's External job protocol: the command line RELION builds, parsed and checked against a parameter table."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pupick.core.config import check_removed
from pupick.core.errors import InputError

# Input fields of the External job GUI; RELION passes each one the user filled in as --<name> FILE.
INPUT_FIELDS = ("in_movies", "in_mics", "in_parts", "in_coords", "in_3dref", "in_mask")


@dataclass
class ExternalArgs:
    """One parsed External job command line."""

    out_dir: Path
    out_name: str  # --o exactly as RELION gave it (node names are written relative to the project like this)
    inputs: dict[str, str] = field(default_factory=dict)  # in_mics -> path, ...
    threads: int = 1  # --j
    params: dict[str, str] = field(default_factory=dict)  # user parameters; "" for a bare flag


@dataclass(frozen=True)
class Param:
    """One user parameter an executable accepts (the label typed into the External job's Params tab)."""

    name: str
    convert: Callable[[str], Any]
    help: str
    default: Any = None
    allow_empty: bool = False  # a bare `--name` is meaningful (e.g. gpu: any GPU)


def find_out_dir(argv: Sequence[str]) -> str | None:
    """The --o value, looked up on its own so an exit file can be written even when the rest does not parse."""
    for i, tok in enumerate(argv):
        if tok == "--o" and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            return argv[i + 1]
        if tok.startswith("--o="):
            return tok[4:]
    return None


def _tokens(argv: Sequence[str]) -> list[tuple[str, str]]:
    """Pair each `--key` with its value ('' when the next token is another key or there is none)."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or tok == "--":
            raise InputError(f"unexpected argument {tok!r}: parameters are given as --label value")
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = tok[2:], argv[i + 1]
            i += 2
        else:
            key, value = tok[2:], ""
            i += 1
        if not key:
            raise InputError(f"unexpected argument {tok!r}")
        pairs.append((key, value))
    return pairs


def parse_external(argv: Sequence[str]) -> ExternalArgs:
    """Parse `--o DIR [--in_X FILE]... [--LABEL VALUE]... --j N [additional args]` as RELION passes it."""
    seen: set[str] = set()
    out: str | None = None
    inputs: dict[str, str] = {}
    params: dict[str, str] = {}
    threads = 1
    for key, value in _tokens(argv):
        if key in seen:
            raise InputError(f"--{key} is given twice (check the Params tab and 'Additional arguments')")
        seen.add(key)
        if key == "o":
            out = value
        elif key in INPUT_FIELDS:
            if not value:
                raise InputError(f"--{key} needs a file name")
            inputs[key] = value
        elif key == "j":
            threads = to_int(value, "j", minimum=1)
        elif key == "pipeline_control":
            pass  # RELION adds it for executables whose name contains 'relion_'; it repeats --o
        else:
            params[key] = value
    if not out:
        raise InputError("--o (the job's output directory) is missing")
    return ExternalArgs(out_dir=Path(out), out_name=out, inputs=inputs, threads=threads, params=params)


def check_inputs(args: ExternalArgs, allowed: Sequence[str], program: str) -> None:
    """Refuse input fields this executable does not read (a node put in the wrong field is a user mistake)."""
    extra = [k for k in args.inputs if k not in allowed]
    if extra:
        raise InputError(
            f"{program} does not read --{extra[0]}; it reads {', '.join('--' + a for a in allowed)}"
        )


def convert_params(params: Mapping[str, str], table: Sequence[Param], program: str) -> dict[str, Any]:
    """Convert user parameters by the executable's table; unknown labels are an error listing the known ones."""
    known = {p.name: p for p in table}
    check_removed(params, lambda key: f"parameter {key}")
    unknown = [k for k in params if k not in known]
    if unknown:
        names = ", ".join(sorted(unknown))
        raise InputError(
            f"unknown parameter(s) {names} for {program}; it accepts: {', '.join(p.name for p in table)}"
        )
    values = {p.name: p.default for p in table}
    for key, raw in params.items():
        param = known[key]
        if raw == "" and not param.allow_empty:
            raise InputError(f"parameter {key} has no value; give one or remove it")
        values[key] = param.convert(raw)
    return values


# Converters: raw text in, value out; errors name the parameter.

def to_float(raw: str, name: str, minimum: float | None = None, positive: bool = False) -> float:
    """A finite number, optionally bounded."""
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"parameter {name}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"parameter {name}: {raw!r} is not a finite number")
    if positive and not value > 0:
        raise InputError(f"parameter {name}: must be positive (got {raw})")
    if minimum is not None and value < minimum:
        raise InputError(f"parameter {name}: must be >= {minimum} (got {raw})")
    return value


def to_int(raw: str, name: str, minimum: int | None = None) -> int:
    """An integer, optionally bounded below."""
    try:
        value = int(raw)
    except ValueError:
        try:
            as_float = float(raw)
        except ValueError:
            as_float = math.nan
        if not as_float.is_integer():
            raise InputError(f"parameter {name}: {raw!r} is not a whole number") from None
        value = int(as_float)
    if minimum is not None and value < minimum:
        raise InputError(f"parameter {name}: must be >= {minimum} (got {raw})")
    return value


def number(name: str, **bounds: Any) -> Callable[[str], float]:
    """A float converter that names its parameter in errors."""
    return lambda raw: to_float(raw, name, **bounds)


def whole(name: str, **bounds: Any) -> Callable[[str], int]:
    """An int converter that names its parameter in errors."""
    return lambda raw: to_int(raw, name, **bounds)


def choice(name: str, options: Sequence[str]) -> Callable[[str], str]:
    """One of a fixed set of words."""

    def convert(raw: str) -> str:
        if raw not in options:
            raise InputError(f"parameter {name}: {raw!r} is not one of {', '.join(options)}")
        return raw

    return convert


def text(raw: str) -> str:
    """Any non-empty text."""
    return raw


def device_spec(device: str | None, gpu: str | None) -> str:
    """The torch device from `device` (auto|cpu|cuda|cuda:N) or RELION's `gpu` habit (bare, '0', '0,1')."""
    if device is not None and gpu is not None:
        raise InputError("give either parameter device or gpu, not both")
    if gpu is not None:
        ids = [g for g in gpu.replace(":", ",").split(",") if g.strip()]
        if not ids:
            return "cuda"
        first = ids[0].strip()
        if not first.isdigit():
            raise InputError(f"parameter gpu: {gpu!r} is not a GPU number (e.g. 0)")
        return f"cuda:{first}"
    return device or "auto"
