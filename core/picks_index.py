"""picks.csv's view index: a sidecar a pick run appends as it commits each micrograph's rows to picks.csv.

`pupick view` reads it instead of scanning picks.csv (1.6 GB at 50,000 micrographs). One record per micrograph with
rows, in picks.csv's order: its rows' length in bytes, its row count, its name, its image path (as its first row
names it) and its scores as float32 (what a parse of picks.csv's text gives). The file starts with MAGIC. Records are
appended in one write each; the manifest records the committed length and the CRC-32 of that much (`zlib.crc32`,
carried on from record to record), so a reader checks the bytes it trusts and a torn tail is cut by the next run.
Imports numpy only (the view and a torch-free rerun read it).
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_NAME = "picks_index.bin"  # in .pupick_records, beside committed.txt
COLUMNS = ("micrograph", "x", "y", "score", "path")  # picks.csv's columns, as the pick runs write them
HEADER = ",".join(COLUMNS) + "\n"
MAGIC = b"PUPKIDX1"
_HEAD = struct.Struct("<QIII")  # bytes of the micrograph's rows in picks.csv, rows, name length, path length


@dataclass
class PicksIndex:
    """A decoded sidecar: per micrograph (with rows, in picks.csv order) its name, path, rows and bytes; all scores."""

    names: list[str]
    paths: list[str]
    n_rows: np.ndarray  # int64
    n_bytes: np.ndarray  # int64
    scores: np.ndarray  # float32, in picks.csv's row order


def record(name: str, path: str, n_bytes: int, scores: np.ndarray) -> bytes:
    """One micrograph's record (nothing for a micrograph without rows)."""
    scores = np.asarray(scores, dtype="<f4")
    if not len(scores):
        return b""
    name_b, path_b = name.encode(), path.encode()
    return _HEAD.pack(n_bytes, len(scores), len(name_b), len(path_b)) + name_b + path_b + scores.tobytes()


def crc(data: bytes, previous: int = 0) -> int:
    """The CRC-32 carried on over appended bytes (the whole file's from the records' alone)."""
    return zlib.crc32(data, previous)


def append(path: Path, data: bytes) -> int:
    """Append in one write (a killed run leaves the record whole or torn, never interleaved); the new size."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if data:
            os.write(fd, data)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def decode(data: bytes) -> PicksIndex:
    """The records in `data` (the file's committed bytes); ValueError when they are not a whole, well-formed index."""
    if not data.startswith(MAGIC):
        raise ValueError("not a pupick picks index")
    names, paths, rows, sizes, spans = [], [], [], [], []
    at, end = len(MAGIC), len(data)
    while at < end:
        if at + _HEAD.size > end:
            raise ValueError("torn record")
        n_bytes, n, ln, lp = _HEAD.unpack_from(data, at)
        at += _HEAD.size
        stop = at + ln + lp + 4 * n
        if stop > end or n == 0:
            raise ValueError("torn record")
        names.append(data[at:at + ln].decode())
        paths.append(data[at + ln:at + ln + lp].decode())
        spans.append((at + ln + lp, n))
        rows.append(n)
        sizes.append(n_bytes)
        at = stop
    buf = np.frombuffer(data, np.uint8)
    scores = (np.concatenate([buf[s:s + 4 * n] for s, n in spans]).view("<f4") if spans
              else np.zeros(0, np.float32))
    return PicksIndex(names, paths, np.asarray(rows, np.int64), np.asarray(sizes, np.int64),
                      scores.astype(np.float32, copy=False))
