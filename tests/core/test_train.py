"""Training on the bundled data: the session model learns, outputs are complete, bad input fails clearly."""
from __future__ import annotations

import dataclasses

import math

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from pupick.core.cli.train import command
from pupick.core.config import ScoreConfig, PreprocessConfig, TrainConfig
from pupick.core.errors import InputError
from pupick.core.io import read_micrograph
from pupick.core.modelfile import load_model
from pupick.core.preprocess import preprocess_micrograph
from pupick.core.score import score_micrograph
from pupick.core.train import _Mic, label_edge_margin, train


def tiny(tmp_path, **kw) -> TrainConfig:
    """A configuration that trains in well under a second."""
    base = dict(preprocess=PreprocessConfig(diameter_px=56), arch="conv31", units=4, epochs=1, steps_per_epoch=2,
                batch_size=2, tile_size=64, expected_particles=150, test_split=0.0, cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return TrainConfig(**base)


def test_session_model_file_is_complete(trained_model, held_out_micrograph):
    raw = torch.load(trained_model, weights_only=True)
    cfg = raw["config"]
    assert cfg["arch"] == "resnet8" and cfg["objective"] == "ge-binomial" and cfg["normalize"] == "gmm"
    assert cfg["factor"] == 2.0 and cfg["diameter_px"] == 56.0 and cfg["label_radius"] == 3
    assert cfg["pi"] == pytest.approx(29 * 150 / 512 ** 2)
    assert 0 < cfg["pi_u"] < cfg["pi"]
    # the bundled labels keep >= 33 px (0.59 diameters) from the edges; the estimate sits a little inside that
    assert 0.5 < cfg["label_edge_margin"] < 33 / 56
    assert held_out_micrograph not in cfg["provenance"]["micrographs"]
    history = pd.read_csv(trained_model.with_suffix(".train.tsv"), sep="\t")
    assert list(history.columns) == ["epoch", "loss", "ap", "best_f1", "seconds"] and len(history) == 2
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert trained_model.with_suffix(".train.png").read_bytes()[:4] == b"\x89PNG"
    assert list((trained_model.parent / "model.cache").glob("*.npz"))


def test_session_model_scores_particles_above_background_on_a_held_out_micrograph(trained_model, demo_dir,
                                                                                   demo_labels, held_out_micrograph):
    HELD_OUT = held_out_micrograph
    model = load_model(trained_model)
    pre = preprocess_micrograph(read_micrograph(demo_dir / "micrographs" / f"{HELD_OUT}.mrc"),
                                PreprocessConfig(diameter_px=56))
    smap = score_micrograph(model, pre.image, ScoreConfig(stride="dense"))
    assert smap.shape == pre.image.shape
    lab = demo_labels[demo_labels["micrograph"] == HELD_OUT]
    rows = np.rint(lab["y"].to_numpy() / pre.factor).astype(int)
    cols = np.rint(lab["x"].to_numpy() / pre.factor).astype(int)
    at_labels = smap[rows, cols]
    rng = np.random.default_rng(0)
    background = smap[rng.integers(0, smap.shape[0], 2000), rng.integers(0, smap.shape[1], 2000)]
    # probability that a labeled particle outscores a random pixel (an AUC); 0.5 would be chance
    auc = (at_labels[:, None] > background[None, :]).mean()
    assert auc > 0.85, auc
    assert np.median(at_labels) > np.median(background) + 1.0


def test_same_seed_same_model_other_seed_other_model(tmp_path, demo_micrographs, demo_labels):
    def weights(seed, name):
        out = tmp_path / f"{name}.pt"
        train(demo_micrographs[:1], demo_labels, tiny(tmp_path, seed=seed), log=lambda m: None).save(out)
        return torch.load(out, weights_only=True)["state_dict"]

    a, b, c = weights(3, "a"), weights(3, "b"), weights(4, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_validation_split_records_ap_and_keeps_the_best_epoch(tmp_path, demo_micrographs, demo_labels):
    out = tmp_path / "m.pt"
    result = train(demo_micrographs[:2], demo_labels, tiny(tmp_path, epochs=2, test_split=0.5), log=lambda m: None)
    result.save(out)
    assert result.history["ap"].notna().all()
    assert result.best_epoch == int(result.history["ap"].idxmax()) + 1
    assert result.best_ap == pytest.approx(result.history["ap"].max())
    assert len(torch.load(out, weights_only=True)["config"]["provenance"]["validation"]) == 1


def test_labels_matching_nothing_list_both_sides(tmp_path, demo_micrographs):
    labels = pd.DataFrame({"micrograph": ["mic_A", "mic_B"], "x": [10.0, 20.0], "y": [10.0, 20.0]})
    with pytest.raises(InputError) as err:
        train(demo_micrographs[:2], labels, tiny(tmp_path))
    assert "mic_A" in str(err.value) and "061_10028" in str(err.value)
    assert not (tmp_path / "m.pt").exists()


def test_outside_and_foreign_labels_are_dropped_with_counts(tmp_path, demo_micrographs, demo_labels):
    one = demo_labels[demo_labels["micrograph"] == "061_10028"]
    extra = pd.DataFrame({"micrograph": ["061_10028", "061_10028", "999_other"], "x": [-5.0, 2000.0, 5.0],
                          "y": [10.0, 10.0, 5.0]})
    messages: list[str] = []
    train(demo_micrographs[:1], pd.concat([one, extra]), tiny(tmp_path), log=messages.append)
    text = "\n".join(messages)
    assert "2 label(s) lie outside" in text and "1 label(s) name micrographs that were not given" in text


def test_expected_count_below_the_labels(tmp_path, demo_micrographs, demo_labels):
    with pytest.raises(InputError, match="expected-particles"):
        train(demo_micrographs[:1], demo_labels, tiny(tmp_path, expected_particles=10))
    messages: list[str] = []  # PN does not need unlabeled positives: a warning only
    train(demo_micrographs[:1], demo_labels, tiny(tmp_path, expected_particles=10, objective="pn"),
          log=messages.append)
    assert any("warning" in m for m in messages)


def test_no_labels_is_an_error(tmp_path, demo_micrographs):
    empty = pd.DataFrame({"micrograph": [], "x": [], "y": []})
    with pytest.raises(InputError, match="no particle"):
        train(demo_micrographs[:1], empty, tiny(tmp_path))


@pytest.mark.parametrize("objective", ["ge-kl", "nnpu"])
def test_other_objectives_train(tmp_path, demo_micrographs, demo_labels, objective):
    result = train(demo_micrographs[:1], demo_labels, tiny(tmp_path, objective=objective), log=lambda m: None)
    assert math.isfinite(result.history["loss"].iloc[0])
    assert torch.load(result.save(tmp_path / "m.pt"), weights_only=True)["config"]["objective"] == objective


def test_cli_trains_and_reports(tmp_path, demo_micrographs, demo_dir):
    out = tmp_path / "cli.pt"
    args = [str(p) for p in demo_micrographs[:2]] + [
        "--labels", str(demo_dir / "particles.csv"), "-o", str(out), "--diameter-px", "56", "--arch", "conv31",
        "--units", "4", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--tile-size", "64",
        "--expected-particles", "150", "--test-split", "0", "--quiet"]
    res = CliRunner().invoke(command, args)
    assert res.exit_code == 0, res.output
    assert out.exists() and "model ->" in res.output and "π =" in res.output
    assert (tmp_path / "cli.cache").is_dir()


def test_cli_unmatched_labels_exit_nonzero_without_traceback(tmp_path, demo_micrographs):
    labels = tmp_path / "l.csv"
    labels.write_text("micrograph,x,y\nnope,1,2\n")
    res = CliRunner().invoke(command, [str(demo_micrographs[0]), "--labels", str(labels), "-o",
                                       str(tmp_path / "m.pt"), "--diameter-px", "56"])
    assert res.exit_code != 0 and "nope" in res.output and "Traceback" not in res.output


def test_trains_on_a_preprocessed_directory(tmp_path, demo_micrographs, demo_labels):
    from pupick.core.outputs import preprocess_to_dir

    pre_dir = tmp_path / "pre"
    preprocess_to_dir(demo_micrographs[:1], pre_dir, PreprocessConfig(diameter_px=56), progress=False)
    out = tmp_path / "m.pt"
    messages: list[str] = []
    train(sorted(pre_dir.glob("*.mrc")), demo_labels, tiny(tmp_path), log=messages.append).save(out)
    cfg = torch.load(out, weights_only=True)["config"]
    assert cfg["factor"] == 2.0  # from the manifest; labels stayed in the original pixels
    assert not any("outside" in m for m in messages)
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing to cache


@pytest.mark.parametrize("sampling", ["random", "grid"])
@pytest.mark.parametrize("rotations", ["none", "90"])
def test_tile_labels_sit_under_their_outputs(rotations, sampling):
    """With image == mask, the label of output (k, l) equals the input pixel at its window centre, after any flip."""
    from pupick.core.tiles import TileSampler, positive_mask

    rng = np.random.default_rng(0)
    mask = positive_mask((90, 70), rng.uniform(0, 90, 30), rng.uniform(0, 70, 30), 3)
    assert mask.sum() > 100
    pad, stride = 15, 4
    sampler = TileSampler([np.pad(mask.astype(np.float32), pad)], [mask], 32, pad, stride, rotations, sampling)
    xs, ys = sampler.sample(np.random.default_rng(1), 16)
    n = ys.shape[1]
    centres = xs[:, 0, pad:pad + (n - 1) * stride + 1:stride, pad:pad + (n - 1) * stride + 1:stride]
    assert xs.shape[2] == (n - 1) * stride + 2 * pad + 1
    np.testing.assert_array_equal(centres, ys.astype(np.float32))


def test_grid_sampling_covers_every_cell_of_every_micrograph_once_per_pass():
    from pupick.core.tiles import TileSampler

    masks = [np.zeros((100, 70), np.uint8), np.zeros((40, 130), np.uint8)]
    sampler = TileSampler([np.pad(m.astype(np.float32), 5) for m in masks], masks, 32, 5, 4, "none", "grid")
    cells = (4 * 3) + (2 * 5)  # ceil(h / 32) x ceil(w / 32) per micrograph
    rng = np.random.default_rng(3)
    first = sampler._grid(rng, cells)
    assert [sum(1 for c in first if c[0] == i) for i in (0, 1)] == [12, 10]  # one tile per cell: area-fair
    assert len(set(first)) == cells  # no cell twice in a pass
    for i, y0, x0 in first:  # every tile starts where a whole tile's outputs fit (or at 0 on a short side)
        assert 0 <= y0 < max(1, masks[i].shape[0] - 28) and 0 <= x0 < max(1, masks[i].shape[1] - 28)
    again = TileSampler([np.pad(m.astype(np.float32), 5) for m in masks], masks, 32, 5, 4, "none", "grid")
    assert again._grid(np.random.default_rng(3), cells) == first  # the seed decides everything
    second = sampler._grid(rng, cells)  # the next pass: the same count per micrograph, new offsets and order
    assert [sum(1 for c in second if c[0] == i) for i in (0, 1)] == [12, 10] and second != first


def test_grid_sampling_gives_every_batch_of_8_each_orientation_once():
    from pupick.core.tiles import TileSampler

    masks = [np.zeros((100, 70), np.uint8)]
    sampler = TileSampler([np.pad(m.astype(np.float32), 5) for m in masks], masks, 32, 5, 4, "90", "grid")
    rng = np.random.default_rng(7)
    blocks = [[sampler._orientation(rng) for _ in range(8)] for _ in range(3)]
    for block in blocks:
        assert sorted(block) == sorted((k, f) for f in (0, 1) for k in range(4))
    assert blocks[0] != blocks[1]  # shuffled anew, from the seed
    again = TileSampler([np.pad(m.astype(np.float32), 5) for m in masks], masks, 32, 5, 4, "90", "grid")
    fresh = np.random.default_rng(7)
    assert [again._orientation(fresh) for _ in range(8)] == blocks[0]  # the seed decides


def test_cli_choices_match_the_registries():
    from pupick.core.cli import train as cli_train
    from pupick.core.models import MODELS
    from pupick.core.objectives import OBJECTIVES

    assert set(cli_train.ARCHITECTURES) == set(MODELS) and set(cli_train.OBJECTIVES) == set(OBJECTIVES)



def test_cli_defaults_are_the_configs():
    """A default changes in one place: every `pupick train` option named as a TrainConfig field defaults to it."""
    from pupick.core.cli import train as cli_train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    shared = {p.name: p.default for p in cli_train.command.params if p.name in fields and p.name != "cache_dir"}
    assert {"arch", "units", "epochs", "frozen_layers", "weight_init"} <= set(shared)
    assert shared == {name: getattr(TrainConfig, name) for name in shared}


def test_dense_stride_training_saves_a_native_model(tmp_path, demo_micrographs, demo_labels):
    result = train(demo_micrographs[:1], demo_labels, tiny(tmp_path, train_stride="dense", tile_size=16),
                   log=lambda m: None)
    model = load_model(result.save(tmp_path / "m.pt"))
    assert not model.module.dense and model.config["stride"] == 2


def _mic_with(xy: np.ndarray, shape=(1024, 1024)) -> _Mic:
    labels = pd.DataFrame({"micrograph": "m", "x": xy[:, 0], "y": xy[:, 1]})
    return _Mic(None, None, 1.0, None, shape, labels)


def test_label_edge_margin_learns_how_close_users_label():
    rng = np.random.default_rng(0)
    spread = _mic_with(rng.uniform(40, 983, size=(400, 2)))  # a labeller who keeps 40 px off the edges
    m = label_edge_margin([spread, _mic_with(np.empty((0, 2)))], diameter_px=80)
    assert 0.45 < m <= 0.5  # 40 px = half a diameter, less the sampling excess
    # labels up to the edge: no margin
    assert label_edge_margin([_mic_with(np.vstack([[0.0, 500.0], rng.uniform(40, 983, (50, 2))]))], 80) == 0
    # three labels in the middle say little: the estimate is capped at one diameter
    assert label_edge_margin([_mic_with(np.array([[500.0, 510], [520, 505], [490, 530]]))], 80) == 1.0
    # few labels near the edge: the expected excess of their minimum is taken off
    few = label_edge_margin([_mic_with(np.array([[60.0, 500], [500, 700], [700, 300], [300, 300]]))], 80)
    assert few < 60 / 80
    assert label_edge_margin([spread], None) is None and label_edge_margin([], 80) is None


# ---------------------------------------------------------------- the engine API (issue 13) and bad options (14)


def test_result_saves_atomically_and_loads_like_the_file(tmp_path, demo_micrographs, demo_labels):
    from pupick.core.score import score_micrograph

    result = train(demo_micrographs[:1], demo_labels, tiny(tmp_path), log=lambda m: None)
    assert not list(tmp_path.glob("*.pt"))  # train() itself writes no model
    path = result.save(tmp_path / "m.pt")
    assert result.path == path and not [p for p in tmp_path.iterdir() if ".part" in p.name]
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format", "version", "state_dict", "config"}
    image = np.random.default_rng(0).normal(size=(96, 96)).astype(np.float32)
    a = score_micrograph(result.load(), image, ScoreConfig(stride="dense"))
    b = score_micrograph(load_model(path), image, ScoreConfig(stride="dense"))
    np.testing.assert_array_equal(a, b)
    # the same seed makes the same file, byte for byte (a model's identity is its content)
    again = train(demo_micrographs[:1], demo_labels, tiny(tmp_path), log=lambda m: None).save(tmp_path / "n.pt")
    assert again.read_bytes() == path.read_bytes()
    assert load_model(path).sha256 == load_model(again).sha256


def test_micrographs_table_is_accepted_and_gives_the_pixel_size(tmp_path, demo_micrographs, demo_labels):
    from pupick.core.tables import make_micrographs

    table = make_micrographs([str(p) for p in demo_micrographs[:1]], pixel_size=5.36)
    config = tiny(tmp_path, preprocess=PreprocessConfig(diameter_A=300.16))  # 56 px at 5.36 Å/px
    result = train(table, demo_labels, config, log=lambda m: None)
    assert result.config["pixel_size"] == pytest.approx(5.36) and result.config["diameter_px"] == pytest.approx(56)
    two = make_micrographs([str(p) for p in demo_micrographs[:2]], pixel_size=[5.36, 1.0])
    with pytest.raises(InputError, match="several pixel sizes"):
        train(two, demo_labels, config)


def test_on_epoch_reports_every_epoch(tmp_path, demo_micrographs, demo_labels):
    seen = []
    result = train(demo_micrographs[:2], demo_labels, tiny(tmp_path, epochs=3, test_split=0.5), on_epoch=seen.append,
                   log=lambda m: None)
    assert [e.epoch for e in seen] == [1, 2, 3] and all(e.epochs == 3 for e in seen)
    assert [e.loss for e in seen] == pytest.approx(result.history["loss"].tolist())
    assert all(0 <= e.ap <= 1 for e in seen)


@pytest.mark.parametrize("after_polls", [1, 4])
def test_should_stop_aborts_cleanly(tmp_path, demo_micrographs, demo_labels, after_polls):
    """Polled before preprocessing, between micrographs and between steps; stops with AbortRequested."""
    from pupick.core.errors import AbortRequested

    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) >= after_polls

    epochs = []
    with pytest.raises(AbortRequested):
        train(demo_micrographs[:2], demo_labels, tiny(tmp_path, epochs=5, steps_per_epoch=20), on_epoch=epochs.append,
              should_stop=should_stop, log=lambda m: None)
    assert len(polls) == after_polls and not epochs
    assert not list(tmp_path.glob("*.pt"))


def test_frozen_layers_keep_their_starting_weights_and_the_rest_learn(tmp_path, demo_micrographs, demo_labels):
    def weights(frozen: int) -> dict[str, torch.Tensor]:
        config = tiny(tmp_path / str(frozen), frozen_layers=frozen, steps_per_epoch=3)  # conv31: 5 feature layers
        return train(demo_micrographs[:2], demo_labels, config, log=lambda m: None).state_dict

    start, first, none = weights(5), weights(1), weights(0)  # all frozen: only the classifier learns
    assert torch.equal(first["features.0.conv.weight"], start["features.0.conv.weight"])
    assert not torch.equal(none["features.0.conv.weight"], start["features.0.conv.weight"])
    assert not torch.equal(first["features.2.conv.weight"], start["features.2.conv.weight"])
    # a frozen layer's batch norm still measures the micrographs (its statistics are not the initial 0 and 1)
    assert not torch.equal(first["features.0.bn.running_var"], torch.ones_like(first["features.0.bn.running_var"]))


def test_frozen_layers_beyond_an_init_models_network_are_refused_before_any_work(tmp_path, demo_micrographs,
                                                                                demo_labels):
    init = tmp_path / "conv31.pt"  # 5 feature layers; the config's own arch (resnet8) has 7
    train(demo_micrographs[:1], demo_labels, tiny(tmp_path / "a"), log=lambda m: None).save(init)
    config = dataclasses.replace(tiny(tmp_path / "b"), arch="resnet8", init=str(init), frozen_layers=6)
    with pytest.raises(InputError, match=r"--frozen-layers must be at most 5, the feature layers of conv31 \(got 6\)"):
        train(demo_micrographs[:1], demo_labels, config, log=lambda m: None)
    assert not (tmp_path / "b" / "cache").exists()  # refused before preprocessing


def test_cli_frozen_layers_beyond_the_init_models_network_exit_2_before_any_work(tmp_path, demo_micrographs, demo_dir):
    out = tmp_path / "sub" / "m.pt"
    res = CliRunner().invoke(command, [str(demo_micrographs[0]), "--labels", str(demo_dir / "particles.csv"), "-o",
                                       str(out), "--diameter-px", "56", "--init", "general", "--frozen-layers", "8"])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == "pupick: error: --frozen-layers must be at most 7, the feature layers of resnet8 (got 8)"
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize("kw, count", [({}, 1), ({"weight_init": "random"}, 0), ({"init": "general"}, 0),
                                       ({"frozen_layers": 0}, 0), ({"weight_init": "random", "frozen_layers": 2}, 2)])
def test_the_first_layer_is_frozen_by_default_only_when_it_starts_as_principal_components(kw, count):
    assert TrainConfig(**kw).frozen_layer_count() == count


def test_divergence_fails_clearly(tmp_path, demo_micrographs, demo_labels):
    from pupick.core.train import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="diverged.*--learning-rate"):
        train(demo_micrographs[:1], demo_labels, tiny(tmp_path, learning_rate=1e8, epochs=3, steps_per_epoch=4),
              log=lambda m: None)


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", float("nan"), r"--learning-rate must be a finite number > 0 \(got nan\)"),
    ("learning_rate", -1.0, r"--learning-rate must be a finite number > 0 \(got -1\)"),
    ("units", 0, r"--units must be a whole number >= 1 \(got 0\)"),
    ("batch_size", 0, "--batch-size must be a whole number >= 1"),
    ("tile_size", 0, "--tile-size must be a whole number >= 1"),
    ("epochs", 0, "--epochs must be a whole number >= 1"),
    ("test_split", 1.0, r"--test-split must be in \[0, 1\)"),
    ("expected_particles", float("inf"), "--expected-particles must be a finite number > 0"),
    ("label_radius", -1.0, "--label-radius must be"),
    ("train_stride", "sparse", "--train-stride must be one of native, dense"),
    ("lr_schedule", "linear", "--lr-schedule must be one of constant, cosine"),
    ("weight_init", "zeros", "--weight-init must be one of random, pca"),
    ("tile_sampling", "poisson", "--tile-sampling must be one of random, grid"),
    ("frozen_layers", -1, r"--frozen-layers must be a whole number >= 0 \(got -1\)"),
    ("frozen_layers", 8, r"--frozen-layers must be at most 7, the feature layers of resnet8 \(got 8\)"),
])
def test_train_config_refuses_bad_values(field, value, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field, value, message", [
    ("pixel_size", 0.0, "--pixel-size must be a finite number > 0"),
    ("diameter_px", float("nan"), "--diameter-px must be a finite number > 0"),
    ("factor", 0.5, "--scale must be a finite number >= 1"),
])
def test_train_config_refuses_bad_preprocessing(field, value, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(preprocess=PreprocessConfig(**{field: value}))


@pytest.mark.parametrize("option, value", [("--learning-rate", "nan"), ("--learning-rate", "-1"), ("--units", "0"),
                                           ("--batch-size", "0"), ("--tile-size", "0"), ("--pixel-size", "0"),
                                           ("--test-split", "1"), ("--frozen-layers", "-1"),
                                           ("--frozen-layers", "8")])
def test_cli_bad_option_exits_2_before_any_work(tmp_path, demo_micrographs, demo_dir, option, value):
    out = tmp_path / "sub" / "m.pt"
    res = CliRunner().invoke(command, [str(demo_micrographs[0]), "--labels", str(demo_dir / "particles.csv"),
                                       "-o", str(out), "--diameter-px", "56", option, value])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pupick: error: {option} must be"), res.output
    assert not (tmp_path / "sub").exists()  # no model, no cache


def test_cli_divergence_exits_1_and_writes_no_model(tmp_path, demo_micrographs, demo_dir):
    out = tmp_path / "m.pt"
    res = CliRunner().invoke(command, [str(demo_micrographs[0]), "--labels", str(demo_dir / "particles.csv"), "-o",
                                       str(out), "--diameter-px", "56", "--arch", "conv31", "--units", "4", "--epochs",
                                       "2", "--steps-per-epoch", "4", "--batch-size", "2", "--tile-size", "64",
                                       "--expected-particles", "150", "--learning-rate", "1e8", "--quiet"])
    assert res.exit_code == 1 and "training diverged" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_cli_never_writes_over_an_input_or_a_foreign_file(tmp_path, demo_micrographs, demo_dir):
    labels = tmp_path / "labels.csv"
    labels.write_bytes((demo_dir / "particles.csv").read_bytes())
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    for target in (labels, other):
        before = target.read_bytes()
        res = CliRunner().invoke(command, [str(demo_micrographs[0]), "--labels", str(labels), "-o", str(target),
                                           "--diameter-px", "56", "--epochs", "1"])
        assert res.exit_code == 1 and str(target) in res.output, res.output  # failed work, one line
        assert target.read_bytes() == before


def test_validating_the_weight_average_never_changes_training(tmp_path, demo_micrographs, demo_labels):
    """Each epoch validates the averaged weights, then trains on from the live ones, restored bit for bit."""
    mics = demo_micrographs[:2]
    last = train(mics, demo_labels, tiny(tmp_path, epochs=3, test_split=0.5, ema_decay=0.0), log=lambda m: None)
    avg = train(mics, demo_labels, tiny(tmp_path, epochs=3, test_split=0.5, ema_decay=0.5), log=lambda m: None)
    assert avg.history["ap"].notna().all()
    assert last.history["loss"].tolist() == avg.history["loss"].tolist()


def test_cosine_schedule_lowers_the_rate_of_later_steps_only(tmp_path, demo_micrographs, demo_labels):
    """Both schedules take the first step at the full rate (the same first two losses); later steps differ."""
    mics = demo_micrographs[:1]
    kw = dict(epochs=2, steps_per_epoch=2, ema_decay=0.0, learning_rate=1e-2)
    constant = train(mics, demo_labels, tiny(tmp_path, **kw), log=lambda m: None)
    cosine = train(mics, demo_labels, tiny(tmp_path, **kw, lr_schedule="cosine"), log=lambda m: None)
    # epoch 1's losses come before step 1's update (rates 1e-2 and 8.5e-3): only epoch 2 sees the schedule
    assert cosine.history["loss"].iloc[0] == constant.history["loss"].iloc[0]
    assert cosine.history["loss"].iloc[1] != constant.history["loss"].iloc[1]
    assert any(not torch.equal(a, b) for a, b in zip(constant.state_dict.values(), cosine.state_dict.values()))
    target = cosine.save(tmp_path / "cosine.pt")
    saved = torch.load(target, weights_only=True)["config"]["provenance"]["train_config"]
    assert saved["lr_schedule"] == "cosine"


def test_cli_lr_schedule_reaches_the_model_file(tmp_path, demo_micrographs, demo_dir):
    out = tmp_path / "m.pt"
    res = CliRunner().invoke(command, [str(demo_micrographs[0]), "--labels", str(demo_dir / "particles.csv"),
                                       "-o", str(out), "--diameter-px", "56", "--arch", "conv31", "--units", "4",
                                       "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                                       "--tile-size", "64", "--lr-schedule", "cosine", "--quiet"])
    assert res.exit_code == 0, res.output
    config = torch.load(out, weights_only=True)["config"]["provenance"]["train_config"]
    assert config["lr_schedule"] == "cosine"
    bad = CliRunner().invoke(command, [str(demo_micrographs[0]), "--labels", str(demo_dir / "particles.csv"),
                                       "-o", str(tmp_path / "n.pt"), "--diameter-px", "56", "--lr-schedule", "steps"])
    assert bad.exit_code == 2 and "--lr-schedule" in bad.output and not (tmp_path / "n.pt").exists()
