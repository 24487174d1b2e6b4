"""The micrographs table of one round, served a window at a time: sorted, filtered and counted on the server."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError
from .view_index import RoundIndex, decimal

MAX_ROWS = 200  # rows one request (and the page) holds
SORTS = ("name", "count")


class MicrographRows:
    """Every micrograph of a round (requested, picked, recorded or failed) by name, with its picks' place in the index."""

    def __init__(self, key: tuple, index: RoundIndex, names: list[str], paths: dict[str, str],
                 failures: dict[str, str]) -> None:
        self.key = key
        self.index = index
        self.names = sorted(names)
        self.paths = paths
        self.failures = failures
        self.code = np.array([index.position.get(n, -1) for n in self.names], dtype=np.int64)
        self.openable = np.array([bool(paths.get(n)) and n not in failures for n in self.names], dtype=bool)

    def counts_at(self, threshold: float) -> np.ndarray:
        """Picks >= threshold of each row (0 for a micrograph without picks)."""
        per = self.index.counts_at(threshold)
        return np.where(self.code >= 0, per[np.maximum(self.code, 0)] if len(per) else 0, 0)

    def order(self, sort: str, desc: bool, threshold: float, q: str = "") -> np.ndarray:
        """Row numbers in the order the page shows them (names containing q, case-insensitive)."""
        if sort not in SORTS:
            raise InputError(f"unknown sort {sort!r} (choose {', '.join(SORTS)})")
        rows = np.arange(len(self.names))
        if q:
            needle = q.lower()
            rows = rows[[needle in n.lower() for n in self.names]]
        if sort == "count":
            counts = self.counts_at(threshold)[rows]
            rows = rows[np.argsort(-counts if desc else counts, kind="stable")]
        elif desc:
            rows = rows[::-1]
        return rows

    def row(self, i: int, count: int) -> dict[str, Any]:
        name, c = self.names[i], int(self.code[i])
        n = int(self.index.n[c]) if c >= 0 else 0
        lo = decimal(self.index.score_min[c]) if c >= 0 else math.nan
        hi = decimal(self.index.score_max[c]) if c >= 0 else math.nan
        return {"name": name, "path": self.paths.get(name), "n": n, "count": int(count),
                "score_min": lo if math.isfinite(lo) else None, "score_max": hi if math.isfinite(hi) else None,
                "error": self.failures.get(name)}

    def window(self, offset: int, limit: int, sort: str = "name", desc: bool = False, threshold: float = -math.inf,
               q: str = "", at: str | None = None) -> dict[str, Any]:
        """Rows offset..offset+limit of the order; with `at`, the window of `limit` rows that holds that micrograph."""
        order = self.order(sort, desc, threshold, q)
        if at is not None:
            hits = np.flatnonzero(np.asarray(self.names, dtype=object)[order] == at)
            if not len(hits):
                raise LookupError(f"unknown micrograph {at!r}")
            offset = int(hits[0]) // limit * limit
        counts = self.counts_at(threshold)
        rows = [self.row(int(i), counts[i]) for i in order[offset:offset + limit]]
        return {"total": int(len(order)), "offset": int(offset), "limit": int(limit), "micrographs": rows}

    def neighbour(self, name: str, step: int, sort: str, desc: bool, threshold: float, q: str = "") -> str | None:
        """The next (step 1) or previous (-1) micrograph that can be opened, in the page's order, wrapping round."""
        order = self.order(sort, desc, threshold, q)
        order = order[self.openable[order]]
        if not len(order):
            return None
        names = np.asarray(self.names, dtype=object)[order]
        hits = np.flatnonzero(names == name)
        i = int(hits[0]) if len(hits) else (-1 if step > 0 else 0)
        return str(names[(i + step) % len(names)])
