"""`pupick preprocess` end to end, in-process."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import mrcfile
import pytest
from click.testing import CliRunner

from pupick.core.cli import cli

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo" / "micrographs"


def test_preprocess_writes_manifest_and_skips_existing(tmp_path):
    out = tmp_path / "pre"
    runner = CliRunner()
    result = runner.invoke(cli, ["preprocess", str(DEMO / "061_10028.mrc"), str(DEMO / "311_10028.mrc"),
                                 "--diameter", "300", "--pixel-size", "5.36", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "downsampling factor 2" in result.output and "2 written" in result.output
    manifest = json.loads((out / "pupick_preprocess.json").read_text())
    assert manifest["micrographs"]["061_10028"]["factor"] == 2
    with mrcfile.open(out / "061_10028.mrc") as mrc:
        assert mrc.data.shape == (512, 512) and float(mrc.voxel_size.x) == pytest.approx(10.72)
    again = runner.invoke(cli, ["preprocess", str(DEMO), "--diameter", "300", "--pixel-size", "5.36", "-o", str(out)])
    assert again.exit_code == 0 and "3 written, 2 already done" in again.output
    changed = runner.invoke(cli, ["preprocess", str(DEMO), "--scale", "4", "-o", str(out)])
    assert changed.exit_code == 1 and "made with a different" in changed.output


def test_preprocess_batch_continues_past_bad_files(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(DEMO / "062_10028.mrc", src / "good.mrc")
    (src / "bad.mrc").write_bytes(b"corrupt" * 100)
    result = CliRunner().invoke(cli, ["preprocess", str(src), "--scale", "2", "--normalize", "affine",
                                      "-o", str(tmp_path / "out"), "--workers", "2"])
    assert result.exit_code == 1
    assert "1 written" in result.output and "1 failed" in result.output and "bad.mrc" in result.output
    visible = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert visible == ["good.mrc", "pupick_preprocess.json"]  # nothing half-written


def test_preprocess_diameter_without_pixel_size_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["preprocess", str(DEMO / "061_10028.mrc"), "--diameter", "300", "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert "pixel size is unknown" in result.output
