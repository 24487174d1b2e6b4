"""docs/architecture.md lists core's layers exactly as the import-linter contract in pyproject.toml checks them."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"


def _contract(contract_id: str) -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return next(c for c in config["contracts"] if c["id"] == contract_id)


def _page_layers() -> list[str]:
    """The numbered list under '## The layers' (its lines start with `N. \\`layer\\` — `)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    return [m.group(2) for m in re.finditer(r"^(\d+)\. `([^`]+)` — ", section, re.M)]


def test_the_page_lists_the_contracts_layers_in_order():
    contract = _contract("core-layers")
    assert contract["type"] == "layers" and contract["containers"] == ["pupick.core"]
    assert _page_layers() == contract["layers"]


def test_the_contracts_ignore_no_import_and_place_every_core_module():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert config["contracts"] and not any("ignore_imports" in c for c in config["contracts"])
    layers = _contract("core-layers")
    assert layers.get("exhaustive") is True  # a new module must be given a layer
    named = {m.strip() for layer in layers["layers"] for m in re.split(r"[|:]", layer)}
    modules = {p.stem for p in CORE.glob("*.py") if p.stem != "__init__"} | {
        p.parent.name for p in CORE.glob("*/__init__.py")}
    assert named == modules


def test_the_page_draws_every_layer():
    text = (ROOT / "docs" / "architecture.md").read_text()
    drawing = text.split("## The layers", 1)[1].split("```", 2)[1]
    drawn = [" ".join(line.split()) for line in drawing.splitlines()]
    for layer in _contract("core-layers")["layers"]:
        assert any(line.startswith(layer) or f" {layer} " in f" {line} " for line in drawn), layer


def test_the_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")  # import-linter, from the [test] extra
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
