"""The CUDA path: scoring, picking, training and a local cluster on the GPU agree with the CPU; refusals; real out of
memory. Marked `cuda`: skipped without a CUDA device (CI included); bench/gpu_check.sh runs them on a GPU machine.
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from pupick.core.cli import main
from pupick.core.config import PickConfig, PreprocessConfig, ScoreConfig, TrainConfig
from pupick.core.evaluate import default_match_radius, evaluate
from pupick.core.modelfile import load_model
from pupick.core.outputs import pick_to_dir
from pupick.core.pipeline import MicrographItem, prepare_micrograph
from pupick.core.score import Scorer
from tests.console_run import run_console

pytestmark = pytest.mark.cuda

DIAMETER = 56


def ap(picks: pd.DataFrame, labels: pd.DataFrame, mics) -> float:
    return evaluate(picks, labels, default_match_radius(DIAMETER), micrographs=[m.stem for m in mics]).ap


def config(device: str, precision: str, **extra) -> PickConfig:
    return PickConfig.from_settings({"device": device, "precision": precision, "seed": 0, **extra})


def test_scoring_on_cuda_matches_the_cpu_map(trained_model, demo_micrographs):
    model = load_model(trained_model)
    job, _ = prepare_micrograph(MicrographItem(demo_micrographs[0].stem, str(demo_micrographs[0])), model.config,
                                PickConfig())
    cpu = Scorer(model, ScoreConfig(device="cpu", precision="fp32"))(job.image)
    for precision, least_corr in (("fp32", 0.999), ("bf16", 0.99)):
        got = Scorer(model, ScoreConfig(device="cuda", precision=precision))(job.image)
        assert got.shape == cpu.shape and got.dtype == np.float32
        assert np.corrcoef(got.ravel(), cpu.ravel())[0, 1] >= least_corr, precision


def test_picking_on_cuda_gives_the_cpu_ap(trained_model, demo_micrographs, demo_labels, tmp_path):
    cpu = pick_to_dir(demo_micrographs, trained_model, config("cpu", "fp32"), tmp_path / "cpu")
    for precision in ("bf16", "fp32"):
        gpu = pick_to_dir(demo_micrographs, trained_model, config("cuda", precision), tmp_path / precision)
        assert gpu.failures == [] and len(gpu.picks) > 0
        assert abs(ap(gpu.picks, demo_labels, demo_micrographs) - ap(cpu.picks, demo_labels, demo_micrographs)) \
            <= 0.005, precision


def test_training_on_cuda_is_close_to_the_cpu(demo_micrographs, demo_labels, held_out_micrograph, tmp_path):
    from pupick.core.train import train

    mics = [p for p in demo_micrographs if p.stem != held_out_micrograph]
    held_out = [p for p in demo_micrographs if p.stem == held_out_micrograph]
    results = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(preprocess=PreprocessConfig(diameter_px=DIAMETER), units=16, epochs=2, steps_per_epoch=8,
                          tile_size=128, batch_size=4, learning_rate=1e-3, expected_particles=150, test_split=0.0,
                          seed=0, cache_dir=str(tmp_path / f"{device}.cache"), ema_decay=0.0, device=device)
        result = train(mics, demo_labels, cfg, log=lambda msg: None)
        model = result.save(tmp_path / f"{device}.pt")
        picks = pick_to_dir(held_out, model, config("cpu", "fp32"), tmp_path / f"picks_{device}").picks
        results[device] = (result, ap(picks, demo_labels, held_out))
    (cpu, cpu_ap), (gpu, gpu_ap) = results["cpu"], results["cuda"]
    assert gpu.pi == pytest.approx(cpu.pi)  # the class prior comes from the labels, not the device
    assert np.isfinite(gpu.history["loss"]).all()
    # the same seed on another device: same data order and start, different arithmetic (TF32/bf16, cuDNN)
    assert gpu.history["loss"].iloc[-1] == pytest.approx(cpu.history["loss"].iloc[-1], rel=0.2)
    assert abs(gpu_ap - cpu_ap) <= 0.05


def test_a_local_cluster_picks_on_cuda(trained_model, demo_micrographs, demo_labels, tmp_path):
    local = pick_to_dir(demo_micrographs, trained_model, config("cuda", "bf16"), tmp_path / "local")
    done = subprocess.run([sys.executable, "-m", "pupick.core.cli", "pick", *map(str, demo_micrographs), "--model",
                           str(trained_model), "-o", str(tmp_path / "cluster"), "--device", "cuda", "--precision",
                           "bf16", "--cluster", "local:1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    remote = pd.read_csv(tmp_path / "cluster" / "picks.csv")
    assert len(remote) > 0 and set(remote["micrograph"]) == {p.stem for p in demo_micrographs}
    assert abs(ap(remote, demo_labels, demo_micrographs) - ap(local.picks, demo_labels, demo_micrographs)) <= 0.005


def refused(capsys, args: list) -> str:
    code, _, err = run_console(main, capsys, args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_missing_device_index_is_refused(capsys, tmp_path, trained_model, demo_micrographs, demo_dir):
    n = torch.cuda.device_count()
    missing = f"cuda:{n}"
    expected = f"--device {missing}: only {n} CUDA device(s) present"
    assert expected in refused(capsys, ["pick", demo_micrographs[0], "--model", trained_model, "-o", tmp_path / "p",
                                        "--device", missing])
    assert expected in refused(capsys, ["train", *demo_micrographs[:2], "--labels", demo_dir / "particles.csv",
                                        "--diameter-px", DIAMETER, "-o", tmp_path / "m.pt", "--device", missing])
    assert expected in refused(capsys, ["serve", "--port", "0", "--state", tmp_path / "s", "--device", missing])
    assert not (tmp_path / "p" / "picks.csv").exists() and not (tmp_path / "m.pt").exists()


def test_int8_on_the_gpu_auto_picks_is_refused(capsys, tmp_path, trained_model, demo_micrographs):
    line = refused(capsys, ["pick", demo_micrographs[0], "--model", trained_model, "-o", tmp_path / "p",
                            "--device", "auto", "--precision", "int8"])
    assert "--precision int8 runs on CPU only (this run's device is cuda" in line
    assert not (tmp_path / "p" / "picks.csv").exists()


def test_real_out_of_memory_halves_the_tile(trained_model, demo_micrographs, tmp_path):
    """A 2048² downsampled micrograph under a 256 MB allocator limit: 2048 px tiles cannot fit, 256 px tiles do."""
    from pupick.core.io import read_micrograph, write_mrc

    big = tmp_path / "big.mrc"  # 4x the bundled micrograph, the same pixel size: 2048² after the model's factor 2
    image = read_micrograph(demo_micrographs[0]).image.astype(np.float32)
    write_mrc(big, np.kron(image, np.ones((4, 4), np.float32)))
    from pupick.core import pipeline

    pipeline._PICKERS.clear()  # earlier tests' scorers (and their device buffers) out of the allocator's count
    pipeline._MODELS.clear()
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated(0) + (256 << 20)) / total), 0)
    notes: list[str] = []
    try:
        run = pick_to_dir([big], trained_model, config("cuda", "bf16", tile_size=2048), tmp_path / "out",
                          log=notes.append)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert run.failures == [] and len(run.picks) > 0
    recorded = json.loads((tmp_path / "out" / "pupick_pick.json").read_text())["tile_size_px"]
    assert 256 <= recorded["big"] < 2048
    assert any("out of memory on cuda" in n for n in notes)
