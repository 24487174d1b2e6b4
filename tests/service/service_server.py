"""The `pupick serve` subprocess the service tests talk to (real process, real HTTP on a free loopback port)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pupick.core.client import Client, ServerError

TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `pupick serve` process; `url`, `client()`, `stop()`, `kill()` (SIGKILL), and its stderr log."""

    def __init__(self, state: Path, data_root: Path, *, token_file: Path | None = None, models: Path | None = None,
                 extra: list[str] | None = None, port: int | None = None) -> None:
        self.state, self.data_root, self.token_file, self.models = state, data_root, token_file, models
        self.extra = extra or []
        self.port = port  # None: `--port 0`, and the port the server announces once it has bound one
        self.scheme = "https" if "--ssl-certfile" in self.extra else "http"
        self.log_path = state.parent / f"{state.name}.serve.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has no port before start()")
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _announced_port(self, timeout: float) -> int:
        """The port from the server's first line (it says it once bound: no test guesses a free port)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.log.flush()
            said = self.log_path.read_bytes()[self._log_start:].decode(errors="replace")
            found = re.search(r"pupick serve: https?://[^ ]+:(\d+) ", said)
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"pupick serve exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise RuntimeError(f"pupick serve did not bind within {timeout} s:\n{self.output()}")

    def start(self, timeout: float = 90) -> "Server":
        args = [sys.executable, "-m", "pupick.core.cli", "serve", "--port", str(self.port or 0), "--state",
                str(self.state), "--data-root", str(self.data_root), "--device", "cpu", *self.extra]
        if self.token_file:
            args += ["--token-file", str(self.token_file)]
        if self.models:
            args += ["--models", str(self.models)]
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        self.log = open(self.log_path, "ab")
        self._log_start = self.log.tell()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        t0 = time.monotonic()
        if self.port is None:
            self.port = self._announced_port(timeout)
        probe = Client(self.url, retries=0, timeout=5)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pupick serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                probe.health()
                return self
            except ServerError:
                time.sleep(0.2)
        raise RuntimeError(f"pupick serve did not answer within {timeout} s:\n{self.output()}")

    def client(self, **kwargs) -> Client:
        token = TOKEN if self.token_file else None
        return Client(self.url, token, **kwargs)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")
