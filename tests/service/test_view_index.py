"""The index `pupick view` keeps of a picks.csv (core/service/view_index.py), on a real blob-picker run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from view_helpers import pick_blob

from pupick.core.service.view_data import ViewState


@pytest.fixture(scope="module")
def picked(tmp_path_factory) -> Path:
    """A pick run's OUTDIR without the index the run wrote (test_view_sidecar.py): here the view scans."""
    out = pick_blob(tmp_path_factory.mktemp("viewindex") / "out")
    (out / ".pupick_records" / "picks_index.bin").unlink()
    return out


def _same_as_file(state: ViewState, csv: Path) -> None:
    picks = pd.read_csv(csv, dtype={"micrograph": str, "path": str}, keep_default_na=False)
    index = state.index(0)
    assert sorted(index.names) == sorted(picks["micrograph"].unique())
    for name, g in picks.groupby("micrograph"):
        assert index.paths[index.position[name]] == g["path"].iloc[0]
        got = state.picks_of(name)
        assert got["score"] == sorted(g["score"].tolist(), reverse=True)
        assert sorted(zip(got["x"], got["y"])) == sorted(zip(g["x"], g["y"]))
        assert int(index.counts_at(2.5)[index.position[name]]) == int((g["score"] >= 2.5).sum())


def test_the_index_is_kept_and_used_only_for_the_same_file(picked: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = ViewState(picked, cache_dir=cache)
    _same_as_file(first, picked / "picks.csv")
    kept = list(cache.glob("index-*.npz"))
    assert len(kept) == 1
    again = ViewState(picked, cache_dir=cache)
    loaded = again.index(0)
    assert np.array_equal(loaded.scores, first.index(0).scores) and loaded.names == first.index(0).names
    # a changed picks.csv (a new micrograph appended) is scanned again, not read from the kept index
    copy = tmp_path / "out"
    copy.mkdir()
    (copy / "pupick_pick.json").write_text((picked / "pupick_pick.json").read_text())
    text = (picked / "picks.csv").read_text()
    (copy / "picks.csv").write_text(text)
    ViewState(copy, cache_dir=cache).index(0)
    with open(copy / "picks.csv", "a") as fh:
        fh.write("zz_new,10,20,9.5,/nowhere/zz_new.mrc\n")
    state = ViewState(copy, cache_dir=cache)
    assert state.index(0).names[-1] == "zz_new" and state.picks_of("zz_new")["score"] == [9.5]


def test_rows_spread_over_the_file_are_still_found(picked: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "pupick_pick.json").write_text((picked / "pupick_pick.json").read_text())
    picks = pd.read_csv(picked / "picks.csv")
    picks.sample(frac=1.0, random_state=0).to_csv(out / "picks.csv", index=False)  # micrographs interleaved
    state = ViewState(out, cache_dir=tmp_path / "cache")
    assert state.index(0).byte_start is None
    _same_as_file(state, out / "picks.csv")


def test_rows_appended_are_read_alone_and_a_rewrite_is_read_whole(picked: Path, tmp_path: Path) -> None:
    """A run appending to picks.csv: the index grows by the new bytes only (in the page's memory and from the kept
    index of a new `pupick view`); a rewrite (a new file renamed into place) is read whole."""
    from pupick.core.service.view_index import build_index

    out = tmp_path / "out"
    out.mkdir()
    (out / "pupick_pick.json").write_text((picked / "pupick_pick.json").read_text())
    csv = out / "picks.csv"
    csv.write_bytes((picked / "picks.csv").read_bytes())
    state = ViewState(out, cache_dir=tmp_path / "cache")
    before = state.index(0)
    first = before.names[0]
    # change the first row's score in place (same inode, same size): only a full scan would see it
    data = csv.read_bytes()
    head_end = data.index(b"\n") + 1
    row_end = data.index(b"\n", head_end)
    cells = data[head_end:row_end].split(b",")
    old_score = float(cells[3])
    cells[3] = (b"9" * len(cells[3]))[:len(cells[3])]
    with open(csv, "r+b") as fh:
        fh.seek(head_end)
        fh.write(b",".join(cells))
    for n, tail in enumerate((b"zz_a,10,20,3.5,/nowhere/zz_a.mrc\nzz_a,30,40,1.5,/nowhere/zz_a.mrc\n",
                              b'zz_b,50,60,2.5,"/nowhere/b, quoted.mrc"\r\n')):
        with open(csv, "ab") as fh:
            fh.write(tail)
        grown = (state if n == 0 else ViewState(out, cache_dir=tmp_path / "cache")).index(0)  # memory, then disk
        assert grown.names[:len(before.names)] == before.names and grown.names[len(before.names):] == [
            "zz_a", "zz_b"][:n + 1]
        assert grown.scores[0] == np.float32(old_score)  # the prefix was not read again
        assert state.picks_of("zz_a")["score"] == [3.5, 1.5]
    full = build_index(csv, ("fresh",))
    assert np.array_equal(grown.rows, full.rows) and np.array_equal(grown.byte_end, full.byte_end)
    assert np.array_equal(grown.scores[1:], full.scores[1:]) and full.scores[0] != np.float32(old_score)
    assert ViewState(out, cache_dir=tmp_path / "cache").picks_of("zz_b")["score"] == [2.5]
    assert grown.paths[-2:] == ["/nowhere/zz_a.mrc", "/nowhere/b, quoted.mrc"] == full.paths[-2:]
    # a rewrite renames a new file into place: read whole, the changed score seen
    tmp = out / "picks.tmp"
    tmp.write_bytes(csv.read_bytes() + b"zz_c,5,6,0.5,/nowhere/zz_c.mrc\n")
    tmp.replace(csv)
    again = ViewState(out, cache_dir=tmp_path / "cache").index(0)
    assert again.names[-1] == "zz_c" and again.scores[0] == full.scores[0]
    assert first == again.names[0]
