"""RELION coordinates -> cryoSPARC particles .cs with a RELION micrographs STAR, and back, as `pupick convert` does."""
from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest
from cryosparc.dataset import Dataset

from pupick.adapters.cryosparc import exposure_uids
from pupick.core.cli import main

from relion_project import PIXEL_SIZE, STEMS, make_project
from console_run import run_console


def run(capsys, args) -> tuple[int, str, str]:
    return run_console(main, capsys, args)


@pytest.fixture
def project(tmp_path, demo_labels, monkeypatch):
    project = make_project(tmp_path / "project", 50001)
    project.write_micrographs(STEMS[:3])
    project.write_manual_picks(demo_labels, STEMS[:3])
    monkeypatch.chdir(project.root)  # RELION paths are relative to the project directory
    return project


def test_relion5_manual_picks_to_cs_and_back_keep_every_pick(capsys, project, demo_labels, tmp_path):
    code, out, err = run(capsys, ["convert", project.coords_list, "-o", tmp_path / "picks.cs",
                                  "--micrographs", project.mics_star])
    assert code == 0, err
    expected = demo_labels[demo_labels["micrograph"].isin(STEMS[:3])]
    assert f"{len(expected)} picks on 3 micrograph(s)" in out

    dset = Dataset.load(tmp_path / "picks.cs")
    assert len(dset) == len(expected)
    paths = [str(p) for p in dset["location/micrograph_path"]]
    assert set(paths) == {project.mic_path(s) for s in STEMS[:3]}
    assert (np.asarray(dset["location/micrograph_shape"]) == [1024, 1024]).all()
    np.testing.assert_allclose(dset["location/micrograph_psize_A"], PIXEL_SIZE, rtol=1e-5)
    # exposure uids are derived from the micrograph names: the same on every run, one per micrograph
    uids = dict(zip(paths, np.asarray(dset["location/micrograph_uid"]).tolist()))
    names = [os.path.splitext(os.path.basename(p))[0] for p in uids]
    assert list(uids.values()) == exposure_uids(names).tolist()

    code, out, err = run(capsys, ["convert", tmp_path / "picks.cs", "-o", tmp_path / "back.csv"])
    assert code == 0, err
    back = pd.read_csv(tmp_path / "back.csv")
    key = ["micrograph", "x", "y"]
    a = expected[key].sort_values(key).reset_index(drop=True)
    b = back[key].sort_values(key).reset_index(drop=True)
    assert (a["micrograph"] == b["micrograph"]).all()
    np.testing.assert_allclose(b[["x", "y"]], a[["x", "y"]], atol=1024 * 2e-7 + 1e-4)

    code, _, err = run(capsys, ["convert", project.coords_list, "-o", tmp_path / "again.cs",
                                "--micrographs", project.mics_star])
    again = Dataset.load(tmp_path / "again.cs")
    assert code == 0, err
    assert np.asarray(again["location/micrograph_uid"]).tolist() == np.asarray(dset["location/micrograph_uid"]).tolist()


def test_cs_without_readable_micrographs_says_what_is_missing(capsys, project, tmp_path):
    for p in (project.root / "MotionCorr/job002/Movies").iterdir():
        p.unlink()
    code, _, err = run(capsys, ["convert", project.coords_list, "-o", tmp_path / "picks.cs",
                                "--micrographs", project.mics_star])
    assert code == 1 and err.count("\n") == 1 and "not found" in err
    assert not re.search(r"read_exposures|read_\w+\(|\bdict\b|DataFrame", err)
