"""The wheel built from this checkout carries every module, the browser pages and the shipped general model."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TREES = {"core": "pupick/core", "adapters": "pupick/adapters", "relion_wrapper": "pupick/relion",
         "cryosparc_wrapper": "pupick/cryosparc"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[zipfile.ZipFile, str]:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                           "-w", str(out), str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("pupick-*.whl")
    return zipfile.ZipFile(built), done.stdout + done.stderr


def test_every_source_file_is_in_the_wheel(wheel):
    names = set(wheel[0].namelist())
    expected = {f"{prefix}/{p.relative_to(REPO / tree).as_posix()}" for tree, prefix in TREES.items()
                for p in (REPO / tree).rglob("*.py") if "__pycache__" not in p.parts}
    assert expected and not expected - names
    ui = {f"pupick/core/service/ui/{p.name}" for p in (REPO / "core/service/ui").iterdir() if p.is_file()}
    assert ui and not ui - names


def test_the_shipped_model_travels_and_stays_small(wheel):
    info = wheel[0].getinfo("pupick/core/shipped/general.pt")
    assert info.file_size == (REPO / "core/shipped/general.pt").stat().st_size <= 10 * 2**20


def test_no_folder_is_left_to_setuptools_guessing(wheel):
    assert "would be ignored" not in wheel[1] and "absent from the `packages`" not in wheel[1]
