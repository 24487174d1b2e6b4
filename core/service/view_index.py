"""One round's picks.csv as the pages see it: each micrograph's rows (byte range), count and score range, every score;
from the index the pick run wrote beside it (core.picks_index, checked first), else read once, streamed.

What the pages need at 50,000 micrographs without holding the picks table: the score of every pick (float32, 4 bytes
a pick, for the counts at a threshold, the histogram and the suggested threshold) and, per micrograph, where its rows
lie in the file, so that its picks are read from disk when it is opened. picks.csv keeps a micrograph's rows together
(core.outputs); a file that does not is still read, its picks then found by a streamed filter.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import picks_index
from ..errors import InputError

BINS = 200  # the score histogram the pages draw
CHUNK = 1 << 24  # bytes read at a time
REQUIRED = ("micrograph", "x", "y", "score")


@dataclass
class RoundIndex:
    """picks.csv as the pages see it; `key` (path, mtime, size) says which version of the file it describes."""

    path: Path
    key: tuple
    columns: list[str]
    names: list[str]  # micrographs with picks, in file order
    paths: list[str]  # each one's image path ('' when the file names none)
    rows: np.ndarray  # rows[i]:rows[i + 1] are micrograph i's scores in `scores`
    byte_start: np.ndarray | None  # micrograph i's rows are bytes byte_start[i]:byte_end[i] (None: not contiguous)
    byte_end: np.ndarray | None
    scores: np.ndarray  # float32, grouped by micrograph
    position: dict[str, int] = field(default_factory=dict)
    _counts: tuple | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.position = {n: i for i, n in enumerate(self.names)}
        seg = self.rows[:-1]
        nonempty = len(self.scores) > 0
        self.n = np.diff(self.rows)
        self.score_min = np.fmin.reduceat(self.scores, seg) if nonempty else np.zeros(0, np.float32)
        self.score_max = np.fmax.reduceat(self.scores, seg) if nonempty else np.zeros(0, np.float32)

    def counts_at(self, threshold: float) -> np.ndarray:
        """Picks scoring >= threshold, per micrograph (the last threshold's answer is kept)."""
        if self._counts is not None and self._counts[0] == threshold:
            return self._counts[1]
        if not len(self.scores):
            counts = np.zeros(len(self.names), np.int64)
        else:
            kept = np.greater_equal(self.scores, np.float32(threshold)).view(np.uint8)  # summed as bytes: 6x faster
            counts = np.add.reduceat(kept, self.rows[:-1], dtype=np.int32).astype(np.int64)
        self._counts = (threshold, counts)
        return counts

    def histogram(self, bins: int = BINS) -> dict:
        """Every score in `bins` equal bins from the lowest to the highest finite score."""
        finite = self.scores[np.isfinite(self.scores)]
        if not len(finite):
            return {"lo": None, "hi": None, "counts": [], "n": 0}
        lo, hi = decimal(finite.min()), decimal(finite.max())
        counts, _ = np.histogram(finite, bins=bins, range=(lo, hi if hi > lo else lo + 1))
        return {"lo": lo, "hi": hi, "counts": counts.tolist(), "n": int(len(finite))}

    def kth_largest(self, k: int) -> float | None:
        """The k-th highest score (None when there are fewer than k)."""
        finite = self.scores[np.isfinite(self.scores)]
        if not 1 <= k <= len(finite):
            return None
        return decimal(np.partition(finite, len(finite) - k)[len(finite) - k])

    def picks_of(self, name: str) -> pd.DataFrame:
        """One micrograph's rows (micrograph, x, y, score, path), read from the file; empty when it has none."""
        i = self.position.get(name)
        if i is None:
            return pd.DataFrame({c: pd.Series(dtype=float if c in ("x", "y", "score") else object)
                                 for c in ("micrograph", "x", "y", "score", "path")})
        if self.byte_start is not None:
            with open(self.path, "rb") as fh:
                fh.seek(int(self.byte_start[i]))
                data = fh.read(int(self.byte_end[i] - self.byte_start[i]))
            df = _parse(data, self.columns)
        else:  # rows spread over the file: a streamed filter
            df = pd.concat([c[c["micrograph"] == name] for c in _chunks(self.path, self.columns)] or [_parse(b"", self.columns)])
        if "path" not in df.columns:
            df["path"] = ""
        if len(df) != self.n[i] or (len(df) and (df["micrograph"] != name).any()):
            raise InputError(f"{self.path}: changed while being read; reload the page")
        return df


def decimal(v: np.float32) -> float:
    """The shortest decimal that is this float32: the number picks.csv wrote (%.6g), not float32's neighbour."""
    return float(str(np.float32(v)))


def _parse(data: bytes, columns: list[str]) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data), header=None, names=columns, dtype={"micrograph": str, "path": str},
                       keep_default_na=False, na_values={"score": [""], "x": [""], "y": [""]}, skip_blank_lines=False)


def _cell(line: bytes, at: int | None) -> str:
    """Column `at` of one CSV row ('' when there is none), quotes as pandas writes them."""
    if at is None:
        return ""
    row = next(csv.reader([line.rstrip(b"\r").decode("utf-8", "replace")]), [])
    return row[at] if at < len(row) else ""


def _header(fh, path: Path) -> list[str]:
    columns = fh.readline().decode("utf-8", "replace").strip().split(",")
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    return columns


def _blocks(fh):
    """(byte offset, whole lines) from the current position to the end."""
    offset, rest = fh.tell(), b""
    while True:
        block = fh.read(CHUNK)
        data = rest + block
        if not block:
            if data:
                yield offset, data if data.endswith(b"\n") else data + b"\n"
            return
        cut = data.rfind(b"\n") + 1
        if cut:
            yield offset, data[:cut]
            offset += cut
        rest = data[cut:]


def _chunks(path: Path, columns: list[str]):
    with open(path, "rb") as fh:
        fh.readline()
        for _, data in _blocks(fh):
            yield _parse(data, columns)


def extends(base: "RoundIndex | None", key: tuple) -> bool:
    """Whether `key` is `base`'s file grown by appending: the same path and inode (a rewrite renames a new file
    into place), larger, and `base` with contiguous rows (what the pick runs write)."""
    return (base is not None and len(key) == 4 and len(base.key) == 4 and base.key[0] == key[0]
            and base.key[3] == key[3] and key[2] > base.key[2] and base.byte_start is not None
            and len(base.names) > 0 and int(base.byte_end[-1]) == base.key[2])


def build_index(path: Path, key: tuple, base: RoundIndex | None = None) -> RoundIndex:
    """One pass over picks.csv in CHUNK-byte blocks (no table of all picks is ever held); when the file grew by
    appending since `base` was built (see `extends`), only the new bytes are read."""
    position: dict[str, int] = {}
    names: list[str] = []
    paths: list[str] = []
    seg_code, seg_row, seg_byte = [], [], []  # one entry where the micrograph changes from the row before
    scores, codes_all = [], []
    last, n_rows, end = -1, 0, 0
    if not extends(base, key):
        base = None
    try:
        with open(path, "rb") as fh:
            columns = _header(fh, path)
            if base is not None and columns == base.columns:  # carry on from the end of what base read
                names, paths, position = list(base.names), list(base.paths), dict(base.position)
                seg_code, seg_row = [np.arange(len(names))], [base.rows[:-1]]
                seg_byte, scores = [base.byte_start], [base.scores]
                codes_all = [np.repeat(np.arange(len(names), dtype=np.int32), base.n)]
                last, n_rows = len(names) - 1, len(base.scores)
                fh.seek(int(base.byte_end[-1]))
            use = ["micrograph", "score"]  # a micrograph's path is read from its first row alone (40% faster)
            at_path = columns.index("path") if "path" in columns else None
            for offset, data in _blocks(fh):
                df = pd.read_csv(io.BytesIO(data), header=None, names=columns, usecols=use,
                                 dtype={"micrograph": str, "path": str}, keep_default_na=False,
                                 na_values={"score": [""]}, skip_blank_lines=False)
                nl = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
                if len(nl) != len(df):
                    raise InputError(f"{path}: a row spans lines (quoted newline); not a pupick picks table")
                local, uniques = pd.factorize(df["micrograph"].to_numpy(object))
                _, first = np.unique(local, return_index=True)
                starts = np.concatenate([[0], nl[:-1] + 1])
                lookup = np.empty(len(uniques), np.int64)
                for j, (u, f) in enumerate(zip(uniques, first)):
                    code = position.get(u)
                    if code is None:
                        code = position[u] = len(names)
                        names.append(str(u))
                        paths.append(_cell(data[starts[f]:nl[f]], at_path))
                    lookup[j] = code
                codes = lookup[local]
                change = np.flatnonzero(np.diff(codes, prepend=last) != 0)
                seg_code.append(codes[change])
                seg_row.append(change + n_rows)
                seg_byte.append(starts[change] + offset)
                scores.append(df["score"].to_numpy(dtype=np.float32))
                codes_all.append(codes.astype(np.int32))
                if len(codes):
                    last = int(codes[-1])
                n_rows += len(df)
                end = offset + len(data)
    except OSError as err:
        raise InputError(f"{path}: unreadable picks table ({err.strerror or err})") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable picks table ({str(err).splitlines()[0]})") from None
    seg_code_a = np.concatenate(seg_code) if seg_code else np.zeros(0, np.int64)
    all_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    if len(seg_code_a) == len(names):  # each micrograph's rows together, in first-appearance order
        rows = np.append(np.concatenate(seg_row), n_rows).astype(np.int64) if names else np.zeros(1, np.int64)
        byte_start = np.concatenate(seg_byte).astype(np.int64) if names else np.zeros(0, np.int64)
        byte_end = np.append(byte_start[1:], end)
        return RoundIndex(path, key, columns, names, paths, rows, byte_start, byte_end, all_scores)
    codes = np.concatenate(codes_all)
    order = np.argsort(codes, kind="stable")
    rows = np.searchsorted(codes[order], np.arange(len(names) + 1)).astype(np.int64)
    return RoundIndex(path, key, columns, names, paths, rows, None, None, all_scores[order])


SPOT_CHECKS = 8  # micrographs of a pick run's index compared with picks.csv's text before it is used


def from_sidecar(path: Path, key: tuple, records: Path, state: object) -> RoundIndex | None:
    """The index a pick run wrote beside picks.csv (core.picks_index), checked, else None (then: the scan).

    `state` is the manifest's `picks_csv` (committed lengths, the index's CRC-32). Used only when picks.csv is at
    least that long and begins with the header the runs write, the index's committed bytes have that CRC and sum to
    that length, picks.csv was not written after the index when it is that long, and the rows of the first, last and
    a few micrographs between parse to the names, counts, scores and paths the index holds. When picks.csv grew
    since (a run appending now), the index says what its first `bytes` hold; the caller reads the rest."""
    try:
        size, index_size, want = state["bytes"], state["index_bytes"], state["index_crc32"]  # type: ignore[index]
        sidecar = records / picks_index.INDEX_NAME
        if not (isinstance(size, int) and isinstance(index_size, int) and size <= key[2]):
            return None
        with open(sidecar, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size < index_size or (size == key[2] and st.st_mtime_ns < key[1]):
                return None  # torn or cut, or picks.csv rewritten after the index
            data = fh.read(index_size)
        if len(data) != index_size or picks_index.crc(data) != want:
            return None
        found = picks_index.decode(data)
        header = picks_index.HEADER
        with open(path, "rb") as fh:
            if fh.read(len(header)).decode("utf-8", "replace") != header:
                return None
        ends = len(header) + np.cumsum(found.n_bytes)
        if (ends[-1] if len(ends) else len(header)) != size:
            return None
    except (OSError, KeyError, TypeError, ValueError, UnicodeDecodeError):
        return None
    starts = np.concatenate([[len(header)], ends[:-1]]).astype(np.int64)
    rows = np.concatenate([[0], np.cumsum(found.n_rows)]).astype(np.int64)
    columns = header.strip().split(",")
    base_key = key if size == key[2] else (key[0], 0, size, key[3])
    index = RoundIndex(path, base_key, columns, found.names, found.paths, rows, starts, ends.astype(np.int64),
                       found.scores)
    n = len(found.names)
    for i in sorted(set(np.linspace(0, n - 1, min(n, SPOT_CHECKS)).astype(int).tolist())):
        try:
            df = index.picks_of(found.names[i])
        except (InputError, ValueError):
            return None
        mine = found.scores[rows[i]:rows[i + 1]]
        if (not np.array_equal(df["score"].to_numpy(np.float32), mine, equal_nan=True)
                or str(df["path"].iloc[0]) != found.paths[i]):
            return None
    return index


INDEX_VERSION = 2  # 2: the key holds the inode


def _cache_name(key: tuple) -> str:
    import hashlib

    return f"index-{hashlib.sha256(str(key[0]).encode()).hexdigest()[:16]}.npz"


def save_index(index: RoundIndex, folder: Path) -> None:
    """Keep the index next to the rendered pictures, so that the next `pupick view` of this file skips the scan."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"version": INDEX_VERSION, "key": list(index.key), "columns": index.columns,
                           "names": index.names, "paths": index.paths})
        target = folder / _cache_name(index.key)
        tmp = folder / f".{target.name}.{os.getpid()}.part.npz"
        arrays = {"rows": index.rows, "scores": index.scores, "meta": np.frombuffer(meta.encode(), np.uint8)}
        if index.byte_start is not None:
            arrays |= {"byte_start": index.byte_start, "byte_end": index.byte_end}
        np.savez(tmp, **arrays)
        os.replace(tmp, target)
    except OSError:  # a read-only OUTDIR: the next start scans again
        pass


def load_index(path: Path, key: tuple, folder: Path, any_version: bool = False) -> RoundIndex | None:
    """The index save_index kept for exactly this version of the file (path, mtime, size, inode), else None;
    `any_version`: whichever version of this path it kept (to be extended)."""
    try:
        with np.load(folder / _cache_name(key)) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            kept = tuple(meta.get("key", ()))
            if meta.get("version") != INDEX_VERSION or (kept != tuple(key) and not any_version):
                return None
            key = kept
            start = z["byte_start"] if "byte_start" in z.files else None
            end = z["byte_end"] if "byte_end" in z.files else None
            return RoundIndex(path, key, meta["columns"], meta["names"], meta["paths"], z["rows"], start, end,
                              z["scores"])
    except (OSError, ValueError, KeyError):
        return None
