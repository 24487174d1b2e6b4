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
    return pick_blob(tmp_path_factory.mktemp("viewindex") / "out")


def _same_as_file(state: ViewState, csv: Path) -> None:
    picks = pd.read_csv(csv, dtype={"micrograph": str})
    index = state.index(0)
    assert sorted(index.names) == sorted(picks["micrograph"].unique())
    for name, g in picks.groupby("micrograph"):
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
