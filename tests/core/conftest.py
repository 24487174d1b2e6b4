"""Fixtures for the engine's tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny convolutions run fastest (and disturb the shared machine least) on one thread; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def many_mics(tmp_path_factory, demo_micrographs):
    """20 micrographs (links to the bundled five under new names) and one corrupt file among them."""
    import os

    from cluster_runs import N_COPIES

    folder = tmp_path_factory.mktemp("mics")
    for k in range(N_COPIES):
        for src in demo_micrographs:
            (folder / f"c{k}_{src.name}").symlink_to(src)
    bad = folder / "c9_corrupt.mrc"
    bad.write_bytes(b"MRC?" + os.urandom(3000))
    return folder, bad


@pytest.fixture(scope="session")
def serial_run(many_mics, trained_model, tmp_path_factory):
    """`pupick pick` of many_mics on this machine, serially: (OUTDIR, picks.csv as a table, seconds per micrograph)."""
    import re

    import pandas as pd

    from cluster_runs import N_COPIES, PICK_ARGS, pick

    folder, bad = many_mics
    out = tmp_path_factory.mktemp("serial") / "out"
    res = pick([str(folder), "--model", str(trained_model), "-o", str(out), *PICK_ARGS])
    assert res.returncode == 1, res.stderr  # the corrupt micrograph fails the run's exit status, not the others
    table = pd.read_csv(out / "picks.csv")
    assert table["micrograph"].nunique() == 5 * N_COPIES and len(table) > 100
    seconds = float(re.search(r"([0-9.]+) s per micrograph", res.stdout).group(1))
    return out, table, seconds
