"""What the cluster tests share: the pick arguments, the CLI call, and the comparison with a serial run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

BIN = Path(sys.executable).parent
N_COPIES = 4  # the 5 bundled micrographs under 4 names each: 20 micrographs, so a run lasts long enough to kill a worker
PICK_ARGS = ["--device", "cpu", "--threshold", "-3", "--views", "1"]  # one view: 4x less work, same code path


def pick(args: list[str], **kw) -> subprocess.CompletedProcess:
    """`pupick pick ARGS` in a subprocess."""
    return subprocess.run([str(BIN / "pupick"), "pick", *args], capture_output=True, text=True, timeout=300, **kw)


def check_same_as_serial(out: Path, res: subprocess.CompletedProcess, serial_table: pd.DataFrame, bad: Path) -> None:
    """Exit 1 for the one corrupt micrograph, reported once, and picks.csv equal to the serial run's, row for row."""
    assert res.returncode == 1, res.stdout + res.stderr
    failed = [line for line in res.stderr.splitlines() if "failed:" in line]
    assert len(failed) == 1 and bad.name in failed[0], res.stderr  # reported once
    assert "Traceback" not in res.stderr
    table = pd.read_csv(out / "picks.csv")
    pd.testing.assert_frame_equal(table, serial_table)  # row for row: nothing lost, nothing duplicated
