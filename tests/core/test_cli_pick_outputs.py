"""`pupick pick` as a console script: bad output places are one line, a closed pipe costs nothing, honest reports."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pupick.core.cli import main
from console_run import run_console

BLOB = ["--method", "blob", "--diameter-px", "56"]
PUPICK = str(Path(sys.executable).with_name("pupick"))


def run(capsys, args) -> tuple[int, str, str]:
    return run_console(main, capsys, args)


def test_output_under_a_regular_file_is_one_line(capsys, tmp_path, demo_micrographs):
    (tmp_path / "f").write_text("x")
    code, _, err = run(capsys, ["pick", demo_micrographs[0], *BLOB, "-o", tmp_path / "f" / "sub"])
    assert code == 1 and err.count("\n") == 1 and "f is a file, not a directory" in err
    assert (tmp_path / "f").read_text() == "x"


def test_unwritable_output_directory_is_one_line(capsys, tmp_path, demo_micrographs):
    if os.geteuid() == 0:  # root ignores file modes; sysfs refuses everyone
        place = Path("/sys")
    else:
        place = tmp_path / "ro"
        place.mkdir()
        place.chmod(0o555)
    code, _, err = run(capsys, ["pick", demo_micrographs[0], *BLOB, "-o", place / "picks"])
    assert code == 1 and err.count("\n") == 1 and "cannot write" in err and "Traceback" not in err


def test_coordinates_are_reported_only_when_written(capsys, tmp_path):
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"not an mrc" * 100)
    code, out, err = run(capsys, ["pick", bad, *BLOB, "-o", tmp_path / "o", "--format", "star"])
    assert code == 1 and "could not be picked" in err
    assert not (tmp_path / "o" / "coordinates").exists() and "star files in" not in out


def test_a_closed_pipe_on_stdout_exits_0_quietly_with_complete_outputs(tmp_path, demo_micrographs):
    mics = [str(p) for p in demo_micrographs[:2]]
    out = tmp_path / "o"
    cmd = f"'{PUPICK}' pick {' '.join(mics)} {' '.join(BLOB)} -o '{out}' --format star | true"
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Error" not in res.stderr and "Traceback" not in res.stderr
    picks = pd.read_csv(out / "picks.csv")
    assert picks["micrograph"].nunique() == 2
    assert sorted(p.name for p in (out / "coordinates").iterdir()) == [Path(m).stem + ".star" for m in mics]
