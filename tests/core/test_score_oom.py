"""Out of device memory while scoring: the tile halves (down to MIN_TILE) and the micrograph is scored again.

The error is injected on CPU: the scorer's network call raises torch's OutOfMemoryError for tiles above a size, as
CUDA does for allocations that do not fit. Everything else is real (bundled micrographs, a trained model, the CLI).
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pupick.core import score
from pupick.core.cli import main
from pupick.core.config import PickConfig
from pupick.core.outputs import pick_to_dir
from pupick.core.picking import pick
from pupick.core.score import MIN_TILE, OUT_OF_MEMORY, Scorer
from tests.console_run import run_console

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def memory_for(monkeypatch):
    """memory_for(side): the network call raises OutOfMemoryError for any tile wider than `side` output pixels;
    returns the list of the input sides refused."""
    refused: list[int] = []
    real = Scorer._forward

    def install(side: int, error: Exception | None = None) -> list[int]:
        def forward(self, x, scales=None):
            if max(x.shape[-2:]) > side + 2 * self.pad:
                refused.append(int(max(x.shape[-2:])))
                raise error or OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
            return real(self, x, scales)

        monkeypatch.setattr(Scorer, "_forward", forward)
        return refused

    return install


def config(tile: int) -> PickConfig:
    return PickConfig.from_settings({"device": "cpu", "precision": "fp32", "tile_size": tile, "seed": 0})


def test_the_tile_halves_until_it_fits_and_the_picks_equal_the_smaller_tiles(trained_model, demo_micrographs,
                                                                             memory_for):
    mics = demo_micrographs[:2]
    reference = pick(mics, trained_model, config(MIN_TILE))  # no memory limit, the smallest tile from the start
    refused = memory_for(MIN_TILE)
    notes: list[str] = []
    seen = []
    got = pick(mics, trained_model, config(1024), log=notes.append, on_result=seen.append)
    assert got.failures == [] and got.n_done == 2 and len(got.picks) > 0
    pd.testing.assert_frame_equal(got.picks, reference.picks)
    assert [r.tile_size for r in seen] == [MIN_TILE, MIN_TILE]
    # said once per run: 1024 -> 512, then 512 -> 256, each on one line
    assert notes == ["warning: out of memory on cpu with 1024 px scoring tiles; scoring with 512 px tiles from now on",
                     "warning: out of memory on cpu with 512 px scoring tiles; scoring with 256 px tiles from now on"]
    # refused once at 1024 and once at 512 (one whole 512² tile both times), both on the first micrograph: the
    # second started with 256 px tiles
    assert len(refused) == 2


def test_below_the_smallest_tile_the_micrograph_fails_in_one_line(trained_model, demo_micrographs, memory_for):
    memory_for(MIN_TILE // 2)  # even MIN_TILE does not fit
    got = pick(demo_micrographs[:1], trained_model, config(1024), log=lambda m: None)
    assert got.n_done == 0 and len(got.failures) == 1
    path, reason = got.failures[0]
    assert path == str(demo_micrographs[0])
    assert "\n" not in reason and "out of memory on cpu with 256 px scoring tiles (none under 256 px" in reason


def test_the_cli_records_the_tile_and_says_it_once(trained_model, demo_micrographs, memory_for, tmp_path, capsys,
                                                   monkeypatch):
    monkeypatch.setattr(PickConfig, "from_settings", _with_tile(PickConfig.from_settings, 512))
    memory_for(MIN_TILE)
    out = tmp_path / "out"
    code, _, err = run_console(main, capsys, ["pick", *demo_micrographs[:3], "--model", trained_model, "-o", out,
                                              "--device", "cpu", "--precision", "fp32"])
    assert code == 0, err
    assert "Traceback" not in err
    assert err.count("out of memory on cpu with 512 px scoring tiles; scoring with 256 px tiles") == 1
    manifest = json.loads((out / "pupick_pick.json").read_text())
    assert manifest["tile_size_px"] == {p.stem: MIN_TILE for p in demo_micrographs[:3]}
    assert manifest["failures"] == {}
    assert len(pd.read_csv(out / "picks.csv")) > 0


def test_a_cuda_library_s_out_of_memory_counts_too_and_other_errors_do_not(trained_model, demo_micrographs,
                                                                          memory_for):
    reference = pick(demo_micrographs[:1], trained_model, config(MIN_TILE))
    memory_for(MIN_TILE, RuntimeError("CUDA error: out of memory (cuDNN workspace, injected by the test)"))
    got = pick(demo_micrographs[:1], trained_model, config(1024), log=lambda m: None)
    pd.testing.assert_frame_equal(got.picks, reference.picks)
    memory_for(MIN_TILE, RuntimeError("CUDNN_STATUS_EXECUTION_FAILED (injected by the test)"))
    # another tile size: another scorer (the one above keeps its smaller tile for the process's later runs)
    with pytest.raises(RuntimeError, match="CUDNN_STATUS_EXECUTION_FAILED"):  # not memory: not retried, not hidden
        pick(demo_micrographs[:1], trained_model, config(512), log=lambda m: None)


def _with_tile(from_settings, tile):
    """PickConfig.from_settings with a scoring tile (the CLI has no --tile-size)."""
    def build(settings, *args, **kwargs):
        return from_settings({**settings, "tile_size": tile}, *args, **kwargs)

    return build


def test_out_of_memory_is_torch_s_error_on_this_torch():
    import torch

    assert issubclass(OUT_OF_MEMORY, RuntimeError)
    assert OUT_OF_MEMORY is getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    assert score.MIN_TILE == 256
