"""The labels the user edits in the browser: OUTDIR/labels.csv (micrograph,x,y), rewritten atomically on each change."""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError
from ..io import atomic_path
from ..tables import stem

COLUMNS = ["micrograph", "x", "y"]
MAX_LABELS = 10_000  # per micrograph: far above a crowded micrograph's particles
MAX_BODY = 1 << 20  # bytes per PUT: 10,000 labels as JSON take about 250 kB


class BadLabels(InputError):
    """Labels that are not pairs of finite JSON numbers inside the micrograph (HTTP 422)."""


class TooManyLabels(InputError):
    """A labels request over MAX_BODY bytes or MAX_LABELS labels (HTTP 413)."""


def _coordinate(value: Any, axis: str, size: int | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadLabels(f"{axis} is {json.dumps(value)[:40]}: coordinates must be JSON numbers")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v):
        raise BadLabels(f"{axis} is {value!r}: coordinates must be finite numbers")
    if v < 0 or (size is not None and v >= size):
        raise BadLabels(f"{axis} is {value!r}: outside the micrograph (0 <= {axis} < {size} pixels)")
    return v


def parse_points(raw: bytes, shape: tuple[int, int] | None) -> list[tuple[float, float]]:
    """The labels of a PUT body `{"points": [[x, y], ...]}`, checked against the micrograph's (ny, nx)."""
    if len(raw) > MAX_BODY:
        raise TooManyLabels(f"the request is over {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise BadLabels(f"the body is not JSON ({str(err).splitlines()[0][:80]})") from None
    points = body.get("points") if isinstance(body, dict) else None
    if not isinstance(points, list):
        raise BadLabels('the body must be {"points": [[x, y], ...]}')
    if len(points) > MAX_LABELS:
        raise TooManyLabels(f"{len(points)} labels on one micrograph; at most {MAX_LABELS}")
    ny, nx = shape if shape is not None else (None, None)
    out = []
    for i, p in enumerate(points):
        if not isinstance(p, list) or len(p) != 2:
            raise BadLabels(f"point {i} is {json.dumps(p)[:40]}, not a pair [x, y]")
        out.append((_coordinate(p[0], "x", nx), _coordinate(p[1], "y", ny)))
    return out


def _csv_number(value: str, axis: str, where: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise InputError(f"{where}: {axis} is {value!r}, not a number") from None
    if not math.isfinite(v):
        raise InputError(f"{where}: {axis} is {value}, not a finite number")
    if v < 0:
        raise InputError(f"{where}: {axis} is {value}, below 0")
    return v


class LabelStore:
    """Labels per micrograph stem, in original pixels. Starts from `target` when it exists, else from `source`."""

    def __init__(self, target: Path, source: Path | None = None) -> None:
        self.target = Path(target)
        self.source = Path(source) if source else None
        self._lock = threading.Lock()
        self.points: dict[str, list[tuple[float, float]]] = {}
        if self.target.is_file():
            table = self._read_csv(self.target)
            self.origin = str(self.target)
        elif self.source is not None:
            table = self._read_any(self.source)
            self.origin = str(self.source)
        else:
            table = pd.DataFrame(columns=COLUMNS)
            self.origin = None
        for name, x, y in table[COLUMNS].itertuples(index=False):
            if math.isfinite(float(x)) and math.isfinite(float(y)):
                self.points.setdefault(stem(str(name)), []).append((float(x), float(y)))

    @staticmethod
    def _read_csv(path: Path) -> pd.DataFrame:
        """OUTDIR/labels.csv, every row checked: a bad one is InputError `labels.csv:ROW: ...` (ROW: file line)."""
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: unreadable labels ({str(err).splitlines()[0]})") from None
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)} (need micrograph, x, y)")
        rows = [(name, _csv_number(x, "x", f"{path}:{i + 2}"), _csv_number(y, "y", f"{path}:{i + 2}"))
                for i, (name, x, y) in enumerate(df[COLUMNS].itertuples(index=False))]
        return pd.DataFrame(rows, columns=COLUMNS)

    @staticmethod
    def _read_any(path: Path) -> pd.DataFrame:
        from pupick.adapters.registry import read_picks  # a composition root may use the adapters

        return read_picks(path)

    def table(self) -> pd.DataFrame:
        """All labels as a table (micrograph, x, y)."""
        with self._lock:
            rows = [(name, x, y) for name, pts in self.points.items() for x, y in pts]
        return pd.DataFrame(rows, columns=COLUMNS).astype({"x": float, "y": float})

    def as_dict(self) -> dict[str, list[list[float]]]:
        with self._lock:
            return {name: [[x, y] for x, y in pts] for name, pts in self.points.items() if pts}

    def set(self, name: str, points: list[tuple[float, float]]) -> int:
        """Replace one micrograph's labels (checked by parse_points) and rewrite the file; returns all labels' count."""
        clean = [(float(x), float(y)) for x, y in points]
        if len(clean) > MAX_LABELS:
            raise TooManyLabels(f"{len(clean)} labels on one micrograph; at most {MAX_LABELS}")
        with self._lock:
            self.points[name] = clean
            rows = [(n, x, y) for n, pts in self.points.items() for x, y in pts]
            self._write(rows)
            return len(rows)

    def _write(self, rows: list[tuple[str, float, float]]) -> None:
        with atomic_path(self.target) as tmp:
            pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp, index=False, float_format="%.2f")
        self.origin = str(self.target)
