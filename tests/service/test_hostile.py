"""Issue 26's hostile client, cases 1, 2, 3 and 5, against a real `pupick serve` subprocess: names that would become
paths outside --state, a model file that declares 2 GiB in 2 MB, FIFOs where files are read, a file swapped for a
symlink after submission, and queued jobs meeting a narrower --data-root after a restart."""
from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import threading
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pupick.core.errors import BadName
from pupick.core.names import check_micrograph_name

from model_bombs import write_inflating_model
from service_server import Server

BLOB = {"method": "blob", "diameter_px": 20}
TINY_QUERY = "method=blob&diameter_px=20"


def call(server, method: str, path: str, body: bytes | dict | None = None, timeout: float = 20):
    """(status, decoded JSON body) for one request, bytes sent as given."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        headers = {}
        if isinstance(body, dict):
            body, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data else None)
    finally:
        conn.close()


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def wait_job(server, job: str, timeout: float = 60) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        status, body = call(server, "GET", f"/v1/jobs/{job}")
        assert status == 200
        if body["state"] in ("done", "failed", "cancelled"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


def wait_idle(server, timeout: float = 90) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        jobs = call(server, "GET", "/v1/jobs?limit=100000")[1]["jobs"]
        if all(j["state"] in ("done", "failed", "cancelled") for j in jobs):
            return
        time.sleep(0.2)
    raise AssertionError("the queue did not drain")


# ---------------------------------------------------------------- the area: data root, outside, tmp, state
@pytest.fixture(scope="module")
def area(tmp_path_factory, demo_micrographs):
    base = tmp_path_factory.mktemp("hostile")
    root = base / "data"
    (root / "mics").mkdir(parents=True)
    for p in demo_micrographs:
        shutil.copy(p, root / "mics" / p.name)
        shutil.copy(p, root / "mics" / f"copy_{p.name}")
    (root / "tiny").mkdir()
    rng = np.random.default_rng(0)
    tiny = root / "tiny" / "t.mrc"
    mrcfile.write(tiny, rng.normal(size=(96, 96)).astype(np.float32))
    outside = base / "outside"
    outside.mkdir()
    for sub in ("tmp", "home"):
        (base / sub).mkdir()
    return SimpleNamespace(base=base, root=root, outside=outside, tiny=tiny, tiny_bytes=tiny.read_bytes(),
                           state=base / "state")


@pytest.fixture(scope="module")
def hostile(area):
    """One server for the module (no token: loopback), its temporary files and HOME inside the area."""
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "HOME")}
    os.environ.update(TMPDIR=str(area.base / "tmp"), HOME=str(area.base / "home"))
    try:
        srv = Server(area.state, area.root).start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield srv
    srv.stop()


def snapshot(area) -> dict:
    """Every file under the area but --state (size, mtime), and the entries of each directory above the area."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(area.base):
        if Path(dirpath) == area.base and "state" in dirnames:
            dirnames.remove("state")
        for f in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, f)
            if p == str(area.state) + ".serve.log":  # the server's stdout, which the test harness writes
                continue
            st_ = os.lstat(p)
            files[p] = (st_.st_size, st_.st_mtime_ns)
    above = {}
    for parent in area.base.parents:
        try:
            # only what a name could have made: NAME.csv, NAME.outputs and their temporary siblings
            above[str(parent)] = {e for e in os.listdir(parent) if e.endswith((".csv", ".outputs"))}
        except OSError:
            pass
    return {"files": files, "above": above}


# ---------------------------------------------------------------- case 1: names never become paths unchecked
HOSTILE_NAMES = ["../../../../../../OUTSIDE/labels", "/", "a/b", "..", ".", ".hidden", "a\\b", "a\x00b", "x" * 300,
                 "é" * 101, "a\nb", "\ud800", "a\u202eb", ""]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_names_are_refused_naming_the_field(hostile, area, name):
    status, body = call(hostile, "POST", "/v1/pick", {"micrographs": [{"path": "tiny/t.mrc", "micrograph": name}],
                                                      "settings": BLOB})
    assert 400 <= status < 500 and set(body) == {"error"}, body
    if name != "\ud800":  # a lone surrogate is no UTF-8: the JSON itself is refused (400)
        assert status == 422 and "micrographs" in body["error"], body
        query = urllib.parse.urlencode({"name": name}, safe="")
        status, body = call(hostile, "POST", f"/v1/pick/upload?{query}&{TINY_QUERY}", area.tiny_bytes)
        assert status == 422 and set(body) == {"error"}, body


def test_the_nul_upload_name_of_the_issue_is_a_4xx(hostile, area):
    status, body = call(hostile, "POST", f"/v1/pick/upload?name=a%00b&{TINY_QUERY}", area.tiny_bytes)
    assert status == 422 and "NUL" in body["error"]


def names():
    """Any text, and the shapes of trouble: separators, dots, control characters, long and multibyte names."""
    parts = st.sampled_from(["..", ".", "/", "\\", "\x00", "\n", "\x7f", "\u2028", "é", "a", "OUTSIDE", "labels",
                             "x" * 60, "😀"])
    return st.one_of(st.text(max_size=40), st.lists(parts, min_size=1, max_size=8).map("".join),
                     st.text(alphabet=st.characters(codec="utf-8"), min_size=190, max_size=210))


def test_every_file_the_service_writes_lies_under_state(hostile, area):
    """100 names (of the 200 Hypothesis may try) through /v1/pick and /v1/pick/upload, every job run; then nothing
    outside --state changed: the data root, the outside folder, TMPDIR, HOME, and the folders above them."""
    before = snapshot(area)
    known = {j["job"] for j in call(hostile, "GET", "/v1/jobs?limit=100000")[1]["jobs"]}

    @settings(max_examples=100, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(name=names(), upload=st.booleans())
    def one(name, upload):
        try:
            check_micrograph_name(name)
            valid = True
        except BadName:
            valid = False
        if upload:
            query = urllib.parse.urlencode({"name": name}, safe="")
            status, body = call(hostile, "POST", f"/v1/pick/upload?{query}&{TINY_QUERY}", area.tiny_bytes)
            assert status == (200 if valid else 422), (name, body)
        else:
            status, body = call(hostile, "POST", "/v1/pick", {"settings": BLOB, "micrographs": [
                {"path": "tiny/t.mrc", "micrograph": name}]})
            assert status == (202 if valid else 422), (name, body)

    one()
    wait_idle(hostile)
    after = snapshot(area)
    assert after["files"] == before["files"]
    assert after["above"] == before["above"]
    jobs = [j for j in call(hostile, "GET", "/v1/jobs?limit=100000")[1]["jobs"] if j["job"] not in known]
    assert jobs and all(j["state"] == "done" for j in jobs), [j for j in jobs if j["state"] != "done"][:3]


# ---------------------------------------------------------------- case 2: a model that declares 2 GiB in 2 MB
def test_a_model_declaring_2_gib_is_refused_before_allocation(hostile, tmp_path):
    bomb = tmp_path / "bomb.pt"
    write_inflating_model(bomb)
    assert bomb.stat().st_size < 4_000_000
    before = vm_rss_mb(hostile.proc.pid)
    status, body = call(hostile, "POST", "/v1/models?name=bomb", bomb.read_bytes(), timeout=60)
    assert status == 413, body
    assert "not a valid pupick model" in body["error"] and "compressed" in body["error"]
    assert vm_rss_mb(hostile.proc.pid) - before < 150  # it would be +2048 MB had torch.load inflated it
    assert "bomb" not in {m["name"] for m in call(hostile, "GET", "/v1/models")[1]["models"]}


def test_a_model_whose_tensors_do_not_fit_its_architecture_is_422(hostile, tmp_path):
    import torch

    from pupick.core.models import ModelConfig, build

    wide = build(ModelConfig(arch="conv31", units=8)).state_dict()
    path = tmp_path / "mismatch.pt"
    torch.save({"format": "pupick-model", "version": 1, "state_dict": wide,
                "config": ModelConfig(arch="conv31", units=4).to_dict()}, path)
    status, body = call(hostile, "POST", "/v1/models?name=mismatch", path.read_bytes())
    assert status == 422, body
    assert body["error"].startswith("not a valid pupick model: tensor ") and "needs float32" in body["error"]


# ---------------------------------------------------------------- case 3: FIFOs never hold a thread
def _never_opened(fifo: Path) -> bool:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as err:
        return err.errno == errno.ENXIO  # no reader: nobody opened it
    return False


def test_fifos_are_422_at_submission_and_the_server_keeps_answering(hostile, area):
    labels, mic = area.root / "fifo.csv", area.root / "mics" / "fifo.mrc"
    os.mkfifo(labels)
    os.mkfifo(mic)
    try:
        requests = [("/v1/train", {"micrographs": ["tiny/t.mrc"], "labels_path": "fifo.csv"}),
                    ("/v1/pick", {"micrographs": [{"path": "mics/fifo.mrc"}], "settings": BLOB}),
                    ("/v1/pick", {"micrographs": ["mics/fifo.mrc"], "settings": BLOB})]
        answers: list = []

        def send(path, body):
            answers.append(call(hostile, "POST", path, body, timeout=10))

        threads = [threading.Thread(target=send, args=requests[i % 3]) for i in range(45)]
        for t in threads:
            t.start()
        assert call(hostile, "GET", "/health", timeout=10) == (200, {"status": "ok"})
        for t in threads:
            t.join(15)
        assert len(answers) == 45
        for status, body in answers:
            assert status == 422 and "not a regular file" in body["error"], body
        assert _never_opened(labels) and _never_opened(mic)
    finally:
        labels.unlink()
        mic.unlink()


# ---------------------------------------------------------------- case 5: confinement when the file is opened
def test_a_file_swapped_for_a_symlink_after_submission_is_not_read(hostile, area):
    secret = area.outside / "secret.mrc"
    os.mkfifo(secret)  # were it opened for reading, the job would hang
    target = area.root / "mics" / "swapped.mrc"
    shutil.copy(area.root / "mics" / sorted(os.listdir(area.root / "mics"))[0], target)
    first = sorted(p for p in (area.root / "mics").glob("*.mrc") if p != target)[:8]
    try:
        status, body = call(hostile, "POST", "/v1/pick", {"micrographs": [str(p) for p in first] + [str(target)],
                                                          "settings": {**BLOB, "diameter_px": 60}})
        assert status == 202, body
        tmp = target.with_name(".swap")
        tmp.symlink_to(secret)
        os.replace(tmp, target)  # the job has started on the first micrographs; this one is read last
        job = wait_job(hostile, body["job"], timeout=120)
        assert job["done"] == len(first) + 1 and [f["micrograph"] for f in job["failures"]] == ["swapped"], job
        reason = job["failures"][0]["error"]
        assert "outside the server's data roots" in reason or "symbolic link" in reason, reason
        assert _never_opened(secret)
        # the job's pages read its micrographs the same way: one swapped now for a link to a readable MRC outside
        shown, readable = first[0], area.outside / "readable.mrc"
        saved = shown.read_bytes()
        readable.write_bytes(saved)
        tmp = shown.with_name(".swap")
        tmp.symlink_to(readable)
        os.replace(tmp, shown)
        status, body = call(hostile, "GET", f"/ui/jobs/{job['job']}/api/image/{shown.stem}?size=view", timeout=10)
        shown.unlink()
        shown.write_bytes(saved)
        readable.unlink()
        assert status == 403 and "outside the server's data roots" in body["error"], (status, body)
    finally:
        target.unlink(missing_ok=True)
        secret.unlink()


def test_queued_jobs_meet_the_current_data_root_after_a_restart(area, tmp_path):
    from pupick.core.service.jobs import JobStore

    state = tmp_path / "state"
    store = JobStore(state)  # what a server with the wider root had queued when it stopped
    wide = store.submit("pick", {"model": None, "settings": BLOB}, [("a", str(area.root / "mics" / "061_10028.mrc"))])
    narrow = store.submit("pick", {"model": None, "settings": BLOB}, [("t", str(area.tiny))])
    store.close()
    srv = Server(state, area.root / "tiny").start()
    try:
        failed = wait_job(srv, wide)
        assert failed["state"] == "failed" and "outside the server's data roots" in failed["error"]
        assert "--data-root" in failed["error"] and "\n" not in failed["error"]
        assert wait_job(srv, narrow)["state"] == "done"
    finally:
        srv.stop()
