"""Issue 26: a setting over its bound is refused by the real `pupick` process before any work: exit 2, one line."""
from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    (["--batch-size", "257"], "--batch-size"),
    (["--tile-size", "4096"], "--tile-size"),
    (["--batch-size", "256", "--tile-size", "1024"], "--batch-size x --tile-size²"),
    (["--epochs", "1000", "--steps-per-epoch", "1000"], "--epochs x --steps-per-epoch"),
    (["--label-radius", "1e6"], "--label-radius"),
    (["--units", "4096"], "--units"),
]


@pytest.mark.parametrize("options,named", CASES, ids=[" ".join(o) for o, _ in CASES])
def test_train_refuses_a_setting_over_its_bound(options, named, demo_micrographs, tmp_path):
    labels = demo_micrographs[0].parents[1] / "particles.csv"
    out = tmp_path / "m.pt"
    done = subprocess.run([sys.executable, "-m", "pupick.core.cli", "train", str(demo_micrographs[0]), "--labels",
                           str(labels), "-o", str(out), "--diameter-px", "56", "--device", "cpu", *options],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []  # no model, no cache: nothing started


def test_pick_refuses_too_many_reader_threads(demo_micrographs, tmp_path):
    done = subprocess.run([sys.executable, "-m", "pupick.core.cli", "pick", str(demo_micrographs[0]), "--method",
                           "blob", "--diameter-px", "56", "-o", str(tmp_path / "o"), "--workers", "100000"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers" in lines[0], done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("options,named", [(["--model", "general", "--blob-weight", "1e6"], "--blob-weight"),
                                           (["--model", "general", "--blob-weight", "-1"], "--blob-weight"),
                                           (["--method", "blob", "--blob-weight", "1"], "--method blob takes none")])
def test_pick_refuses_a_bad_blob_weight_before_any_work(options, named, demo_micrographs, tmp_path):
    done = subprocess.run([sys.executable, "-m", "pupick.core.cli", "pick", str(demo_micrographs[0]), "--diameter-px",
                           "56", "-o", str(tmp_path / "o"), *options], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr
    assert not (tmp_path / "o").exists()
