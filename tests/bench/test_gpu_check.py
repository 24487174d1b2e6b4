"""bench/gpu_check.sh: the dry run goes through every stage on the CPU and leaves figures for each; a machine that
cannot run the check is told so in one line (exit 2). The dry run's speed is not asserted here (bench/ measures)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
STAGES = ("prepare", "picking", "cpu_ap", "training", "busy", "memory", "tests")


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "PYTHON": sys.executable, **env})


@pytest.mark.slow
def test_the_dry_run_leaves_figures_for_every_stage(tmp_path):
    out = tmp_path / "gpu.json"
    # time boxes stretched: on a shared CI machine a box could cut a stage, and that is not what this test is about
    done = run(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work")], GPU_CHECK_SLACK="20",
               GPU_CHECK_BUDGET="1400")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    doc = json.loads(out.read_text())
    assert doc["dry_run"] is True
    stages = doc["stages"]
    assert {s: stages[s]["status"] for s in STAGES} == {s: "ok" for s in STAGES}, done.stdout
    prep = stages["prepare"]
    assert prep["device"]["cuda"] is False and prep["data_seconds"] > 0 and prep["model_train_seconds"] > 0
    for size in ("square", "k3"):
        pk = stages["picking"][size]
        assert pk["whole_process"]["returncode"] == 0 and pk["whole_process"]["per_micrograph"] > 0
        assert pk["warm_per_micrograph"]["median"] > 0 and 0 <= pk["ap"] <= 1 and pk["failures"] == []
        cpu = stages["cpu_ap"][size]
        assert cpu["ap_difference"] == pytest.approx(pk["ap"] - cpu["ap"], abs=1e-3)
        assert isinstance(cpu["within_tolerance"], bool)
        assert stages["memory"][size]["peak_rss_mb"] > 0
        assert stages["memory"][size]["gpu_allocated_mib"] is None  # no GPU in the dry run
    assert stages["training"]["train_seconds"] > 0 and 0 < stages["training"]["ap"] <= 1
    busy = stages["busy"]
    assert busy["done"] == busy["micrographs"] == doc["plan"]["n_busy"]
    assert 0 < busy["scorer_busy_fraction"] <= 1 and isinstance(busy["queue_never_empty_after_5"], bool)
    assert busy["queue_ready"]["min_after_5"] is not None and busy["gpu"]["busy_fraction"] is None
    tests = stages["tests"]
    assert tests["tests"] >= 8 and tests["skipped"] == tests["tests"]  # every cuda test found, all skipped on CPU
    assert "tests/core/test_cuda.py" in tests["files"] and "tests/service/test_serve_cuda.py" in tests["files"]
    # the printed summary names each stage and the headline figures
    for word in (*STAGES, "pick square 1024x1024", "pick K3 1440x1023", "CPU AP", "demo protocol", "readers",
                 "cuda tests"):
        assert word in done.stdout


def test_without_cuda_the_real_check_stops_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = run(["--out", str(tmp_path / "gpu.json"), "--work", str(tmp_path / "w")])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"gpu_check: torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda}); run on a "
        "GPU machine, or --dry-run"]
    assert not (tmp_path / "gpu.json").exists()


def test_a_python_without_torch_stops_in_one_line(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
    done = run(["--dry-run", "--out", str(tmp_path / "gpu.json")], PYTHON=str(tmp_path / "bare" / "bin" / "python"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: torch is not installed for ")


def test_an_unknown_option_is_refused(tmp_path):
    done = run(["--fast"])
    assert done.returncode == 2 and done.stderr.strip() == "gpu_check: unknown option --fast (see --help)"
