"""Fixtures for the cryoSPARC wrapper tests (helpers live in cs_project.py)."""
from __future__ import annotations

import pytest

from cs_project import CsProject, make_project


@pytest.fixture(scope="session")
def cs_project(tmp_path_factory) -> CsProject:
    """The five bundled micrographs as a cryoSPARC project."""
    return make_project(tmp_path_factory.mktemp("P1"))
