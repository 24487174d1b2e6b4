"""A model's identity for resume is its content (weights + config), not its file bytes or save date."""
from __future__ import annotations

import re

import pytest
import torch

from pupick.core.errors import ModelFileError
from pupick.core.modelfile import FORMAT, load_model, save_model
from pupick.core.models import ModelConfig, build

PYTHON_TYPES = re.compile(r"\b(\w+Error|\w+Exception|int|str|dict|NoneType|UnpicklingError)\b")


def _module(seed: int = 0):
    torch.manual_seed(seed)
    return build(ModelConfig(arch="conv31", units=4)).eval()


def _config(date: str, **extra) -> dict:
    return {**ModelConfig(arch="conv31", units=4).to_dict(), "factor": 2.0,
            "provenance": {"micrographs": ["a"], "date": date}, **extra}


def test_identity_ignores_the_save_date_and_file_bytes(tmp_path):
    module = _module()
    save_model(tmp_path / "a.pt", module, _config("2024-01-01T10:00:00"))
    save_model(tmp_path / "b.pt", module, _config("2025-06-30T23:59:59"))
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    assert load_model(tmp_path / "a.pt").sha256 == load_model(tmp_path / "b.pt").sha256


def test_identity_changes_with_weights_or_config(tmp_path):
    save_model(tmp_path / "a.pt", _module(0), _config("d"))
    save_model(tmp_path / "b.pt", _module(1), _config("d"))
    save_model(tmp_path / "c.pt", _module(0), _config("d", factor=3.0))
    ids = {load_model(tmp_path / f"{n}.pt").sha256 for n in "abc"}
    assert len(ids) == 3 and all(len(i) == 64 for i in ids)


def test_retraining_with_the_same_seed_is_the_same_model(tmp_path, demo_micrographs, demo_labels, monkeypatch):
    import time

    from pupick.core.config import PreprocessConfig, TrainConfig
    from pupick.core.train import train

    config = TrainConfig(preprocess=PreprocessConfig(diameter_px=56), arch="conv31", units=4, epochs=1,
                         steps_per_epoch=2, batch_size=2, tile_size=64, expected_particles=150, test_split=0.0,
                         cache_dir=str(tmp_path / "cache"), seed=3)
    real = time.strftime
    for i, name in enumerate(["first.pt", "second.pt"]):  # a day apart
        monkeypatch.setattr(time, "strftime", lambda fmt, *a, _d=f"2025-01-0{i + 1}T12:00:00": _d)
        train(demo_micrographs[:2], demo_labels, config, log=lambda m: None).save(tmp_path / name)
    monkeypatch.setattr(time, "strftime", real)
    first, second = load_model(tmp_path / "first.pt"), load_model(tmp_path / "second.pt")
    assert first.config["provenance"].get("date") == second.config["provenance"].get("date")  # none recorded
    assert first.sha256 == second.sha256
    assert (tmp_path / "first.pt").read_bytes() == (tmp_path / "second.pt").read_bytes()  # the same file, even


@pytest.mark.parametrize("version,expected", [
    ("1", r"format version '1' is not valid"),
    (1.0, r"format version 1\.0 is not valid"),
    (None, r"format version None is not valid"),
    (999, r"format version 999 is newer than this pupick reads \(1\)"),
])
def test_version_messages_say_what_is_wrong(tmp_path, version, expected):
    path = tmp_path / "m.pt"
    torch.save({"format": FORMAT, "version": version, "state_dict": _module().state_dict(),
                "config": _config("d")}, path)
    with pytest.raises(ModelFileError, match=expected) as err:
        load_model(path)
    assert "newer" not in str(err.value) or version == 999


@pytest.mark.parametrize("content", [b"not a model at all", b"PK\x03\x04 broken zip", "pickle"])
def test_foreign_file_message_names_no_python_type(tmp_path, content):
    path = tmp_path / "x.pt"
    if content == "pickle":
        import collections

        torch.save(collections.OrderedDict(a=ModelConfig()), path)  # a pickled object: refused by weights_only
    else:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match="not a pupick model file") as err:
        load_model(path)
    assert not PYTHON_TYPES.search(str(err.value).split(": ", 1)[1]), str(err.value)


def test_identity_does_not_depend_on_where_the_cache_was(tmp_path, demo_micrographs, demo_labels):
    from pupick.core.config import PreprocessConfig, TrainConfig
    from pupick.core.train import train

    for name in ("a", "b"):  # the same seed, each with its own preprocessing cache
        config = TrainConfig(preprocess=PreprocessConfig(diameter_px=56), arch="conv31", units=4, epochs=1,
                             steps_per_epoch=2, batch_size=2, tile_size=64, expected_particles=150, test_split=0.0,
                             cache_dir=str(tmp_path / f"cache_{name}"), seed=3)
        train(demo_micrographs[:2], demo_labels, config, log=lambda m: None).save(tmp_path / f"{name}.pt")
    a, b = load_model(tmp_path / "a.pt"), load_model(tmp_path / "b.pt")
    assert a.sha256 == b.sha256
    assert "cache_a" not in str(a.config) and (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
