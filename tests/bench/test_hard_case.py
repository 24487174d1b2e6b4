"""bench/hard_case.py: the low-contrast copy of a set is deterministic, raw-like (uint16 counts) and keeps the labels."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import common  # noqa: E402
import hard_case  # noqa: E402

DEMO = REPO / "data" / "demo"


def _demo_set(root: Path) -> Path:
    d = root / "demo"
    (d / "micrographs").mkdir(parents=True)
    for p in sorted((DEMO / "micrographs").glob("*.mrc"))[:2]:
        (d / "micrographs" / p.name).symlink_to(p)
    (d / "set.json").write_text(json.dumps({"set": "demo", "diameter_px": 56, "factor": 2}))
    (d / "particles.csv").write_text((DEMO / "particles.csv").read_text())
    return root


def test_low_contrast_copy_is_deterministic_counts_with_the_same_labels(tmp_path):
    data = _demo_set(tmp_path / "data")
    a = hard_case.ensure(tmp_path / "a", data=data)
    b = hard_case.ensure(tmp_path / "b", data=data)
    src = sorted((data / "demo" / "micrographs").glob("*.mrc"))
    got = sorted((a / "demo" / "micrographs").glob("*.mrc"))
    assert [p.name for p in got] == [p.name for p in src]
    for path in got:
        with mrcfile.open(path) as m, mrcfile.open(b / "demo" / "micrographs" / path.name) as n:
            assert m.data.dtype == np.uint16 and np.array_equal(m.data, n.data)  # same seed, same counts
            counts = m.data.astype(float)
        assert abs(counts.mean() - hard_case.DOSE) < 0.5  # mean dose per pixel
        assert counts.std() > np.sqrt(hard_case.DOSE)  # shot noise plus the (weak) signal and ice
    meta = json.loads((a / "demo" / "set.json").read_text())
    assert meta["set"] == "demo" + hard_case.SUFFIX and meta["dose_e_per_px"] == hard_case.DOSE
    assert pd.read_csv(a / "demo" / "particles.csv").equals(pd.read_csv(DEMO / "particles.csv"))
    bset = common.load_set(a / "demo")  # a set the bench scripts read like a shared one
    assert bset.diameter_px == 56 and len(bset.micrographs) == 2


def test_the_particle_is_a_contrast_scaled_dip_and_the_ice_adds_structure():
    rng = np.random.default_rng(0)
    image = np.zeros((256, 256))
    image[60:160, 60:160] = -1.0  # one dark square "particle" on flat ice
    z = (image - image.mean()) / image.std()
    counts = hard_case.counts_image(image, rng, diameter_px=40, ice=0.0).astype(float)
    dip = counts[70:150, 70:150].mean() - counts[:50, :50].mean()
    assert abs(dip - hard_case.DOSE * hard_case.CONTRAST * (z[100, 100] - z[0, 0])) < 0.3
    flat = np.zeros((512, 512))
    shot = hard_case.counts_image(flat, np.random.default_rng(1), diameter_px=40, ice=0.0).astype(float)
    iced = hard_case.counts_image(flat, np.random.default_rng(1), diameter_px=40).astype(float)
    assert abs(shot.var() - hard_case.DOSE) < 0.5  # Poisson: variance = mean
    assert iced.var() - shot.var() > 0.5 * (hard_case.DOSE * hard_case.ICE) ** 2  # the ice structure on top


def test_two_processes_building_the_same_copy_at_once_both_succeed(tmp_path):
    data = _demo_set(tmp_path / "data")
    out = tmp_path / "out"
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import hard_case; "
            "hard_case.ensure(Path(sys.argv[2]), data=Path(sys.argv[3]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(REPO / "bench"), str(out), str(data)],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert sorted(p.name for p in out.iterdir()) == ["demo"]  # no temporary folder left behind
    assert len(list((out / "demo" / "micrographs").glob("*.mrc"))) == 2


def test_a_copy_built_with_other_parameters_is_replaced(tmp_path):
    data = _demo_set(tmp_path / "data")
    hard_case.ensure(tmp_path / "out", data=data, dose=4.0)
    hard_case.ensure(tmp_path / "out", data=data)
    assert json.loads((tmp_path / "out" / "demo" / "set.json").read_text())["dose_e_per_px"] == hard_case.DOSE
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["demo"]
