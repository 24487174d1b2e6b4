"""The pick pipeline on the bundled micrographs: picks, failures, stop requests, rescaling, resumable directories."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from pupick.core.config import PickConfig
from pupick.core.errors import AbortRequested, InputError
from pupick.core.evaluate import evaluate
from pupick.core.io import read_micrograph
from pupick.core.modelfile import load_model
from pupick.core.outputs import PerMicrographFiles, pick_to_dir
from pupick.core.picking import pick

HELD_OUT = "312_10028"
CPU = PickConfig.from_settings({"device": "cpu"})


def _write(df: pd.DataFrame, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(target, index=False)


@pytest.fixture(scope="module")
def loaded(trained_model):
    return load_model(trained_model)


@pytest.fixture(scope="module")
def held_out(demo_micrographs):
    return [p for p in demo_micrographs if p.stem == HELD_OUT]


@pytest.fixture(scope="module")
def first_run(loaded, held_out):
    calls = []
    run = pick(held_out, loaded, CPU, on_result=lambda r: calls.append((r.path, len(r.picks))))
    return run, calls


def test_picks_table_and_callbacks(first_run, held_out):
    run, calls = first_run
    assert list(run.picks.columns) == ["micrograph", "x", "y", "score", "path"]
    assert run.failures == [] and run.n_done == 1
    assert calls == [(str(held_out[0]), len(run.picks))]
    p = run.picks
    assert (p["micrograph"] == HELD_OUT).all() and (p["path"] == str(held_out[0])).all()
    assert p["x"].between(0, 1023).all() and p["y"].between(0, 1023).all()
    assert np.all(np.diff(p["score"].to_numpy()) <= 0)
    # no two picks closer than the model's particle radius (28 px)
    xy = p[["x", "y"]].to_numpy()
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(xy), 1)].min() > 28
    assert run.seconds_per_micrograph > 0


def test_picks_find_the_held_out_particles(first_run, demo_labels):
    run, _ = first_run
    result = evaluate(run.picks, demo_labels, match_radius=28, micrographs=[HELD_OUT])
    assert result.n_labels == 94
    assert result.ap > 0.4  # a few seconds of training on unseen data; the demo reaches ~0.8


def test_unreadable_micrograph_is_reported_and_skipped(loaded, held_out, tmp_path):
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"not an mrc file at all" * 10)
    run = pick([bad] + held_out, loaded, CPU)
    assert [p for p, _ in run.failures] == [str(bad)]
    assert "broken.mrc" in run.failures[0][1]
    assert run.n_done == 1 and set(run.picks["micrograph"]) == {HELD_OUT}


def test_stop_request_aborts_between_micrographs(loaded, demo_micrographs):
    done = []
    with pytest.raises(AbortRequested):
        pick(demo_micrographs, loaded, CPU, on_result=lambda r: done.append(r.path),
             should_stop=lambda: len(done) >= 1)
    assert len(done) == 1


def test_pixel_size_mismatch_rescales(loaded, held_out, first_run, tmp_path):
    # the same micrograph Fourier-upsampled 2x, with half the pixel size: picks land on 2x the coordinates
    img = read_micrograph(held_out[0]).image.astype(np.float64)
    spec = np.fft.fftshift(np.fft.fft2(img))
    big = np.zeros((2048, 2048), complex)
    big[512:1536, 512:1536] = spec
    up = np.real(np.fft.ifft2(np.fft.ifftshift(big))).astype(np.float32) * 4
    path = tmp_path / f"{HELD_OUT}_x2.mrc"
    with mrcfile.new(path) as m:
        m.set_data(up)
        m.voxel_size = 2.68
    model = dataclasses.replace(loaded, config={**loaded.config, "pixel_size": 5.36})
    messages = []
    run = pick([path], model, CPU, progress=False, log=messages.append)
    assert any("differs from the model's" in m for m in messages)
    ref = first_run[0].picks
    top = run.picks.head(20)
    for x, y in zip(top["x"], top["y"]):
        assert np.hypot(ref["x"] * 2 - x, ref["y"] * 2 - y).min() <= 4  # within one downsampled pixel


def _edge_distance(picks: pd.DataFrame) -> np.ndarray:
    return np.minimum.reduce([picks["x"], picks["y"], 1023 - picks["x"], 1023 - picks["y"]])


def test_border_defaults_to_the_radius_or_the_learned_label_margin(loaded, held_out, first_run):
    near = _edge_distance(first_run[0].picks)
    assert near.min() >= 28 and (near < 56).any()  # the session model: its margin is about the radius
    wide = dataclasses.replace(loaded, config={**loaded.config, "label_edge_margin": 1.0})
    run = pick(held_out, wide, CPU)
    assert _edge_distance(run.picks).min() >= 56 and len(run.picks) > 20
    run = pick(held_out, wide, CPU.replace(border=0))  # --border wins
    assert _edge_distance(run.picks).min() < 28
    old = dataclasses.replace(loaded, config={k: v for k, v in loaded.config.items() if k != "label_edge_margin"})
    run = pick(held_out, old, CPU)  # model files from before: the radius
    assert _edge_distance(run.picks).min() >= 28 and (_edge_distance(run.picks) < 56).any()


def test_blob_picker_and_top_n(held_out, tmp_path):
    cfg = dataclasses.replace(PickConfig.from_settings(dict(method="blob", diameter_px=56, top_n=40)),
                              score_map_dir=str(tmp_path / "maps"))
    run = pick(held_out, None, cfg)
    assert len(run.picks) == 40
    with mrcfile.open(tmp_path / "maps" / f"{HELD_OUT}.mrc") as m:
        assert m.data.shape == (512, 512)  # factor 2 by the rule for 56 px
    with pytest.raises(InputError, match="diameter"):
        PickConfig(method="blob")
    with pytest.raises(InputError, match="model"):
        pick(held_out, None, PickConfig(method="cnn"))


def test_duplicate_names_are_refused(loaded, held_out, tmp_path):
    other = tmp_path / "x" / held_out[0].name
    other.parent.mkdir()
    other.write_bytes(held_out[0].read_bytes())
    with pytest.raises(InputError, match="share the name"):
        pick(held_out + [other], loaded, CPU)


def test_pick_to_dir_resumes_and_guards_settings(trained_model, demo_micrographs, tmp_path):
    mics = demo_micrographs[:2]
    written = []
    out = tmp_path / "out"
    files = PerMicrographFiles(target=lambda item: Path("coords") / f"{item.micrograph}.csv",
                               write=lambda df, target: (written.append(target.name), _write(df, target)))
    r1 = pick_to_dir(mics, trained_model, CPU.replace(threshold=0.0), out, files=files)
    assert r1.run.n_done == 2 and written == [f"{p.stem}.csv" for p in mics]
    table = pd.read_csv(out / "picks.csv")
    assert list(table.columns) == ["micrograph", "x", "y", "score", "path"]
    assert len(table) == len(r1.picks) and set(table["micrograph"]) <= {p.stem for p in mics}
    # rerun: nothing to do, same table
    r2 = pick_to_dir(demo_micrographs[:3], trained_model, CPU.replace(threshold=0.0), out)
    assert r2.skipped == sorted(p.stem for p in mics) and r2.run.n_done == 1
    assert len(r2.picks) >= len(r1.picks)
    # other settings: refused, unless overwriting
    with pytest.raises(InputError, match="threshold"):
        pick_to_dir(mics, trained_model, CPU.replace(threshold=-3.0), out)
    r3 = pick_to_dir(demo_micrographs[:3], trained_model, CPU.replace(threshold=-3.0), out, overwrite=True)
    assert r3.run.n_done == 3 and len(r3.picks) >= len(r1.picks)
    assert not list(out.glob("**/*.part*"))


def test_a_micrographs_table_gives_each_micrograph_its_own_pixel_size(loaded, held_out, tmp_path):
    # the held-out micrograph twice: as itself, and Fourier-upsampled 2x with half the pixel size, in ONE call
    img = read_micrograph(held_out[0]).image.astype(np.float64)
    spec = np.fft.fftshift(np.fft.fft2(img))
    big = np.zeros((2048, 2048), complex)
    big[512:1536, 512:1536] = spec
    up = tmp_path / "up.mrc"
    with mrcfile.new(up) as m:
        m.set_data((np.real(np.fft.ifft2(np.fft.ifftshift(big))) * 4).astype(np.float32))  # no pixel size in header
    model = dataclasses.replace(loaded, config={**loaded.config, "pixel_size": 5.36})
    table = pd.DataFrame({"micrograph": ["orig", "up"], "path": [str(held_out[0]), str(up)],
                          "pixel_size": [5.36, 2.68]})
    run = pick(table, model, CPU)
    assert run.failures == [] and run.n_done == 2
    orig, big_picks = (run.picks[run.picks["micrograph"] == m].head(20) for m in ("orig", "up"))
    for x, y in zip(big_picks["x"], big_picks["y"]):
        assert np.hypot(orig["x"] * 2 - x, orig["y"] * 2 - y).min() <= 4 or len(orig) < 20
    assert run.diameters["up"] == pytest.approx(2 * run.diameters["orig"])


def test_pick_work_ships_to_another_process_and_picks_the_same(loaded, held_out, first_run):
    import pickle

    from pupick.core.pipeline import MicrographItem, PickWork, pick_batch

    work = pickle.loads(pickle.dumps(PickWork(loaded, CPU)))
    assert work.sha256 == loaded.sha256
    items = [MicrographItem(HELD_OUT, str(held_out[0])), MicrographItem("gone", "/nonexistent/gone.mrc")]
    results = pick_batch(work, items)
    assert [r.micrograph for r in results] == [HELD_OUT, "gone"]
    assert results[1].error and "gone.mrc" in results[1].error and results[1].picks.empty
    pd.testing.assert_frame_equal(results[0].picks.reset_index(drop=True), first_run[0].picks.reset_index(drop=True))


def test_any_executor_runs_the_work(loaded, demo_micrographs, first_run):
    from pupick.core.pipeline import pick_batch

    class Reversed:  # a stand-in for a cluster: runs each micrograph alone, in reverse order
        def run(self, work, items, should_stop):
            for item in reversed(items):
                yield from pick_batch(work, [item])

    seen = []
    run = pick(demo_micrographs, loaded, CPU, executor=Reversed(), on_result=lambda r: seen.append(r.micrograph))
    assert seen == [p.stem for p in reversed(demo_micrographs)]
    held = run.picks[run.picks["micrograph"] == HELD_OUT].reset_index(drop=True)
    pd.testing.assert_frame_equal(held, first_run[0].picks.reset_index(drop=True))
    assert set(run.timings) >= {"seconds_total", "seconds_read", "seconds_score", "seconds_extract"}


def test_a_model_path_is_loaded_once_and_a_blob_model_refused(trained_model, held_out):
    with pytest.raises(InputError, match="takes no model"):
        pick(held_out, trained_model, PickConfig.from_settings({"method": "blob", "diameter_px": 56}))


def test_a_blob_prior_asked_of_a_model_without_a_diameter_is_refused_before_any_work():
    from pupick.core.errors import MissingSetting
    from pupick.core.pipeline import check_spacing

    check_spacing({}, PickConfig.from_settings({"min_distance": 10}))  # off by default for a trained model
    with pytest.raises(MissingSetting, match="--blob-weight needs the particle diameter"):
        check_spacing({}, PickConfig.from_settings({"min_distance": 10, "blob_weight": 1}))
