"""The Scipion plugin in a real Scipion: pyworkflow + pwem in their own virtualenv, driven from here.

The project's venv has no pyworkflow, so the Scipion part runs as a subprocess in the Scipion venv
(scipion_plugin/make_env.sh creates it; it fails loudly, never skips, when it cannot). The checks written with
Scipion's own test classes live in tests/scipion/scipion_side/*_checks.py; this module runs them once and
checks the exported picks against the bundled labels with pupick's evaluation.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pupick.core.config import removed_message
from pupick.core.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "scipion_plugin"
SIDE = Path(__file__).resolve().parent / "scipion_side"
DEMO = ROOT / "data" / "demo"
SCIPION_VENV = Path(os.environ.get("PUPICK_SCIPION_VENV", ROOT / ".venv-scipion")).resolve()
RUN_TIMEOUT_S = 600  # the whole Scipion run; about 1-2 minutes on 2 cores
N_CHECKS = {"units_checks": 20, "workflow_checks": 10}  # tests in scipion_side/*_checks.py


@pytest.fixture(scope="session")
def scipion_python() -> Path:
    """The Scipion venv's interpreter, creating the venv when missing (idempotent, fast when done)."""
    proc = subprocess.run([str(PLUGIN / "make_env.sh"), str(SCIPION_VENV)], capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode != 0:
        pytest.fail("could not create the Scipion virtualenv %s:\n%s%s" % (SCIPION_VENV, proc.stdout, proc.stderr))
    return SCIPION_VENV / "bin" / "python"


def _pupick_executable() -> str:
    exe = Path(sys.executable).parent / "pupick"
    assert exe.exists(), f"{exe} missing: the project venv must have pupick installed"
    return str(exe)


@pytest.fixture(scope="module")
def scipion_run(scipion_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the Scipion-side checks once; return their exit status, output and export folder."""
    tmp = tmp_path_factory.mktemp("scipion")
    out = tmp / "out"
    out.mkdir()
    env = scipion_env(scipion_python, tmp, out)
    try:
        proc = subprocess.run([str(scipion_python), "run_checks.py", "units_checks", "workflow_checks"],
                              cwd=SIDE, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, output = "timeout", f"Scipion checks still running after {RUN_TIMEOUT_S} s\n{err.stdout}{err.stderr}"
    return {"rc": rc, "output": output, "out": out}


def scipion_env(scipion_python: Path, tmp: Path, out: Path) -> dict:
    """The environment the Scipion-side checks run in: a fresh SCIPION_HOME/USER_DATA under tmp, results in out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCIPION_", "PYTHON"))}
    env.update({
        "SCIPION_HOME": str(tmp / "home"),
        "SCIPION_USER_DATA": str(tmp / "user_data"),
        "SCIPION_DOMAIN": "pwem",
        "SCIPION_PYTHON": str(scipion_python),
        "SCIPION_TEST_NOSYNC": "1",
        "SCIPION_NOTIFY": "False",
        "SCIPION_STEPS_CHECK_SEC": "1",
        "SCIPION_EM_NEW_FILE_CHECK_SEC": "1",
        "SCIPION_UPDATE_SET_ATTEMPT_WAIT": "1",
        "PUPICK": _pupick_executable(),
        "PUPICK_DEMO_DIR": str(DEMO),
        "PUPICK_TEST_OUT": str(out),
        "PUPICK_REMOVED_LINE": "pupick: error: " + removed_message("bootstrap", "--bootstrap"),
        "OMP_NUM_THREADS": "2",
    })
    (tmp / "home").mkdir(exist_ok=True)
    return env


def test_scipion_checks_pass(scipion_run: dict) -> None:
    """Registration, protocols.conf, runner, conversion, and the full import-train-pick-streaming workflow."""
    results_file = scipion_run["out"] / "results.json"
    assert results_file.exists(), "the Scipion-side checks did not run:\n" + scipion_run["output"][-12000:]
    records = json.loads(results_file.read_text())
    setup = scipion_run["out"] / "setup_seconds.txt"
    print("workflow setUpClass (import, import coordinates, train):",
          setup.read_text().strip() + " s" if setup.exists() else "did not finish")
    for r in records:  # shown with -rP
        print(f"{r['outcome']:>7} {r['seconds']:6.1f} s  {r['test']}")
    failed = [r for r in records if r["outcome"] != "ok"]
    assert not failed, "\n".join(f"{r['test']}: {r['outcome']}\n{r['detail']}" for r in failed) + \
        "\n" + scipion_run["output"][-6000:]
    ran = {module: sum(r["test"].startswith(module + ".") for r in records) for module in N_CHECKS}
    assert ran == N_CHECKS, ran
    assert scipion_run["rc"] == 0, scipion_run["output"][-6000:]


@pytest.mark.parametrize("run", ["closed", "stream"])
def test_scipion_picks_recover_the_labels(scipion_run: dict, run: str) -> None:
    """Picks exported from the Scipion output sets find the bundled (incomplete) labels."""
    path = scipion_run["out"] / f"picks_{run}.csv"
    assert path.exists(), f"no picks exported from the {run} run:\n" + scipion_run["output"][-6000:]
    picks = pd.read_csv(path)
    labels = pd.read_csv(DEMO / "particles.csv")
    result = evaluate(picks, labels, match_radius=28.0)
    print(result.to_json_dict())
    assert result.n_micrographs == 5
    assert result.ap >= 0.5, result.to_json_dict()


def test_plugin_imports_only_pyworkflow_pwem_and_the_standard_library() -> None:
    allowed = {"pyworkflow", "pwem", "pupick_scipion"} | set(sys.stdlib_module_names)
    for path in sorted((PLUGIN / "pupick_scipion").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path}: imports {name}"
