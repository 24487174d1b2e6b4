"""Issue 26, the client side: every way `--server` can be wrong is one line naming the problem, never a traceback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
from service_server import TOKEN

from pupick.core.client import Client, ServerError, read_token


@pytest.fixture
def garbage_server():
    """A local TCP server that answers anything with bytes that are no HTTP (as an SSH port would)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n\x00\x01\x02 not http at all\r\n\r\n")
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join(5)
    sock.close()


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_port_that_answers_no_http(garbage_server):
    with pytest.raises(ServerError) as err:
        Client(garbage_server, retries=0, timeout=5).health()
    assert "did not answer as an HTTP server" in _one_line(err)


@pytest.mark.parametrize("url", ["http://[::1", "http://host:99999", "http://host:port", "ftp://host"])
def test_urls_that_are_no_server_url(url):
    with pytest.raises(ServerError) as err:
        Client(url)
    assert "not a server URL" in _one_line(err) and url in str(err.value)


def test_a_missing_or_invalid_ca_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PUPICK_CA_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ServerError) as err:
        Client("https://127.0.0.1:1")
    assert "missing.pem" in _one_line(err) and "PUPICK_CA_FILE" in str(err.value)
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("PUPICK_CA_FILE", str(bad))
    with pytest.raises(ServerError) as err:
        Client("https://127.0.0.1:1")
    assert "bad.pem" in _one_line(err) and "no usable PEM certificate" in str(err.value)


def test_401_says_refused_only_when_a_token_was_sent(server):
    with pytest.raises(ServerError) as err:
        Client(server.url, retries=0).models()
    assert "needs a token (401)" in _one_line(err) and "refused" not in str(err.value)
    with pytest.raises(ServerError) as err:
        Client(server.url, "wrong-token-0123456789", retries=0).models()
    assert "refused the token (401)" in _one_line(err)


def test_a_token_file_others_can_read_is_refused(tmp_path, server, data_root):
    loose = tmp_path / "token"
    loose.write_text(TOKEN + "\n")
    loose.chmod(0o644)
    with pytest.raises(ServerError) as err:
        read_token(loose)
    assert "readable by other users" in _one_line(err)
    done = subprocess.run([sys.executable, "-m", "pupick.core.cli", "pick", str(data_root / "mics" / "061_10028.mrc"), "--model", "demo", "-o",
                           str(tmp_path / "out"), "--server", server.url, "--token-file", str(loose)],
                          capture_output=True, text=True, env={**os.environ})
    assert done.returncode != 0 and "readable by other users" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    loose.chmod(0o600)
    assert read_token(loose) == TOKEN
