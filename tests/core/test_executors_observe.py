"""The reader queue's observer (LocalExecutor(observe=...)): one report per micrograph, picks unchanged."""
from __future__ import annotations

import pandas as pd

from pupick.core.config import PickConfig
from pupick.core.executors import LocalExecutor
from pupick.core.picking import pick


def test_the_observer_hears_each_micrograph_and_changes_nothing(demo_micrographs):
    config = PickConfig.from_settings({"method": "blob", "diameter_px": 56, "seed": 0})
    seen: list[tuple[int, int]] = []
    observed = pick(demo_micrographs, None, config, executor=LocalExecutor(2, observe=lambda i, n: seen.append((i, n))))
    plain = pick(demo_micrographs, None, config, executor=LocalExecutor(2))
    pd.testing.assert_frame_equal(observed.picks, plain.picks)
    assert [i for i, _ in seen] == list(range(len(demo_micrographs)))
    # at most the readers' lead (workers + 1 queued) can be ready, never a negative count
    assert all(0 <= n <= 3 for _, n in seen)
