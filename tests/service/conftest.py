"""A real `pupick serve` subprocess on a free loopback port, a data root with the bundled micrographs, a token."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from service_server import TOKEN, Server

from pupick.core.client import Client

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
