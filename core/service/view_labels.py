"""The labels the user edits in the browser: OUTDIR/labels.csv (micrograph,x,y), rewritten atomically on each change."""
from __future__ import annotations

import math
import threading
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..io import atomic_path
from ..tables import stem

COLUMNS = ["micrograph", "x", "y"]


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
        try:
            df = pd.read_csv(path, dtype={"micrograph": str})
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: unreadable labels ({str(err).splitlines()[0]})") from None
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)} (need micrograph, x, y)")
        return df

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
        """Replace one micrograph's labels and rewrite the file; returns the number of labels in all."""
        clean = []
        for p in points:
            x, y = float(p[0]), float(p[1])
            if not (math.isfinite(x) and math.isfinite(y)):
                raise InputError(f"label coordinates must be finite numbers (got {p[0]}, {p[1]})")
            clean.append((x, y))
        with self._lock:
            self.points[name] = clean
            rows = [(n, x, y) for n, pts in self.points.items() for x, y in pts]
            self._write(rows)
            return len(rows)

    def _write(self, rows: list[tuple[str, float, float]]) -> None:
        with atomic_path(self.target) as tmp:
            pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp, index=False, float_format="%.2f")
        self.origin = str(self.target)
