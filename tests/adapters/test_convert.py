"""`pupick convert` in-process (CliRunner) and its start-up cost (no torch)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import starfile
from click.testing import CliRunner

from pupick.adapters.registry import read_picks, write_picks
from pupick.core.cli import cli


def _run(*args):
    result = CliRunner().invoke(cli, ["convert", *map(str, args)])
    assert "Traceback" not in result.output
    return result


def test_csv_to_relion_with_micrographs_star(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    picks = pd.DataFrame({"micrograph": ["20170629_00021_frameImage"] * 2 + ["20170629_00023_frameImage"],
                          "x": [100.0, 200.0, 300.0], "y": [50.0, 60.0, 70.0], "score": [1.0, -2.0, 3.0]})
    write_picks(picks, "labels.csv")
    mics = data_dir / "relion40/CtfFind/job003/micrographs_ctf.star"
    result = _run("labels.csv", "-o", "External/job011", "--to", "relion", "--micrographs", mics, "--threshold", 0)
    assert result.exit_code == 0, result.output
    assert "2 picks on 2 micrograph(s)" in result.output
    listed = starfile.read("External/job011/autopick.star")
    assert listed["rlnMicrographName"].tolist() == [f"MotionCorr/job002/Movies/2017062{9}_0002{i}_frameImage.mrc"
                                                   for i in (1, 2, 3)]
    back = read_picks("External/job011/autopick.star")
    assert back["x"].tolist() == [100.0, 300.0]
    assert back["path"].iloc[1] == "MotionCorr/job002/Movies/20170629_00023_frameImage.mrc"


def test_coord_factor_and_box_size_rule(tmp_path, picks_1000x700):
    src = tmp_path / "binned.csv"
    write_picks(picks_1000x700.assign(x=picks_1000x700["x"] / 4, y=picks_1000x700["y"] / 4), src)
    result = _run(src, "-o", tmp_path / "boxes", "--to", "box", "--coord-factor", 4, "--diameter-px", 56)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "boxes/mic_a.box").read_text().splitlines()
    assert lines[0] == "908\t-12\t84\t84"  # centre (950, 30), box 84 = smallest even >= 1.5 x 56
    back = read_picks(tmp_path / "boxes")
    merged = back.merge(picks_1000x700, on=["micrograph", "x", "y"])
    assert len(merged) == len(picks_1000x700)


def test_bounds_checked_against_micrograph_shapes(tmp_path, picks_1000x700):
    from pupick.core.io import write_mrc

    for name in ("mic_a", "mic_b"):
        write_mrc(tmp_path / f"mics/{name}.mrc", np.random.default_rng(0).normal(size=(175, 250)))  # 4x binned
    src = tmp_path / "unbinned.csv"
    write_picks(picks_1000x700, src)
    bad = _run(src, "-o", tmp_path / "b.star", "--micrographs", tmp_path / "mics")
    assert bad.exit_code == 1
    assert "outside the micrograph (the micrograph is 250 x 175 px" in bad.output
    assert not (tmp_path / "b.star").exists()
    good = _run(src, "-o", tmp_path / "b.star", "--micrographs", tmp_path / "mics", "--coord-factor", 0.25)
    assert good.exit_code == 0, good.output
    np.testing.assert_allclose(read_picks(tmp_path / "b.star")["x"], picks_1000x700["x"] / 4)


def test_user_errors_are_one_line(tmp_path, picks_1000x700):
    src = tmp_path / "p.csv"
    write_picks(picks_1000x700, src)
    for args, message in [
        ((tmp_path / "nope.csv", "-o", tmp_path / "o.csv"), "no such file"),
        ((src, "-o", tmp_path / "o.xyz"), "cannot tell the format"),
        ((src, "-o", tmp_path / "boxes", "--to", "box"), "needs a box size"),
        ((src, "-o", tmp_path / "o.cs"), "needs the exposures"),
        ((src, "-o", src), "already exists"),
    ]:
        result = _run(*args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    unscored = tmp_path / "u.csv"
    write_picks(picks_1000x700.drop(columns="score"), unscored)
    result = _run(unscored, "-o", tmp_path / "o.star", "--threshold", 1)
    assert result.exit_code == 1 and "have no score" in result.output


def test_force_replaces_output(tmp_path, picks_1000x700):
    src = tmp_path / "p.csv"
    write_picks(picks_1000x700, src)
    (tmp_path / "o.txt").write_text("old")
    assert _run(src, "-o", tmp_path / "o.txt", "--force").exit_code == 0
    assert (tmp_path / "o.txt").read_text().startswith("image_name\tx_coord")


def test_convert_does_not_import_torch(picks_1000x700, tmp_path):
    code = ("import sys\nfrom pupick.core.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
            "    print('torch' in sys.modules, 'pupick.adapters.registry' in sys.modules)")
    src = tmp_path / "p.csv"
    write_picks(picks_1000x700, src)
    for target in ("p.star", "p.txt", "box_dir"):  # RELION, Topaz and EMAN, through the real command
        args = ["convert", str(src), "-o", str(tmp_path / target), "--box-size", "64"]
        out = subprocess.run([sys.executable, "-c", code, *args, *(["--to", "box"] if target == "box_dir" else [])],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert (tmp_path / target).exists() and out.stdout.split()[-2:] == ["False", "True"]


def test_relion_job_directory_to_topaz_and_back(data_dir, tmp_path):
    result = _run(data_dir / "relion40/AutoPick/job006", "-o", tmp_path / "t.txt")
    assert result.exit_code == 0, result.output
    assert "5 picks on 2 micrograph(s)" in result.output
    topaz = read_picks(tmp_path / "t.txt")
    assert topaz["micrograph"].iloc[0] == "20170629_00021_frameImage"
    assert topaz[["x", "y"]].iloc[0].tolist() == [1219.0, 143.0]
    result = _run(tmp_path / "t.txt", "-o", tmp_path / "rel", "--to", "relion")
    assert result.exit_code == 0 and "no coordinate list written" in result.output
    assert len(read_picks(tmp_path / "rel")) == 5


def test_same_stem_in_two_directories_stays_apart_in_box_output(tmp_path):
    picks = pd.DataFrame({"micrograph": ["Import/job001/a/001.mrc", "Import/job001/b/001.mrc"], "x": [40.0, 50.0],
                          "y": [60.0, 70.0], "score": [1.0, 2.0],
                          "path": ["Import/job001/a/001.mrc", "Import/job001/b/001.mrc"]})
    written = write_picks(picks, tmp_path / "boxes", fmt="box", box_size=20)
    assert sorted(p.relative_to(tmp_path / "boxes").as_posix() for p in written) == ["a/001.box", "b/001.box"]
    assert (tmp_path / "boxes/b/001.box").read_text() == "40\t60\t20\t20\n"
