"""Installed layout: one `pupick` namespace, nothing named core/adapters at the top of site-packages."""
from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ["core", "adapters", "relion_wrapper", "cryosparc_wrapper"]


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory) -> Path:
    """`pip install --no-deps .` from a copy of the source into a brand-new virtualenv; returns its python."""
    work = tmp_path_factory.mktemp("pkg")
    src = work / "src"
    src.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(ROOT / name, src / name)
    for name in PACKAGE_DIRS:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(src)], check=True,
                   capture_output=True, text=True)
    return python


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def test_only_the_pupick_namespace_reaches_site_packages(fresh_install):
    site = _site_packages(fresh_install)
    top = {p.name for p in site.iterdir()}
    assert "pupick" in top
    for forbidden in ["core", "adapters", "relion_wrapper", "cryosparc_wrapper", "scipion_plugin", "tests"]:
        assert forbidden not in top
    assert {p.name for p in (site / "pupick").iterdir()} >= {"core", "adapters", "relion", "cryosparc"}


def test_browser_pages_are_installed(fresh_install):
    ui = _site_packages(fresh_install) / "pupick" / "core" / "service" / "ui"
    assert {"index.html", "style.css", "app.js", "api.js", "viewer.js", "table.js", "plots.js", "jobs.js"} <= {
        p.name for p in ui.iterdir()}


@pytest.mark.parametrize("module,ok", [("pupick.core", True), ("pupick.adapters", True), ("pupick.relion", True),
                                       ("pupick.cryosparc", True), ("core", False), ("adapters", False)])
def test_imports_in_fresh_environment(fresh_install, tmp_path, module, ok):
    # run from an empty directory so the source tree's folders cannot shadow anything
    proc = subprocess.run([str(fresh_install), "-c", f"import {module}"], cwd=tmp_path, capture_output=True, text=True)
    assert (proc.returncode == 0) == ok, proc.stderr


def test_console_script_reports_a_semantic_version():
    proc = subprocess.run([sys.executable, "-m", "pupick.core.cli", "--version"], capture_output=True, text=True)
    import re

    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"\d+\.\d+\.\d+\n", proc.stdout)
