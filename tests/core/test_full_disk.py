"""A full disk or a read-only place under `pupick pick -o DIR` and `pupick train -o FILE`: one line naming the path
and the reason, exit 1, finished files intact, and a rerun resumes once there is space again (real tmpfs and
read-only bind mounts: see tests/mounts.py)."""
from __future__ import annotations

import pandas as pd

from console_run import run_console
from mounts import fill, read_only, small_disk
from pupick.core.cli import main

BLOB = ["--method", "blob", "--diameter-px", "56", "--device", "cpu"]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pupick: error: ") and "Traceback" not in err, err
    return lines[0]


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".pupick.lock"}


def test_pick_on_a_full_disk_stops_with_one_line_and_resumes(demo_micrographs, tmp_path, capsys):
    mics = demo_micrographs[:3]
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "out"
        code, _, err = run_console(main, capsys, ["pick", mics[0], "-o", out, *BLOB])
        assert code == 0, err
        finished = _snapshot(out)
        for leave in (0, 3000):  # nothing left at all, or a little: the lock, the records, a coordinate file
            filler = fill(disk, leave=leave)
            code, _, err = run_console(main, capsys, ["pick", *mics, "-o", out, *BLOB])
            line = _one_error_line(err)
            assert code == 1 and str(out) in line and "no space left on device" in line, line
            assert {k: v for k, v in _snapshot(out).items() if k in finished} == finished  # intact
            assert not list(out.rglob(".*.part*"))
            filler.unlink()
        code, stdout, err = run_console(main, capsys, ["pick", *mics, "-o", out, *BLOB])  # space again: resumes
        assert code == 0, err
        assert "1 micrograph(s) already picked" in err
        assert set(pd.read_csv(out / "picks.csv")["micrograph"]) == {m.stem for m in mics}
        assert _snapshot(out)[next(iter(k for k in finished if k.parts[0] == "coordinates"))] == \
            finished[next(iter(k for k in finished if k.parts[0] == "coordinates"))]


def test_pick_into_a_read_only_directory_is_one_line(demo_micrographs, tmp_path, capsys):
    with read_only(tmp_path / "ro") as ro:
        for out in (ro, ro / "new"):  # the directory itself, or one to create there
            code, _, err = run_console(main, capsys, ["pick", demo_micrographs[0], "-o", out, *BLOB])
            line = _one_error_line(err)
            assert code == 1 and str(ro) in line and "read-only file system" in line, line


def test_train_on_a_full_disk_or_read_only_place_is_one_line_and_resumes(demo_micrographs, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    pd.read_csv(demo_micrographs[0].parents[1] / "particles.csv").to_csv(labels, index=False)
    args = [*demo_micrographs[:2], "--labels", labels, "--diameter-px", "56", "--arch", "conv31", "--units", "4",
            "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--tile-size", "64", "--test-split", "0",
            "--device", "cpu", "--quiet"]
    with small_disk(tmp_path / "disk", size="8m") as disk:  # the cache holds 1 MB per micrograph
        model = disk / "model.pt"
        for leave in (0, 1_500_000):  # full from the start, or full while writing the cache or the model
            filler = fill(disk, leave=leave)
            code, _, err = run_console(main, capsys, ["train", *args, "-o", model])
            line = _one_error_line(err)
            assert code == 1 and str(disk) in line and "no space left on device" in line, line
            assert not model.exists() and not list(disk.rglob(".*.part*"))
            filler.unlink()
        code, stdout, err = run_console(main, capsys, ["train", *args, "-o", model])
        assert code == 0, err
        assert model.exists() and "model ->" in stdout
    with read_only(tmp_path / "ro") as ro:
        code, _, err = run_console(main, capsys, ["train", *args, "-o", ro / "model.pt"])
        line = _one_error_line(err)
        assert code == 1 and str(ro) in line and "read-only file system" in line, line
