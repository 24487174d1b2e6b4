"""bench/common.py: the quality protocol's split and subsample, and sets that must be skipped with a reason."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import common  # noqa: E402

DEMO = REPO / "data" / "demo"


def _make_set(root: Path, name: str, labels: pd.DataFrame | None, n_mics: int = 5) -> Path:
    d = root / name
    (d / "micrographs").mkdir(parents=True)
    for p in sorted((DEMO / "micrographs").glob("*.mrc"))[:n_mics]:
        (d / "micrographs" / p.name).symlink_to(p)
    (d / "set.json").write_text(json.dumps({"set": name, "diameter_px": 56, "factor": 2, "pixel_size_A": None}))
    if labels is not None:
        labels.to_csv(d / "particles.csv", index=False)
    return d


def test_protocol_split_and_subsample(tmp_path):
    labels = pd.read_csv(DEMO / "particles.csv")
    b = common.load_set(_make_set(tmp_path, "demo", labels))
    names = sorted(p.name for p in (DEMO / "micrographs").glob("*.mrc"))
    assert [p.name for p in b.train] == names[:3] and [p.name for p in b.test] == names[3:]  # floor(0.6 * 5) = 3
    train_stems = b.stems(b.train)
    pool = pd.concat([labels[labels.micrograph == s] for s in train_stems], ignore_index=True)
    keep = np.sort(np.random.default_rng(0).choice(len(pool), round(0.3 * len(pool)), replace=False))
    pd.testing.assert_frame_equal(b.train_labels, pool.iloc[keep].reset_index(drop=True), check_dtype=False)
    assert b.expected_particles == pytest.approx(len(pool) / 3)
    assert len(b.test_labels) == int(labels.micrograph.isin(b.stems(b.test)).sum())
    assert b.match_radius == 28.0


def test_unusable_sets_are_skipped_with_a_reason(tmp_path):
    labels = pd.read_csv(DEMO / "particles.csv")
    _make_set(tmp_path, "good", labels)
    _make_set(tmp_path, "nolabels", None)
    _make_set(tmp_path, "foreign", labels.assign(micrograph="Falcon_" + labels.micrograph))
    sets, skipped = common.discover_sets(tmp_path)
    assert [s.name for s in sets] == ["good"]
    reasons = dict(skipped)
    assert "no labels" in reasons["nolabels"]
    assert "match no micrograph" in reasons["foreign"] and "Falcon_" in reasons["foreign"]


def test_summarize_reports_median_and_spread():
    s = common.summarize([1.0, 3.0, 2.0, float("nan")])
    assert s["median"] == 2.0 and s["spread"] == 2.0 and s["n"] == 3


def test_register_plan_adds_a_candidate_network_to_this_process_only():
    import subprocess

    code = """
import sys
sys.path.insert(0, sys.argv[1])
import common
from pupick.core.config import TrainConfig
from pupick.core.models import ModelConfig, build, receptive_field
plan = [["conv", 9, 0.5], ["pool"], ["res", 0.5], ["res", 1], ["pool"], ["res", 2], ["conv", 7, 2]]
common.register_plan("candidate", plan)
common.register_plan("candidate", plan)  # the same plan again: no error
TrainConfig(arch="candidate")
net = build(ModelConfig(arch="candidate", units=32))
print(receptive_field(ModelConfig(arch="candidate")), net.features[0].conv.out_channels, net.classifier.in_channels)
try:
    common.register_plan("resnet8", plan)
except ValueError as e:
    print("refused:", e)
"""
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "bench")], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["71", "16", "64"]
    assert lines[1].startswith("refused: 'resnet8' is already an architecture")
    from pupick.core.config import ARCHITECTURES
    from pupick.core.models import PLANS

    assert "candidate" not in ARCHITECTURES and "candidate" not in PLANS
