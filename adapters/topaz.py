"""Topaz particle tables: tab-separated `image_name x_coord y_coord [score]`, image_name = micrograph stem.

read_topaz(path) -> Picks; write_topaz(picks, path). Coordinates are written as whole pixels, as Topaz reads them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from pupick.core.errors import InputError
from pupick.core.io import write_text_atomic
from pupick.core.tables import make_picks

from .table import read_delimited

TOPAZ_COLUMNS = ("image_name", "x_coord", "y_coord")


def read_topaz(path: str | os.PathLike) -> pd.DataFrame:
    """Picks from a Topaz coordinate table (score column optional)."""
    df, lines = read_delimited(path, sep="\t")
    missing = [c for c in TOPAZ_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (Topaz tables have "
                         f"image_name, x_coord, y_coord[, score]; columns here: {', '.join(map(str, df.columns))})")
    from .table import numeric_column

    x = numeric_column(df, "x_coord", path, lines)
    y = numeric_column(df, "y_coord", path, lines)
    score = numeric_column(df, "score", path, lines) if "score" in df.columns else None
    return make_picks(df["image_name"].astype(str).tolist(), x, y, score)


def write_topaz(picks: pd.DataFrame, path: str | os.PathLike) -> None:
    """Picks as a Topaz table (x/y rounded to whole pixels; score kept when any is known), atomically."""
    write_text_atomic(Path(path), topaz_text(picks))


def topaz_text(picks: pd.DataFrame, header: bool = True, score: bool | None = None) -> str:
    """write_topaz's text (`score`: write the column; by default when any score is known), for pieces too."""
    out = pd.DataFrame({
        "image_name": picks["micrograph"].astype(str).to_numpy(dtype=object),
        "x_coord": np.rint(picks["x"].to_numpy(dtype=float)).astype(np.int64),
        "y_coord": np.rint(picks["y"].to_numpy(dtype=float)).astype(np.int64),
    })
    if score is None:
        score = "score" in picks.columns and bool(picks["score"].notna().any())
    if score:
        out["score"] = picks["score"].to_numpy(dtype=float)
    return out.to_csv(sep="\t", index=False, header=header, float_format="%.6g", na_rep="nan")
