"""`pupick serve --cluster SPEC` hands picking to the cluster executor (core/cluster.py); the picks stay the same."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from service_server import Server

HAVE_CLUSTER = importlib.util.find_spec("pupick.core.cluster") is not None


@pytest.mark.skipif(HAVE_CLUSTER, reason="this installation has the cluster executor")
def test_cluster_needs_the_cluster_module(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pupick.core.cli", "serve", "--cluster", "local:1", "--state",
                           str(tmp_path / "s"), "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "cluster support" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not HAVE_CLUSTER, reason="the cluster executor (pupick.core.cluster) is not in this checkout")
def test_picks_through_a_local_dask_cluster(tmp_path, data_root, models_dir):
    from pupick.core.config import PickConfig
    from pupick.core.outputs import pick_to_dir

    mics = sorted((data_root / "mics").glob("[0-9]*.mrc"))[:2]
    srv = Server(tmp_path / "state", data_root, models=models_dir, extra=["--cluster", "local:1"]).start()
    try:
        client = srv.client()
        job = client.submit_pick([str(m) for m in mics], "demo", {"views": 1})
        assert client.wait(job, timeout=300)["state"] == "done"
        remote = client.picks(job, "csv")
    finally:
        srv.stop()
    local = pick_to_dir(mics, models_dir / "demo.pt", PickConfig.from_settings({"views": 1, "device": "cpu"}),
                        tmp_path / "local")
    assert remote == local.picks_path.read_text()
