"""Issue 26: no request holds the server. With 100 requests in flight whose bodies never finish (slowloris), and
every upload slot held, /health, /ready and the API still answer at once; more uploads get 429, not a hang."""
from __future__ import annotations

import json
import socket
import time

from service_server import TOKEN

from pupick.core.client import Client

SLOW = 100


def _stalled(port: int, path: str, declared: int, sent: bytes) -> socket.socket:
    """A connection that sends headers and the first bytes of a body, then nothing."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n").encode() + sent)
    return s


def test_health_and_ready_answer_under_100_stalled_requests(server):
    held = []
    try:
        for i in range(SLOW - 8):
            held.append(_stalled(server.port, "/v1/pick", 100_000, b'{"micrographs": ['))
        for i in range(8):  # every upload slot
            held.append(_stalled(server.port, f"/v1/pick/upload?name=slow{i}&method=blob&diameter_px=56",
                                 10_000_000, b"\0" * 4096))
        time.sleep(0.5)
        client = Client(server.url, TOKEN, retries=0, timeout=10)
        t0 = time.monotonic()
        assert client.health() == {"status": "ok"}
        assert client.ready()["ready"] is True
        assert isinstance(client.models(), list)
        assert time.monotonic() - t0 < 10
        one_more = _stalled(server.port, "/v1/pick/upload?name=late&method=blob&diameter_px=56", 10, b"")
        one_more.settimeout(10)
        answer = b""
        while b"uploads" not in answer and len(answer) < 4096:
            part = one_more.recv(4096)
            if not part:
                break
            answer += part
        answer = answer.decode()
        one_more.close()
        assert answer.startswith("HTTP/1.1 429") and "uploads are in flight" in answer
    finally:
        for s in held:
            s.close()
    t0 = time.monotonic()  # the slots come back once the stalled clients are gone
    while True:
        try:
            got = Client(server.url, TOKEN, retries=0).pick_upload(
                next(server.data_root.glob("mics/*.mrc")), settings={"method": "blob", "diameter_px": 56})
            break
        except Exception:
            assert time.monotonic() - t0 < 10
            time.sleep(0.2)
    assert json.dumps(got) and got["picks"]
