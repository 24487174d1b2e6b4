"""`pupick view` reads the index a pick run wrote beside picks.csv (core/picks_index.py) instead of scanning, after
checking it: a tampered, truncated, stale or old index is not used, and the counts shown are still right."""
from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

from view_helpers import pick_blob

from pupick.core.picks_index import INDEX_NAME, MAGIC
from pupick.core.service.view_data import ViewState
from pupick.core.service.view_index import build_index, from_sidecar
from test_view_index import _same_as_file


@pytest.fixture(scope="module")
def picked(tmp_path_factory) -> Path:
    return pick_blob(tmp_path_factory.mktemp("viewsidecar") / "out")


@pytest.fixture
def out(picked: Path, tmp_path: Path) -> Path:
    """A copy of the pick run's OUTDIR (its files' times kept) to spoil."""
    copy = tmp_path / "out"
    shutil.copytree(picked, copy)
    return copy


def _key(csv: Path) -> tuple:
    st = csv.stat()
    return (str(csv), st.st_mtime_ns, st.st_size, st.st_ino)


def _sidecar(out: Path):
    state = json.loads((out / "pupick_pick.json").read_text())["picks_csv"]
    return from_sidecar(out / "picks.csv", _key(out / "picks.csv"), out / ".pupick_records", state)


def _equal(a, b) -> None:
    assert a.key == b.key and a.names == b.names and a.paths == b.paths and a.columns == b.columns
    for f in ("rows", "byte_start", "byte_end", "scores"):
        assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True), f


def test_the_pick_runs_index_is_what_the_scan_finds_and_the_view_uses_it(out: Path, tmp_path: Path) -> None:
    index = _sidecar(out)
    assert index is not None and len(index.names) == 5
    _equal(index, build_index(out / "picks.csv", _key(out / "picks.csv")))
    state = ViewState(out, cache_dir=tmp_path / "cache")
    assert state.index(0) is not None and not list((tmp_path / "cache").glob("index-*.npz"))  # not scanned
    _same_as_file(state, out / "picks.csv")


def _spoilt_then_scanned(out: Path, tmp_path: Path) -> None:
    assert _sidecar(out) is None
    state = ViewState(out, cache_dir=tmp_path / "cache")
    _same_as_file(state, out / "picks.csv")
    assert list((tmp_path / "cache").glob("index-*.npz"))  # the scan's index, kept by the view


def test_a_tampered_index_is_not_used(out: Path, tmp_path: Path) -> None:
    path = out / ".pupick_records" / INDEX_NAME
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40  # the last score of the last micrograph
    path.write_bytes(bytes(data))
    _spoilt_then_scanned(out, tmp_path)


def test_a_tampered_index_with_its_crc_recorded_too_is_caught_by_the_check_against_picks_csv(out: Path,
                                                                                            tmp_path: Path) -> None:
    path = out / ".pupick_records" / INDEX_NAME
    data = bytearray(path.read_bytes())
    data[-4:] = np.float32(99.0).tobytes()  # the last micrograph's last score (always compared with the text)
    path.write_bytes(bytes(data))
    manifest = json.loads((out / "pupick_pick.json").read_text())
    manifest["picks_csv"]["index_crc32"] = zlib.crc32(bytes(data))
    (out / "pupick_pick.json").write_text(json.dumps(manifest))
    _spoilt_then_scanned(out, tmp_path)
    assert 99.0 not in ViewState(out, cache_dir=tmp_path / "cache").index(0).scores


def test_a_truncated_or_missing_index_is_not_used(out: Path, tmp_path: Path) -> None:
    path = out / ".pupick_records" / INDEX_NAME
    os.truncate(path, path.stat().st_size - 3)
    _spoilt_then_scanned(out, tmp_path)
    path.unlink()
    assert _sidecar(out) is None
    path.write_bytes(MAGIC)  # whole, but empty: its length is not the manifest's
    assert _sidecar(out) is None


def test_an_index_older_than_picks_csv_is_not_used(out: Path, tmp_path: Path) -> None:
    csv = out / "picks.csv"
    data = bytearray(csv.read_bytes())
    at = data.index(b"\n") + 1 + data[data.index(b"\n") + 1:].index(b",") + 1  # the first row's x
    data[at] = ord("9") if data[at] != ord("9") else ord("8")  # the same size, written after the index
    csv.write_bytes(bytes(data))
    st = (out / ".pupick_records" / INDEX_NAME).stat()
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    _spoilt_then_scanned(out, tmp_path)


def test_an_earlier_versions_outdir_without_an_index_is_scanned(out: Path, tmp_path: Path) -> None:
    manifest = json.loads((out / "pupick_pick.json").read_text())
    del manifest["picks_csv"]["index_bytes"], manifest["picks_csv"]["index_crc32"]
    (out / "pupick_pick.json").write_text(json.dumps(manifest))
    (out / ".pupick_records" / INDEX_NAME).unlink()
    _spoilt_then_scanned(out, tmp_path)


def test_rows_a_run_appends_after_the_index_are_read_alone(out: Path, tmp_path: Path) -> None:
    """picks.csv grown past what the manifest commits (a run appending now): the index holds the first bytes and
    only the rest is read; picks.csv shorter than the manifest says: scanned."""
    csv = out / "picks.csv"
    with open(csv, "ab") as fh:
        fh.write(b"zz_new,10,20,9.5,/nowhere/zz_new.mrc\n")
    state = ViewState(out, cache_dir=tmp_path / "cache")
    index = state.index(0)
    _equal(index, build_index(csv, _key(csv)))
    assert index.names[-1] == "zz_new" and state.picks_of("zz_new")["score"] == [9.5]
    base = _sidecar(out)
    assert base is not None and base.key[2] < csv.stat().st_size and "zz_new" not in base.names
    size = json.loads((out / "pupick_pick.json").read_text())["picks_csv"]["bytes"]
    os.truncate(csv, size - 10)
    assert _sidecar(out) is None
