"""core.prefetch: micrographs prepared before the model loads give the same picks, and are used only when they fit."""
from __future__ import annotations


import pandas as pd
import pytest

from pupick.core.config import PickConfig
from pupick.core.executors import LocalExecutor
from pupick.core.modelfile import load_model
from pupick.core.picking import pick
from pupick.core.pipeline import micrograph_items, prepare_micrograph
from pupick.core.prefetch import Prefetch, start_prefetch

CPU = PickConfig.from_settings({"device": "cpu"})


@pytest.fixture(scope="module")
def items(demo_micrographs):
    return micrograph_items(demo_micrographs[:3])


def test_prefetched_micrographs_give_the_same_picks(trained_model, items):
    model = load_model(trained_model)
    plain = pick(items, model, CPU)
    prefetch = start_prefetch(items, trained_model, CPU)
    assert prefetch is not None
    taken = []
    original_take = prefetch.take

    def counting_take(item, model_config, config):
        got = original_take(item, model_config, config)
        taken.append(got is not None)
        return got

    prefetch.take = counting_take
    early = pick(items, model, CPU, executor=LocalExecutor(1, prefetch))
    prefetch.close()
    assert taken == [True, True, True]  # every micrograph came from the prefetch
    pd.testing.assert_frame_equal(early.picks, plain.picks)
    assert early.failures == plain.failures == []


def test_a_prepared_micrograph_is_handed_over_only_for_the_same_inputs(trained_model, items):
    config = load_model(trained_model).config
    prefetch = Prefetch(items[:1], config, CPU).start()
    other = CPU.replace(seed=CPU.seed + 1)
    assert prefetch.take(items[0], config, other) is None
    assert prefetch.take(items[0], {**config, "factor": config["factor"] + 1}, CPU) is None
    job, notes = prefetch.take(items[0], config, CPU)
    again, _ = prepare_micrograph(items[0], config, CPU)
    assert (job.image == again.image).all() and job.factor == again.factor
    assert prefetch.take(items[0], config, CPU) is None  # handed over once
    assert prefetch.take(items[1], config, CPU) is None  # never queued
    prefetch.close()


def test_a_bad_micrograph_is_left_to_the_picker(trained_model, items, tmp_path):
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"not an mrc")
    model = load_model(trained_model)
    mixed = micrograph_items([bad, items[0].path])
    prefetch = start_prefetch(mixed, trained_model, CPU)
    run = pick(mixed, model, CPU, executor=LocalExecutor(1, prefetch), log=lambda m: None)
    prefetch.close()
    assert len(run.failures) == 1 and "broken.mrc" in run.failures[0][1]
    assert run.n_done == 1


def test_no_prefetch_where_it_cannot_know_the_size(items):
    assert start_prefetch(items, "general", CPU) is None  # a shipped name: the size comes from --diameter
    assert start_prefetch([], "model.pt", CPU) is None
    assert start_prefetch(items, "/nonexistent/model.pt", CPU) is None
    blob = PickConfig.from_settings({"method": "blob", "diameter_px": 56})
    prefetch = start_prefetch(items, None, blob)
    assert prefetch is not None and prefetch.model_config is None
    prefetch.close()


def test_a_resumed_run_prefetches_only_the_micrographs_left(trained_model, items, tmp_path):
    from pupick.core.outputs import PerMicrographFiles, pick_to_dir, unfinished

    def write(df, target):
        target.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(target, index=False)

    files = PerMicrographFiles(target=lambda item: f"coordinates/{item.micrograph}.csv", write=write)
    out = tmp_path / "picks"
    assert unfinished(out, items, files) == list(items)  # nothing there yet (and nothing created)
    assert not out.exists()
    pick_to_dir(items[:2], load_model(trained_model), CPU, out, files=files, log=lambda m: None)
    assert unfinished(out, items, files) == [items[2]]
    assert unfinished(out, items, files, overwrite=True) == list(items)
    (out / "coordinates" / f"{items[0].micrograph}.csv").unlink()  # a deleted output is redone
    assert unfinished(out, items, files) == [items[0], items[2]]
