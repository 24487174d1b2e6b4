"""A real `pupick serve` subprocess on a free loopback port, a data root with the bundled micrographs, a token."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, demo_micrographs) -> Path:
    """A data root: the five bundled micrographs and five renamed copies (10 micrographs), and the labels."""
    root = tmp_path_factory.mktemp("data_root")
    mics = root / "mics"
    mics.mkdir()
    for p in demo_micrographs:
        shutil.copy(p, mics / p.name)
        shutil.copy(p, mics / f"copy_{p.name}")
    shutil.copy(demo_micrographs[0].parents[1] / "particles.csv", root / "particles.csv")
    return root


@pytest.fixture(scope="session")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, trained_model) -> Path:
    """A --models directory holding the session's trained model as `demo.pt`."""
    d = tmp_path_factory.mktemp("models")
    shutil.copy(trained_model, d / "demo.pt")
    return d


@pytest.fixture(scope="session")
def server(tmp_path_factory, data_root, token_file, models_dir):
    """The shared server: token required, the data root, --models, and a small queue bound (8 micrographs)."""
    srv = Server(tmp_path_factory.mktemp("serve") / "state", data_root, token_file=token_file, models=models_dir,
                 extra=["--max-queue", "8"]).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server) -> Client:
    return server.client()
