"""Devices a run cannot use are refused before any work: one line, exit 2 (bad usage), nothing written.

These run on any machine; the refusals that need a GPU to be reached (an index past the GPUs present) are in
tests/core/test_cuda.py.
"""
from __future__ import annotations

import pytest
import torch

from pupick.core.cli import main
from tests.console_run import run_console

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


def refused(capsys, args: list) -> str:
    """Run the CLI; assert exit 2 with one error line and no traceback; return the line."""
    code, _, err = run_console(main, capsys, args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_pick_on_a_missing_cuda_device(capsys, tmp_path, trained_model, demo_micrographs, device):
    line = refused(capsys, ["pick", demo_micrographs[0], "--model", trained_model, "-o", tmp_path / "out",
                            "--device", device])
    assert line == f"pupick: error: --device {device}: no CUDA device is available on this machine (use --device cpu)"
    assert not (tmp_path / "out" / "picks.csv").exists()


@no_cuda
def test_pick_on_a_local_cluster_with_a_missing_cuda_device(capsys, tmp_path, trained_model, demo_micrographs):
    line = refused(capsys, ["pick", demo_micrographs[0], "--model", trained_model, "-o", tmp_path / "out",
                            "--device", "cuda", "--cluster", "local:1"])
    assert "--device cuda: no CUDA device is available" in line
    assert not (tmp_path / "out" / "picks.csv").exists()


@no_cuda
def test_train_on_a_missing_cuda_device(capsys, tmp_path, demo_dir, demo_micrographs):
    line = refused(capsys, ["train", *demo_micrographs[:2], "--labels", demo_dir / "particles.csv", "--diameter-px",
                            "56", "-o", tmp_path / "m.pt", "--device", "cuda:1"])
    assert "--device cuda:1: no CUDA device is available" in line
    assert list(tmp_path.iterdir()) == []


@no_cuda
def test_serve_on_a_missing_cuda_device(capsys, tmp_path):
    line = refused(capsys, ["serve", "--port", "0", "--state", tmp_path / "state", "--device", "cpu,cuda"])
    assert "--device cuda: no CUDA device is available" in line


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_int8_on_cuda_is_refused_on_any_machine(capsys, tmp_path, trained_model, demo_micrographs, device):
    line = refused(capsys, ["pick", demo_micrographs[0], "--model", trained_model, "-o", tmp_path / "out",
                            "--device", device, "--precision", "int8"])
    assert line == f"pupick: error: --precision int8 runs on CPU only (--device {device}: choose auto or bf16)"
    assert not (tmp_path / "out").exists()
