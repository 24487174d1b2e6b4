"""The one resumable-output helper: resume checks the outputs the user sees, settings, overwrite, the lock."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pupick.core.config import PickConfig
from pupick.core.errors import InputError
from pupick.core.outputs import OutputDir, PerMicrographFiles, pick_to_dir

BLOB = PickConfig.from_settings({"method": "blob", "diameter_px": 56, "max_picks": 30})


def _files(written: list[str]) -> PerMicrographFiles:
    def write(df: pd.DataFrame, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(target, index=False)
        written.append(target.name)

    return PerMicrographFiles(target=lambda item: Path("coordinates") / f"{item.micrograph}.csv", write=write)


def test_a_deleted_output_is_redone_on_resume(demo_micrographs, tmp_path):
    written: list[str] = []
    mics = demo_micrographs[:3]
    pick_to_dir(mics, None, BLOB, tmp_path, files=_files(written))
    assert len(written) == 3
    (tmp_path / "coordinates" / f"{mics[1].stem}.csv").unlink()  # the user (or a clean-up) removed one
    written.clear()
    run = pick_to_dir(mics, None, BLOB, tmp_path, files=_files(written))
    assert written == [f"{mics[1].stem}.csv"] and sorted(run.skipped) == sorted([mics[0].stem, mics[2].stem])
    assert len(pd.read_csv(tmp_path / "picks.csv")["micrograph"].unique()) == 3


def test_overwrite_removes_every_earlier_output(demo_micrographs, tmp_path):
    pick_to_dir(demo_micrographs[:3], None, BLOB, tmp_path, files=_files([]))
    with pytest.raises(InputError, match=r"2 other micrograph\(s\).*max_picks: 30 -> 10"):  # would mix settings
        pick_to_dir(demo_micrographs[:1], None, BLOB.replace(max_picks=10), tmp_path, files=_files([]), overwrite=True)
    assert len(list((tmp_path / "coordinates").iterdir())) == 3  # nothing removed
    pick_to_dir(demo_micrographs[:2], None, BLOB.replace(max_picks=10), tmp_path / "two", files=_files([]))
    pick_to_dir(demo_micrographs[:2], None, BLOB, tmp_path / "two", files=_files([]), overwrite=True)
    assert len(pd.read_csv(tmp_path / "two" / "picks.csv")) == 60  # every one redone with the new settings


def test_a_run_that_finished_nothing_does_not_lock_its_settings(demo_micrographs, tmp_path):
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"junk" * 100)
    out = tmp_path / "out"
    run = pick_to_dir([bad], None, BLOB, out)
    assert run.failures and run.run.n_done == 0
    run = pick_to_dir(demo_micrographs[:1], None, BLOB.replace(max_picks=5), out)  # other settings: fine
    assert run.run.n_done == 1
    with pytest.raises(InputError, match=r"max_picks: 5 -> 7"):
        pick_to_dir(demo_micrographs[:1], None, BLOB.replace(max_picks=7), out)


def test_failures_are_kept_in_the_manifest_until_they_succeed(demo_micrographs, tmp_path):
    import json

    bad = tmp_path / "in" / "bad.mrc"
    bad.parent.mkdir()
    bad.write_bytes(b"junk" * 100)
    pick_to_dir([bad, demo_micrographs[0]], None, BLOB, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "pupick_pick.json").read_text())
    assert list(manifest["failures"]) == ["bad"] and "bad.mrc" in manifest["failures"]["bad"]
    assert manifest["kind"] == "pick" and manifest["settings"]["pick"]["max_picks"] == 30


def test_a_second_run_into_the_same_directory_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"""
from pupick.core.outputs import OutputDir
import sys, time
with OutputDir({str(tmp_path)!r}, "pick", {{}}):
    print("locked", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"process {holder.pid}"):
            with OutputDir(tmp_path, "pick", {}):
                pass
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with its holder
        holder.wait()
    with OutputDir(tmp_path, "pick", {}):
        pass


@pytest.mark.parametrize("make", ["file", "unwritable"])
def test_an_unusable_output_directory_is_one_clear_error(tmp_path, make):
    if make == "file":
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "sub"
        message = "cannot create the output directory"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o500)
        message = "not writable"
    with pytest.raises(InputError, match=message):
        with OutputDir(target, "pick", {}):
            pass


def test_score_histogram_quantiles_are_the_exact_ones_to_the_bin():
    """ScoreHistogram.quantile (the streamed cryoSPARC summary's median and 5-95%) is within a bin of numpy's."""
    from pupick.core.outputs import ScoreHistogram

    rng = np.random.default_rng(7)
    scores = rng.normal(-1.0, 2.0, 20_000)
    hist = ScoreHistogram()
    for piece in np.array_split(scores, 37):
        hist.add(piece)
    for q in (0.05, 0.5, 0.95):
        assert abs(hist.quantile(q) - np.quantile(scores, q)) <= ScoreHistogram.STEP, q
    assert np.isnan(ScoreHistogram().quantile(0.5))
