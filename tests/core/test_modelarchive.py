"""check_archive: model files bounded before torch allocates anything (the 2 GiB-in-2-MB file of issue 26)."""
from __future__ import annotations

import resource
import zipfile

import pytest
import torch

from pupick.core.errors import InvalidModel, ModelFileError, ModelTooLarge
from pupick.core.modelarchive import check_archive, max_archive_bytes
from pupick.core.modelfile import SHIPPED_DIR, load_model, save_model
from pupick.core.models import ModelConfig, build
from model_bombs import write_inflating_model


def _save(path, arch="conv31", units=4, state_units=None, **extra):
    module = build(ModelConfig(arch=arch, units=state_units or units))
    save_model(path, module, {**ModelConfig(arch=arch, units=units).to_dict(), **extra})
    return path


def test_real_model_files_pass(tmp_path, trained_model):
    check_archive(trained_model)
    check_archive(SHIPPED_DIR / "general.pt")
    check_archive(_save(tmp_path / "m.pt", arch="resnet16", units=16))


def test_the_inflating_file_is_refused_before_any_allocation(tmp_path):
    bomb = tmp_path / "bomb.pt"
    write_inflating_model(bomb)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelTooLarge, match="not a valid pupick model: compressed entry 'archive/data/0'"):
        load_model(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # kB; inflating it: +2 GiB


def test_entries_over_the_largest_architecture_are_refused(tmp_path):
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(big, "w") as z:  # stored, sparse-free: the declared sizes are what is counted
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            block = bytes(1 << 20)
            for _ in range(max_archive_bytes() // len(block) + 1):
                f.write(block)
    with pytest.raises(ModelTooLarge, match="more than the largest architecture"):
        check_archive(big)


@pytest.mark.parametrize("kind, message", [
    ("wider", "tensor 'features.0.conv.weight' is float32 [8, 1, 9, 9], architecture 'conv31' with 4 units needs"),
    ("units", "units 100000 is not a whole number from 1 to 128"),
    ("arch", "unknown architecture 'resnet99'"),
    ("missing", "missing tensor"),
    ("dtype", "is float64"),
])
def test_tensors_must_be_the_architectures(tmp_path, kind, message):
    path = tmp_path / "m.pt"
    module = build(ModelConfig(arch="conv31", units=4))
    state = dict(module.state_dict())
    config = ModelConfig(arch="conv31", units=4).to_dict()
    if kind == "wider":
        state = dict(build(ModelConfig(arch="conv31", units=8)).state_dict())
    elif kind == "units":
        config["units"] = 100_000
    elif kind == "arch":
        config["arch"] = "resnet99"
    elif kind == "missing":
        state.pop("classifier.bias")
    elif kind == "dtype":
        state["classifier.bias"] = state["classifier.bias"].double()
    torch.save({"format": "pupick-model", "version": 1, "state_dict": state, "config": config}, path)
    with pytest.raises(InvalidModel, match="not a valid pupick model") as err:
        load_model(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ModelFileError)


def test_pupick_pick_refuses_the_inflating_file_in_one_line(tmp_path, demo_micrographs):
    from click.testing import CliRunner

    from pupick.core.cli import cli

    bomb = tmp_path / "bomb.pt"
    write_inflating_model(bomb)
    res = CliRunner().invoke(cli, ["pick", str(demo_micrographs[0]), "--model", str(bomb), "-o", str(tmp_path / "o"),
                                   "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert "not a valid pupick model: compressed entry" in res.output and "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if "error" in ln]) == 1
