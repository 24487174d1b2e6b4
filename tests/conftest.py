"""Shared fixtures: the bundled demo data and one small model trained on it (once per session)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
# The session model trains on these four micrographs; HELD_OUT is never seen in training.
HELD_OUT = "312_10028"


def pytest_configure(config: pytest.Config) -> None:
    """A suite started from a background job (`make test &`, `nohup`) inherits Ctrl-C ignored, and so would every
    process a test starts: the Ctrl-C tests would then see a run that never stops. Give them the terminal's default."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`cuda`-marked tests skip where torch sees no CUDA device, CI=true included (CI machines have none); with
    PUPICK_REQUIRE_CUDA=1 (bench/gpu_check.sh on a GPU machine) they run, and fail there without CUDA."""
    cuda_tests = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_tests or os.environ.get("PUPICK_REQUIRE_CUDA") == "1":
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none on this machine)")
    for item in cuda_tests:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """data/demo: micrographs/*.mrc (1024², EMPIAR-10028, diameter 56 px) and particles.csv."""
    return DEMO


@pytest.fixture(scope="session")
def held_out_micrograph() -> str:
    """Stem of the bundled micrograph that `trained_model` never saw."""
    return HELD_OUT


@pytest.fixture(scope="session")
def demo_micrographs(demo_dir: Path) -> list[Path]:
    """The five bundled micrographs, sorted by name."""
    return sorted((demo_dir / "micrographs").glob("*.mrc"))


@pytest.fixture(scope="session")
def demo_labels(demo_dir: Path) -> pd.DataFrame:
    """The bundled labels (micrograph, x, y in original pixels); incomplete, as PU data is."""
    return pd.read_csv(demo_dir / "particles.csv")


@pytest.fixture(scope="session")
def demo_labels_df(demo_labels: pd.DataFrame) -> pd.DataFrame:
    """Alias of demo_labels (a copy, so callers may modify it)."""
    return demo_labels.copy()


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, demo_micrographs: list[Path],
                  demo_labels: pd.DataFrame) -> Path:
    """A small ResNet8 trained for a few seconds on four bundled micrographs (all but HELD_OUT), diameter 56 px."""
    import torch

    from pupick.core.config import PreprocessConfig, TrainConfig
    from pupick.core.train import train

    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = tmp_path_factory.mktemp("trained_model") / "model.pt"
    mics = [p for p in demo_micrographs if p.stem != HELD_OUT]
    config = TrainConfig(preprocess=PreprocessConfig(diameter_px=56), units=16, epochs=2, steps_per_epoch=8,
                         tile_size=128, batch_size=4, learning_rate=1e-3, expected_particles=150, test_split=0.0,
                         seed=0, cache_dir=str(out.parent / "model.cache"), ema_decay=0.0)  # 16 steps: no average
    train(mics, demo_labels, config, log=lambda msg: None).save(out)
    return out
