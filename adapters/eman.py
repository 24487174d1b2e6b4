"""EMAN `.box` (lower-left corner + box size, one file per micrograph) and EMAN2 `<micrograph>_info.json` (centres).

read_box(path, micrograph=None) -> Picks; write_box(picks_one_mic, path, box_size);
read_info_json(path, micrograph=None) -> Picks; write_info_json(picks_one_mic, path);
box_size_for(box_size=None, diameter_px=None) -> int (the project rule: --box-size, else the smallest even
integer >= 1.5 x the particle diameter in pixels).
Coordinates are not flipped: row 0 of the image is y = 0 in both files, as EMAN, RELION and Topaz read them.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pupick.core.errors import InputError
from pupick.core.io import write_text_atomic
from pupick.core.tables import make_picks

from .relion import micrograph_from_coordinate_file


def box_size_for(box_size: float | None = None, diameter_px: float | None = None) -> int:
    """Box size in pixels: the given one, else the smallest even integer >= 1.5 x diameter; InputError if neither."""
    if box_size is not None:
        if not box_size > 0 or int(box_size) != box_size:
            raise InputError(f"--box-size must be a positive whole number of pixels (got {box_size})")
        return int(box_size)
    if diameter_px is not None and diameter_px > 0:
        size = math.ceil(1.5 * diameter_px - 1e-9)
        return size + (size % 2)
    raise InputError("writing .box files needs a box size: give --box-size, or the particle diameter "
                     "(--diameter-px, or --diameter with a pixel size); the box is 1.5 x the diameter")


def read_box(path: str | os.PathLike, micrograph: str | None = None) -> pd.DataFrame:
    """Picks (centres) from an EMAN .box file: x_corner y_corner width height per line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the .box file ({err})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 4:
            raise InputError(f"{path}: line {number}: expected x y width height, got {len(fields)} value(s)")
        try:
            x, y, w, h = (float(v) for v in fields[:4])
        except ValueError:
            raise InputError(f"{path}: line {number}: not a number in {line.strip()!r}") from None
        if not (w > 0 and h > 0) or not all(map(math.isfinite, (x, y, w, h))):
            raise InputError(f"{path}: line {number}: box size must be positive and finite (got {w} x {h})")
        rows.append((x + w / 2, y + h / 2))
    arr = np.array(rows, dtype=float).reshape(-1, 2)
    return make_picks(micrograph or micrograph_from_coordinate_file(path), arr[:, 0], arr[:, 1])


def write_box(picks: pd.DataFrame, path: str | os.PathLike, box_size: int) -> None:
    """One micrograph's picks as an EMAN .box file (integer corners, tab-separated), atomically."""
    size = box_size_for(box_size)
    corners_x = np.rint(picks["x"].to_numpy(dtype=float) - size / 2).astype(np.int64)
    corners_y = np.rint(picks["y"].to_numpy(dtype=float) - size / 2).astype(np.int64)
    text = "".join(f"{cx}\t{cy}\t{size}\t{size}\n" for cx, cy in zip(corners_x, corners_y))
    write_text_atomic(path, text)


def read_info_json(path: str | os.PathLike, micrograph: str | None = None) -> pd.DataFrame:
    """Picks from an EMAN2 `_info.json` (`boxes`: [x, y, type(, score)] centres)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read ({err})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with a 'boxes' list")
    boxes = data.get("boxes", [])
    if not isinstance(boxes, list):
        raise InputError(f"{path}: 'boxes' is not a list")
    xs, ys, scores = [], [], []
    for i, box in enumerate(boxes):
        if not isinstance(box, (list, tuple)) or len(box) < 2:
            raise InputError(f"{path}: boxes[{i}]: expected [x, y, type], got {box!r}")
        try:
            xs.append(float(box[0]))
            ys.append(float(box[1]))
        except (TypeError, ValueError):
            raise InputError(f"{path}: boxes[{i}]: x/y are not numbers ({box[:2]!r})") from None
        score = box[3] if len(box) > 3 else None
        scores.append(float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else np.nan)
    name = micrograph or micrograph_from_coordinate_file(path)
    return make_picks(name, xs, ys, scores)


def write_info_json(picks: pd.DataFrame, path: str | os.PathLike, box_type: str = "manual") -> None:
    """One micrograph's picks as an EMAN2 `_info.json` (boxes: [x, y, type, score]); other keys are kept."""
    path = Path(path)
    data: dict = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{path}: exists and is not a readable EMAN2 info file; not overwriting it") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: exists and is not a JSON object; not overwriting it")
    boxes = []
    score = picks["score"].to_numpy(dtype=float) if "score" in picks.columns else np.full(len(picks), np.nan)
    for x, y, s in zip(picks["x"].to_numpy(dtype=float), picks["y"].to_numpy(dtype=float), score):
        entry: list = [round(float(x), 3), round(float(y), 3), box_type]
        if np.isfinite(s):
            entry.append(float(s))
        boxes.append(entry)
    data["boxes"] = boxes
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
