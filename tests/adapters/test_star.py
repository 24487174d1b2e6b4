"""STAR reading (via starfile) with located errors, and RELION-style writing."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile

from pupick.adapters.star import format_star, read_star, write_star
from pupick.core.errors import InputError

GOOD = """
# version 30001

data_

loop_ 
_rlnCoordinateX #1 
_rlnCoordinateY #2 
_rlnAutopickFigureOfMerit #3 
  100.000000   200.000000     1.500000 
  300.000000   400.000000     2.500000 
 
"""


def test_reads_blocks_version_and_rows(tmp_path):
    path = tmp_path / "c.star"
    path.write_text(GOOD)
    star = read_star(path)
    assert star.version == 30001
    assert list(star.blocks) == [""]
    np.testing.assert_array_equal(star.numbers("", "rlnCoordinateY"), [200.0, 400.0])


@pytest.mark.parametrize("broken, expected", [
    (GOOD.replace("  300.000000   400.000000     2.500000 ", "  300.000000   400.000000 "), "row 2 (line 11): 2 values for 3 columns"),
    (GOOD.replace("  300.000000   400.000000     2.500000 ", "  300.000000   400.000000 2.5 7 "), "row 2 (line 11): 4 values for 3 columns"),
    (GOOD.replace("400.000000", "abc"), "column _rlnCoordinateY, row 2 (line 11): 'abc' is not a number"),
    (GOOD.replace("_rlnCoordinateY #2", "_rlnCoordinateZ #2"), "has no column _rlnCoordinateY"),
    ("hello\n" + GOOD, "line 1: content before the first data_ block"),
])
def test_malformed_star_names_file_block_and_row(tmp_path, broken, expected):
    path = tmp_path / "bad.star"
    path.write_text(broken)
    with pytest.raises(InputError) as err:
        star = read_star(path)
        star.numbers("", "rlnCoordinateX")
        star.numbers("", "rlnCoordinateY")
    assert str(path) in str(err.value)
    assert expected in str(err.value)
    assert "data_" in str(err.value) or "line 1" in str(err.value)


def test_missing_block_lists_blocks(tmp_path):
    path = tmp_path / "c.star"
    path.write_text(GOOD)
    with pytest.raises(InputError, match=r"no loop block data_particles \(blocks: data_\)"):
        read_star(path).block("particles")


def test_missing_file_is_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_star(tmp_path / "nope.star")


def test_format_matches_relion_layout():
    df = pd.DataFrame({"rlnMicrographName": ["a/b.mrc"], "rlnOpticsGroup": np.array([1]),
                       "rlnDefocusU": [10863.857422], "rlnAnglePsi": [-999.0], "rlnTiny": [0.000431],
                       "rlnHuge": [123456.0]})
    text = format_star({"micrographs": df}, version=50001)
    assert text.splitlines() == [
        "", "# version 50001", "", "data_micrographs", "", "loop_ ",
        "_rlnMicrographName #1 ", "_rlnOpticsGroup #2 ", "_rlnDefocusU #3 ", "_rlnAnglePsi #4 ", "_rlnTiny #5 ",
        "_rlnHuge #6 ",
        "   a/b.mrc          1 10863.857422   -999.00000 4.310000e-04 1.234560e+05 ",
        " ",
    ]
    assert not format_star({"": df}, version=None).startswith("\n# version")


def test_written_star_reads_back_with_starfile(tmp_path):
    df = pd.DataFrame({"rlnCoordinateX": [1.5, 2.25], "rlnClassNumber": np.array([0, 0]),
                       "rlnMicrographName": ["with space/x.mrc", "y.mrc"]})
    path = tmp_path / "o.star"
    write_star({"optics": df.iloc[:1], "particles": df}, path, version=30001)
    blocks = starfile.read(path, always_dict=True)
    assert list(blocks) == ["optics", "particles"]
    pd.testing.assert_series_equal(blocks["particles"]["rlnCoordinateX"], df["rlnCoordinateX"])
    assert blocks["particles"]["rlnMicrographName"].tolist() == ["with space/x.mrc", "y.mrc"]


def test_nan_allowed_only_where_asked(tmp_path):
    path = tmp_path / "c.star"
    path.write_text(GOOD.replace("2.500000", "nan"))
    star = read_star(path)
    assert np.isnan(star.numbers("", "rlnAutopickFigureOfMerit", allow_nan=True)[1])
    with pytest.raises(InputError, match=r"row 2 \(line 11\): .*nan.* is not a number"):
        star.numbers("", "rlnAutopickFigureOfMerit")
