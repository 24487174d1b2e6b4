"""On-the-fly picking (a RELION Scheme, cryoSPARC Live or Scipion streaming rerun the pick job as micrographs
arrive): a rerun costs what is new, picks.csv grows by appending in input order, and a run killed at any moment
leaves complete files and a consistent next run. Real CLI runs on the bundled micrographs (the blob picker, fast)."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pandas as pd
import pytest

from pupick.core.outputs import PART_NAME
from pupick.core.picks_index import INDEX_NAME, decode

BIN = Path(sys.executable).parent
BLOB = ["--method", "blob", "--diameter-px", "56", "--device", "cpu"]

# Runs `pupick pick ARGV` in this process and reports, as JSON, every open/listing/stat of a path under OUTDIR
# (the audit hook sees open() and os.listdir/os.scandir; os.stat is wrapped) and whether torch was imported.
COUNTER = r"""
import json, os, sys
out = os.path.realpath(sys.argv[1])
argv = sys.argv[2:]
counts = {"open": 0, "list": 0, "stat": 0}
under = lambda p: isinstance(p, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(p)).startswith(out)
def hook(event, args):
    if event == "open" and args and under(args[0]):
        counts["open"] += 1
    elif event in ("os.listdir", "os.scandir") and args and under(args[0]):
        counts["list"] += 1
sys.addaudithook(hook)
real_stat = os.stat
def stat(path, *a, **kw):
    if under(path):
        counts["stat"] += 1
    return real_stat(path, *a, **kw)
os.stat = stat
from pupick.core.cli import main
try:
    main(["pick", *argv])
    code = 0
except SystemExit as e:
    code = e.code or 0
print(json.dumps({**counts, "code": code, "torch": "torch" in sys.modules}))
"""


def pick(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "pupick"), "pick", *args], capture_output=True, text=True, timeout=300, **kw)


def counted(out: Path, args: list[str]) -> dict:
    res = subprocess.run([sys.executable, "-c", COUNTER, str(out), *args], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def links(folder: Path, demo_micrographs: list[Path], names: list[str]) -> Path:
    """Micrographs under new names (hard links to the bundled ones, in turn)."""
    folder.mkdir(exist_ok=True)
    for n, name in enumerate(names):
        target = folder / f"{name}.mrc"
        if not target.exists():
            os.link(demo_micrographs[n % len(demo_micrographs)], target)
    return folder


def clone_finished(out: Path, mics: Path, source: str, names: list[str], demo_micrographs) -> None:
    """Grow a finished OUTDIR by N micrographs without picking them: the source's record and file under new names
    (what a long on-the-fly session leaves), then one run to take them into picks.csv."""
    records = out / ".pupick_records"
    rec = pd.read_csv(records / f"{source}.csv")
    coords = pd.read_csv(out / "coordinates" / f"{source}.csv")
    for name in names:
        path = str(mics / f"{name}.mrc")
        os.link(mics / f"{source}.mrc", path)
        rec.assign(micrograph=name, path=path).to_csv(records / f"{name}.csv", index=False, float_format="%.6g")
        (records / f"{name}.outputs").write_text(f"coordinates/{name}.csv\n")
        shutil.copy(out / "coordinates" / f"{source}.csv", out / "coordinates" / f"{name}.csv")
    del coords


def test_a_rerun_touches_no_file_of_finished_work_per_micrograph(tmp_path, demo_micrographs):
    """k = 2 new micrographs among N = 10 or 40 finished: the same count of open/list/stat calls under OUTDIR."""
    found = {}
    for n in (10, 40):
        mics = links(tmp_path / f"mics{n}", demo_micrographs, ["a000"])
        out = tmp_path / f"out{n}"
        assert pick([str(mics), "-o", str(out), *BLOB]).returncode == 0
        clone_finished(out, mics, "a000", [f"a{i:03d}" for i in range(1, n)], demo_micrographs)
        res = pick([str(mics), "-o", str(out), *BLOB])  # takes the clones into picks.csv (once, O(N))
        assert res.returncode == 0, res.stderr
        assert len(pd.read_csv(out / "picks.csv")["micrograph"].unique()) == n
        links(mics, demo_micrographs, ["z001", "z002"])
        found[n] = counted(out, [str(mics), "-o", str(out), *BLOB])
        assert found[n]["code"] == 0
        table = pd.read_csv(out / "picks.csv")
        assert table["micrograph"].unique().tolist() == [f"a{i:03d}" for i in range(n)] + ["z001", "z002"]
    assert found[10] == found[40], found
    assert found[10]["open"] < 40, found  # the new micrographs' files and a few of the directory's own


def test_nothing_new_reads_no_model_and_imports_no_torch(tmp_path, trained_model, demo_micrographs):
    out = tmp_path / "out"
    args = [*map(str, demo_micrographs[:2]), "--model", str(trained_model), "-o", str(out), "--device", "cpu",
            "--views", "1"]
    assert pick(args).returncode == 0
    before = (out / "picks.csv").read_bytes()
    again = counted(out, args)
    assert again["code"] == 0 and again["torch"] is False, again
    assert (out / "picks.csv").read_bytes() == before
    # a changed setting is still refused (the fast path compares the settings, not only the names)
    res = pick([*args, "--threshold", "2"])
    assert res.returncode == 1 and "threshold" in res.stderr


def test_picks_csv_grows_by_appending_in_input_order_and_matches_a_fresh_run(tmp_path, demo_micrographs):
    mics = links(tmp_path / "mics", demo_micrographs, ["m10", "m20"])
    out = tmp_path / "out"
    assert pick([str(mics), "-o", str(out), *BLOB]).returncode == 0
    first = (out / "picks.csv").read_bytes()
    links(mics, demo_micrographs, ["m10", "m20", "m30", "m40"])
    assert pick([str(mics), "-o", str(out), *BLOB]).returncode == 0
    grown = (out / "picks.csv").read_bytes()
    assert grown.startswith(first) and len(grown) > len(first)  # appended, not rewritten
    manifest = json.loads((out / "pupick_pick.json").read_text())
    index = (out / ".pupick_records" / INDEX_NAME).read_bytes()
    assert manifest["picks_csv"] == {"bytes": len(grown), "micrographs": 4, "index_bytes": len(index),
                                     "index_crc32": zlib.crc32(index)}
    _index_matches(out)
    # a torn tail (a run killed mid-append, on a file system that tore the write) is cut on the next run
    with open(out / "picks.csv", "ab") as fh:
        fh.write(b"m50,12.5,3")
    with open(out / ".pupick_records" / INDEX_NAME, "ab") as fh:
        fh.write(b"\x07\x00\x00")
    links(mics, demo_micrographs, ["m10", "m20", "m30", "m40", "m50"])
    assert pick([str(mics), "-o", str(out), *BLOB]).returncode == 0
    # a new name that sorts before finished ones: the file is rewritten, still in input order
    links(mics, demo_micrographs, ["m05"])
    assert pick([str(mics), "-o", str(out), *BLOB]).returncode == 0
    fresh = tmp_path / "fresh"
    assert pick([str(mics), "-o", str(fresh), *BLOB]).returncode == 0
    assert (out / "picks.csv").read_bytes() == (fresh / "picks.csv").read_bytes()
    assert (out / ".pupick_records" / INDEX_NAME).read_bytes() == (fresh / ".pupick_records" / INDEX_NAME).read_bytes()
    _index_matches(out)
    assert pd.read_csv(out / "picks.csv")["micrograph"].unique().tolist() == ["m05", "m10", "m20", "m30", "m40",
                                                                              "m50"]


def _index_matches(out: Path, whole: bool = True) -> None:
    """The view index's committed bytes (the manifest's length and CRC) describe picks.csv's committed bytes: each
    micrograph's byte range, row count, scores (as the text parses) and path; `whole`: and nothing lies beyond."""
    state = json.loads((out / "pupick_pick.json").read_text())["picks_csv"]
    data = (out / ".pupick_records" / INDEX_NAME).read_bytes()
    assert len(data) >= state["index_bytes"] and (len(data) == state["index_bytes"] or not whole)
    data = data[:state["index_bytes"]]
    assert zlib.crc32(data) == state["index_crc32"]
    index = decode(data)
    csv = (out / "picks.csv").read_bytes()[:state["bytes"]]
    at = csv.index(b"\n") + 1
    rows = 0
    for i, name in enumerate(index.names):
        part = csv[at:at + int(index.n_bytes[i])]
        table = pd.read_csv(io.BytesIO(part), header=None, names=["micrograph", "x", "y", "score", "path"],
                            dtype={"micrograph": str, "path": str}, keep_default_na=False)
        assert (table["micrograph"] == name).all() and len(table) == index.n_rows[i]
        assert table["path"].iloc[0] == index.paths[i]
        assert (table["score"].to_numpy(dtype="float32") == index.scores[rows:rows + len(table)]).all()
        at, rows = at + len(part), rows + len(table)
    assert at == len(csv) and rows == len(index.scores)


def test_kill_9_at_any_moment_leaves_complete_files_and_a_consistent_next_run(tmp_path, demo_micrographs):
    names = [f"k{i:02d}" for i in range(40)]  # enough work that kills land mid-run on a quiet machine too
    mics = links(tmp_path / "mics", demo_micrographs, names)
    fresh = tmp_path / "fresh"
    assert pick([str(mics), "-o", str(fresh), *BLOB]).returncode == 0
    out = tmp_path / "out"
    kills = 0
    for delay in (0.8, 1.0, 1.2, 1.4, 1.7, 2.0, 2.4):
        run = subprocess.Popen([str(BIN / "pupick"), "pick", str(mics), "-o", str(out), *BLOB],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
            kills += 1
        run.wait(timeout=60)
        if not (out / "picks.csv").exists():
            continue
        # every file is whole: the manifest parses, each csv parses to whole rows
        json.loads((out / "pupick_pick.json").read_text())
        table = pd.read_csv(out / "picks.csv")
        assert table["score"].notna().all() and list(table.columns) == ["micrograph", "x", "y", "score", "path"]
        for f in (out / "coordinates").glob("*.csv"):
            if PART_NAME.match(f.name):  # a temporary file the kill left (hidden; the next run removes it)
                continue
            assert pd.read_csv(f)["score"].notna().all()
        if "index_bytes" in json.loads((out / "pupick_pick.json").read_text()).get("picks_csv", {}):
            _index_matches(out, whole=False)  # what the manifest commits is whole; beyond it, a tail to cut
    assert kills >= 2
    res = pick([str(mics), "-o", str(out), *BLOB])
    assert res.returncode == 0, res.stderr
    assert (out / "picks.csv").read_bytes() == (fresh / "picks.csv").read_bytes()
    assert (out / ".pupick_records" / INDEX_NAME).read_bytes() == (fresh / ".pupick_records" / INDEX_NAME).read_bytes()
    _index_matches(out)
    assert not [p for p in out.rglob("*") if PART_NAME.match(p.name)]  # no temporary file outlives the next run
    again = pick([str(mics), "-o", str(out), *BLOB])
    assert "nothing new" in again.stdout
