"""The general model (issue 19): shipped-model registry, picking scale, multi-set training, fine-tuning, averaging."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pupick.core.config import PickConfig, PreprocessConfig, ScoreConfig, TrainConfig
from pupick.core.errors import InputError, ModelFileError
from pupick.core.general import LabelledSet, train_general
from pupick.core.modelfile import (SHIPPED_MODELS, for_particle, load_model, loaded_from_state, needs_particle_size,
                                   resolve_model)
from pupick.core.train import train


def tiny_general(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(arch="conv31", units=4, epochs=2, steps_per_epoch=3, batch_size=2, tile_size=64,
                                 ema_decay=0.9), **kw})


@pytest.fixture(scope="module")
def small_general(demo_micrographs, demo_labels):
    """A tiny general model trained on two 'sets' cut from the bundled micrographs (different diameters)."""
    sets = [LabelledSet("a", demo_micrographs[:2], demo_labels, 56.0),
            LabelledSet("b", demo_micrographs[2:3], demo_labels, 60.0)]
    return train_general(sets, tiny_general(), log=lambda m: None), sets


def test_shipped_model_resolves_by_name_and_needs_a_diameter():
    assert set(SHIPPED_MODELS) == {"general"}
    path = resolve_model("general")
    assert path.is_file() and path.stat().st_size < 2_000_000  # small enough for the wheel
    raw = torch.load(path, weights_only=True)  # state_dict + plain config, no pickled objects
    assert set(raw) == {"format", "version", "state_dict", "config"}
    model = load_model("general")
    assert needs_particle_size(model) and model.config["grid_diameter"] > 0
    assert set(model.config["provenance"]["sets"]) == {"empiar10017", "empiar10028", "empiar10059"}
    with pytest.raises(InputError, match="needs the particle diameter"):
        for_particle(model)
    # a path is a path, whatever its name
    with pytest.raises(ModelFileError, match="not found"):
        load_model("general.pt")


def test_for_particle_sets_the_downsampling_so_the_particle_spans_the_grid(small_general):
    result, _ = small_general
    model = loaded_from_state(result.state_dict, result.config)
    grid = model.config["grid_diameter"]
    px = for_particle(model, diameter_px=3 * grid)
    assert px.config["factor"] == pytest.approx(3) and px.config["diameter_px"] == 3 * grid
    assert px.config["pixel_size"] is None and model.config["factor"] is None  # the original is untouched
    a = for_particle(model, diameter_A=120.0, pixel_size=2.0)  # 60 px
    assert a.config["factor"] == pytest.approx(60 / grid) and a.config["pixel_size"] == 2.0
    with pytest.raises(InputError, match="pixel size is unknown"):
        for_particle(model, diameter_A=120.0)
    with pytest.raises(InputError, match="smaller than"):
        for_particle(model, diameter_px=grid / 2)


def test_general_model_picks_particles_above_background(demo_dir, demo_labels):
    """The shipped model, at the bundled micrographs' diameter, scores labelled particles above random pixels.

    Not a quality claim: the shipped model was trained on EMPIAR-10028's labels (BENCHMARKS.md has the honest,
    leave-one-set-out numbers); this checks that the name, the scale and the weights fit together.
    """
    from pupick.core.io import read_micrograph
    from pupick.core.preprocess import preprocess_micrograph
    from pupick.core.score import score_micrograph

    model = for_particle(load_model("general"), diameter_px=56)
    name = "312_10028"
    pre = preprocess_micrograph(read_micrograph(demo_dir / "micrographs" / f"{name}.mrc"),
                                PreprocessConfig(factor=model.config["factor"]))
    smap = score_micrograph(model, pre.image, ScoreConfig(stride="dense"))
    lab = demo_labels[demo_labels["micrograph"] == name]
    at = smap[np.rint(lab["y"] / pre.factor).astype(int), np.rint(lab["x"] / pre.factor).astype(int)]
    rng = np.random.default_rng(0)
    bg = smap[rng.integers(0, smap.shape[0], 2000), rng.integers(0, smap.shape[1], 2000)]
    assert (at[:, None] > bg[None, :]).mean() > 0.85


def test_the_general_model_picks_with_the_blob_prior_and_a_trained_model_without(demo_micrographs, demo_labels,
                                                                                 trained_model):
    """Zero labels: the general model's map plus the blob prior (GENERAL_BLOB_WEIGHT unless set); 0 turns it off.
    A model trained on labels picks without it unless asked."""
    from pupick.core.config import GENERAL_BLOB_WEIGHT
    from pupick.core.evaluate import evaluate
    from pupick.core.picking import pick

    mics = demo_micrographs[:2]

    def picks(model, **settings):
        return pick(mics, model, PickConfig.from_settings({"views": 1, **settings}), log=lambda m: None).picks

    general = picks("general", diameter_px=56)
    assert general.equals(picks("general", diameter_px=56, blob_weight=GENERAL_BLOB_WEIGHT))
    off = picks("general", diameter_px=56, blob_weight=0)
    assert not general.equals(off)
    stems = [p.stem for p in mics]
    for table in (general, off):  # both find the particles (the shipped model has seen these labels: no AP claim)
        assert evaluate(table, demo_labels, 28, micrographs=stems).ap > 0.7
    trained = picks(trained_model)
    assert trained.equals(picks(trained_model, blob_weight=0))
    assert not trained.equals(picks(trained_model, blob_weight=1))
    own = load_model("general")  # a general model made another way records its own weight, which wins over the rule
    own.config["blob_weight"] = 0.0
    assert picks(own, diameter_px=56).equals(off)
    assert picks(own, diameter_px=56, blob_weight=GENERAL_BLOB_WEIGHT).equals(general)  # and a setting over that


def test_general_training_is_deterministic_and_uses_every_set(small_general, demo_micrographs, demo_labels):
    result, sets = small_general
    again = train_general(sets, tiny_general(), log=lambda m: None)
    assert all(torch.equal(result.state_dict[k], again.state_dict[k]) for k in result.state_dict)
    other = train_general(sets, tiny_general(seed=1), log=lambda m: None)
    assert not all(torch.equal(result.state_dict[k], other.state_dict[k]) for k in result.state_dict)
    assert result.config["provenance"]["sets"] == ["a", "b"] and result.config["grid_diameter"] == 24.0
    assert result.config["factor"] is None and result.config["diameter_px"] is None


def test_training_without_the_augmentation_is_another_model_and_says_so(small_general):
    result, sets = small_general
    plain_tiles = train_general(sets, tiny_general(), log=lambda m: None, augment=False)
    assert not all(torch.equal(result.state_dict[k], plain_tiles.state_dict[k]) for k in result.state_dict)
    assert result.config["provenance"]["augment"] is True
    assert plain_tiles.config["provenance"]["augment"] is False


def test_set_weights_change_the_draws_and_must_be_positive(small_general):
    result, sets = small_general
    import dataclasses

    weighted = [dataclasses.replace(sets[0], weight=0.9), dataclasses.replace(sets[1], weight=0.1)]
    other = train_general(weighted, tiny_general(), log=lambda m: None)
    assert not all(torch.equal(result.state_dict[k], other.state_dict[k]) for k in result.state_dict)
    again = train_general(weighted, tiny_general(), log=lambda m: None)
    assert all(torch.equal(other.state_dict[k], again.state_dict[k]) for k in other.state_dict)
    with pytest.raises(InputError, match="weight must be positive"):
        train_general([dataclasses.replace(sets[0], weight=0.0), sets[1]], tiny_general(), log=lambda m: None)


def test_fine_tuning_from_a_general_model_takes_its_network_and_scale(tmp_path, small_general, demo_micrographs,
                                                                     demo_labels):
    result, _ = small_general
    init = result.save(tmp_path / "general.pt", history=False)
    messages: list[str] = []
    config = TrainConfig(preprocess=PreprocessConfig(diameter_px=60), init=str(init), arch="resnet8", units=32,
                         epochs=1, steps_per_epoch=2, batch_size=2, tile_size=64, expected_particles=150)
    tuned = train(demo_micrographs[:1], demo_labels, config, log=messages.append)
    assert tuned.config["arch"] == "conv31" and tuned.config["units"] == 4  # the init model's network
    assert tuned.config["factor"] == pytest.approx(60 / 24)  # the particle at the general model's size
    assert tuned.config["provenance"]["train_config"]["init"] == str(init)
    assert any("fine-tuning from" in m for m in messages)
    # fine-tuning starts from the init weights: one step moves them a little, not to a fresh random network
    fresh = train(demo_micrographs[:1], demo_labels, TrainConfig(**{**config.__dict__, "init": None, "arch": "conv31",
                                                                   "units": 4}), log=lambda m: None)
    key = next(k for k in result.state_dict if k.endswith("weight") and result.state_dict[k].dim() == 4)
    start = result.state_dict[key]
    assert (tuned.state_dict[key] - start).abs().mean() < (fresh.state_dict[key] - start).abs().mean()


def test_init_must_exist(tmp_path, demo_micrographs, demo_labels):
    config = TrainConfig(preprocess=PreprocessConfig(diameter_px=56), init=str(tmp_path / "none.pt"))
    with pytest.raises(ModelFileError, match="not found"):
        train(demo_micrographs[:1], demo_labels, config)


def test_weight_average_changes_the_saved_weights(tmp_path, demo_micrographs, demo_labels):
    base = dict(preprocess=PreprocessConfig(diameter_px=56), arch="conv31", units=4, epochs=1, steps_per_epoch=4,
                batch_size=2, tile_size=64, expected_particles=150, cache_dir=str(tmp_path / "c"))
    last = train(demo_micrographs[:1], demo_labels, TrainConfig(**base, ema_decay=0.0), log=lambda m: None)
    avg = train(demo_micrographs[:1], demo_labels, TrainConfig(**base, ema_decay=0.9), log=lambda m: None)
    key = next(k for k in last.state_dict if k.endswith("weight") and last.state_dict[k].dim() == 4)
    assert not torch.equal(last.state_dict[key], avg.state_dict[key])
    assert last.history["loss"].tolist() == avg.history["loss"].tolist()  # averaging never changes training


def test_ema_swap_round_trip():
    from pupick.core.train import _Ema

    net = torch.nn.Linear(3, 2)
    ema = _Ema(net, 0.5)
    values = []
    for v in (1.0, 3.0):
        with torch.no_grad():
            net.weight.fill_(v)
        ema.update()
        values.append(v)
    ema.swap()
    # bias-corrected EMA of 1 then 3 with decay 0.5: (0.25 * 1 + 0.5 * 3) / 0.75
    assert torch.allclose(net.weight, torch.full_like(net.weight, (0.25 + 1.5) / 0.75))
    ema.swap()
    assert torch.allclose(net.weight, torch.full_like(net.weight, 3.0))


def test_cli_init_general_needs_nothing_else(tmp_path, demo_micrographs, demo_dir):
    from click.testing import CliRunner

    from pupick.core.cli.train import command

    out = tmp_path / "tuned.pt"
    res = CliRunner().invoke(command, [str(demo_micrographs[0]), "--labels", str(demo_dir / "particles.csv"), "-o",
                                       str(out), "--diameter-px", "56", "--init", "general", "--epochs", "1",
                                       "--steps-per-epoch", "2", "--batch-size", "2", "--tile-size", "64",
                                       "--expected-particles", "150", "--quiet"])
    assert res.exit_code == 0, res.output
    cfg = load_model(out).config
    assert cfg["provenance"]["train_config"]["init"] == "general"
    assert cfg["factor"] == pytest.approx(56 / load_model("general").config["grid_diameter"])
    assert not needs_particle_size(load_model(out))
