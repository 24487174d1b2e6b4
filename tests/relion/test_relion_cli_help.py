"""The RELION executables print help on -h/--help, and a failed job's run.err names every failed micrograph."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relion_project import STEMS, exit_files, make_project, run_external

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("exe,params", [("pupick_relion_pick", ["model", "threshold", "min_distance", "views"]),
                                        ("pupick_relion_train", ["diameter", "epochs", "test_split"])])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_parameters(tmp_path, exe, params, flag):
    res = subprocess.run([str(BIN / exe), flag], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.startswith(f"usage: {exe} --o JOB_DIR --in_mics FILE")
    assert "External job" in res.stdout
    for name in params:
        assert f"\n  {name} " in res.stdout
    assert list(tmp_path.iterdir()) == []  # no job directory, no exit file


def test_run_err_names_every_failed_micrograph(tmp_path, trained_model):
    project = make_project(tmp_path / "project", 50001)
    model = project.root / "External/job006/model.pt"
    model.parent.mkdir(parents=True)
    shutil.copyfile(trained_model, model)
    mics = project.write_micrographs(STEMS[:3])
    for rel in mics[:2]:  # two of three are truncated
        target = project.root / rel
        target.write_bytes(target.read_bytes()[:3000])
    out = "External/job012/"
    res = run_external(project, "pupick_relion_pick", out, {"in_mics": project.mics_star},
                       {"model": "External/job006/model.pt"})
    assert res.returncode == 1 and exit_files(project.root / out) == ["RELION_JOB_EXIT_FAILURE"]
    last = (project.root / out / "run.err").read_text().strip().splitlines()[-1]
    assert "2 micrograph(s) could not be picked" in last
    assert mics[0] in last and mics[1] in last and mics[2] not in last
