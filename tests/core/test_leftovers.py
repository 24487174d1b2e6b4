"""Issue 27's leftovers: stale temporary files from a killed run are cleaned (only pupick's own, only under the lock,
only older than it, never the view's); clear names in the duplicate-name errors; --top-n named as itself; absurd
max_picks refused."""
from __future__ import annotations

import os
import time

import pytest

from console_run import run_console
from pupick.core.cli import main
from pupick.core.config import PickConfig
from pupick.core.errors import InputError
from pupick.core.pipeline import micrograph_items

BLOB = ["--method", "blob", "--diameter-px", "56", "--device", "cpu"]


def test_a_killed_runs_part_files_are_cleaned_and_nothing_else(demo_micrographs, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_console(main, capsys, ["pick", demo_micrographs[0], "-o", out, *BLOB])[0] == 0
    stale = [out / ".picks.csv.1a2b3c4d.part.csv", out / "coordinates" / ".061_10028.csv.deadbeef.part.csv",
             out / ".pupick_records" / ".061_10028.csv.0123abcd.part.csv", out / ".pupick_pick.json.89abcdef.part.json"]
    kept = [out / ".labels.csv.0badf00d.part.csv",  # `pupick view` may be writing it
            out / "exports" / ".x.csv.12345678.part.csv",  # the view's exports
            out / ".notes.part", out / "coordinates" / ".a.csv.nothex!!.part.csv", out / "mine.12345678.part.csv"]
    fresh = out / "coordinates" / ".062_10028.csv.feedbeef.part.csv"  # newer than the lock: another writer's
    for p in [*stale, *kept, fresh]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("half written")
    future = time.time() + 3600
    os.utime(fresh, (future, future))
    assert run_console(main, capsys, ["pick", *demo_micrographs[:2], "-o", out, *BLOB])[0] == 0
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in [*kept, fresh])


def test_two_micrographs_with_one_name_are_both_named(tmp_path):
    a, b = tmp_path / "a" / "x.mrc", tmp_path / "b" / "x.mrc"
    with pytest.raises(InputError, match=rf"{a} and {b} share the name 'x'"):
        micrograph_items([a, b])


def test_top_n_is_named_as_itself_and_max_picks_is_bounded(demo_micrographs, tmp_path, capsys):
    code, _, err = run_console(main, capsys, ["pick", demo_micrographs[0], "-o", tmp_path / "o", *BLOB, "--top-n", "-1"])
    assert code == 2 and "--top-n" in err and "--max-picks" not in err, err
    for value in (1e300, 10**12, float("inf")):
        with pytest.raises(InputError, match="max_picks|max-picks"):
            PickConfig.from_settings({"max_picks": value})
    assert PickConfig.from_settings({"max_picks": 1_000_000}).extract.max_picks == 1_000_000
