"""cryoSPARC .cs adapter: exposures in, particles in/out, through real cryosparc-tools Datasets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cryosparc.dataset import Dataset

from pupick.adapters import cryosparc as cs
from pupick.core.errors import InputError

# a non-square micrograph (1000 wide, 700 high) so x/y and [ny, nx] swaps cannot hide
SHAPES = [(700, 1000), (1024, 1024)]
UIDS = np.array([12345678901234567890, 987654321012345678], dtype=np.uint64)
PATHS = ["J2/motioncorrected/12345678901234567890_mic_a_patch_aligned_doseweighted.mrc",
         "J2/motioncorrected/987654321012345678_061_10028_patch_aligned_doseweighted.mrc"]


def exposures_cs(path, paths=PATHS, shapes=SHAPES, uids=UIDS, extra: bool = True):
    """An exposures .cs as cryoSPARC writes one (micrograph_blob, mscope_params, ctf)."""
    dset = Dataset({"uid": np.asarray(uids, dtype=np.uint64)})
    fields = [("micrograph_blob/path", "O"), ("micrograph_blob/shape", "<u4", (2,)), ("micrograph_blob/psize_A", "<f4")]
    if extra:
        fields += [("mscope_params/exp_group_id", "<u4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
                   ("ctf/df_angle_rad", "<f4")]
    dset.add_fields(fields)
    dset["micrograph_blob/path"] = np.array(paths, dtype=object)
    dset["micrograph_blob/shape"] = np.array(shapes, dtype=np.uint32)
    dset["micrograph_blob/psize_A"] = np.array([1.06, 0.0], dtype=np.float32)[: len(paths)]
    if extra:
        dset["mscope_params/exp_group_id"] = np.arange(2, 2 + len(paths))
        dset["ctf/df1_A"] = 15000.0
        dset["ctf/df2_A"] = 14000.0
        dset["ctf/df_angle_rad"] = np.pi / 2
    dset.save(path)
    return path


@pytest.fixture
def exposures(tmp_path) -> pd.DataFrame:
    return cs.read_exposures(exposures_cs(tmp_path / "exposures.cs"))


@pytest.fixture
def picks() -> pd.DataFrame:
    # points near each corner of the non-square micrograph, plus the square one
    return pd.DataFrame({
        "micrograph": ["mic_a"] * 4 + ["061_10028"] * 2,
        "x": [0.0, 999.5, 12.25, 998.0, 512.0, 3.0],
        "y": [0.0, 699.0, 698.5, 3.0, 512.0, 1020.0],
        "score": [-3.0, 0.0, 2.5, 12.0, -8.0, 40.0],
    })


def test_read_exposures_maps_fields(exposures):
    assert list(exposures.columns[:7]) == ["micrograph", "path", "pixel_size", "ny", "nx", "optics_group", "uid"]
    assert list(exposures["micrograph"]) == ["mic_a", "061_10028"]  # uid prefix and suffix gone
    assert list(exposures["path"]) == PATHS
    assert exposures.loc[0, ["ny", "nx"]].tolist() == [700, 1000]
    assert exposures.loc[0, "pixel_size"] == pytest.approx(1.06)
    assert np.isnan(exposures.loc[1, "pixel_size"])  # psize 0 = unknown
    assert exposures["uid"].to_numpy(dtype=np.uint64).tolist() == UIDS.tolist()
    assert exposures["optics_group"].tolist() == [2, 3]
    assert exposures["defocus_u"].tolist() == [15000.0, 15000.0]
    assert exposures["defocus_angle"].tolist() == pytest.approx([90.0, 90.0])


def test_plain_names_keep_their_leading_number(tmp_path):
    # outside a cryoSPARC job directory `061_10028` is a name, not a uid prefix
    df = cs.read_exposures(exposures_cs(tmp_path / "e.cs", paths=["mics/061_10028.mrc", "mics/062_10028.mrc"],
                                        extra=False))
    assert list(df["micrograph"]) == ["061_10028", "062_10028"]
    assert df["optics_group"].tolist() == [1, 1]


def test_write_particles_fields_and_dtypes(tmp_path, exposures, picks):
    out = tmp_path / "particles.cs"
    assert cs.write_particles(picks, out, exposures) == len(picks)
    dset = Dataset.load(out)
    descr = {f[0]: np.dtype([tuple(f)]) for f in dset.descr()}
    assert descr["uid"] == np.dtype([("uid", "<u8")])
    for field in cs.PARTICLE_FIELDS:
        assert descr[field[0]] == np.dtype([field]), field
    assert np.asarray(dset["location/micrograph_uid"]).tolist() == [int(UIDS[0])] * 4 + [int(UIDS[1])] * 2
    assert list(dset["location/micrograph_path"]) == [PATHS[0]] * 4 + [PATHS[1]] * 2
    assert np.asarray(dset["location/micrograph_shape"]).tolist() == [[700, 1000]] * 4 + [[1024, 1024]] * 2
    nx = np.array([1000] * 4 + [1024] * 2)
    np.testing.assert_allclose(dset["location/center_x_frac"], picks["x"].to_numpy() / nx, rtol=1e-6)
    np.testing.assert_allclose(dset["location/center_y_frac"], picks["y"].to_numpy() / np.array([700] * 4 + [1024] * 2),
                               rtol=1e-6)
    power = np.asarray(dset["pick_stats/power"], dtype=float)
    np.testing.assert_allclose(power, picks["score"], rtol=1e-6)
    np.testing.assert_allclose(dset["pick_stats/ncc_score"], 1 / (1 + np.exp(-power)), rtol=1e-6)
    ncc = np.asarray(dset["pick_stats/ncc_score"])
    assert (ncc <= 1).all() and (ncc >= 0).all()
    assert np.asarray(dset["location/micrograph_psize_A"]).tolist() == pytest.approx([1.06] * 4 + [0.0] * 2)
    assert len(set(np.asarray(dset["uid"]).tolist())) == len(picks)


def test_round_trip_non_square(tmp_path, exposures, picks):
    out = tmp_path / "particles.cs"
    cs.write_particles(picks, out, exposures)
    readings = [cs.read_particles(out), cs.read_particles(out, exposures),
                cs.read_particles(out, tmp_path / "exposures.cs")]
    for back in readings:
        assert list(back["micrograph"]) == list(picks["micrograph"])
        np.testing.assert_allclose(back["x"], picks["x"], atol=1e-3)
        np.testing.assert_allclose(back["y"], picks["y"], atol=1e-3)
        np.testing.assert_allclose(back["score"], picks["score"], rtol=1e-6)  # power, not logit(ncc): 40 survives
        assert list(back["path"]) == [PATHS[0]] * 4 + [PATHS[1]] * 2
        assert back["micrograph_uid"].to_numpy(dtype=np.uint64).tolist() == [int(UIDS[0])] * 4 + [int(UIDS[1])] * 2


def test_uids_are_deterministic_and_salted(tmp_path, exposures, picks):
    a = cs.particles_dataset(picks, exposures, salt="J5")
    b = cs.particles_dataset(picks, exposures, salt="J5")
    c = cs.particles_dataset(picks, exposures, salt="J6")
    assert np.asarray(a["uid"]).tolist() == np.asarray(b["uid"]).tolist()
    assert not set(np.asarray(a["uid"]).tolist()) & set(np.asarray(c["uid"]).tolist())
    twice = pd.concat([picks, picks], ignore_index=True)  # identical picks still get distinct uids
    assert len(set(np.asarray(cs.particles_dataset(twice, exposures)["uid"]).tolist())) == len(twice)


@pytest.mark.parametrize("name", [
    "061_10028",  # a plain name (labels, Topaz, RELION)
    "987654321012345678_061_10028_patch_aligned_doseweighted",  # cryoSPARC's own stem
    "061_10028_patch_aligned",  # another motion-correction suffix
    "other/dir/061_10028.mrc",  # a path in another layout
])
def test_names_match_exposures_across_suites(exposures, name):
    df = pd.DataFrame({"micrograph": [name], "x": [10.0], "y": [20.0], "score": [1.0]})
    dset = cs.particles_dataset(df, exposures)
    assert int(dset["location/micrograph_uid"][0]) == int(UIDS[1])


def test_particles_match_exposures_by_uid_when_paths_differ(tmp_path, exposures, picks):
    out = tmp_path / "particles.cs"
    cs.write_particles(picks, out, exposures)
    dset = Dataset.load(out)
    dset["location/micrograph_path"] = "renamed/elsewhere.mrc"
    dset.save(out)
    back = cs.read_particles(out, exposures)
    assert list(back["micrograph"]) == list(picks["micrograph"])


def test_foreign_scores_come_from_ncc(tmp_path):
    # a blob picker's output: power is not a logit, ncc_score is in 0..1
    dset = Dataset({"uid": np.arange(3, dtype=np.uint64)})
    dset.add_fields(cs.PARTICLE_FIELDS)
    dset["location/micrograph_path"] = "J4/mic.mrc"
    dset["location/micrograph_shape"] = np.array([[100, 200]] * 3, dtype=np.uint32)
    dset["location/center_x_frac"] = [0.1, 0.5, 0.9]
    dset["location/center_y_frac"] = [0.2, 0.4, 0.6]
    dset["pick_stats/ncc_score"] = [0.2, 0.5, 0.8]
    dset["pick_stats/power"] = [150.0, 90.0, 300.0]
    dset.save(tmp_path / "blob.cs")
    back = cs.read_particles(tmp_path / "blob.cs")
    np.testing.assert_allclose(back["x"], [20, 100, 180], atol=1e-4)
    np.testing.assert_allclose(back["y"], [20, 40, 60], atol=1e-4)
    np.testing.assert_allclose(back["score"], np.log([0.25, 1.0, 4.0]), atol=1e-5)
    assert list(back["micrograph"]) == ["mic", "mic", "mic"]


def test_template_fields_are_kept_exactly(exposures, picks):
    # what ExternalJob.alloc_output returns: the server's expected fields (here: ours minus one, plus one)
    fields = [f for f in cs.PARTICLE_FIELDS if f[0] != "pick_stats/angle_rad"] + [("pick_stats/extra", "<f4")]
    template = Dataset.allocate(0, fields)
    dset = cs.particles_dataset(picks, exposures, template=template)
    assert set(dset.fields()) == {"uid"} | {f[0] for f in fields}
    np.testing.assert_allclose(dset["pick_stats/power"], picks["score"], rtol=1e-6)


def test_missing_score_is_consistent(exposures):
    df = pd.DataFrame({"micrograph": ["mic_a"], "x": [5.0], "y": [6.0]})
    dset = cs.particles_dataset(df, exposures)
    assert float(dset["pick_stats/power"][0]) == 0.0 and float(dset["pick_stats/ncc_score"][0]) == 0.5


# ---------------------------------------------------------------- bad input


def test_outside_coordinate_is_an_error_and_writes_nothing(tmp_path, exposures, picks):
    out = tmp_path / "particles.cs"
    out.write_bytes(b"user's old file")
    bad = picks.copy()
    bad.loc[2, "y"] = 701.0  # the micrograph is 700 high; 701 would be fine if x/y were swapped
    with pytest.raises(InputError, match=r"row 3.*outside micrograph mic_a \(1000 x 700 px\)"):
        cs.write_particles(bad, out, exposures)
    assert out.read_bytes() == b"user's old file"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unknown_micrograph_is_an_error_listing_both_sides(exposures, picks):
    bad = picks.copy()
    bad.loc[0, "micrograph"] = "nowhere"
    with pytest.raises(InputError, match=r"nowhere.*exposures hold e\.g\. J2/motioncorrected"):
        cs.particles_dataset(bad, exposures)
    kept = cs.particles_dataset(bad, exposures, drop_unmatched=True)
    assert len(kept) == len(picks) - 1


def test_exposures_without_required_field(tmp_path):
    dset = Dataset({"uid": np.arange(2, dtype=np.uint64)})
    dset.add_fields([("movie_blob/path", "O")])
    dset.save(tmp_path / "movies.cs")
    with pytest.raises(InputError, match=r"movies\.cs: not a cryoSPARC exposures file: missing field\(s\) "
                                         r"micrograph_blob/path \(slots present: movie_blob\)"):
        cs.read_exposures(tmp_path / "movies.cs")


def test_particles_without_location(tmp_path):
    exposures_cs(tmp_path / "e.cs")
    with pytest.raises(InputError, match=r"e\.cs: not a cryoSPARC particles file: "
                                         r"missing field\(s\) location/center_x_frac"):
        cs.read_particles(tmp_path / "e.cs")


def test_exposures_without_shape_cannot_place_picks(tmp_path, picks):
    dset = Dataset({"uid": UIDS})
    dset.add_fields([("micrograph_blob/path", "O")])
    dset["micrograph_blob/path"] = np.array(PATHS, dtype=object)
    dset.save(tmp_path / "e.cs")
    with pytest.raises(InputError, match="micrograph sizes are unknown.*micrograph_blob/shape"):
        cs.particles_dataset(picks, cs.read_exposures(tmp_path / "e.cs"))


@pytest.mark.parametrize("content", [b"", b"not a dataset at all", b"\x93NUMPY\x01\x00garbage"])
def test_corrupt_cs_file(tmp_path, content):
    (tmp_path / "bad.cs").write_bytes(content)
    with pytest.raises(InputError, match=r"bad\.cs: not a readable cryoSPARC \.cs file"):
        cs.read_exposures(tmp_path / "bad.cs")


def test_missing_cs_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.cs: no such file"):
        cs.read_particles(tmp_path / "nope.cs")


def test_exposures_table_without_uid_gets_uids_from_the_names(picks):
    """A RELION (or any) micrograph table: deterministic exposure uids from the micrograph names."""
    from pupick.core.tables import make_micrographs

    mics = make_micrographs(["a/mic_a.mrc", "b/061_10028.mrc"], shapes=[(700, 1000), (1024, 1024)])
    dset = cs.particles_dataset(picks, mics)
    uids = cs.exposure_uids(["mic_a", "061_10028"])
    assert len(set(uids.tolist())) == 2 and (uids == cs.exposure_uids(["mic_a", "061_10028"])).all()
    expected = np.where(picks["micrograph"].to_numpy() == "mic_a", uids[0], uids[1])
    assert np.asarray(dset["location/micrograph_uid"]).tolist() == expected.tolist()
    assert set(dset["location/micrograph_path"]) == {"a/mic_a.mrc", "b/061_10028.mrc"}


def split_output(tmp_path):
    """What a Patch CTF job writes: its own slots in J7_exposures.cs, earlier ones in J7_passthrough_exposures.cs."""
    full = Dataset.load(exposures_cs(tmp_path / "full.cs"))
    own = full.filter_prefixes(["ctf"], copy=True)
    passthrough = full.filter_prefixes(["micrograph_blob", "mscope_params"], copy=True)
    own.save(tmp_path / "J7_exposures.cs")
    passthrough.take([1, 0]).save(tmp_path / "J7_passthrough_exposures.cs")  # row order may differ
    return tmp_path / "J7_exposures.cs", tmp_path / "J7_passthrough_exposures.cs"


def test_output_and_passthrough_files_join_by_uid(tmp_path):
    own, passthrough = split_output(tmp_path)
    with pytest.raises(InputError, match=r"J7_exposures\.cs: .*missing field\(s\) micrograph_blob/path "
                                         r"\(slots present: ctf\).*_passthrough_"):
        cs.read_exposures(own)
    joined = cs.read_exposures([own, passthrough])
    by_uid = joined.set_index(joined["uid"].astype(np.uint64).astype(str))
    assert by_uid.loc[str(UIDS[0]), "path"] == PATHS[0] and by_uid.loc[str(UIDS[0]), "nx"] == 1000
    assert by_uid.loc[str(UIDS[1]), "defocus_u"] == 15000.0


def test_joined_files_must_hold_the_same_exposures(tmp_path):
    own, _ = split_output(tmp_path)
    exposures_cs(tmp_path / "other.cs", paths=PATHS[:1], shapes=SHAPES[:1], uids=UIDS[:1] + 1)
    with pytest.raises(InputError, match=r"other\.cs: holds 1 exposures, 0 of them in .*J7_exposures\.cs \(2\)"):
        cs.read_exposures([own, tmp_path / "other.cs"])
