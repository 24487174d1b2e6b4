"""Shared fixtures for the adapter tests: the RELION fixture projects and a non-square micrograph set."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pupick.core.tables import make_micrographs, make_picks

DATA = Path(__file__).resolve().parents[1] / "data"
NX, NY = 1000, 700  # non-square on purpose: a swapped x/y or [ny, nx] cannot hide


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def picks_1000x700() -> pd.DataFrame:
    """Picks on two 1000 x 700 (nx x ny) micrographs; several have x > ny so a swap leaves the micrograph."""
    a = make_picks("mic_a", [950, 40, 500, 812], [30, 660, 350, 101], [3.25, -1.5, 0.125, 7.0])
    b = make_picks("mic_b", [960, 24], [690, 18], [0.5, -4.0])
    return pd.concat([a, b], ignore_index=True)


@pytest.fixture
def mics_1000x700() -> pd.DataFrame:
    return make_micrographs(["J1/imported/mic_a.mrc", "J1/imported/mic_b.mrc"], pixel_size=1.5,
                            shapes=[(NY, NX), (NY, NX)])
