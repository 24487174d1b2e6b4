"""Model files: plain config, weights_only loading, identical outputs, clear errors for foreign files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pupick.core.errors import ModelFileError
from pupick.core.modelfile import FORMAT, load_model, plain, save_model
from pupick.core.models import ModelConfig, build


def _config(**extra):
    return {**ModelConfig(arch="conv31", units=4).to_dict(), "factor": 2.0, "pi": 0.01, **extra}


def test_round_trip_is_weights_only_and_identical(tmp_path):
    torch.manual_seed(0)
    module = build(ModelConfig(arch="conv31", units=4)).eval()
    path = tmp_path / "m.pt"
    save_model(path, module, _config(pi=np.float32(0.01), shape=np.array([3, 4]), where=tmp_path))
    raw = torch.load(path, weights_only=True)  # must not need pickled classes
    assert raw["format"] == FORMAT and isinstance(raw["version"], int)
    assert type(raw["config"]["pi"]) is float and raw["config"]["shape"] == [3, 4]
    assert raw["config"]["where"] == str(tmp_path)
    loaded = load_model(path)
    assert not loaded.module.training
    assert loaded.receptive_field == 31 and loaded.stride == 2 and len(loaded.sha256) == 64
    x = torch.randn(1, 1, 50, 47)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), module(x))
    assert not list(tmp_path.glob("*.part*"))  # written atomically


def test_plain_rejects_objects():
    with pytest.raises(TypeError, match="config.model"):
        plain({"model": ModelConfig()})


@pytest.mark.parametrize("content", [b"not a model at all", None, "tensor", "wrong-format", "future", "bad-weights"])
def test_foreign_or_incompatible_files_raise_model_file_error(tmp_path, content):
    path = tmp_path / "x.pt"
    good = build(ModelConfig(arch="conv31", units=4)).state_dict()
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "wrong-format":
        torch.save({"format": "topaz", "state_dict": good}, path)
    elif content == "future":
        torch.save({"format": FORMAT, "version": 999, "state_dict": good, "config": _config()}, path)
    elif content == "bad-weights":
        torch.save({"format": FORMAT, "version": 1, "state_dict": good, "config": _config(arch="resnet8")}, path)
    else:
        path = tmp_path / "missing.pt"
    with pytest.raises(ModelFileError, match=str(path.name)):
        load_model(path)
