"""Removed options (core.config.REMOVED, e.g. `--bootstrap`): every front end refuses them with the same one line,
naming the replacement, before any work starts: the `pupick` and `pupick_cryosparc` command lines and the RELION
External job exit 2, `pupick serve` answers 422 with a JSON error. Each runs as a real process on real demo data.
(The Scipion protocol is checked in a real Scipion: tests/scipion/scipion_side/workflow_checks.py.)"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pupick.core.config import REMOVED, removed_message

TESTS = Path(__file__).resolve().parent
for helpers in ("relion", "cryosparc", "service"):  # their helper modules (tests/<suite>/*.py)
    if str(TESTS / helpers) not in sys.path:
        sys.path.insert(0, str(TESTS / helpers))

from cs_project import make_project as make_cs_project  # noqa: E402
from relion_project import DIAMETER_A, STEMS, exit_files, make_project, run_external  # noqa: E402
from service_server import Server  # noqa: E402

BIN = Path(sys.executable).parent
NAMES = sorted(REMOVED)
FLAGS = [(name, form) for name in NAMES for form in ("--{}", "--no-{}")]  # either form of a removed flag


def _one_error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def _flag(name: str, form: str) -> str:
    return form.format(name.replace("_", "-"))


@pytest.mark.parametrize("name, form", FLAGS)
def test_pupick_pick_refuses_it_with_exit_2(tmp_path, demo_dir, name, form):
    out = tmp_path / "picks"
    done = subprocess.run([str(BIN / "pupick"), "pick", str(demo_dir / "micrographs"), "--model", "general",
                           "--diameter-px", "56", "-o", str(out), "--device", "cpu", _flag(name, form)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert _one_error_line(done.stderr) == "pupick: error: " + removed_message(name, f"--{_flag(name, '{}')}")
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize("name, form", FLAGS)
def test_pupick_cryosparc_pick_refuses_it_with_exit_2(tmp_path, name, form):
    project = make_cs_project(tmp_path / "P1")
    out = tmp_path / "particles.cs"
    done = subprocess.run([str(BIN / "pupick_cryosparc"), "pick", "--exposures", str(project.exposures_cs),
                           "--project-dir", str(project.root), "--model", "general", "--diameter-px", "56",
                           "-o", str(out), "--device", "cpu", _flag(name, form)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert line.endswith(": error: " + removed_message(name, f"--{_flag(name, '{}')}")), line
    assert not out.exists()


@pytest.mark.parametrize("name, value", [(name, value) for name in NAMES for value in ("yes", "no")])
def test_relion_pick_job_refuses_it_with_exit_2(tmp_path, name, value):
    project = make_project(tmp_path / "project", 50001)
    project.write_micrographs(STEMS[:1])
    out = "External/job010/"
    job = project.root / out
    done = run_external(project, "pupick_relion_pick", out, {"in_mics": project.mics_star},
                        {"model": "general", "diameter": str(DIAMETER_A), name: value})
    assert done.returncode == 2
    assert exit_files(job) == ["RELION_JOB_EXIT_FAILURE"]
    err = (job / "run.err").read_text()
    assert _one_error_line(err) == "pupick_relion_pick: error: " + removed_message(name, f"parameter {name}")
    assert not (job / "autopick.star").exists() and not (job / ".pupick_records").exists()


@pytest.fixture(scope="module")
def serve(tmp_path_factory, demo_micrographs):
    """A real `pupick serve` on --port 0 (loopback, no token), its data root holding one bundled micrograph."""
    root = tmp_path_factory.mktemp("root")
    (root / demo_micrographs[0].name).symlink_to(demo_micrographs[0])
    srv = Server(tmp_path_factory.mktemp("serve") / "state", root).start()
    yield srv, root
    srv.stop()


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize("name, value", [(name, value) for name in NAMES for value in (True, False)])
def test_pupick_serve_refuses_it_with_422(serve, name, value):
    srv, root = serve
    mic = str(next(root.iterdir()))
    status, body = _post(f"{srv.url}/v1/pick", {"micrographs": [mic], "model": "general",
                                                "settings": {"diameter_px": 56, name: value}})
    assert status == 422
    assert body == {"error": removed_message(name, f"setting {name!r}")}
    with urllib.request.urlopen(f"{srv.url}/v1/jobs", timeout=30) as answer:
        assert json.loads(answer.read()) == {"jobs": []}  # no job was queued


@pytest.mark.parametrize("name", NAMES)
def test_troubleshooting_quotes_the_line(name):
    """docs/troubleshooting.md holds the exact line users see, so a change of wording shows up there."""
    page = (TESTS.parent / "docs" / "troubleshooting.md").read_text()
    assert removed_message(name, f"--{name.replace('_', '-')}") in page
