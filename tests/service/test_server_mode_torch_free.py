"""Paths that start without torch (nor Dask): `pupick pick/train --server`, a server-mode rerun with nothing new, and
`pupick view`. Each runs as its own process; the modules it imported are read back from it."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from view_helpers import pick_blob

# runs `pupick ARGS...` in a fresh interpreter, then prints the modules it loaded (as its last stdout line)
RUN = ("import json, sys\nfrom pupick.core.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
       "    print(json.dumps(sorted(sys.modules)))")
HEAVY = ("torch", "dask", "distributed")


def run_cli(*args) -> tuple[subprocess.CompletedProcess, set[str]]:
    done = subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, timeout=600)
    return done, set(json.loads(done.stdout.strip().splitlines()[-1]))


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY}


def test_server_mode_pick_its_rerun_and_train_load_no_torch(server, token_file, data_root, tmp_path):
    mics = sorted((data_root / "mics").glob("[0-9]*.mrc"))[:2]
    remote = ("--server", server.url, "--token-file", token_file)
    out = tmp_path / "picks"
    done, modules = run_cli("pick", *mics, "--model", "demo", "-o", out, "--views", "1", *remote)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len((out / "picks.csv").read_text().splitlines()) > 1
    assert "pupick.core.client" in modules and heavy(modules) == set()

    done, modules = run_cli("pick", *mics, "--model", "demo", "-o", out, "--views", "1", *remote)  # nothing new
    assert done.returncode == 0 and "2 micrograph(s) already picked" in done.stderr, done.stderr[-2000:]
    assert heavy(modules) == set()

    done, modules = run_cli("train", *mics, "--labels", data_root / "particles.csv", "-o", tmp_path / "m.pt",
                            "--diameter-px", "56", "--units", "8", "--epochs", "1", "--steps-per-epoch", "2", *remote)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "m.pt").stat().st_size > 1000 and heavy(modules) == set()


def test_view_starts_and_serves_without_torch(tmp_path):
    out = pick_blob(tmp_path / "picked")
    log = tmp_path / "importtime.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "pupick.core.cli", "view", str(out),
                                 "--no-browser"], stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:"), url
            base, token = url.split("/?")[0].rstrip("/"), url.split("token=", 1)[1]
            deadline = time.monotonic() + 60
            while True:
                try:
                    page = urllib.request.urlopen(base + "/", timeout=5).read()
                    break
                except OSError:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.1)
            req = urllib.request.Request(base + "/api/round/0/micrographs", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=60) as r:
                listed = json.loads(r.read())
        finally:
            proc.terminate()
            proc.wait(30)
            proc.stdout.close()
    assert page and listed
    imported = {line.rsplit("|", 1)[1].strip() for line in log.read_text().splitlines()
                if line.startswith("import time:")}
    assert "pupick.core.service.view_data" in imported and "fastapi" in imported  # the import list is real
    assert heavy(imported) == set()
