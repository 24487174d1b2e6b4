"""The naming rule and table helpers shared by every command and adapter."""
from __future__ import annotations

import pandas as pd
import pytest

from pupick.core.errors import InputError
from pupick.core.tables import PICK_COLUMNS, assign_micrographs, match_names, stem, validate_picks


@pytest.mark.parametrize("name,expected", [
    ("a/May08_03.05.02.bin.mrc", "May08_03.05.02.bin"),
    ("x.MRC", "x"), ("x.mrcs", "x"), ("dir/x.tiff", "x"), ("x.jpeg", "x"), ("x.star", "x.star"),
    ("MotionCorr/job002/Movies/001.mrc", "001"), ("plain", "plain"),
])
def test_stem(name, expected):
    assert stem(name) == expected


def test_match_by_relative_path_and_stem():
    mics = ["MotionCorr/job002/a/001.mrc", "MotionCorr/job002/b/001.mrc", "MotionCorr/job002/b/002.mrc"]
    assert match_names(["a/001.mrc", "b/001.mrc", "002"], mics) == {"a/001.mrc": 0, "b/001.mrc": 1, "002": 2}
    with pytest.raises(InputError, match="ambiguous"):
        match_names(["001"], mics)
    assert match_names(["zzz"], mics) == {}


def test_assign_micrographs_counts_unmatched_and_reports_mismatch():
    picks = pd.DataFrame({"micrograph": ["m1", "m1", "other"], "x": [1, 2, 3], "y": [1, 2, 3]})
    groups, unmatched = assign_micrographs(picks, ["/d/m1.mrc", "/d/m2.mrc"])
    assert unmatched == 1 and list(groups) == [0] and len(groups[0]) == 2
    with pytest.raises(InputError) as info:
        assign_micrographs(picks.assign(micrograph="zz"), ["/d/m1.mrc"])
    assert "zz" in str(info.value) and "m1" in str(info.value)


def test_validate_picks_coerces_and_names_bad_rows():
    df = validate_picks(pd.DataFrame({"micrograph": ["a"], "x": ["1.5"], "y": [2]}), "labels.csv")
    assert list(df.columns) == PICK_COLUMNS and df.x.iloc[0] == 1.5 and df.score.isna().all()
    with pytest.raises(InputError, match="labels.csv: row 2: column y"):
        validate_picks(pd.DataFrame({"micrograph": ["a", "a"], "x": [1, 2], "y": [1, "abc"]}), "labels.csv")
    with pytest.raises(InputError, match="missing column"):
        validate_picks(pd.DataFrame({"micrograph": ["a"], "x": [1]}), "labels.csv")
