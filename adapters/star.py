"""STAR files: reading through `starfile` with errors that name the block, column, row and line; RELION-style writing.

`read_star(path)` -> StarFile (blocks: {name: DataFrame}, version: int | None); `StarFile.block(...)`,
`StarFile.column(...)` / `StarFile.numbers(...)` check presence and types. `format_star(blocks, version)` renders
text the way RELION's MetaDataTable writes it; `write_star(blocks, path, version)` writes it atomically.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pupick.core.errors import InputError
from pupick.core.io import write_text_atomic

VERSION_RE = re.compile(r"^#\s*version\s+(\d+)")


@dataclass
class _LoopLayout:
    """Where a loop's rows sit in the file (for error messages)."""

    columns: list[str]
    lines: list[int] = field(default_factory=list)  # 1-based line number of each data row


def _tokens(line: str) -> list[str]:
    if '"' in line or "'" in line:
        try:
            return shlex.split(line, comments=False)
        except ValueError:
            return line.split()
    return line.split()


def _scan(path: Path, text: str) -> tuple[dict[str, _LoopLayout], int | None]:
    """Check the loop structure line by line; returns each loop block's layout and the `# version` number."""
    layouts: dict[str, _LoopLayout] = {}
    version: int | None = None
    block: str | None = None
    state = "none"  # none | block | header | rows
    layout: _LoopLayout | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = VERSION_RE.match(line)
            if m and version is None:
                version = int(m.group(1))
            continue
        if line.startswith("data_"):
            block = line[5:]
            state = "block"
            continue
        if block is None:
            raise InputError(f"{path}: line {number}: content before the first data_ block ({line[:40]!r}); "
                             "not a STAR file")
        if line.startswith("loop_"):
            layout = _LoopLayout([])
            layouts[block] = layout
            state = "header"
            continue
        if line.startswith("_"):
            if state == "header" and layout is not None:
                layout.columns.append(line.split()[0][1:])
            elif state == "rows":
                raise InputError(f"{path}: block data_{block}, line {number}: label {line.split()[0]} "
                                 "after the loop's rows")
            continue  # a label/value pair of a simple block
        if state in ("header", "rows") and layout is not None:
            state = "rows"
            n = len(_tokens(line))
            if n != len(layout.columns):
                raise InputError(
                    f"{path}: block data_{block}, row {len(layout.lines) + 1} (line {number}): "
                    f"{n} values for {len(layout.columns)} columns"
                )
            layout.lines.append(number)
        elif state == "block":
            raise InputError(f"{path}: block data_{block}, line {number}: expected loop_ or _label, got {line[:40]!r}")
    return layouts, version


@dataclass
class StarFile:
    """A parsed STAR file: loop blocks as DataFrames, simple blocks as dicts, and its `# version`."""

    path: Path
    blocks: dict[str, pd.DataFrame | dict]
    version: int | None
    layouts: dict[str, _LoopLayout]

    def names(self) -> str:
        return ", ".join(f"data_{b}" for b in self.blocks) or "(none)"

    def find(self, *columns: str) -> str | None:
        """Name of the first loop block holding all `columns`, or None."""
        for name, block in self.blocks.items():
            if isinstance(block, pd.DataFrame) and all(c in block.columns for c in columns):
                return name
        return None

    def block(self, name: str) -> pd.DataFrame:
        """A loop block by name; InputError naming the blocks present when it is missing."""
        block = self.blocks.get(name)
        if not isinstance(block, pd.DataFrame):
            raise InputError(f"{self.path}: no loop block data_{name} (blocks: {self.names()})")
        return block

    def column(self, name: str, column: str) -> pd.Series:
        """A column of a loop block; InputError naming block and column when it is missing."""
        block = self.block(name)
        if column not in block.columns:
            raise InputError(
                f"{self.path}: block data_{name} has no column _{column} (columns: {', '.join(block.columns)})"
            )
        return block[column]

    def numbers(self, name: str, column: str, integer: bool = False, allow_nan: bool = False) -> np.ndarray:
        """A numeric column as float64 (or int64); InputError naming block, column, row and line otherwise."""
        raw = self.column(name, column)
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if allow_nan:
            text_nan = np.array([str(v).strip().lower() in ("nan", "<na>") for v in raw], dtype=bool)
            missing = raw.isna().to_numpy() | text_nan
            bad &= ~missing
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{self.path}: block data_{name}, column _{column}, {self.where(name, row)}: "
                f"{raw.iloc[row]!r} is not a {'whole ' if integer else ''}number"
            )
        out = values.to_numpy(dtype=float)
        if integer:
            if not np.all(out == np.round(out)):
                row = int(np.flatnonzero(out != np.round(out))[0])
                raise InputError(
                    f"{self.path}: block data_{name}, column _{column}, {self.where(name, row)}: "
                    f"{raw.iloc[row]!r} is not a whole number"
                )
            return out.astype(np.int64)
        return out

    def strings(self, name: str, column: str) -> list[str]:
        """A column as strings (names, paths)."""
        return [str(v) for v in self.column(name, column)]

    def where(self, name: str, row: int) -> str:
        """`row N (line L)` for error messages."""
        layout = self.layouts.get(name)
        if layout is not None and row < len(layout.lines):
            return f"row {row + 1} (line {layout.lines[row]})"
        return f"row {row + 1}"


def read_star(path: str | os.PathLike) -> StarFile:
    """Read a STAR file with `starfile`, after checking its structure; InputError on anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the STAR file ({err})") from None
    layouts, version = _scan(path, text)
    if not layouts and "data_" not in text:
        return StarFile(path, {}, version, layouts)
    import starfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile/pandas raise many unrelated types for malformed text
        reason = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "malformed text")
        raise InputError(f"{path}: not a readable STAR file ({reason})") from None
    blocks = {str(k): (v.reset_index(drop=True) if isinstance(v, pd.DataFrame) else v) for k, v in blocks.items()}
    return StarFile(path, blocks, version, layouts)


def _format_float(v: float) -> str:
    # RELION writes doubles fixed with 6 decimals, or in exponent form outside 0.001..100000, width 12
    if not math.isfinite(v):
        return f"{v:>12}"
    a = abs(v)
    if (0 < a < 0.001) or a > 100000.0:
        return f"{v:12.5e}" if v < 0 else f"{v:12.6e}"
    return f"{v:12.5f}" if v < 0 else f"{v:12.6f}"


def _format_column(values: pd.Series) -> list[str]:
    if pd.api.types.is_bool_dtype(values):
        return [f"{int(v):>10}" for v in values]
    if pd.api.types.is_integer_dtype(values):
        return [f"{int(v):>10}" for v in values]
    if pd.api.types.is_float_dtype(values):
        return [_format_float(float(v)) for v in values]
    out = []
    for v in values:
        s = str(v)
        if not s or any(ch.isspace() for ch in s):
            s = f'"{s}"'
        out.append(f"{s:>10}")
    return out


def format_star(blocks: Mapping[str, pd.DataFrame] | Sequence[tuple[str, pd.DataFrame]],
                version: int | None = 30001) -> str:
    """Render loop blocks as RELION does: `# version N` (3.1+; none for 3.0), data_NAME, `loop_ `, `_label #i `."""
    items = list(blocks.items()) if isinstance(blocks, Mapping) else list(blocks)
    parts: list[str] = []
    for name, df in items:
        parts.append(loop_head(name, df.columns, version))
        parts.append(loop_rows(df))
        parts.append(LOOP_END)
    return "".join(parts)


LOOP_END = " \n"  # after a loop's rows


def loop_head(name: str, columns: Sequence[str], version: int | None = 30001) -> str:
    """The text of a loop block before its rows (`format_star` is loop_head + loop_rows + LOOP_END per block)."""
    head = "\n"
    if version is not None:
        head += f"# version {version}\n\n"
    head += f"data_{name}\n\nloop_ \n"
    return head + "".join(f"_{col} #{i} \n" for i, col in enumerate(columns, start=1))


def loop_rows(df: pd.DataFrame) -> str:
    """A loop's rows as RELION writes them; rows format independently, so a table may be written in pieces."""
    if not len(df):
        return ""
    columns = [_format_column(df[col]) for col in df.columns]
    return "".join(" ".join(row) + " \n" for row in zip(*columns))


def write_star(blocks: Mapping[str, pd.DataFrame] | Sequence[tuple[str, pd.DataFrame]], path: str | os.PathLike,
               version: int | None = 30001) -> None:
    """Write loop blocks RELION-style, atomically."""
    write_text_atomic(path, format_star(blocks, version))
