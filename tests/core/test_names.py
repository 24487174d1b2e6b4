"""check_micrograph_name: the one rule for a micrograph name that becomes files, and where it is applied."""
from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from pupick.adapters.relion import coordinate_file_name, micrograph_names
from pupick.core.cli import cli
from pupick.core.errors import BadName, InputError
from pupick.core.names import MAX_NAME_BYTES, check_micrograph_name
from pupick.core.outputs import OutputDir


@pytest.mark.parametrize("name", ["061_10028", "May08.bin", "é" * 100, "x" * MAX_NAME_BYTES, "0:mic", "a b", "-a"])
def test_plain_names_pass_unchanged(name):
    assert check_micrograph_name(name) == name


@pytest.mark.parametrize("name, problem", [
    ("../../OUTSIDE/labels", "'/'"), ("/", "'/'"), ("a\\b", "'\\\\'"), ("a\x00b", "NUL"), ("a\nb", "U+000A"),
    ("a\x7fb", "U+007F"), ("\ud800", "U+D800"), ("a\u2028b", "U+2028"), ("a\u202eb", "U+202E"), (".", "'.'"),
    ("..", "'..'"), (".hidden", "starts with '.'"), ("", "empty"), ("x" * (MAX_NAME_BYTES + 1), "200 bytes"),
    ("é" * 101, "200 bytes"), (7, "not a string")])
def test_names_that_cannot_name_a_file_are_refused_in_one_line(name, problem):
    with pytest.raises(BadName) as err:
        check_micrograph_name(name, "picks.star: micrograph name")
    message = str(err.value)
    assert message.startswith("picks.star: micrograph name") and problem in message and "\n" not in message
    assert isinstance(err.value, InputError)


@pytest.mark.parametrize("name, ok", [("Movies/a.mrc", True), ("MotionCorr/job002/Movies/a.mrc", True),
                                      ("../a.mrc", False), ("/abs/a.mrc", False), ("a//b", False),
                                      ("Movies/.a.mrc", False), ("Movies/", False)])
def test_relion_path_names_pass_part_by_part(name, ok):
    if ok:
        assert check_micrograph_name(name, path_ok=True) == name
    else:
        with pytest.raises(BadName):
            check_micrograph_name(name, path_ok=True)
    with pytest.raises(BadName):
        check_micrograph_name(name)


def test_relion_names_keep_working_through_the_path_rule():
    paths = ["/data/a/Movies/x.mrc", "/data/b/Movies/x.mrc", "../c/y.mrc", "./Movies/z.mrc"]
    assert micrograph_names(paths) == ["data/a/Movies/x.mrc", "data/b/Movies/x.mrc", "y", "z"]
    assert (coordinate_file_name("../../etc/MotionCorr/job002/Movies/a.mrc")
            == "etc/MotionCorr/job002/Movies/a_pupick.star")
    assert coordinate_file_name("MotionCorr/job002/Movies/a.mrc") == "Movies/a_pupick.star"
    with pytest.raises(BadName, match="m.star: micrograph name '.x'"):
        micrograph_names(["Movies/.x.mrc"], "m.star")


def test_records_are_never_made_from_an_unchecked_name(tmp_path):
    import pandas as pd

    with OutputDir(tmp_path / "out", "pick", {}) as out:
        with pytest.raises(BadName):
            out.record("../../escaped", pd.DataFrame({"micrograph": [], "x": [], "y": [], "score": []}))
    assert not (tmp_path / "escaped.csv").exists() and not list(tmp_path.glob("*.outputs"))


def test_the_cli_refuses_a_bad_name_with_one_line_and_exit_2(tmp_path, demo_micrographs):
    hidden = tmp_path / ".hidden.mrc"
    shutil.copy(demo_micrographs[0], hidden)
    res = CliRunner().invoke(cli, ["pick", str(hidden), "--method", "blob", "--diameter-px", "40", "-o",
                                   str(tmp_path / "out"), "--device", "cpu"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert "starts with '.'" in lines[-1] and "Traceback" not in res.output
    records = tmp_path / "out" / ".pupick_records"
    assert not records.exists() or not list(records.iterdir())
