"""No documentation tells anyone to `pip install` a bare `pupick`: that name on the registry is not ours (anyone could
register it). Install from a checkout or a built wheel instead (`pip install -e .`, `pip install ./dist/pupick-*.whl`)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_COMMAND = re.compile(r"pip3?\s+install\s+([^`\n|;&#]*)")
_BARE = re.compile(r"^pupick(\[[^\]]*\])?([<>=!~]=?.*)?$", re.IGNORECASE)


def bare_pupick_installs(text: str) -> list[str]:
    """The `pip install ...` commands in `text` that name the registry's `pupick` (with or without extras/version)."""
    found = []
    for m in _COMMAND.finditer(text):
        args = m.group(1)
        try:
            tokens = shlex.split(args)
        except ValueError:
            tokens = args.replace('"', " ").replace("'", " ").split()
        if any(_BARE.match(t) for t in tokens if not t.startswith("-")):
            found.append(m.group(0).strip())
    return found


@pytest.mark.parametrize("text,bad", [
    ('pip install "pupick[cryosparc]"', True), ("pip install pupick", True), ("`pip install 'pupick[cluster]'`", True),
    ("pip install -U pupick==0.1.0", True), ("scipion3 pip install pupick", True),
    ("pip install -e .", False), ("pip install ./dist/pupick-0.1.0-py3-none-any.whl", False),
    ("pip install /path/to/pupick", False), ('pip install -e "/src/pupick[cluster]"', False),
    ("pip install --force-reinstall 'cryosparc-tools~=4.7.0'", False), ('pip install ".[cluster]"', False),
])
def test_the_check_itself(text, bad):
    assert bool(bare_pupick_installs(text)) is bad


def test_no_documentation_installs_pupick_from_the_registry():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
    offenders = {str(p.relative_to(REPO)): bare_pupick_installs(p.read_text()) for p in pages if p.is_file()}
    assert {k: v for k, v in offenders.items() if v} == {}
