"""The two tables every module exchanges (Picks, Micrographs) and the micrograph naming rule."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import PurePosixPath
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import InputError

# Picks: x = column, y = row, in the ORIGINAL micrograph's pixels; score is a logit (higher = more particle-like).
PICK_COLUMNS = ["micrograph", "x", "y", "score"]
# Micrographs: pixel_size in Å (NaN if unknown); ny, nx the image shape; CTF columns may follow.
MIC_COLUMNS = ["micrograph", "path", "pixel_size", "ny", "nx", "optics_group"]

IMAGE_EXTENSIONS = (".mrc", ".mrcs", ".tif", ".tiff", ".png", ".jpg", ".jpeg")


def stem(name: str | os.PathLike) -> str:
    """File name minus directories and exactly one known image extension (`a/May08.bin.mrc` -> `May08.bin`)."""
    base = str(name).replace("\\", "/").rstrip("/").rpartition("/")[2]  # PurePosixPath(..).name, faster
    lower = base.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(base) > len(ext):
            return base[: -len(ext)]
    return base


def duplicate_stems(stems: Iterable[str]) -> list[str]:
    """The stems that occur more than once, sorted (names that would collide in outputs or label matching)."""
    return sorted(s for s, n in Counter(stems).items() if n > 1)


def empty_picks(with_path: bool = False) -> pd.DataFrame:
    """A Picks table with no rows and the right dtypes."""
    df = pd.DataFrame(
        {
            "micrograph": pd.Series([], dtype=object),
            "x": pd.Series([], dtype=float),
            "y": pd.Series([], dtype=float),
            "score": pd.Series([], dtype=float),
        }
    )
    if with_path:
        df["path"] = pd.Series([], dtype=object)
    return df


def make_picks(
    micrograph: str | Sequence[str],
    x: Iterable[float],
    y: Iterable[float],
    score: Iterable[float] | None = None,
    path: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Build a Picks table; a scalar micrograph/path is broadcast, a missing score becomes NaN."""
    x = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=float)
    y = np.asarray(list(y) if not isinstance(y, np.ndarray) else y, dtype=float)
    n = len(x)
    score_arr = np.full(n, np.nan) if score is None else np.asarray(list(score) if not isinstance(score, np.ndarray) else score, dtype=float)
    mics = [micrograph] * n if isinstance(micrograph, str) else list(micrograph)
    df = pd.DataFrame({"micrograph": pd.Series(mics, dtype=object), "x": x, "y": y, "score": score_arr})
    if path is not None:
        df["path"] = pd.Series([path] * n if isinstance(path, str) else list(path), dtype=object)
    return df


def validate_picks(df: pd.DataFrame, source: str = "picks") -> pd.DataFrame:
    """Check a Picks table's columns and types; return it with `score` filled (NaN) and numeric x/y/score."""
    missing = [c for c in ("micrograph", "x", "y") if c not in df.columns]
    if missing:
        raise InputError(f"{source}: missing column(s) {', '.join(missing)} (need micrograph, x, y[, score])")
    out = df.copy()
    if "score" not in out.columns:
        out["score"] = np.nan
    for col in ("x", "y", "score"):
        converted = pd.to_numeric(out[col], errors="coerce")
        bad = converted.isna() & out[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{source}: row {row + 1}: column {col} is not a number ({out[col].iloc[row]!r})")
        out[col] = converted.astype(float)
    missing_xy = (out["x"].isna() | out["y"].isna()).to_numpy()
    if missing_xy.any():
        row = int(np.flatnonzero(missing_xy)[0])
        raise InputError(f"{source}: row {row + 1}: no coordinate (x = {out['x'].iloc[row]:g}, y = "
                         f"{out['y'].iloc[row]:g}; {int(missing_xy.sum())} such row(s)); every pick needs a number "
                         "for x and y")
    out["micrograph"] = out["micrograph"].astype(str).astype(object)
    cols = PICK_COLUMNS + [c for c in out.columns if c not in PICK_COLUMNS]
    return out[cols].reset_index(drop=True)


def _norm_rel(name: str) -> str:
    return str(PurePosixPath(str(name).replace("\\", "/")))


def match_names(keys: Iterable[str], micrographs: Sequence[str | os.PathLike], what: str = "labels") -> dict[str, int]:
    """Map each key (a table's `micrograph` value) to an index into `micrographs`, by the naming rule.

    A key containing '/' matches by relative path (the key equals a trailing part of the path); otherwise by stem.
    A key matching two micrographs is an error; keys matching none are left out of the result.
    """
    paths = [_norm_rel(p) for p in micrographs]
    by_stem: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        by_stem.setdefault(stem(p), []).append(i)
    result: dict[str, int] = {}
    for key in dict.fromkeys(str(k) for k in keys):
        if "/" in key.replace("\\", "/"):
            k = _norm_rel(key)
            hits = [i for i, p in enumerate(paths) if p == k or p.endswith("/" + k)]
            if not hits:  # a path key may still name the micrograph by its stem (a different directory layout)
                hits = by_stem.get(stem(k), [])
                if len(hits) > 1:
                    hits = [i for i in hits if PurePosixPath(paths[i]).name == PurePosixPath(k).name] or hits
        else:
            hits = by_stem.get(stem(key), [])
        if len(hits) > 1:
            names = ", ".join(paths[i] for i in hits[:3])
            raise InputError(f"{what}: micrograph name {key!r} is ambiguous; it matches {names}")
        if hits:
            result[key] = hits[0]
    return result


def describe_mismatch(keys: Iterable[str], micrographs: Sequence[str | os.PathLike], what: str = "labels") -> str:
    """A message listing a few names from each side, for when nothing matches."""
    ks = list(dict.fromkeys(str(k) for k in keys))[:4]
    ms = [stem(m) for m in micrographs][:4]
    return (
        f"{what}: no micrograph names match the given micrographs. "
        f"Names in {what}: {', '.join(ks) or '(none)'}; micrograph stems: {', '.join(ms) or '(none)'}. "
        "Names match by stem (file name without directory and image extension) or by relative path."
    )


def assign_micrographs(
    picks: pd.DataFrame, micrographs: Sequence[str | os.PathLike], what: str = "labels"
) -> tuple[dict[int, pd.DataFrame], int]:
    """Split a Picks table by micrograph index; returns ({index: rows}, number of rows whose micrograph was not given)."""
    mapping = match_names(picks["micrograph"].astype(str), micrographs, what)
    if len(picks) and not mapping:
        raise InputError(describe_mismatch(picks["micrograph"], micrographs, what))
    idx = picks["micrograph"].astype(str).map(mapping)
    unmatched = int(idx.isna().sum())
    groups = {int(i): g.reset_index(drop=True) for i, g in picks[idx.notna()].groupby(idx[idx.notna()].astype(int))}
    return groups, unmatched


def empty_micrographs() -> pd.DataFrame:
    """A Micrographs table with no rows."""
    return pd.DataFrame({c: pd.Series([], dtype=object if c in ("micrograph", "path") else float) for c in MIC_COLUMNS})


def make_micrographs(paths: Sequence[str], pixel_size: float | Sequence[float] | None = None,
                     shapes: Sequence[tuple[int, int]] | None = None, extra: Mapping[str, Sequence] | None = None) -> pd.DataFrame:
    """Build a Micrographs table from paths (shape/pixel size NaN when unknown)."""
    n = len(paths)
    ps = np.full(n, np.nan) if pixel_size is None else np.broadcast_to(np.asarray(pixel_size, dtype=float), (n,)).copy()
    ny = np.full(n, np.nan) if shapes is None else np.array([s[0] for s in shapes], dtype=float)
    nx = np.full(n, np.nan) if shapes is None else np.array([s[1] for s in shapes], dtype=float)
    df = pd.DataFrame({
        "micrograph": pd.Series([stem(p) for p in paths], dtype=object),
        "path": pd.Series([str(p) for p in paths], dtype=object),
        "pixel_size": ps, "ny": ny, "nx": nx, "optics_group": np.ones(n, dtype=int),
    })
    for k, v in (extra or {}).items():
        df[k] = list(v)
    return df
