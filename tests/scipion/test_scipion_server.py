"""The Scipion pick protocol in server mode against a real `pupick serve`: Scipion's venv has no pupick at all."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from test_scipion_plugin import DEMO, RUN_TIMEOUT_S, SIDE, scipion_env, scipion_python  # noqa: F401 (fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from service_server import TOKEN, Server, free_port  # noqa: E402  (the service tests' real-server helper)


def test_scipion_pick_in_server_mode_matches_a_local_pick(scipion_python, tmp_path):  # noqa: F811
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    # Scipion links the imported micrographs; the server resolves links, so the demo folder is the data root
    server = Server(tmp_path / "state", DEMO, token_file=token).start()
    try:
        out = tmp_path / "out"
        out.mkdir()
        env = scipion_env(scipion_python, tmp_path, out)
        env.update({"PUPICK": "/nonexistent/bin/pupick", "PUPICK_SERVER_URL": server.url,
                    "PUPICK_SERVER_TOKEN": str(token), "PUPICK_DOWN_URL": f"http://127.0.0.1:{free_port()}"})
        proc = subprocess.run([str(scipion_python), "run_checks.py", "server_checks"], cwd=SIDE, env=env,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    finally:
        server.stop()
    output = proc.stdout + proc.stderr
    records = json.loads((out / "results.json").read_text())
    failed = [r for r in records if r["outcome"] != "ok"]
    assert not failed and len(records) == 3, "\n".join(f"{r['test']}: {r['detail']}" for r in failed) + output[-4000:]

    # the same picks as `pupick pick --model general --diameter` here (Scipion keeps whole pixels)
    local = tmp_path / "local"
    done = subprocess.run([str(Path(sys.executable).parent / "pupick"), "pick", str(DEMO / "micrographs"),
                           "--model", "general", "--diameter", "300", "--pixel-size", "5.36", "--device", "cpu",
                           "-o", str(local)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ref = pd.read_csv(local / "picks.csv")
    got = pd.read_csv(out / "picks_server.csv")
    ref_rows = sorted(zip(ref["micrograph"].astype(str), ref["x"].round().astype(int), ref["y"].round().astype(int)))
    assert sorted(zip(got["micrograph"].astype(str), got["x"], got["y"])) == ref_rows
