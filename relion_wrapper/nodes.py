"""RELION versions, pipeline node type labels and the RELION_OUTPUT_NODES.star file."""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Sequence

import pandas as pd

from pupick.core.errors import InputError

OUTPUT_NODES = "RELION_OUTPUT_NODES.star"

# Node type labels by RELION major version. RELION 5 reads the labels in this file as written (no translation).
LABELS = {
    4: {
        "coords": "MicrographsCoords.star.relion.autopick",
        "model": "ProcessData.sav.pupick.model",
        "log": "LogFile.pdf.pupick.training",
    },
    5: {
        "coords": "MicrographCoordsGroup.star.relion.autopick",
        "model": "ParamsData.sav.pupick.model",
        "log": "LogFile.pdf.pupick.training",
    },
}

# `# version N` written by RELION at the top of its STAR files.
STAR_VERSIONS = {4: 30001, 5: 50001}

_VERSION_LINE = re.compile(r"^#\s*version\s+(\d+)")


def detect_version(project_dir: Path = Path("."), override: str | None = None) -> tuple[int, str]:
    """RELION's major version (4 or 5) and how it was found: the override, else default_pipeline.star."""
    if override is not None:
        text = override.strip().lower().removeprefix("relion").strip()
        major = text.split(".")[0]
        if major in ("4", "3"):
            return 4, f"relion_version {override} (given)"
        if major == "5":
            return 5, f"relion_version {override} (given)"
        raise InputError(f"parameter relion_version: {override!r} is not 4 or 5 (3.1 counts as 4)")
    pipeline = project_dir / "default_pipeline.star"
    try:
        with open(pipeline, errors="replace") as fh:
            head = [next(fh, "") for _ in range(20)]
    except OSError:
        return 4, f"{pipeline} not found; assuming RELION 4 (set parameter relion_version to change)"
    for line in head:
        m = _VERSION_LINE.match(line.strip())
        if m:
            number = int(m.group(1))
            major = 5 if number >= 50000 else 4
            return major, f"{pipeline}: # version {number} -> RELION {'5' if major == 5 else '3.1/4'}"
    return 4, f"{pipeline} has no '# version' line; assuming RELION 4 (set parameter relion_version to change)"


def write_output_nodes(out_dir: Path, nodes: Sequence[tuple[str, str]], version: int) -> Path:
    """Write <out_dir>/RELION_OUTPUT_NODES.star listing (node name, type label) pairs, atomically."""
    from pupick.adapters.star import write_star

    table = pd.DataFrame({
        "rlnPipeLineNodeName": pd.Series([n for n, _ in nodes], dtype=object),
        "rlnPipeLineNodeTypeLabel": pd.Series([label for _, label in nodes], dtype=object),
    })
    target = out_dir / OUTPUT_NODES
    write_star({"output_nodes": table}, target, version=STAR_VERSIONS[version])
    return target


def node_name(out_name: str, relative: str | PurePosixPath) -> str:
    """A file inside the job directory, named the way RELION names nodes (--o as given + relative path)."""
    base = out_name if out_name.endswith("/") else out_name + "/"
    return base + str(PurePosixPath(relative))


def coordinates_relpath(micrograph_path: str, suffix: str = "pupick") -> PurePosixPath:
    """Where a micrograph's coordinates go inside the job directory (RELION's rule, kept inside the job:
    MotionCorr/job002/Movies/a.mrc -> Movies/a_pupick.star)."""
    from pupick.adapters.relion import coordinate_file_name

    parts = [p for p in PurePosixPath(coordinate_file_name(micrograph_path, suffix)).parts if p not in ("..", ".", "/")]
    if not parts:
        raise InputError(f"micrograph name {micrograph_path!r} is not a file name")
    return PurePosixPath(*parts)
