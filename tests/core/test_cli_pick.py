"""`pupick pick` and `pupick evaluate` in-process on the bundled micrographs."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from pupick.adapters.registry import read_micrographs, read_picks, write_picks
from pupick.core.cli import cli
from pupick.core.outputs import read_table

HELD_OUT = "312_10028"


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def two_mics(demo_micrographs):
    return [str(p) for p in demo_micrographs if p.stem in ("311_10028", HELD_OUT)]


@pytest.fixture(scope="module")
def picked(runner, trained_model, two_mics, tmp_path_factory):
    out = tmp_path_factory.mktemp("pick") / "out"
    res = runner.invoke(cli, ["pick", *two_mics, "--model", str(trained_model), "-o", str(out), "--device", "cpu"])
    return out, res


def test_pick_writes_the_table_and_a_file_per_micrograph(picked):
    out, res = picked
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "picks.csv")
    assert list(table.columns) == ["micrograph", "x", "y", "score", "path"]
    assert set(table["micrograph"]) == {"311_10028", HELD_OUT}
    for name in ("311_10028", HELD_OUT):
        per = pd.read_csv(out / "coordinates" / f"{name}.csv")
        assert len(per) == (table["micrograph"] == name).sum()
    assert "per micrograph" in res.output and "s per micrograph" in res.output
    assert "suggested threshold" in res.output  # at the model's expected particle count
    manifest = json.loads((out / "pupick_pick.json").read_text())
    assert len(manifest["settings"]["model_sha256"]) == 64


def test_rerun_skips_and_other_settings_refuse(runner, picked, trained_model, two_mics):
    out, _ = picked
    res = runner.invoke(cli, ["pick", *two_mics, "--model", str(trained_model), "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "nothing new: all 2 micrograph(s) were picked earlier" in res.output  # settings and model agree
    res = runner.invoke(cli, ["pick", *two_mics, "--model", str(trained_model), "-o", str(out), "--threshold", "1"])
    assert res.exit_code == 1 and "threshold" in res.output and "--overwrite" in res.output


def test_views_option_changes_the_score_map_and_is_a_recorded_setting(runner, picked, trained_model, two_mics,
                                                                     tmp_path):
    out, _ = picked
    res = runner.invoke(cli, ["pick", *two_mics, "--model", str(trained_model), "-o", str(out), "--views", "1"])
    assert res.exit_code == 1 and "views" in res.output  # the default (4 views) made the picks already there
    one = tmp_path / "one"
    res = runner.invoke(cli, ["pick", two_mics[1], "--model", str(trained_model), "-o", str(one), "--views", "1",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    a = pd.read_csv(out / "coordinates" / f"{HELD_OUT}.csv")
    b = pd.read_csv(one / "coordinates" / f"{HELD_OUT}.csv")
    assert len(a) > 10 and len(b) > 10
    assert a["score"].iloc[:10].tolist() != pytest.approx(b["score"].iloc[:10].tolist(), abs=1e-3)


def test_star_and_box_formats_and_empty_micrographs(runner, trained_model, two_mics, tmp_path):
    out = tmp_path / "star"
    res = runner.invoke(cli, ["pick", *two_mics, "--model", str(trained_model), "-o", str(out), "--format", "star",
                              "--labels", str(Path(two_mics[0]).parents[1] / "particles.csv")])
    assert res.exit_code == 0, res.output
    assert "best F1" in res.output  # threshold suggested against the labels
    star = read_picks(out / "coordinates" / f"{HELD_OUT}.star")
    table = pd.read_csv(out / "picks.csv")
    assert len(star) == (table["micrograph"] == HELD_OUT).sum()
    assert (out / "coordinates.star").is_file()

    out = tmp_path / "box"
    res = runner.invoke(cli, ["pick", *two_mics, "--model", str(trained_model), "-o", str(out), "--format", "box",
                              "--threshold", "1000"])
    assert res.exit_code == 0, res.output
    for name in ("311_10028", HELD_OUT):  # nothing picked: every micrograph still gets its (empty) file
        assert (out / "coordinates" / f"{name}.box").read_text().strip() == ""
    assert len(pd.read_csv(out / "picks.csv")) == 0


def test_box_size_default_is_even_and_1_5_diameters(runner, trained_model, two_mics, tmp_path):
    out = tmp_path / "box"
    res = runner.invoke(cli, ["pick", two_mics[1], "--model", str(trained_model), "-o", str(out), "--format", "box",
                              "--max-picks", "3"])
    assert res.exit_code == 0, res.output
    rows = (out / "coordinates" / f"{HELD_OUT}.box").read_text().split("\n")
    assert len([r for r in rows if r.strip()]) == 3
    assert all(r.split()[2:4] == ["84", "84"] for r in rows if r.strip())  # 1.5 x 56


def test_bad_inputs(runner, trained_model, two_mics, tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"\x00" * 100)
    res = runner.invoke(cli, ["pick", two_mics[0], "--model", str(fake), "-o", str(tmp_path / "o1")])
    assert res.exit_code == 1 and "not a pupick model" in res.output
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"junk" * 50)
    res = runner.invoke(cli, ["pick", str(bad), two_mics[1], "--model", str(trained_model), "-o",
                              str(tmp_path / "o2")])
    assert res.exit_code == 1 and "bad.mrc" in res.output
    assert set(pd.read_csv(tmp_path / "o2" / "picks.csv")["micrograph"]) == {HELD_OUT}
    res = runner.invoke(cli, ["pick", two_mics[0], "-o", str(tmp_path / "o3")])
    assert res.exit_code != 0 and "--model" in res.output


def test_blob_method(runner, two_mics, tmp_path):
    res = runner.invoke(cli, ["pick", two_mics[1], "--method", "blob", "--diameter-px", "56", "--top-n", "25",
                              "-o", str(tmp_path / "blob")])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "blob" / "picks.csv")) == 25


def test_evaluate_json_and_outputs(runner, picked, demo_dir, tmp_path):
    out, _ = picked
    labels = str(demo_dir / "particles.csv")
    res = runner.invoke(cli, ["evaluate", "--picks", str(out / "picks.csv"), "--labels", labels, "--json",
                              "--micrographs", f"311_10028,{HELD_OUT}"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert set(summary) >= {"ap", "best_f1", "precision", "recall", "threshold", "n_picks", "n_labels",
                            "n_micrographs"}
    assert summary["n_labels"] == 187 and summary["n_micrographs"] == 2 and 0 < summary["ap"] <= 1
    # the radius comes from the pick directory's record (half of 56 px); a PREFIX writes the curve and plot
    res = runner.invoke(cli, ["evaluate", "--picks", str(out / "picks.csv"), "--labels", labels,
                              "-o", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "match radius 28" in res.output
    assert "3 labeled micrograph(s) have no picks" in res.output  # labels elsewhere count as misses
    curve = pd.read_csv(tmp_path / "ev.tsv", sep="\t")
    assert list(curve.columns) == ["threshold", "precision", "recall", "f1"]
    assert (tmp_path / "ev.png").stat().st_size > 1000


def test_evaluate_needs_a_radius(runner, demo_dir, tmp_path):
    picks = tmp_path / "p.csv"
    pd.DataFrame({"micrograph": [HELD_OUT], "x": [1.0], "y": [2.0]}).to_csv(picks, index=False)
    res = runner.invoke(cli, ["evaluate", "--picks", str(picks), "--labels", str(demo_dir / "particles.csv")])
    assert res.exit_code == 1 and "--match-radius" in res.output


def test_cryosparc_particles_with_exposures(runner, trained_model, two_mics, tmp_path):
    import numpy as np
    from cryosparc.dataset import Dataset

    exposures = tmp_path / "exposures.cs"
    dset = Dataset({"uid": np.array([11, 12], dtype=np.uint64)})
    dset.add_fields([("micrograph_blob/path", "O"), ("micrograph_blob/shape", "<u4", (2,)),
                     ("micrograph_blob/psize_A", "<f4")])
    dset["micrograph_blob/path"] = np.array([f"J1/imported/{Path(p).name}" for p in two_mics], dtype=object)
    dset["micrograph_blob/shape"] = np.array([(1024, 1024)] * 2, dtype=np.uint32)
    dset["micrograph_blob/psize_A"] = np.array([0.0, 0.0], dtype=np.float32)
    dset.save(exposures)
    out = tmp_path / "cs"
    res = runner.invoke(cli, ["pick", *two_mics, "--model", str(trained_model), "-o", str(out), "--format", "cs",
                              "--exposures", str(exposures), "--max-picks", "40"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "picks.csv")
    particles = read_picks(out / "particles.cs")
    assert len(particles) == len(table) > 0
    again = tmp_path / "cs_again"  # same picks, same particle uids (salted by the file name, never a temp name)
    res = runner.invoke(cli, ["pick", *two_mics, "--model", str(trained_model), "-o", str(again), "--format", "cs",
                              "--exposures", str(exposures), "--max-picks", "40"])
    assert res.exit_code == 0, res.output
    uids = [Dataset.load(d / "particles.cs")["uid"] for d in (out, again)]
    assert np.array_equal(uids[0], uids[1])
    # streamed from picks.csv a chunk at a time: the file one table of every pick gives
    whole = tmp_path / "whole" / "particles.cs"
    write_picks(read_table(out / "picks.csv"), whole, fmt="cs", micrographs=read_micrographs(exposures))
    a, b = Dataset.load(out / "particles.cs"), Dataset.load(whole)
    assert a.descr() == b.descr() and len(a) == len(b)
    for field in b.fields():
        assert np.array_equal(np.asarray(a[field]), np.asarray(b[field])), field
    res = runner.invoke(cli, ["pick", *two_mics, "--model", str(trained_model), "-o", str(out), "--format", "cs"])
    assert res.exit_code != 0 and "--exposures" in res.output


BAD_OPTIONS = [
    (["--method", "blob", "--diameter-px", "56", "--min-distance", "-1"], "--min-distance"),
    (["--method", "blob", "--diameter-px", "56", "--threshold", "nan"], "--threshold"),
    (["--method", "blob", "--diameter-px", "56", "--max-picks", "-5"], "--max-picks"),
    (["--method", "blob", "--diameter-px", "56", "--top-n", "-1"], "--top-n must be"),
    (["--method", "blob", "--diameter-px", "56", "--pixel-size", "0"], "--pixel-size"),
    (["--method", "blob", "--diameter-px", "56", "--workers", "0"], "--workers"),
    (["--method", "blob", "--diameter-px", "56", "--box-size", "0", "--format", "box"], "--box-size"),
    (["--method", "blob"], "diameter"),
    (["--method", "blob", "--diameter-px", "56", "--device", "mps"], "device"),
]


@pytest.mark.parametrize("options,named", BAD_OPTIONS, ids=[" ".join(o) for o, _ in BAD_OPTIONS])
def test_bad_options_are_refused_before_any_work(runner, two_mics, tmp_path, options, named):
    out = tmp_path / "x"
    res = runner.invoke(cli, ["pick", *two_mics, "-o", str(out), *options])
    assert res.exit_code == 2, res.output
    assert named in res.output and "Traceback" not in res.output
    assert not out.exists()  # nothing was created, so a corrected rerun is never refused


def test_an_empty_list_file_is_bad_usage(runner, tmp_path):
    (tmp_path / "none.txt").write_text("")
    res = runner.invoke(cli, ["pick", f"@{tmp_path / 'none.txt'}", "--method", "blob", "--diameter-px", "56",
                              "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "none.txt" in res.output and not (tmp_path / "o").exists()


def test_star_format_keeps_the_list_and_the_files_in_step(runner, trained_model, two_mics, tmp_path):
    out = tmp_path / "s"
    args = ["pick", *two_mics, "--model", str(trained_model), "-o", str(out), "--device", "cpu", "--format", "star"]
    assert runner.invoke(cli, args).exit_code == 0
    (out / "coordinates" / f"{HELD_OUT}.star").unlink()  # a deleted coordinate file is picked again
    res = runner.invoke(cli, args)
    assert res.exit_code == 0 and "1 micrograph(s) already picked" in res.output
    listed = read_picks(str(out / "coordinates.star"))
    assert set(listed["micrograph"]) == {"311_10028", HELD_OUT}
    assert set(pd.read_csv(out / "picks.csv")["micrograph"]) == {"311_10028", HELD_OUT}


@pytest.mark.parametrize("extra, named", [([], "--min-distance"), (["--min-distance", "20", "--exclude-carbon"],
                                                                    "excluding carbon needs the particle diameter"),
                                          (["--min-distance", "20", "--labels", "LABELS"], "--match-radius")])
def test_a_model_without_a_diameter_needs_a_distance_before_any_work(runner, trained_model, two_mics, tmp_path, extra,
                                                                     named):
    """A model trained with --scale records no diameter: without --min-distance every micrograph would fail alike,
    and --labels' default match radius (from the diameter) is unknown."""
    from pupick.core.modelfile import load_model, save_state

    model = load_model(trained_model)
    bare = tmp_path / "bare.pt"
    save_state(bare, model.module.state_dict(), {**model.config, "diameter_px": None})
    out = tmp_path / "o"
    extra = [str(Path(two_mics[0]).parents[1] / "particles.csv") if a == "LABELS" else a for a in extra]
    res = runner.invoke(cli, ["pick", *two_mics, "--model", str(bare), "-o", str(out), "--device", "cpu", *extra])
    assert res.exit_code == 2, res.output
    assert named in res.output and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()
    res = runner.invoke(cli, ["pick", *two_mics, "--model", str(bare), "-o", str(out), "--device", "cpu",
                              "--min-distance", "20"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out / "picks.csv")) > 0


def test_the_general_model_without_a_diameter_is_bad_usage_before_any_work(runner, two_mics, tmp_path):
    out = tmp_path / "o"
    res = runner.invoke(cli, ["pick", *two_mics, "--model", "general", "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "the general model needs the particle diameter" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()
    res = runner.invoke(cli, ["pick", *two_mics, "--model", "general", "--diameter-px", "56", "-o", str(out),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out / "picks.csv")) > 0
