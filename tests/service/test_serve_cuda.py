"""`pupick serve --device cuda`: a real server process picking on the GPU, with the CPU's AP; int8 refused (422).
Marked `cuda`: skipped without a CUDA device (CI included); bench/gpu_check.sh runs it on a GPU machine."""
from __future__ import annotations

import io

import pandas as pd
import pytest
from service_server import Server

from pupick.core.client import ServerError
from pupick.core.config import PickConfig
from pupick.core.evaluate import default_match_radius, evaluate
from pupick.core.outputs import pick_to_dir

pytestmark = pytest.mark.cuda


def test_serve_picks_on_cuda_with_the_cpu_ap(tmp_path, data_root, models_dir, demo_labels):
    mics = sorted((data_root / "mics").glob("[0-9]*.mrc"))
    srv = Server(tmp_path / "state", data_root, models=models_dir, extra=["--device", "cuda"]).start()
    try:
        client = srv.client()
        assert client.ready()["devices"] == ["cuda"]
        job = client.submit_pick([str(m) for m in mics], "demo", {"precision": "bf16"})
        final = client.wait(job, timeout=300)
        assert final["state"] == "done", final
        remote = pd.read_csv(io.StringIO(client.picks(job, "csv")))
        with pytest.raises(ServerError) as refused:
            client.submit_pick([str(mics[0])], "demo", {"precision": "int8"})
        assert refused.value.status == 422 and "int8 runs on CPU only" in str(refused.value)
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_path.read_text(errors="replace")
    local = pick_to_dir(mics, models_dir / "demo.pt", PickConfig.from_settings({"device": "cpu", "precision": "fp32"}),
                        tmp_path / "local")
    radius, names = default_match_radius(56), [m.stem for m in mics]
    gpu_ap = evaluate(remote, demo_labels, radius, micrographs=names).ap
    cpu_ap = evaluate(local.picks, demo_labels, radius, micrographs=names).ap
    assert len(remote) > 0 and abs(gpu_ap - cpu_ap) <= 0.005
