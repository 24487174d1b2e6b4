"""One contract, every pick format: round trips on a non-square micrograph, scaling, and bad input.

Each format in the registry is exercised through read_picks/write_picks exactly as the CLI and wrappers use them.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pupick.adapters import registry
from pupick.adapters.naming import canonical_name
from pupick.adapters.registry import FORMATS, read_micrographs, read_picks, scale_picks, write_picks
from pupick.core.errors import InputError

NX, NY = 1000, 700  # as in conftest: the non-square test micrographs

HAS_CS = importlib.util.find_spec("pupick.adapters.cryosparc") is not None
UIDS = [11111111111111111111, 2222222222222222222]


def _param(fmt: str):
    if fmt == "cs":
        return pytest.param(fmt, marks=pytest.mark.skipif(not HAS_CS, reason="adapters/cryosparc.py not written yet"))
    return fmt


ALL = [_param(f) for f in FORMATS]
# what survives a round trip: (coordinate tolerance px, scores kept, score tolerance)
FIDELITY = {
    "star": (1e-6, True, 1e-6), "relion": (1e-6, True, 1e-6), "box": (0.0, False, None),
    "eman2": (1e-3, True, 1e-9), "topaz": (0.0, True, 1e-5), "csv": (1e-9, True, 1e-9), "tsv": (1e-9, True, 1e-9),
    "cs": (1e-3, True, 1e-5),
}


def _target(tmp_path: Path, fmt: str) -> Path:
    if FORMATS[fmt].per_micrograph:
        return tmp_path / "out"
    return tmp_path / f"picks{FORMATS[fmt].extensions[0]}"


@pytest.fixture
def micrographs(tmp_path, mics_1000x700) -> pd.DataFrame:
    """The 1000 x 700 micrographs, from a real exposures .cs when cryoSPARC support is present (uids needed)."""
    if not HAS_CS:
        return mics_1000x700
    from cryosparc.dataset import Dataset

    dset = Dataset({"uid": np.array(UIDS, dtype=np.uint64)})
    dset.add_fields([("micrograph_blob/path", "O"), ("micrograph_blob/shape", "<u4", (2,)),
                     ("micrograph_blob/psize_A", "<f4")])
    dset["micrograph_blob/path"] = np.array([f"J1/imported/{UIDS[0]}_mic_a.mrc", f"J1/imported/{UIDS[1]}_mic_b.mrc"],
                                            dtype=object)
    dset["micrograph_blob/shape"] = np.array([[NY, NX], [NY, NX]], dtype=np.uint32)
    dset["micrograph_blob/psize_A"] = 1.5
    path = tmp_path / "exposures.cs"
    dset.save(path)
    mics = read_micrographs(path)
    assert mics[["ny", "nx"]].to_numpy().tolist() == [[NY, NX], [NY, NX]]
    return mics


def _write(picks, tmp_path, fmt, micrographs, name="out"):
    target = _target(tmp_path / name, fmt)
    target.parent.mkdir(parents=True, exist_ok=True)
    written = write_picks(picks, target, fmt=fmt, micrographs=micrographs, box_size=64)
    assert written and all(p.exists() for p in written)
    return target


def _sorted(df):
    return df.sort_values(["micrograph", "x", "y"]).reset_index(drop=True)


@pytest.mark.parametrize("fmt", ALL)
def test_round_trip_non_square(fmt, tmp_path, picks_1000x700, micrographs):
    target = _write(picks_1000x700, tmp_path, fmt, micrographs)
    raw = read_picks(target, micrographs=micrographs)  # format detected from the extension/directory
    if fmt != "relion":
        assert set(raw["micrograph"]) == {"mic_a", "mic_b"}
    # RELION names micrographs by the path it was given (here cryoSPARC's uid-prefixed one): same canonical name
    back = _sorted(raw.assign(micrograph=raw["micrograph"].map(canonical_name)))
    want = _sorted(picks_1000x700)
    tol, keeps_score, score_tol = FIDELITY[fmt]
    assert back["micrograph"].tolist() == want["micrograph"].tolist()
    np.testing.assert_allclose(back["x"], want["x"], atol=tol)
    np.testing.assert_allclose(back["y"], want["y"], atol=tol)
    if keeps_score:
        np.testing.assert_allclose(back["score"], want["score"], atol=score_tol)
    else:
        assert back["score"].isna().all()
    assert list(back.columns[:4]) == ["micrograph", "x", "y", "score"]


@pytest.mark.parametrize("fmt", ALL)
def test_binned_to_unbinned(fmt, tmp_path, picks_1000x700, micrographs):
    # picks made on 4x-binned micrographs (250 x 175) come back in the unbinned frame with factor 4
    binned = scale_picks(picks_1000x700, 0.25).assign(x=lambda d: d["x"].round(), y=lambda d: d["y"].round())
    target = _write(binned, tmp_path, fmt, micrographs)
    back = _sorted(scale_picks(read_picks(target, fmt=fmt), 4.0))
    tol = FIDELITY[fmt][0] * 4
    np.testing.assert_allclose(back["x"], _sorted(binned)["x"] * 4, atol=tol)
    np.testing.assert_allclose(back["y"], _sorted(binned)["y"] * 4, atol=tol)
    registry.check_coordinates(back, "unbinned", micrographs)  # fits the unbinned 1000 x 700 frame


@pytest.mark.parametrize("fmt", ALL)
def test_outside_micrograph_is_named(fmt, tmp_path, picks_1000x700, micrographs):
    bad = picks_1000x700.copy()
    bad.loc[3, "y"] = 812.0  # x and y swapped on one pick: y > ny = 700
    with pytest.raises(InputError) as err:
        target = _write(bad, tmp_path, fmt, micrographs)
        read_picks(target, fmt=fmt, micrographs=micrographs)
    assert "outside" in str(err.value) and "mic_a" in str(err.value)


def _corrupt_number(fmt: str, target: Path) -> tuple[Path, str]:
    """Put text where a number belongs; returns the file and what the message must name."""
    if fmt == "relion":
        f = sorted(target.rglob("*mic_a*_pupick.star"))[0]
        f.write_text(f.read_text().replace("950.000000", "abc", 1))
        return f, "_rlnCoordinateX"
    if fmt == "star":
        target.write_text(target.read_text().replace("30.000000", "3O.0", 1))
        return target, "_rlnCoordinateY"
    if fmt == "box":
        f = target / "mic_a.box"
        f.write_text(f.read_text().replace("918", "9l8", 1))
        return f, "line 1"
    if fmt == "eman2":
        f = target / "mic_a_info.json"
        data = json.loads(f.read_text())
        data["boxes"][0][0] = "abc"
        f.write_text(json.dumps(data))
        return f, "boxes[0]"
    if fmt == "topaz":
        target.write_text(target.read_text().replace("\t950\t", "\tabc\t", 1))
        return target, "x_coord"
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        target.write_text(target.read_text().replace(f"{sep}950{sep}", f"{sep}abc{sep}", 1))
        return target, "column x"
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "cs"])
def test_text_in_number_column(fmt, tmp_path, picks_1000x700, micrographs):
    target = _write(picks_1000x700, tmp_path, fmt, micrographs)
    bad_file, named = _corrupt_number(fmt, target)
    with pytest.raises(InputError) as err:
        read_picks(target, fmt=fmt)
    msg = str(err.value)
    assert str(bad_file) in msg and named in msg and "\n" not in msg


def _drop_column(fmt: str, target: Path) -> tuple[Path, str]:
    if fmt == "relion":
        f = sorted(target.rglob("*mic_a*_pupick.star"))[0]
        f.write_text(f.read_text().replace("_rlnCoordinateY", "_rlnCoordinateZ"))
        return f, "_rlnCoordinateY"
    if fmt == "star":
        target.write_text(target.read_text().replace("_rlnCoordinateX", "_rlnCoordinateQ"))
        return target, "_rlnCoordinateX"
    if fmt == "box":  # a row with two values is a ragged row
        f = target / "mic_b.box"
        f.write_text(f.read_text() + "12\t13\n")
        return f, "line 3"
    if fmt == "eman2":
        f = target / "mic_b_info.json"
        f.write_text(f.read_text()[:-5])
        return f, "not valid JSON"
    if fmt == "topaz":
        target.write_text(target.read_text().replace("y_coord", "why"))
        return target, "y_coord"
    sep = "," if fmt == "csv" else "\t"
    text = target.read_text().splitlines()
    text[2] = text[2] + sep + "1"
    target.write_text("\n".join(text) + "\n")
    return target, "line 3: 6 values for 5 columns" if "path" in text[0] else "line 3: 5 values for 4 columns"


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "cs"])
def test_missing_column_or_ragged_row(fmt, tmp_path, picks_1000x700, micrographs):
    target = _write(picks_1000x700, tmp_path, fmt, micrographs)
    bad_file, named = _drop_column(fmt, target)
    with pytest.raises(InputError) as err:
        read_picks(target, fmt=fmt)
    assert str(bad_file) in str(err.value) and named in str(err.value)


@pytest.mark.skipif(not HAS_CS, reason="adapters/cryosparc.py not written yet")
def test_cs_without_required_fields(tmp_path):
    from cryosparc.dataset import Dataset

    dset = Dataset({"uid": np.array([1, 2], dtype=np.uint64)})
    dset.add_fields([("blob/path", "O")])
    path = tmp_path / "particles.cs"
    dset.save(path)
    with pytest.raises(InputError, match="location/center_x_frac") as err:
        read_picks(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name", ["picks.xyz", "picks", "picks.json5"])
def test_unknown_extension_lists_formats(tmp_path, name):
    path = tmp_path / name
    path.write_text("micrograph,x,y\n")
    with pytest.raises(InputError) as err:
        read_picks(path)
    msg = str(err.value)
    assert str(path) in msg and "box" in msg and "star" in msg and "cs" in msg
    with pytest.raises(InputError, match="formats:"):
        write_picks(pd.DataFrame({"micrograph": ["a"], "x": [1.0], "y": [2.0]}), tmp_path / "o.xyz")
    with pytest.raises(InputError, match="unknown format 'nope'"):
        read_picks(path, fmt="nope")


@pytest.mark.parametrize("fmt", ALL)
def test_empty_picks_write_and_read(fmt, tmp_path, micrographs):
    empty = pd.DataFrame({"micrograph": pd.Series([], dtype=object), "x": [], "y": [], "score": []})
    if FORMATS[fmt].per_micrograph:
        target = tmp_path / "out"
        target.mkdir()
        write_picks(empty, target, fmt=fmt, micrographs=micrographs if fmt == "relion" else None, box_size=64)
        if fmt == "relion":
            assert len(read_picks(target, fmt=fmt)) == 0
        return
    target = _target(tmp_path, fmt)
    write_picks(empty, target, fmt=fmt, micrographs=micrographs)
    assert len(read_picks(target, fmt=fmt)) == 0


def test_box_geometry_and_size_rule(tmp_path):
    from pupick.adapters.eman import box_size_for

    assert box_size_for(diameter_px=56) == 84
    assert box_size_for(diameter_px=55) == 84  # 82.5 -> 83 -> even 84
    assert box_size_for(diameter_px=10.1) == 16
    assert box_size_for(box_size=100) == 100
    with pytest.raises(InputError, match="--box-size"):
        box_size_for()
    picks = pd.DataFrame({"micrograph": ["m"], "x": [950.0], "y": [30.0], "score": [1.0]})
    write_picks(picks, tmp_path / "m.box", box_size=64)
    assert (tmp_path / "m.box").read_text() == "918\t-2\t64\t64\n"  # corner = centre - box/2, may be negative
    back = read_picks(tmp_path / "m.box")
    assert back[["x", "y"]].to_numpy().tolist() == [[950.0, 30.0]]


def test_directory_with_two_formats_needs_a_choice(tmp_path, picks_1000x700):
    write_picks(picks_1000x700, tmp_path, fmt="box", box_size=64)
    write_picks(picks_1000x700, tmp_path, fmt="eman2")
    with pytest.raises(InputError, match="several pick formats"):
        read_picks(tmp_path)
    assert len(read_picks(tmp_path, fmt="eman2")) == len(picks_1000x700)


def test_overwrite_refused_when_asked(tmp_path, picks_1000x700):
    target = tmp_path / "p.csv"
    write_picks(picks_1000x700, target)
    before = target.read_text()
    with pytest.raises(InputError, match="already exists"):
        write_picks(picks_1000x700.head(1), target, overwrite=False)
    assert target.read_text() == before


def test_topaz_and_table_tsv_told_apart(tmp_path, picks_1000x700):
    write_picks(picks_1000x700, tmp_path / "a.tsv", fmt="topaz")
    write_picks(picks_1000x700, tmp_path / "b.tsv", fmt="tsv")
    assert (tmp_path / "a.tsv").read_text().splitlines()[0] == "image_name\tx_coord\ty_coord\tscore"
    assert registry.detect_format(tmp_path / "a.tsv") == "topaz"
    assert registry.detect_format(tmp_path / "b.tsv") == "tsv"
    pd.testing.assert_frame_equal(read_picks(tmp_path / "a.tsv"), read_picks(tmp_path / "b.tsv"), atol=1e-5)
