"""`pupick pick --overwrite` on some of the micrographs in OUTDIR: the named ones are redone, the others' files and
picks are kept (picks.csv and coordinates.star still list every micrograph); with other settings it is refused,
naming what it would leave behind, since the directory would hold picks made two ways."""
from __future__ import annotations

import pandas as pd
import starfile

from console_run import run_console
from pupick.core.cli import main

BLOB = ["--method", "blob", "--diameter-px", "56", "--device", "cpu", "--format", "star"]


def _sorted(table):
    return table.sort_values(["micrograph", "x", "y"], ignore_index=True)


def _files(out):
    return {p.name: p.read_bytes() for p in sorted((out / "coordinates").iterdir())}


def test_overwrite_on_a_subset_redoes_only_those(demo_micrographs, tmp_path, capsys):
    mics, out = demo_micrographs[:3], tmp_path / "out"
    assert run_console(main, capsys, ["pick", *mics, "-o", out, *BLOB])[0] == 0
    before, table = _files(out), pd.read_csv(out / "picks.csv")
    redo = mics[1]
    (out / "coordinates" / f"{redo.stem}.star").write_text("damaged\n")  # the bad one the user re-picks
    code, stdout, err = run_console(main, capsys, ["pick", redo, "-o", out, *BLOB, "--overwrite"])
    assert code == 0, err
    assert _files(out) == before  # the others untouched, the named one redone (same settings: same bytes)
    pd.testing.assert_frame_equal(_sorted(pd.read_csv(out / "picks.csv")), _sorted(table))  # all, not one's
    listed = starfile.read(out / "coordinates.star")
    assert len(listed) == 3, listed

    code, _, err = run_console(main, capsys, ["pick", redo, "-o", out, *BLOB, "--overwrite", "--threshold", "1"])
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "2 other micrograph(s)" in err and "threshold" in err and mics[0].stem in err, err
    assert _files(out) == before and _sorted(pd.read_csv(out / "picks.csv")).equals(_sorted(table))  # all kept

    code, _, err = run_console(main, capsys, ["pick", *mics, "-o", out, *BLOB, "--overwrite", "--threshold", "1"])
    assert code == 0, err  # all of them, with other settings: every one redone
    assert set(pd.read_csv(out / "picks.csv")["micrograph"]) <= {m.stem for m in mics}
    assert (pd.read_csv(out / "picks.csv")["score"] >= 1).all()
