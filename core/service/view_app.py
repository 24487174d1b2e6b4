"""The small loopback-only app behind `pupick view`: the pages' router, a per-session token and a Host check.

- It binds 127.0.0.1 only, on a free port chosen by the OS.
- Requests whose Host header is not a loopback name with this port are refused (421): a web page the user visits
  cannot reach it through DNS rebinding.
- Every api/ request needs the session's token as `Authorization: Bearer ...` (compared in constant time); a page
  on another origin cannot set that header without a CORS preflight, which this app never grants, so no CSRF.
- A state-changing request that carries a foreign Origin is refused too.
"""
from __future__ import annotations

import hmac
import secrets
import socket
from dataclasses import dataclass
from typing import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ..errors import one_line
from .view import ViewState, make_router

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class ViewServer:
    """A bound loopback socket and the app that will serve it."""

    app: FastAPI
    sock: socket.socket
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"


def _allowed_hosts(port: int) -> set[str]:
    return {f"{name}:{port}" for name in LOOPBACK_NAMES}


def make_app(state: ViewState, port: int, token: str) -> FastAPI:
    """The pages of one OUTDIR at /, with the Host check and the token on api/."""
    app = FastAPI(title="pupick view", docs_url=None, redoc_url=None, openapi_url=None)
    hosts = _allowed_hosts(port)
    origins = {f"http://{h}" for h in hosts}
    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def guard(request, call_next: Callable):
        host = request.headers.get("host", "")
        if host not in hosts:
            message = one_line(f"host {host!r} is not this loopback server; open the URL it printed")
            return JSONResponse({"error": message}, status_code=421)
        origin = request.headers.get("origin")
        if origin is not None and origin not in origins and request.method not in ("GET", "HEAD"):
            return JSONResponse({"error": "cross-origin requests are refused"}, status_code=403)
        if request.url.path.startswith("/api/"):
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse({"error": "missing or wrong token; open the URL that `pupick view` printed"},
                                    status_code=401)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; connect-src 'self'; "
                                    "frame-ancestors 'none'")
        return response

    app.include_router(make_router(state))
    return app


def bind(state: ViewState, port: int = 0) -> ViewServer:
    """Bind 127.0.0.1 (a free port when 0) and build the app; the socket already listens, so the URL works at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)
    return ViewServer(make_app(state, port, token), sock, port, token)


def serve(server: ViewServer) -> None:
    """Serve until interrupted (Ctrl-C)."""
    import uvicorn

    config = uvicorn.Config(server.app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[server.sock])
