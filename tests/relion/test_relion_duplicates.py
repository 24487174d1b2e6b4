"""A micrographs STAR that lists one micrograph twice: one line naming the micrograph and the STAR, not pupick's
internal record name."""
from __future__ import annotations

import shutil

from relion_project import STEMS, exit_files, make_project, run_external


def test_a_micrograph_listed_twice_is_named(tmp_path, trained_model):
    project = make_project(tmp_path / "project", 50001)
    (project.root / "External/job006").mkdir(parents=True)
    shutil.copyfile(trained_model, project.root / "External/job006/model.pt")
    paths = project.write_micrographs([STEMS[0], STEMS[1], STEMS[0]])
    out = "External/job013/"
    done = run_external(project, "pupick_relion_pick", out, {"in_mics": project.mics_star},
                        {"model": "External/job006/model.pt"})
    job = project.root / out
    assert done.returncode == 1 and exit_files(job) == ["RELION_JOB_EXIT_FAILURE"]
    err = (job / "run.err").read_text()
    last = err.strip().splitlines()[-1]
    assert f"{project.mics_star}: micrograph {paths[0]} is listed 2 times" in last, last
    assert "~" not in last and "_pupick" not in last and "Traceback" not in err
