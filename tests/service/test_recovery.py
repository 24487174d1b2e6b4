"""Crash recovery: kill -9 the server in the middle of a 10-micrograph job, restart it on the same --state; the job
completes and its picks.csv equals an uninterrupted run's, row for row."""
from __future__ import annotations

import time

from service_server import Server

from pupick.core.config import PickConfig
from pupick.core.outputs import pick_to_dir


def test_kill_9_mid_job_then_restart(tmp_path, data_root, models_dir):
    mics = sorted((data_root / "mics").glob("*.mrc"))
    assert len(mics) == 10
    state = tmp_path / "state"
    first = Server(state, data_root, models=models_dir).start()
    try:
        client = first.client()
        job = client.submit_pick([str(data_root / "mics")], "demo", {"views": 2, "threshold": -4})
        t0 = time.monotonic()
        while True:
            status = client.job(job)
            if status["done"] >= 2 or time.monotonic() - t0 > 120:
                break
            time.sleep(0.02)
    finally:
        first.kill()
    assert 2 <= status["done"] < 10, status  # killed mid-job
    records = state / "jobs" / job / ".pupick_records"
    done_before = {p.stem for p in records.glob("*.csv")}
    assert 2 <= len(done_before) < 10

    second = Server(state, data_root, models=models_dir, port=first.port).start()
    try:
        client = second.client()
        final = client.wait(job, timeout=300)
        assert final["state"] == "done" and final["done"] == final["total"] == 10 and final["failures"] == []
        resumed = client.picks(job, "csv")
        assert '"event": "recovered"' in second.output()
        # the finished micrographs were not redone: their records are the very same files
        assert {p.stem for p in records.glob("*.csv")} >= done_before
    finally:
        second.stop()

    import torch

    torch.set_num_threads(2)
    reference = pick_to_dir(mics, models_dir / "demo.pt", PickConfig.from_settings({"views": 2, "threshold": -4, "device": "cpu"}),
                            tmp_path / "uninterrupted", progress=False)
    expected = reference.picks_path.read_text()
    assert resumed.splitlines() == expected.splitlines()
    assert resumed == expected
    assert len(expected.splitlines()) > 200
