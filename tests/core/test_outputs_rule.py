"""Outputs: permissions follow the umask, inputs are never written over, other kinds of file are never replaced."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pupick.core.errors import InputError
from pupick.core.io import (atomic_path, check_output, check_output_dir, file_kind, write_mrc, write_text_atomic)
from pupick.core.modelfile import save_model
from pupick.core.models import ModelConfig, build

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _writers(tmp_path: Path) -> dict:
    """Every kind of atomic writer the commands use: text, MRC, model, plot, pick formats, particles .cs."""
    from pupick.adapters.registry import write_picks
    from pupick.core.tables import make_micrographs, make_picks

    picks = make_picks("mic_a", [10.0, 20.0], [30.0, 40.0], [1.0, 2.0])
    mics = make_micrographs(["mic_a.mrc"], pixel_size=1.0, shapes=[(100, 100)])
    mics["uid"] = np.array([123456789], dtype=np.uint64)

    def raw(p):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"x")

    return {
        "raw.bin": raw,
        "text.json": lambda p: write_text_atomic(p, "{}"),
        "image.mrc": lambda p: write_mrc(p, np.ones((40, 40), np.float32) + np.eye(40, dtype=np.float32)),
        "model.pt": lambda p: save_model(p, build(ModelConfig("conv31", 4)), {"arch": "conv31", "units": 4}),
        "picks.csv": lambda p: write_picks(picks, p),
        "picks.star": lambda p: write_picks(picks, p),
        "picks.box": lambda p: write_picks(picks, p, box_size=10),
        "picks.txt": lambda p: write_picks(picks, p, fmt="topaz"),
        "particles.cs": lambda p: write_picks(picks, p, fmt="cs", micrographs=mics),
    }


@pytest.mark.parametrize("name", list(_writers(Path("."))))
def test_outputs_get_the_permissions_of_a_plain_open(tmp_path, umask, name):
    target = tmp_path / name
    _writers(tmp_path)[name](target)
    assert mode(target) == 0o666 & ~umask
    with open(tmp_path / "plain", "w"):
        pass
    assert mode(target) == mode(tmp_path / "plain")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "plain"])  # no temporary left


def test_a_replaced_file_keeps_its_permissions(tmp_path, umask):
    target = tmp_path / "picks.csv"
    target.write_text("old")
    os.chmod(target, 0o640)
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o640


def test_file_kind_tells_what_a_file_holds(tmp_path, trained_model):
    (tmp_path / "a.csv").write_text("micrograph,x,y\n")
    (tmp_path / "e").write_bytes(b"")
    assert file_kind(DEMO / "micrographs" / "061_10028.mrc") == "mrc"
    assert file_kind(DEMO / "particles.csv") == "text"
    assert file_kind(trained_model) == "torch"
    assert file_kind(trained_model.with_suffix(".train.png")) == "png"
    assert file_kind(tmp_path / "a.csv") == "text" and file_kind(tmp_path / "e") == "empty"


def test_check_output_refuses_inputs_other_kinds_and_directories(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("micrograph,x,y\na,1,2\n")
    mic = DEMO / "micrographs" / "061_10028.mrc"
    link = tmp_path / "mic.mrc"
    os.symlink(mic, link)
    with pytest.raises(InputError, match="labels.csv: is an input of this command"):
        check_output(labels, "text", [labels, mic])
    with pytest.raises(InputError, match="mic.mrc: is an input of this command"):
        check_output(link, "mrc", [mic])  # the same file under another name
    with pytest.raises(InputError, match=r"labels\.csv: exists and is a text file, not a model file"):
        check_output(labels, "torch", [])
    with pytest.raises(InputError, match="is a directory"):
        check_output(tmp_path, "text", [])
    with pytest.raises(InputError, match="lies in the input directory"):
        check_output(labels, "text", [tmp_path])
    check_output(labels, "text", [mic])  # a text output may replace a text file that is not an input
    check_output(tmp_path / "new.pt", "torch", [labels])  # a new file is fine
    (tmp_path / "empty.pt").write_bytes(b"")
    check_output(tmp_path / "empty.pt", "torch", [])


def test_output_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    for check in (lambda: check_output(tmp_path / "f" / "sub" / "m.pt", "torch"),
                  lambda: check_output_dir(tmp_path / "f" / "sub"),
                  lambda: write_text_atomic(tmp_path / "f" / "sub" / "a.txt", "x")):
        with pytest.raises(InputError, match=r"/f is a file, not a directory"):
            check()
    with pytest.raises(InputError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A directory no file can be created in (root ignores modes, so root gets sysfs, which refuses everyone)."""
    if os.geteuid() == 0:
        yield Path("/sys")
        return
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    yield d
    d.chmod(0o755)


def test_unwritable_output_is_one_line(unwritable):
    with pytest.raises(InputError, match=r"cannot write in"):
        check_output(unwritable / "model.pt", "torch")
    with pytest.raises(InputError, match=r"cannot write"):
        check_output_dir(unwritable / "picks")
    with pytest.raises(InputError, match=r"cannot write"):
        write_text_atomic(unwritable / "a.txt", "x")
