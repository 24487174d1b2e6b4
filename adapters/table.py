"""Plain pick tables: CSV or TSV with a header `micrograph,x,y[,score][,path]`.

read_table(path, sep=None) -> Picks (separator from the extension: .csv comma, .tsv/.txt tab);
write_table(picks, path, sep=None); read_delimited / numeric_column are shared with the Topaz reader.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pupick.core.errors import InputError
from pupick.core.io import write_text_atomic
from pupick.core.tables import PICK_COLUMNS, validate_picks


def _sep_for(path: Path, sep: str | None) -> str:
    if sep is not None:
        return sep
    return "," if path.suffix.lower() == ".csv" else "\t"


def read_delimited(path: str | os.PathLike, sep: str) -> tuple[pd.DataFrame, list[int]]:
    """A header + rows text table as strings, and each row's line number; InputError for a ragged row."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read ({err})") from None
    lines = text.splitlines()
    numbered = [(i, ln) for i, ln in enumerate(lines, start=1) if ln.strip() and not ln.lstrip().startswith("#")]
    if not numbered:
        raise InputError(f"{path}: empty file (expected a header line)")
    if sep == "\t" and "\t" not in numbered[0][1]:
        sep = r"\s+"  # whitespace-separated variants of the same table
    split = (lambda s: s.split()) if sep == r"\s+" else (lambda s: s.split(sep))
    width = len(split(numbered[0][1].strip()))
    for number, line in numbered[1:]:
        n = len(split(line.strip()))
        if n != width:
            raise InputError(f"{path}: line {number}: {n} values for {width} columns")
    try:
        df = pd.read_csv(io.StringIO("\n".join(ln for _, ln in numbered)), sep=sep, dtype=str,
                         keep_default_na=False, engine="python" if sep == r"\s+" else "c")
    except (pd.errors.ParserError, ValueError) as err:
        raise InputError(f"{path}: not a readable table ({err})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df, [number for number, _ in numbered[1:]]


def numeric_column(df: pd.DataFrame, column: str, path: str | os.PathLike,
                   lines: list[int] | None = None) -> np.ndarray:
    """A column as floats; InputError naming column, row and line of the first non-number."""
    raw = df[column].astype(str).str.strip()
    values = pd.to_numeric(raw.replace({"": "nan"}), errors="coerce")
    bad = values.isna() & ~raw.str.lower().isin(["nan", ""])
    if column != "score":
        bad |= values.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        lines = lines or []
        where = f"row {row + 1}" + (f" (line {lines[row]})" if row < len(lines) else "")
        raise InputError(f"{path}: column {column}, {where}: {raw.iloc[row]!r} is not a number")
    return values.to_numpy(dtype=float)


def read_table(path: str | os.PathLike, sep: str | None = None) -> pd.DataFrame:
    """Picks from a CSV/TSV table with micrograph, x, y[, score][, path] columns."""
    path = Path(path)
    df, lines = read_delimited(path, _sep_for(path, sep))
    missing = [c for c in ("micrograph", "x", "y") if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (need micrograph, x, y[, score]; "
                         f"columns here: {', '.join(df.columns)})")
    out = pd.DataFrame({"micrograph": df["micrograph"].astype(str)})
    for col in ("x", "y"):
        out[col] = numeric_column(df, col, path, lines)
    out["score"] = numeric_column(df, "score", path, lines) if "score" in df.columns else np.nan
    if "path" in df.columns:
        out["path"] = df["path"].astype(str)
    return validate_picks(out, str(path))


def write_table(picks: pd.DataFrame, path: str | os.PathLike, sep: str | None = None) -> None:
    """Picks as CSV/TSV (columns micrograph, x, y, score[, path]), atomically."""
    path = Path(path)
    write_text_atomic(path, table_text(picks, _sep_for(path, sep)))


def table_text(picks: pd.DataFrame, sep: str, header: bool = True) -> str:
    """write_table's text; rows format independently, so a table may be written in pieces (header on the first)."""
    cols = PICK_COLUMNS + (["path"] if "path" in picks.columns else [])
    return picks[cols].to_csv(sep=sep, index=False, header=header, float_format="%.10g", na_rep="nan")
