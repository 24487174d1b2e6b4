"""The `pupick serve` subprocess the service tests talk to (real process, real HTTP on a free loopback port)."""
from __future__ import annotations

import os
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
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = state.parent / f"{state.name}.serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "Server":
        args = [sys.executable, "-m", "pupick.core.cli", "serve", "--port", str(self.port), "--state",
                str(self.state), "--data-root", str(self.data_root), "--device", "cpu", *self.extra]
        if self.token_file:
            args += ["--token-file", str(self.token_file)]
        if self.models:
            args += ["--models", str(self.models)]
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        probe = Client(self.url, retries=0, timeout=5)
        t0 = time.monotonic()
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
