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


# ---------------------------------------------------------------- every command applies the rule


def _run(capsys, args) -> tuple[int, str]:
    from pupick.core.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture
def labels(tmp_path) -> Path:
    p = tmp_path / "labels.csv"
    p.write_bytes((DEMO / "particles.csv").read_bytes())
    return p


@pytest.mark.parametrize("to", ["labels.csv", "labels.star", "061_10028.mrc"])
def test_convert_never_writes_over_an_input(capsys, tmp_path, labels, to):
    labels.write_text("".join(ln for ln in labels.read_text().splitlines(keepends=True)
                              if ln.startswith(("micrograph", "061_10028"))))
    star = tmp_path / "labels.star"
    assert _run(capsys, ["convert", labels, "-o", star])[0] == 0
    mic = tmp_path / "061_10028.mrc"
    mic.write_bytes((DEMO / "micrographs" / "061_10028.mrc").read_bytes())
    before = {p: p.read_bytes() for p in (labels, star, mic)}
    code, err = _run(capsys, ["convert", labels, star, "--micrographs", mic, "-o", tmp_path / to, "--force",
                              "--to", "csv"])
    assert code == 1 and "is an input of this command" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in before} == before


def test_convert_force_replaces_only_the_same_kind(capsys, tmp_path, labels):
    other = tmp_path / "picture.csv"
    other.write_bytes((DEMO / "micrographs" / "061_10028.mrc").read_bytes()[:4096])
    code, err = _run(capsys, ["convert", labels, "-o", other, "--force"])
    assert code == 1 and "exists and is an MRC image, not a text file" in err
    out = tmp_path / "out.csv"
    out.write_text("micrograph,x,y\n")
    assert _run(capsys, ["convert", labels, "-o", out, "--force"])[0] == 0


def test_convert_into_an_input_directory_is_refused(capsys, tmp_path, labels):
    coords = tmp_path / "coords"
    assert _run(capsys, ["convert", labels, "-o", coords, "--to", "relion"])[0] == 0
    files = {p: p.read_bytes() for p in coords.rglob("*.star")}
    code, err = _run(capsys, ["convert", coords, "--from", "relion", "-o", coords, "--to", "relion", "--force"])
    assert code == 1 and "lies in the input directory" in err
    assert {p: p.read_bytes() for p in files} == files


def test_evaluate_never_writes_over_its_inputs(capsys, tmp_path, labels):
    picks = tmp_path / "picks.tsv"
    picks.write_bytes(labels.read_bytes().replace(b",", b"\t"))
    before = picks.read_bytes()
    code, err = _run(capsys, ["evaluate", "--picks", picks, "--labels", labels, "--match-radius", "20",
                              "-o", tmp_path / "picks"])
    assert code == 1 and "picks.tsv: is an input of this command" in err and picks.read_bytes() == before
    (tmp_path / "ev.png").write_text("a note\n")
    code, err = _run(capsys, ["evaluate", "--picks", picks, "--labels", labels, "--match-radius", "20",
                              "-o", tmp_path / "ev"])
    assert code == 1 and "ev.png: exists and is a text file, not a PNG image" in err
    assert not (tmp_path / "ev.tsv").exists()  # checked before any work


def test_preprocess_into_the_micrographs_folder_is_refused(capsys, tmp_path):
    mic = tmp_path / "061_10028.mrc"
    mic.write_bytes((DEMO / "micrographs" / "061_10028.mrc").read_bytes())
    before = mic.read_bytes()
    for extra in ([], ["--overwrite"]):
        code, err = _run(capsys, ["preprocess", mic, "-o", tmp_path, "--scale", "2", *extra])
        assert code == 1 and "is an input of this command" in err and err.count("\n") == 1
    assert mic.read_bytes() == before and not (tmp_path / "pupick_preprocess.json").exists()


@pytest.mark.parametrize("command", ["preprocess", "convert"])
def test_output_directory_under_a_file_is_one_line(capsys, tmp_path, labels, command):
    (tmp_path / "f").write_text("x")
    args = {"preprocess": ["preprocess", DEMO / "micrographs" / "061_10028.mrc", "-o", tmp_path / "f" / "sub"],
            "convert": ["convert", labels, "-o", tmp_path / "f" / "sub", "--to", "box", "--box-size", "80"]}[command]
    code, err = _run(capsys, args)
    assert code == 1 and err.count("\n") == 1 and "f is a file, not a directory" in err
