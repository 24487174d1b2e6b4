"""The one model-file validation (modelfile.validate_model): nonsense settings or non-finite weights are refused by
every loader with one line "not a valid pupick model: ...", exit 1; the shipped general model passes."""
from __future__ import annotations

import math

import pytest
import torch

from pupick.core.cli import main
from pupick.core.errors import ModelFileError
from pupick.core.modelfile import load_model, loaded_from_state, model_from_state, validate_model

from console_run import run_console

NAN = float("nan")


def _payload(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _broken(trained_model, tmp_path, change) -> "Path":
    payload = _payload(trained_model)
    change(payload["config"], payload["state_dict"])
    out = tmp_path / "broken.pt"
    torch.save(payload, out)
    return out


def _set(key, value):
    return lambda config, state: config.__setitem__(key, value)


def _nan_weight(config, state):
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name].view(-1)[0] = NAN


def _all_nan(config, state):
    for v in state.values():
        if v.is_floating_point():
            v.fill_(NAN)


CASES = {
    "factor missing": (lambda config, state: config.pop("factor"), "factor"),
    "factor 0": (_set("factor", 0.0), "factor is 0"),
    "factor NaN": (_set("factor", NAN), "factor is nan"),
    "diameter_px -5": (_set("diameter_px", -5.0), "diameter_px is -5"),
    "diameter_px NaN": (_set("diameter_px", NAN), "diameter_px is nan"),
    "pi NaN": (_set("pi", NAN), "pi is nan"),
    "pi 1": (_set("pi", 1.0), "pi is 1"),
    "pi 0": (_set("pi", 0.0), "pi is 0"),
    "stride 0": (_set("stride", 0), "stride is 0"),
    "expected_particles -5": (_set("expected_particles", -5), "expected_particles is -5"),
    "expected_particles 0": (_set("expected_particles", 0), "expected_particles is 0"),
    "pixel_size -3": (_set("pixel_size", -3.0), "pixel_size is -3"),
    "label_edge_margin NaN": (_set("label_edge_margin", NAN), "label_edge_margin is nan"),
    "factor a string": (_set("factor", "2"), "factor is '2', not a number"),
    "blob_weight -1": (_set("blob_weight", -1.0), "blob_weight is -1"),
    "blob_weight NaN": (_set("blob_weight", NAN), "blob_weight is nan"),
    "blob_weight 1e9": (_set("blob_weight", 1e9), "blob_weight is 1e+09"),
    "one NaN weight": (_nan_weight, "non-finite"),
    "all weights NaN": (_all_nan, "non-finite"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pick_refuses_a_model_with_nonsense_in_one_line(case, trained_model, demo_micrographs, tmp_path, capsys):
    change, reason = CASES[case]
    model = _broken(trained_model, tmp_path, change)
    for precision in ("int8", "fp32"):  # all-NaN weights crashed the int8 path and gave 0 picks at fp32
        code, out, err = run_console(main, capsys, ["pick", demo_micrographs[0], "--model", model, "-o",
                                                    tmp_path / "out", "--device", "cpu", "--precision", precision])
        assert code == 1, (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pupick: error: not a valid pupick model: {model}: "), err
        assert reason in lines[0] and "--scale" not in lines[0]
        assert not (tmp_path / "out" / "picks.csv").exists()


def test_every_loader_runs_the_same_check(trained_model):
    payload = _payload(trained_model)
    config, state = dict(payload["config"]), dict(payload["state_dict"])
    loaded = load_model(trained_model)
    assert loaded.config["factor"] >= 1
    bad = {**config, "factor": 0.0}
    with pytest.raises(ModelFileError, match=r"^not a valid pupick model: trained model: factor is 0"):
        loaded_from_state(state, bad)  # a fresh training's result
    with pytest.raises(ModelFileError, match=r"^not a valid pupick model: .*: factor is 0"):
        model_from_state(state, bad, loaded.sha256)  # what a cluster worker rebuilds
    with pytest.raises(ModelFileError, match=r"^not a valid pupick model: upload\.pt: pi is nan"):
        validate_model({**config, "pi": NAN}, state, "upload.pt")  # the service's upload check


def test_fine_tuning_from_a_broken_model_is_refused(trained_model, demo_micrographs, demo_labels, tmp_path):
    from pupick.core.config import PreprocessConfig, TrainConfig
    from pupick.core.train import train

    model = _broken(trained_model, tmp_path, _nan_weight)
    config = TrainConfig(preprocess=PreprocessConfig(diameter_px=56), epochs=1, steps_per_epoch=1, test_split=0.0,
                         init=str(model), seed=0)
    with pytest.raises(ModelFileError, match="not a valid pupick model: .*broken.pt: weight .* non-finite"):
        train(demo_micrographs[:1], demo_labels, config, log=lambda m: None)


def test_the_shipped_general_model_passes_and_missing_fields_take_their_defaults():
    from pupick.core.modelfile import MISSING_DEFAULTS

    general = load_model("general")
    assert general.config.get("factor") is None and general.config["grid_diameter"] > 0  # no factor: general
    minimal = {"arch": "conv31", "units": 4, "factor": 2.0}  # a file written before the later fields existed
    assert set(MISSING_DEFAULTS) >= {"label_edge_margin", "expected_particles", "pixel_size", "pi", "diameter_px"}
    validate_model(minimal, None, "old.pt")
    assert math.isnan(general.config["pi_u"])  # informational only: not checked
