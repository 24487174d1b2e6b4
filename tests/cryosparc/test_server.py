"""`pupick_cryosparc pick --server` (offline) against a real `pupick serve`, and `--model general`."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cryosparc.dataset import Dataset
from cs_project import DEMO, DIAMETER_PX

from pupick.cryosparc.cli import cli, main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from service_server import TOKEN, Server, free_port  # noqa: E402  (the service tests' real-server helper)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cs_token") / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, cs_project, token_file):
    # the project links its micrographs to the bundled ones; the server resolves links, so both are data roots
    srv = Server(tmp_path_factory.mktemp("cs_serve") / "state", cs_project.root, token_file=token_file,
                 extra=["--data-root", str(DEMO)]).start()
    yield srv
    srv.stop()


def _pick(cs_project, out: Path, *extra: str) -> Dataset:
    result = CliRunner().invoke(cli, ["pick", "--exposures", str(cs_project.exposures_cs), "--project-dir",
                                      str(cs_project.root), "-o", str(out), "--device", "cpu", *extra],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return Dataset.load(out)


def _same_particles(a: Dataset, b: Dataset) -> None:
    assert len(a) == len(b) > 0
    for name in ("location/micrograph_uid", "location/center_x_frac", "location/center_y_frac",
                 "location/micrograph_shape", "pick_stats/power"):
        np.testing.assert_allclose(np.asarray(a[name], dtype=float), np.asarray(b[name], dtype=float), rtol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("model", ["trained", "general"])
def test_server_pick_gives_the_local_particles(tmp_path, cs_project, trained_model, server, token_file, model):
    args = (["--model", str(trained_model)] if model == "trained"
            else ["--model", "general", "--diameter-px", str(DIAMETER_PX)])  # issue 19: the shipped model
    local = _pick(cs_project, tmp_path / "local.cs", *args)
    remote = _pick(cs_project, tmp_path / "remote.cs", *args, "--server", server.url, "--token-file", str(token_file))
    _same_particles(local, remote)


@pytest.mark.parametrize("how, message", [
    ("down", "cannot reach the pupick server at http://127.0.0.1:{port} (connection refused)"),
    ("no token", "needs a token (401)"),
])
def test_client_failures_are_one_line(tmp_path, cs_project, trained_model, server, capsys, how, message):
    port = free_port()
    url = f"http://127.0.0.1:{port}" if how == "down" else server.url
    with pytest.raises(SystemExit) as exc:
        main(["pick", "--exposures", str(cs_project.exposures_cs), "--project-dir", str(cs_project.root),
              "--model", str(trained_model), "-o", str(tmp_path / "p.cs"), "--server", url])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith("pupick_cryosparc: error: ") and message.format(port=port) in err, err
    assert not (tmp_path / "p.cs").exists()


def test_general_model_needs_a_diameter(tmp_path, cs_project, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pick", "--exposures", str(cs_project.exposures_cs), "--project-dir", str(cs_project.root),
              "--model", "general", "-o", str(tmp_path / "p.cs")])
    err = capsys.readouterr().err
    assert exc.value.code in (1, 2) and err.count("\n") == 1 and "diameter" in err, err
