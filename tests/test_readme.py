"""The code blocks of the README and the docs pages run as they stand, from the repository root.

- docs/api.md's Python block (it was the README's "Python API" block) trains and picks on the bundled data.
- The README's five-minute tour (the command-line block and the RELION block) runs as a user would type it, in a
  scratch directory that sees the repository's `data/`; `pupick view` is started without a browser, its pages are
  read over HTTP, and it is stopped.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEMS = ["061_10028", "062_10028", "063_10028", "311_10028", "312_10028"]


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced ```LANGUAGE blocks of a Markdown file, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), re.S | re.M)


def section(path: Path, heading: str) -> str:
    """The text of a Markdown file from HEADING to the next heading of the same or a higher level."""
    text = path.read_text()
    # headings are looked for outside fenced code (a STAR file's `# version` line is no heading)
    masked = re.sub(r"^```.*?^```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S | re.M)
    start = masked.index(heading)
    level = heading.split(" ")[0]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", masked[start + len(heading):], re.M)]
    return text[start:start + len(heading) + ends[0]] if ends else text[start:]


@pytest.mark.slow
def test_the_python_api_block_runs_and_finds_particles():
    blocks = code_blocks(ROOT / "docs" / "api.md", "python")
    assert blocks, "docs/api.md lost its Python example"
    code = blocks[0]
    assert 8 <= len(code.strip().splitlines()) <= 14
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    assert "epoch 4: loss" in out.stdout and "312_10028" in out.stdout
    ap = float(re.search(r"^AP ([0-9.]+)$", out.stdout, re.M).group(1))
    assert ap > 0.5


# `pupick view` in the tour: start it without a browser, read the micrograph table over HTTP, stop it, and record
# what it showed (one JSON line per call in $TOUR_VIEWS).
VIEW_CHECK = f"""
import json, os, sys, urllib.request
sys.path.insert(0, {str(ROOT / "tests" / "service")!r})
from view_helpers import ViewProcess
view = ViewProcess(*sys.argv[1:])
try:
    req = urllib.request.Request(view.base + "/api/round/0/micrographs",
                                 headers={{"Authorization": "Bearer " + view.token}})
    rows = json.load(urllib.request.urlopen(req, timeout=60))["micrographs"]
finally:
    view.close()
with open(os.environ["TOUR_VIEWS"], "a") as f:
    f.write(json.dumps({{"args": sys.argv[1:], "rows": rows}}) + "\\n")
"""


@pytest.mark.slow
def test_the_readme_tour_runs_on_the_bundled_data(tmp_path: Path):
    tour = section(ROOT / "README.md", "## A five-minute tour")
    blocks = code_blocks(ROOT / "README.md", "bash")
    blocks = [b for b in blocks if b in tour]
    assert len(blocks) == 2, "the tour has a command-line block and a RELION block"
    cli, relion = blocks
    assert "pupick_relion_train" in relion and "pupick_relion_pick" in relion
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "view_check.py").write_text(VIEW_CHECK)
    views = tmp_path / "views.jsonl"
    # `pupick view` would wait for Ctrl-C: the shell function runs it through the check above instead
    script = ("set -euo pipefail\n"
              f"pupick() {{ if [ \"$1\" = view ]; then shift; {sys.executable} {tmp_path / 'view_check.py'} \"$@\"; "
              "else command pupick \"$@\"; fi; }\n" + cli + relion)
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "2",
                              "TOUR_VIEWS": str(views)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the command-line tour: a model, picks on the two held-out micrographs that find the labelled particles
    work = tmp_path / "tour"
    assert (work / "model.pt").is_file() and (work / "model.train.tsv").is_file()
    picks = pd.read_csv(work / "picks" / "picks.csv")
    assert set(picks["micrograph"]) == {"311_10028", "312_10028"}
    ap = float(re.search(r"^AP ([0-9.]+)$", out.stdout, re.M).group(1))  # pupick evaluate's report
    assert ap > 0.5
    # the RELION tour: both jobs succeeded, one coordinate file per micrograph, listed in autopick.star
    job1, job2 = work / "relion" / "External" / "job001", work / "relion" / "External" / "job002"
    assert (job1 / "RELION_JOB_EXIT_SUCCESS").exists() and (job1 / "model.pt").is_file()
    assert (job2 / "RELION_JOB_EXIT_SUCCESS").exists()
    assert sorted(p.name for p in (job2 / "Micrographs").iterdir()) == [f"{s}_pupick.star" for s in STEMS]
    assert all(f"External/job002/Micrographs/{s}_pupick.star" in (job2 / "autopick.star").read_text() for s in STEMS)
    # both `pupick view` calls served their picks: every micrograph listed, with picks, none failed
    shown = [json.loads(line) for line in views.read_text().splitlines()]
    assert [v["args"][0] for v in shown] == ["tour/picks", "External/job002"]
    for view, stems in zip(shown, (["311_10028", "312_10028"], STEMS)):
        assert sorted(r["name"] for r in view["rows"]) == stems
        assert all(r["n"] > 0 and r["error"] is None for r in view["rows"])
