"""`pupick train` never writes over its inputs or another kind of file; bad outputs and a corrupt cache are handled."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pupick.core.cli import main

FAST = ["--diameter-px", "56", "--arch", "conv31", "--units", "4", "--epochs", "1", "--steps-per-epoch", "2",
        "--batch-size", "2", "--tile-size", "64", "--expected-particles", "150", "--test-split", "0", "--quiet"]


def run(capsys, args) -> tuple[int, str]:
    try:
        main(["train", *map(str, args)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture
def inputs(tmp_path, demo_micrographs, demo_dir) -> tuple[list[Path], Path]:
    mics = []
    for p in demo_micrographs[:2]:
        shutil.copy(p, tmp_path / p.name)
        mics.append(tmp_path / p.name)
    labels = tmp_path / "labels.csv"
    shutil.copy(demo_dir / "particles.csv", labels)
    return mics, labels


@pytest.mark.parametrize("victim", ["labels", "micrograph"])
def test_train_refuses_to_write_over_an_input(capsys, inputs, victim):
    mics, labels = inputs
    target = labels if victim == "labels" else mics[0]
    before = target.read_bytes()
    code, err = run(capsys, [*mics, "--labels", labels, "-o", target, *FAST])
    assert code == 1 and err.count("\n") == 1 and "is an input of this command" in err and "Traceback" not in err
    assert target.read_bytes() == before


def test_train_replaces_a_model_but_no_other_kind_of_file(capsys, tmp_path, inputs):
    mics, labels = inputs
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes\n")
    code, err = run(capsys, [*mics, "--labels", labels, "-o", notes, *FAST])
    assert code == 1 and "exists and is a text file, not a model file" in err
    assert notes.read_text() == "my notes\n"
    model = tmp_path / "model.pt"
    for _ in range(2):  # the second run replaces the first model
        assert run(capsys, [*mics, "--labels", labels, "-o", model, *FAST])[0] == 0


def test_train_output_under_a_file_is_one_line(capsys, tmp_path, inputs):
    mics, labels = inputs
    (tmp_path / "f").write_text("x")
    code, err = run(capsys, [*mics, "--labels", labels, "-o", tmp_path / "f" / "sub" / "m.pt", *FAST])
    assert code == 1 and err.count("\n") == 1 and "is a file, not a directory" in err


def test_train_into_an_unwritable_directory_is_one_line(capsys, tmp_path, inputs):
    mics, labels = inputs
    if os.geteuid() == 0:  # root ignores file modes; sysfs refuses everyone
        place = Path("/sys")
    else:
        place = tmp_path / "ro"
        place.mkdir()
        place.chmod(0o555)
    code, err = run(capsys, [*mics, "--labels", labels, "-o", place / "m.pt", *FAST])
    assert code == 1 and err.count("\n") == 1 and "cannot write" in err and "Traceback" not in err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_cache_entry_is_rebuilt(capsys, tmp_path, inputs, damage):
    mics, labels = inputs
    model = tmp_path / "model.pt"
    assert run(capsys, [*mics, "--labels", labels, "-o", model, *FAST])[0] == 0
    entries = sorted((tmp_path / "model.cache").glob("*.npz"))
    assert len(entries) == 2
    good = entries[0].read_bytes()
    entries[0].write_bytes({"truncated": good[: len(good) // 2], "garbage": b"\x00junk" * 100, "empty": b""}[damage])
    code, err = run(capsys, [*mics, "--labels", labels, "-o", model, *FAST])
    assert code == 0, err
    with np.load(entries[0]) as z:  # rewritten whole
        assert z["image"].ndim == 2


@pytest.mark.parametrize("cell", ["nan", ""])
def test_nan_label_coordinates_are_not_called_outside(capsys, tmp_path, inputs, cell):
    mics, labels = inputs
    labels.write_text(labels.read_text() + f"061_10028,{cell},100\n")
    code, err = run(capsys, [*mics, "--labels", labels, "-o", tmp_path / "m.pt", *FAST])
    assert code == 1 and err.count("\n") == 1 and "outside" not in err
    assert "no coordinate" in err and "every pick needs a number for x and y" in err
