"""A finished pick job's picks as json or star, streamed: the bytes a whole-table render would give, a piece at a time.

The memory a download holds is one micrograph's picks (json) or one block of picks.csv rows (star), whatever the
job's size: the json streams the job's full-precision per-micrograph files in request order and the micrograph list
a page at a time from the job store; the star streams the job's picks.csv (the file `format=csv` sends as it is).
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

from .jobs import JobStore
from .worker import EXACT_DIR, read_exact

CHUNK = 1 << 16  # bytes gathered before a piece of the body goes out
STAR_ROWS = 20_000  # picks.csv rows per block of the star download

# what starlette's JSONResponse renders with: the streamed json is byte for byte what JSONResponse sent before
_dumps = partial(json.dumps, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def _gathered(pieces: Iterable[str]) -> Iterator[bytes]:
    """Pieces of text joined into UTF-8 chunks of about CHUNK bytes."""
    buf: list[str] = []
    size = 0
    for piece in pieces:
        buf.append(piece)
        size += len(piece)
        if size >= CHUNK:
            yield "".join(buf).encode("utf-8")
            buf, size = [], 0
    if buf:
        yield "".join(buf).encode("utf-8")


def _json_pieces(store: JobStore, job_id: str) -> Iterator[str]:
    job_dir = store.job_dir(job_id)
    yield '{"job":' + _dumps(job_id) + ',"picks":['
    sep = ""
    for name, _, state in store.iter_micrographs(job_id):
        exact = job_dir / EXACT_DIR / f"{name}.csv"
        if state != "done" or not exact.is_file():
            continue
        records = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}  # NaN is no JSON
                   for r in read_exact(exact).to_dict("records")]
        if records:  # one micrograph's records as the middle of a JSON array: "[a,b]" less its brackets
            yield sep + _dumps(records)[1:-1]
            sep = ","
    yield '],"micrographs":['
    sep = ""
    for name, path, state in store.iter_micrographs(job_id):
        yield sep + _dumps({"micrograph": name, "path": path, "state": state})
        sep = ","
    yield "]}"


def json_body(store: JobStore, job_id: str) -> Iterator[bytes]:
    """{"job", "picks" (every float as computed), "micrographs"} as UTF-8 chunks; retention keeps the job meanwhile."""
    with store.reading(job_id):
        yield from _gathered(_json_pieces(store, job_id))


def open_star_body(table: Path) -> Iterator[bytes]:
    """picks.csv as one RELION particles STAR, as UTF-8 chunks; the file is opened now (OSError here, not mid-body)."""
    import pandas as pd

    from pupick.adapters.relion import particles_star_chunks

    reader = pd.read_csv(table, dtype={"micrograph": str, "path": str}, keep_default_na=False,
                         na_values={"score": [""]}, chunksize=STAR_ROWS)

    def body() -> Iterator[bytes]:
        with reader:
            yield from _gathered(particles_star_chunks(reader))

    return body()
