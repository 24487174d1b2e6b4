"""Security against a real server: tokens, data-root confinement (the refused file is never opened), uploads that
carry a pickle payload, the start-up checks, local docs assets and TLS."""
from __future__ import annotations

import http.client
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pupick.core.client import Client, ServerError

from service_server import TOKEN, Server


def raw(server, method: str, path: str, headers: dict | None = None, body: bytes | None = None, timeout=20):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/v1/models", "/v1/jobs", "/metrics", "/ready", "/docs", "/openapi.json",
                                  "/v1/jobs/abc/picks"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", "Bearer "])
def test_token_required(server, path, auth):
    status, body = raw(server, "GET", path, {"Authorization": auth} if auth else {})
    assert status == 401
    assert json.loads(body) == {"error": "missing or wrong token: send 'Authorization: Bearer <token>'"}


def test_health_needs_no_token_and_the_right_token_works(server):
    assert raw(server, "GET", "/health")[0] == 200
    assert raw(server, "GET", "/v1/models", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    with pytest.raises(ServerError, match="refused the token"):
        Client(server.url, "nope-nope-nope-nope").models()


@pytest.fixture(scope="module")
def outside(tmp_path_factory, data_root):
    """Files outside the data root: a FIFO (opening it for reading would block the server) and symlinks to it."""
    out = tmp_path_factory.mktemp("outside")
    fifo = out / "secret.mrc"
    os.mkfifo(fifo)
    (data_root / "escape.mrc").symlink_to(fifo)
    (data_root / "escape_dir").symlink_to(out, target_is_directory=True)
    yield out
    (data_root / "escape.mrc").unlink()
    (data_root / "escape_dir").unlink()


def test_a_path_with_a_nul_is_a_bad_request_that_says_so(server, data_root):
    with pytest.raises(ServerError) as err:
        server.client(retries=0, timeout=10).submit_pick([f"{data_root}/mics/061_10028.mrc\x00.txt"], "demo")
    assert err.value.status == 400 and "NUL character" in str(err.value), str(err.value)


def test_paths_outside_the_roots_are_refused_unopened(server, client, outside, data_root):
    fifo = outside / "secret.mrc"
    names = [str(fifo), f"{data_root}/../{outside.name}/secret.mrc", str(data_root / "escape.mrc"),
             str(data_root / "escape_dir"), str(data_root / "escape_dir" / "secret.mrc"), f"{outside}/*.mrc",
             "../" + outside.name + "/secret.mrc", str(data_root / "escape_dir" / "*.mrc")]
    quick = server.client(retries=0, timeout=10)  # a server that opened the FIFO would hang: the request times out
    for name in names:
        with pytest.raises(ServerError) as err:
            quick.submit_pick([name], "demo")
        assert err.value.status == 403, (name, str(err.value))
        assert "outside the server's data roots" in str(err.value)
    with pytest.raises(ServerError) as err:
        quick.submit_train([str(data_root / "mics" / "061_10028.mrc")], labels_path=str(fifo))
    assert err.value.status == 403
    assert client.health() == {"status": "ok"}
    # the FIFO was never opened: a non-blocking writer finds no reader on it
    with pytest.raises(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_bomb_uploads_are_refused_and_never_run(client, tmp_path):
    marker = tmp_path / "PWNED"
    import torch

    as_torch = tmp_path / "bomb.pt"  # a real torch.save zip whose data.pkl reduces to os.system
    torch.save({"format": "pupick-model", "version": 1, "config": {"arch": "resnet8"}, "state_dict": Payload(marker)},
               as_torch)
    plain = pickle.dumps(Payload(marker))  # a bare pickle, as torch's legacy format would carry it
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("bomb/data.pkl", plain)
    before = {m["name"] for m in client.models()}
    for name, data in [("bomb-torch", as_torch.read_bytes()), ("bomb-pickle", plain), ("bomb-zip", zipped.getvalue())]:
        with pytest.raises(ServerError) as err:
            client.request("POST", "/v1/models", params={"name": name}, body=data)
        assert err.value.status == 400 and "not a pupick model file" in str(err.value)
    assert not marker.exists()
    assert {m["name"] for m in client.models()} == before


def test_docs_page_loads_nothing_from_outside(server):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, page = raw(server, "GET", f"/docs?token={TOKEN}")
    assert status == 200 and b"swagger-ui" in page
    assert b"http://" not in page and b"https://" not in page and b"//cdn" not in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        assert raw(server, "GET", f"/docs/assets/{asset}", auth)[0] == 200
    status, schema = raw(server, "GET", "/openapi.json", auth)
    assert status == 200 and "/v1/pick" in json.loads(schema)["paths"]


def serve(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pupick.core.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_startup_refusals(tmp_path):
    loose = tmp_path / "token"
    loose.write_text(TOKEN + "\n")
    loose.chmod(0o644)
    done = serve("--token-file", str(loose), "--state", str(tmp_path / "s"))
    assert done.returncode == 2 and "readable by other users" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = serve("--host", "0.0.0.0", "--state", str(tmp_path / "s"))
    assert done.returncode == 2 and "needs a token" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed (needed to make a test cert)")
def test_tls(tmp_path, data_root):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    srv = Server(tmp_path / "state", data_root, extra=["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)])
    os.environ["PUPICK_CA_FILE"] = str(cert)
    try:
        srv.start()
        assert Client(srv.url).health() == {"status": "ok"}
        del os.environ["PUPICK_CA_FILE"]
        with pytest.raises(ServerError, match="TLS"):
            Client(srv.url, retries=0).health()
    finally:
        os.environ.pop("PUPICK_CA_FILE", None)
        srv.stop()
