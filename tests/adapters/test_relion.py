"""RELION 3.0 / 3.1-4 / 5 files: fixtures as RELION writes them, and our writers in the same layout."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile

from pupick.adapters import relion
from pupick.adapters.registry import read_picks, write_picks
from pupick.core.errors import InputError
from pupick.core.tables import make_picks

MICS = ["20170629_00021_frameImage", "20170629_00022_frameImage", "20170629_00023_frameImage"]
EXPECTED = pd.DataFrame({
    "micrograph": [MICS[0]] * 3 + [MICS[1]] * 2,
    "x": [1219.0, 523.5, 3500.0, 88.0, 2901.0],
    "y": [143.0, 2897.25, 3600.0, 1532.0, 77.75],
    "score": [2.104531, 1.87, 0.95, 1.52, 0.000431],
})
PROJECTS = {"3.0": "relion30", "4.0": "relion40", "5.0": "relion50"}


@pytest.mark.parametrize("version", list(PROJECTS))
def test_micrographs_star_pixel_size_and_paths(data_dir, version):
    mics = relion.read_micrographs_star(data_dir / PROJECTS[version] / "CtfFind/job003/micrographs_ctf.star")
    assert mics["micrograph"].tolist() == MICS
    assert mics["path"].tolist() == [f"MotionCorr/job002/Movies/{m}.mrc" for m in MICS]
    # 3.0: 0.885 um detector pixel x 1e4 / magnification 10000; 3.1+: per optics group (group 2 binned twice)
    expected_ps = [0.885, 0.885, 0.885] if version == "3.0" else [0.885, 0.885, 1.77]
    np.testing.assert_allclose(mics["pixel_size"], expected_ps)
    assert mics["optics_group"].tolist() == ([1, 1, 1] if version == "3.0" else [1, 1, 2])
    np.testing.assert_allclose(mics["defocus_u"], [10863.857422, 9449.810547, 23117.078125])
    assert mics[["ny", "nx"]].isna().all().all()


def test_micrographs_star_falls_back_to_original_pixel_size(data_dir, tmp_path):
    text = (data_dir / "relion40/CtfFind/job003/micrographs_ctf.star").read_text()
    text = text.replace("_rlnMicrographPixelSize #8 \n", "").replace("     0.885000 \n", "\n").replace("     1.770000 \n", "\n")
    path = tmp_path / "mics.star"
    path.write_text(text)
    np.testing.assert_allclose(relion.read_micrographs_star(path)["pixel_size"], [0.885] * 3)


def test_micrographs_star_reads_shapes_from_project(data_dir, tmp_path):
    from pupick.core.io import write_mrc

    project = tmp_path / "proj"
    (project / "CtfFind/job003").mkdir(parents=True)
    (project / "CtfFind/job003/micrographs_ctf.star").write_text(
        (data_dir / "relion40/CtfFind/job003/micrographs_ctf.star").read_text())
    for m in MICS:
        write_mrc(project / f"MotionCorr/job002/Movies/{m}.mrc", np.random.default_rng(0).normal(size=(70, 100)))
    mics = relion.read_micrographs_star(project / "CtfFind/job003/micrographs_ctf.star", read_shapes=True)
    assert mics["ny"].tolist() == [70] * 3 and mics["nx"].tolist() == [100] * 3


def test_micrographs_star_errors(data_dir, tmp_path):
    text = (data_dir / "relion40/CtfFind/job003/micrographs_ctf.star").read_text()
    bad = tmp_path / "bad.star"
    bad.write_text(text.replace("          2    16.420462", "          3    16.420462"))
    with pytest.raises(InputError, match=r"data_micrographs, row 3 \(line \d+\): optics group 3 is not in data_optics"):
        relion.read_micrographs_star(bad)
    with pytest.raises(InputError, match="no block with _rlnMicrographName"):
        relion.read_micrographs_star(data_dir / "relion40/AutoPick/job006/Movies/20170629_00021_frameImage_autopick.star")


@pytest.mark.parametrize("kind, rel", [
    ("coords_suffix", "relion30/AutoPick/job005/coords_suffix_autopick.star"),
    ("particles", "relion30/Extract/job007/particles.star"),
    ("list", "relion40/AutoPick/job006/autopick.star"),
    ("particles", "relion40/Extract/job007/particles.star"),
    ("list", "relion50/ManualPick/job004/manualpick.star"),
    ("particles", "relion50/Extract/job007/particles.star"),
])
def test_every_relion_flavour_reads_the_same_picks(data_dir, kind, rel):
    assert relion.star_kind(data_dir / rel) == kind
    picks = read_picks(data_dir / rel)
    assert picks["micrograph"].tolist() == EXPECTED["micrograph"].tolist()
    assert picks["path"].tolist() == [f"MotionCorr/job002/Movies/{m}.mrc" for m in EXPECTED["micrograph"]]
    np.testing.assert_allclose(picks[["x", "y"]], EXPECTED[["x", "y"]])
    if "relion50/ManualPick" in rel:  # manual picks carry RELION's -999 "no figure of merit"
        assert picks["score"].isna().all()
    else:
        np.testing.assert_allclose(picks["score"], EXPECTED["score"])


def test_list_resolves_paths_from_elsewhere(data_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the list's paths are relative to the project, not the current directory
    picks = relion.read_coordinate_list(data_dir / "relion40/AutoPick/job006/autopick.star")
    assert len(picks) == 5
    picks = relion.read_coordinate_list("tests/data/relion40/AutoPick/job006/autopick.star".replace("tests/data", str(data_dir)),
                                        base_dir=data_dir / "relion40")
    assert len(picks) == 5


def test_list_with_missing_coordinate_file(data_dir, tmp_path):
    text = (data_dir / "relion40/AutoPick/job006/autopick.star").read_text().replace("00022_frameImage_autopick", "00099_x")
    (tmp_path / "AutoPick/job006").mkdir(parents=True)
    path = tmp_path / "AutoPick/job006/autopick.star"
    path.write_text(text)
    with pytest.raises(InputError, match=r"data_coordinate_files, row 2 \(line 10\): coordinate file .* not found"):
        relion.read_coordinate_list(path, base_dir=data_dir / "relion40")


def test_per_micrograph_file_name_and_empty_file(data_dir):
    picks = read_picks(data_dir / "relion40/AutoPick/job006/Movies/20170629_00021_frameImage_autopick.star")
    assert set(picks["micrograph"]) == {MICS[0]}
    empty = read_picks(data_dir / "relion50/ManualPick/job004/Movies/20170629_00023_frameImage_manualpick.star")
    assert len(empty) == 0


def test_coordinate_file_name_rule():
    assert relion.coordinate_file_name("MotionCorr/job002/Movies/a.mrc") == "Movies/a_pupick.star"
    assert relion.coordinate_file_name("Micrographs/a.tiff", "autopick") == "Micrographs/a_autopick.star"
    assert relion.coordinate_file_name("a.mrc") == "a_pupick.star"


@pytest.mark.parametrize("version, project", [(30001, "relion40"), (50001, "relion50")])
def test_written_files_have_relion_layout(data_dir, tmp_path, version, project):
    picks = make_picks(MICS[0], [1219.0, 523.5], [143.0, 2897.25], [2.104531, np.nan])
    out = tmp_path / "c.star"
    relion.write_coordinates_star(picks, out, version)
    lines = out.read_text().splitlines()
    assert lines[:6] == ["", f"# version {version}", "", "data_", "", "loop_ "]
    assert lines[6:11] == ["_rlnCoordinateX #1 ", "_rlnCoordinateY #2 ", "_rlnClassNumber #3 ",
                           "_rlnAutopickFigureOfMerit #4 ", "_rlnAnglePsi #5 "]
    assert lines[11] == " 1219.000000   143.000000          0     2.104531     0.000000 "
    assert lines[12] == "  523.500000  2897.250000          0   -999.00000     0.000000 "
    # the same header lines as the list RELION wrote
    entries = pd.DataFrame({"micrograph_path": [f"MotionCorr/job002/Movies/{m}.mrc" for m in MICS],
                            "coordinates_path": [f"ManualPick/job004/Movies/{m}_manualpick.star" for m in MICS]})
    listed = tmp_path / "list.star"
    relion.write_coordinate_list(entries, listed, version=version)
    ours = listed.read_text().splitlines()
    theirs = (data_dir / "relion50/ManualPick/job004/manualpick.star").read_text().splitlines()
    theirs[1] = f"# version {version}"
    assert ours == theirs
    back = starfile.read(listed)
    assert back.columns.tolist() == ["rlnMicrographName", "rlnMicrographCoordinates"]


def test_relion30_writes_no_version_line(tmp_path):
    out = tmp_path / "c.star"
    relion.write_coordinates_star(make_picks("m", [1.0], [2.0], [0.5]), out, None)
    assert out.read_text().startswith("\ndata_\n\nloop_ \n")


def test_star_dir_keeps_directories_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    picks = make_picks(["a/001.mrc", "b/001.mrc"], [10.0, 20.0], [30.0, 40.0], [1.0, 2.0],
                       path=["Import/job001/a/001.mrc", "Import/job001/b/001.mrc"])
    written = write_picks(picks, "External/job009", fmt="relion", version="5")
    names = sorted(str(p) for p in written)
    assert names == ["External/job009/a/001_pupick.star", "External/job009/autopick.star",
                     "External/job009/b/001_pupick.star"]
    back = read_picks("External/job009/autopick.star")
    assert back["path"].tolist() == ["Import/job001/a/001.mrc", "Import/job001/b/001.mrc"]
    assert back["micrograph"].tolist() == ["Import/job001/a/001.mrc", "Import/job001/b/001.mrc"]
    np.testing.assert_allclose(back["x"], [10.0, 20.0])
    assert (tmp_path / "External/job009/autopick.star").read_text().startswith("\n# version 50001\n")


def test_star_dir_lists_every_micrograph_of_the_table(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mics = relion.read_micrographs_star(data_dir / "relion40/CtfFind/job003/micrographs_ctf.star")
    picks = make_picks(MICS[0], [5.0], [6.0], [1.0])
    write_picks(picks, "External/job010", fmt="relion", micrographs=mics)
    listed = starfile.read("External/job010/autopick.star")
    assert listed["rlnMicrographName"].tolist() == mics["path"].tolist()
    assert listed["rlnMicrographCoordinates"].tolist() == [f"External/job010/Movies/{m}_pupick.star" for m in MICS]
    back = read_picks("External/job010/autopick.star")
    assert len(back) == 1 and back["path"].iloc[0] == mics["path"].iloc[0]


def test_particles_table_written_by_the_starfile_package(tmp_path):
    # other tools (and the starfile package) write one anonymous block with rlnMicrographName + coordinates
    df = pd.DataFrame({"rlnMicrographName": ["micrographs/061_10028.mrc", "micrographs/062_10028.mrc"],
                       "rlnCoordinateX": [535.0, 416.0], "rlnCoordinateY": [920.0, 256.0]})
    starfile.write(df, tmp_path / "particles.star")
    picks = read_picks(tmp_path / "particles.star")
    assert picks["micrograph"].tolist() == ["061_10028", "062_10028"]
    assert picks["path"].tolist() == df["rlnMicrographName"].tolist()
    assert picks[["x", "y"]].to_numpy().tolist() == [[535.0, 920.0], [416.0, 256.0]]
    assert picks["score"].isna().all()


def test_micrographs_star_is_not_picks(data_dir):
    with pytest.raises(InputError, match="this is a micrographs STAR"):
        read_picks(data_dir / "relion40/CtfFind/job003/micrographs_ctf.star")


def test_missing_particles_block_names_the_blocks_present(data_dir, tmp_path):
    text = (data_dir / "relion50/Extract/job007/particles.star").read_text()
    path = tmp_path / "particles.star"
    path.write_text(text[: text.index("# version 50001\n\ndata_particles")])
    with pytest.raises(InputError) as err:
        read_picks(path)
    assert str(path) in str(err.value) and "blocks: data_optics" in str(err.value)


def test_relion30_directory_gets_coords_suffix(data_dir, tmp_path, monkeypatch):
    import shutil

    project = tmp_path / "proj"
    shutil.copytree(data_dir / "relion30", project)
    monkeypatch.chdir(project)
    mics = relion.read_micrographs_star("CtfFind/job003/micrographs_ctf.star")
    picks = read_picks("AutoPick/job005/coords_suffix_autopick.star")
    written = write_picks(picks, "External/job012", fmt="relion", micrographs=mics, version="3.0")
    assert (project / "External/job012/coords_suffix_pupick.star").read_text() == "CtfFind/job003/micrographs_ctf.star\n"
    assert len(written) == 4  # three micrographs (one without picks) + coords_suffix
    assert not (project / "External/job012/Movies/20170629_00021_frameImage_pupick.star").read_text().startswith("\n#")
    back = read_picks("External/job012/coords_suffix_pupick.star")
    pd.testing.assert_frame_equal(back, picks)


@pytest.mark.parametrize("cut", [0, 1, 3, 5])
def test_particles_star_in_pieces_is_the_whole_files_text(tmp_path, cut):
    picks = EXPECTED.assign(path=[f"Movies/{m}.mrc" for m in EXPECTED["micrograph"]], x=EXPECTED["x"].astype(object))
    picks.loc[2, "score"] = np.nan  # no figure of merit: RELION's marker, in the pieces as in the whole
    picks.loc[1, "x"] = 523  # an integer column in one piece, floats in the other
    write_picks(picks, tmp_path / "whole.star", fmt="star")
    pieces = [picks.iloc[:cut], picks.iloc[cut:]]
    text = "".join(relion.particles_star_chunks(pieces))
    assert text == (tmp_path / "whole.star").read_text()
    assert "".join(relion.particles_star_chunks([])) == "".join(relion.particles_star_chunks([picks.iloc[:0]]))


@pytest.mark.parametrize("version", [30001, 50001, None])
def test_coordinate_list_streamed_is_the_whole_table_write(tmp_path, version):
    """The coordinate list written a chunk at a time is write_coordinate_list's file, byte for byte (quoted names,
    an empty list, any chunk size), and reading it back a line at a time gives the pairs in order."""
    pairs = [("Movies/a b.mrc", "c/a b.star"), ("MotionCorr/job002/x.mrc", "c/x.star")] + [
        (f"M/{i:05d}.mrc", f"c/{i:05d}.star") for i in range(23)]
    for rows, chunk in ((pairs, 5), (pairs, 100), ([], 3)):
        frame = pd.DataFrame(rows, columns=["micrograph_path", "coordinates_path"])
        relion.write_coordinate_list(frame, tmp_path / "whole.star", version=version)
        assert relion.write_coordinate_list_stream(iter(rows), tmp_path / "streamed.star", version,
                                                   chunk=chunk) == len(rows)
        assert (tmp_path / "streamed.star").read_bytes() == (tmp_path / "whole.star").read_bytes()
        assert list(relion.read_coordinate_list_stream(tmp_path / "streamed.star")) == rows
    (tmp_path / "other.star").write_text("data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 2\n")
    with pytest.raises(InputError, match="not a coordinate list"):
        list(relion.read_coordinate_list_stream(tmp_path / "other.star"))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "star", "topaz"])
def test_picks_written_in_pieces_are_the_whole_table_write(tmp_path, fmt):
    """write_picks_stream: pieces of one table (an empty first piece, uneven cuts) give write_picks' bytes."""
    from pupick.adapters.registry import write_picks_stream

    rng = np.random.default_rng(3)
    picks = make_picks(np.repeat(["m a", "m2", "m3"], [5, 7, 4]), rng.uniform(0, 900, 16), rng.uniform(0, 900, 16),
                       rng.normal(0, 2, 16)).assign(path=np.repeat(["/d/m a.mrc", "/d/m2.mrc", "/d/m3.mrc"], [5, 7, 4]))
    ext = {"csv": ".csv", "tsv": ".tsv", "star": ".star", "topaz": ".txt"}[fmt]
    write_picks(picks, tmp_path / f"whole{ext}", fmt=fmt)
    pieces = [picks.iloc[:0], picks.iloc[:3], picks.iloc[3:3], picks.iloc[3:11], picks.iloc[11:]]
    assert write_picks_stream(iter(pieces), tmp_path / f"pieces{ext}", fmt) == len(picks)
    assert (tmp_path / f"pieces{ext}").read_bytes() == (tmp_path / f"whole{ext}").read_bytes()
    write_picks(picks.iloc[:0], tmp_path / f"empty{ext}", fmt=fmt)
    write_picks_stream(iter([picks.iloc[:0]]), tmp_path / f"empty_pieces{ext}", fmt)
    if fmt != "topaz":  # topaz drops the score column when no score is known; pieces always keep it
        assert (tmp_path / f"empty_pieces{ext}").read_bytes() == (tmp_path / f"empty{ext}").read_bytes()
