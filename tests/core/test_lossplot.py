"""core/lossplot.py: the training plot is a real PNG of the history with round tick values, and no temporary file."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from pupick.core.lossplot import BLUE, RED, SIZE, nice_ticks, write_training_plot


@pytest.mark.parametrize("lo, hi", [(0.45, 0.955), (1.0, 3.2), (-0.3, 0.2), (0.6932, 0.6934), (1e3, 5e4),
                                    (0.0, 1e-7)])
def test_ticks_are_round_evenly_spaced_and_cover_the_range(lo, hi):
    ticks = nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 7
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5))


def test_ticks_of_an_empty_range_still_make_an_axis():
    assert nice_ticks(0.7, 0.7) == [0.7, 1.7]


def _colour_count(image: Image.Image, colour: tuple) -> int:
    a = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return int((a == np.array(colour)).all(1).sum())


def test_loss_only_plot(tmp_path):
    target = tmp_path / "m.train.png"
    write_training_plot([1, 2, 3, 4, 5, 6], [0.92, 0.61, 0.55, 0.52, 0.50, 0.49], [None] * 6, target)
    with Image.open(target) as im:
        assert im.format == "PNG" and im.size == SIZE
        assert _colour_count(im, BLUE) > 300 and _colour_count(im, RED) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.train.png"]  # no temporary file left


def test_validation_ap_gets_its_own_axis(tmp_path):
    target = tmp_path / "m.train.png"
    write_training_plot([1, 2, 3], [3.1, 2.2, 1.9], [0.41, float("nan"), 0.70], target)
    with Image.open(target) as im:
        assert _colour_count(im, RED) > 100 and _colour_count(im, BLUE) > 100

