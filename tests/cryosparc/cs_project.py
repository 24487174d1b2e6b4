"""Helpers: a cryoSPARC-shaped project directory built from the bundled micrographs, with an exposures .cs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryosparc.dataset import Dataset

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
NAMES = ["061_10028", "062_10028", "063_10028", "311_10028", "312_10028"]
PIXEL_SIZE = 5.36
DIAMETER_PX = 56
# A real cryoSPARC picker's particle output (location + pick_stats; 12 fields and uid), as cryoSPARC 4.x and 5.x
# write it, written down independently of pupick's own list (adapters/cryosparc.py PARTICLE_FIELDS).
PICKER_FIELDS = [
    ("location/micrograph_uid", "<u8"), ("location/exp_group_id", "<u4"), ("location/micrograph_path", "O"),
    ("location/micrograph_shape", "2<u4"), ("location/micrograph_psize_A", "<f4"),
    ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"), ("location/min_dist_A", "<f4"),
    ("pick_stats/ncc_score", "<f4"), ("pick_stats/power", "<f4"), ("pick_stats/template_idx", "<u4"),
    ("pick_stats/angle_rad", "<f4"),
]


@dataclass
class CsProject:
    """A project directory and the exposures .cs inside it (paths in the .cs relative to the directory)."""

    root: Path
    exposures_cs: Path
    uids: np.ndarray
    rel_paths: list[str]


def exposure_dataset(rel_paths: list[str], shapes: list[tuple[int, int]], uids: np.ndarray,
                     pixel_size: float = PIXEL_SIZE) -> Dataset:
    """An exposures Dataset as cryoSPARC's Patch CTF writes it (the slots pupick reads, plus CTF)."""
    n = len(rel_paths)
    dset = Dataset({"uid": np.asarray(uids, dtype=np.uint64)})
    dset.add_fields([
        ("micrograph_blob/path", "O"), ("micrograph_blob/idx", "<u4"), ("micrograph_blob/shape", "<u4", (2,)),
        ("micrograph_blob/psize_A", "<f4"), ("micrograph_blob/format", "O"),
        ("mscope_params/exp_group_id", "<u4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
    ])
    dset["micrograph_blob/path"] = np.array(rel_paths, dtype=object)
    dset["micrograph_blob/shape"] = np.array(shapes, dtype=np.uint32).reshape(n, 2)
    dset["micrograph_blob/psize_A"] = pixel_size
    dset["micrograph_blob/format"] = "MRC/1"
    dset["mscope_params/exp_group_id"] = 1
    dset["ctf/df1_A"] = np.linspace(15000, 19000, n)
    dset["ctf/df2_A"] = np.linspace(14500, 18500, n)
    dset["ctf/df_angle_rad"] = 0.5
    return dset


def make_project(root: Path, names: list[str] = NAMES, uids: np.ndarray | None = None) -> CsProject:
    """J2/motioncorrected/<uid>_<name>_patch_aligned_doseweighted.mrc links + J3/J3_exposures_accepted.cs."""
    uids = np.asarray(uids if uids is not None else [10**19 + 1000 * i + 7 for i in range(len(names))], dtype=np.uint64)
    rel = []
    (root / "J2" / "motioncorrected").mkdir(parents=True, exist_ok=True)
    for uid, name in zip(uids, names):
        r = f"J2/motioncorrected/{int(uid)}_{name}_patch_aligned_doseweighted.mrc"
        target = root / r
        if not target.exists():
            os.symlink(DEMO / "micrographs" / f"{name}.mrc", target)
        rel.append(r)
    (root / "J3").mkdir(exist_ok=True)
    cs = root / "J3" / "J3_exposures_accepted.cs"
    exposure_dataset(rel, [(1024, 1024)] * len(rel), uids).save(cs)
    return CsProject(root, cs, uids, rel)
