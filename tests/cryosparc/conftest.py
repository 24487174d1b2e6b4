"""Fixtures for the cryoSPARC wrapper tests (helpers live in cs_project.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from cs_project import CsProject, make_project
from cs_releases import ensure_cs47


@pytest.fixture(scope="session")
def cs_project(tmp_path_factory) -> CsProject:
    """The five bundled micrographs as a cryoSPARC project."""
    return make_project(tmp_path_factory.mktemp("P1"))


@pytest.fixture(scope="session")
def cs47_path() -> Path:
    """A directory holding cryosparc-tools 4.7.1 (installed on first use)."""
    return ensure_cs47()
