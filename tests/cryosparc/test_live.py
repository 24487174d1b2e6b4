"""Live mode up to the network: job specs, connection arguments, dataset building and the per-exposure loop.

No cryoSPARC server can run here; everything below uses real cryosparc-tools objects (Dataset, the slot
converters and pydantic job-spec models, the CryoSPARC client up to its first HTTP request).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import re
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cryosparc.controllers import as_input_slot, as_output_slot
from cryosparc.controllers.job import GROUP_NAME_PATTERN
from cryosparc.dataset import Dataset
from cryosparc.models.job_spec import InputSpec, OutputSpec
from cryosparc.tools import CryoSPARC
from cryosparc.util import PurePosixPathProperty
from cs_project import DIAMETER_PX, NAMES

from pupick.adapters.cryosparc import PARTICLE_FIELDS, exposures_from_dataset, picks_from_dataset, write_particles
from pupick.core.config import PickConfig
from pupick.core.errors import InputError, PupickError
from pupick.cryosparc import live
from pupick.cryosparc.cli import cli, main
from pupick.cryosparc.picking import micrographs_passthrough, pick_exposures, score_figure
from pupick.cryosparc.training import training_inputs


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the job's shape


@pytest.mark.parametrize("spec", [live.EXPOSURE_INPUT, live.PARTICLE_INPUT])
def test_input_specs_are_what_cryosparc_tools_builds(spec):
    """add_input() turns these into an InputSpec exactly like this before its HTTP call."""
    assert re.fullmatch(GROUP_NAME_PATTERN, spec["name"])
    model = InputSpec(type=spec["type"], title=spec["title"], description="",
                      slots=[as_input_slot(s) for s in spec["slots"]], count_min=spec["min"], count_max=spec["max"])
    assert [slot.name for slot in model.slots if slot.required] == [spec["slots"][0]]  # the blob or the location
    assert model.count_min == 1 and model.count_max == 1


def test_slots_are_sent_in_the_installed_tools_syntax():
    """5.x here: a slot dict names its prefix `name`; 4.x gets `prefix` (driven for real in test_live_releases)."""
    from pupick.cryosparc import compat

    tools = compat.tools()
    assert (tools.version, tools.slot_key, tools.base_url, tools.stop_takes_reason) == ("5.0.3", "name", True, True)
    assert compat.port_spec(live.EXPOSURE_INPUT)["slots"] == [
        "micrograph_blob", {"name": "mscope_params", "dtype": "mscope_params", "required": False}]
    assert live.EXPOSURE_INPUT["slots"] == ["micrograph_blob", "?mscope_params"]  # pupick's own notation


def test_exposure_input_requires_micrograph_blob():
    assert live.EXPOSURE_INPUT["type"] == "exposure"
    slots = [as_input_slot(s) for s in live.EXPOSURE_INPUT["slots"]]
    assert [(s.dtype, s.required) for s in slots] == [("micrograph_blob", True), ("mscope_params", False)]
    assert live.EXPOSURE_SLOTS == [s.name for s in slots]  # what the job loads is what it declares


@pytest.mark.parametrize("spec", [live.PARTICLE_OUTPUT, live.MICROGRAPH_OUTPUT])
def test_output_specs_are_what_cryosparc_tools_builds(spec):
    assert re.fullmatch(GROUP_NAME_PATTERN, spec["name"])
    model = OutputSpec(type=spec["type"], title=spec["title"], slots=[as_output_slot(s) for s in spec["slots"]],
                       passthrough=spec.get("passthrough"))
    assert model.type == spec["type"]


def test_particle_output_slots_match_the_fields_we_write():
    slots = {as_output_slot(s).name for s in live.PARTICLE_OUTPUT["slots"]}
    assert slots == {"location", "pick_stats"} == {f[0].split("/")[0] for f in PARTICLE_FIELDS}
    # the micrographs output passes the exposure input through
    assert live.MICROGRAPH_OUTPUT["passthrough"] == live.EXPOSURE_INPUT["name"]


@pytest.mark.parametrize("ref,expected", [
    ("J12.exposures_accepted", ("J12", "exposures_accepted")),
    ("J3/particles", ("J3", "particles")),
    (" J7:micrographs ", ("J7", "micrographs")),
])
def test_parse_output_ref(ref, expected):
    assert live.parse_output_ref(ref) == expected


@pytest.mark.parametrize("ref", ["exposures.cs", "J12", "12.exposures", "J12.exposures accepted"])
def test_parse_output_ref_rejects(ref):
    with pytest.raises(InputError, match="expected a job output like J12.exposures_accepted"):
        live.parse_output_ref(ref)


def test_check_uids():
    live.check_uids("P3", "W12")
    with pytest.raises(InputError, match="project uid like P3"):
        live.check_uids("3", "W1")
    with pytest.raises(InputError, match="workspace uid like W1"):
        live.check_uids("P3", "J1")


# ---------------------------------------------------------------- connection


def test_connection_kwargs_5x_base_url():
    kw = live.connection_kwargs(live.Connection(url="csparc.example.org:39000", email="a@b.c", password="pw"))
    assert kw == {"base_url": "http://csparc.example.org:39000", "host": None, "base_port": None,
                  "email": "a@b.c", "password": "pw"}


def test_connection_kwargs_5x_tools_with_host_and_port():
    kw = live.connection_kwargs(live.Connection(host="csparc", base_port=39000, email="a@b.c"))
    assert kw == {"base_url": None, "host": "csparc", "base_port": 39000, "email": "a@b.c"}


def test_environment_of_the_other_style_does_not_leak(monkeypatch):
    """CryoSPARC() fills host/base_port from the environment by default; ours are explicit, so --url works."""
    monkeypatch.setenv("CRYOSPARC_MASTER_HOSTNAME", "oldhost")
    kw = live.connection_kwargs(live.Connection(url="http://new:39000", email="a@b.c", password="pw"))
    bound = inspect.signature(CryoSPARC.__init__).bind(None, **kw)
    assert bound.arguments["host"] is None and bound.arguments["base_url"] == "http://new:39000"


def test_command_line_url_beats_environment_host(monkeypatch, capsys):
    monkeypatch.setenv("CRYOSPARC_MASTER_HOSTNAME", "127.0.0.1")
    monkeypatch.setenv("CRYOSPARC_BASE_PORT", "1")
    port = closed_port()
    with pytest.raises(SystemExit):
        main(["pick", "--project", "P3", "--workspace", "W1", "--exposures", "J12.exposures_accepted",
              "--method", "blob", "--diameter-px", "56", "--url", f"http://127.0.0.1:{port}",
              "--email", "a@b.c", "--password", "pw"])
    assert f"cannot connect to cryoSPARC at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_connection_kwargs_4x_host_port_license():
    conn = live.Connection(host="csparc", base_port=61000, license="0f0f0f0f-1111-2222-3333-444444444444",
                           email="a@b.c", password="pw")
    assert live.connection_kwargs(conn, accepts_base_url=False) == {
        "host": "csparc", "base_port": 61000, "license": "0f0f0f0f-1111-2222-3333-444444444444",
        "email": "a@b.c", "password": "pw"}


def test_connection_kwargs_url_for_4x_tools_becomes_host_port():
    conn = live.Connection(url="https://csparc:39100", license="x")
    kw = live.connection_kwargs(conn, accepts_base_url=False)
    assert kw == {"host": "csparc", "base_port": 39100, "license": "x"}


@pytest.mark.parametrize("conn,accepts,message", [
    (live.Connection(url="http://a:1", host="b"), True, "either --url"),
    (live.Connection(), True, "no cryoSPARC instance given"),
    (live.Connection(host="a", base_port=39000), False, "needs the license id"),
])
def test_connection_kwargs_errors(conn, accepts, message):
    with pytest.raises(InputError, match=message):
        live.connection_kwargs(conn, accepts)


def test_installed_tools_signature_is_read():
    class Tools4:  # the 4.x constructor: no base_url
        def __init__(self, license=None, host=None, base_port=None, email=None, password=None, timeout=300):
            pass

    assert live.tools_accept_base_url(Tools4) is False
    assert live.tools_accept_base_url(CryoSPARC) is True  # cryosparc-tools 5.x installed here
    assert live.tools_accept_base_url() is True


def test_connect_to_unreachable_server_is_one_clear_error():
    """The real CryoSPARC client, up to its failing HTTP request."""
    port = closed_port()
    with pytest.raises(InputError, match=rf"cannot connect to cryoSPARC at http://127\.0\.0\.1:{port}: .*refused"):
        live.connect(live.Connection(url=f"http://127.0.0.1:{port}", email="a@b.c", password="pw"))


def test_connect_without_credentials_explains_login(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no saved cryosparc-tools session
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(InputError, match=r"authentication not provided.*python -m cryosparc\.tools login"):
        live.connect(live.Connection(url="http://127.0.0.1:1"))


def test_job_and_project_dirs_for_both_tools_versions():
    class Job5:  # 5.x: a property holding a PurePosixPathProperty
        dir = PurePosixPathProperty("/data/P3/J42")

    class Job4:  # 4.x: a method
        def dir(self):
            return "/data/P3/J42"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # calling the 5.x value would warn
        assert live.job_dir(Job5()) == Path("/data/P3/J42")
    assert live.job_dir(Job4()) == Path("/data/P3/J42")
    assert live.project_dir(Job4(), "/mnt/P3") == Path("/mnt/P3")
    assert live.project_dir(Job5()) == Path("/data/P3/J42")


# ---------------------------------------------------------------- what runs inside `with job.run()`


@pytest.fixture(scope="module")
def live_pick(cs_project):
    """The picking step as run_pick_job does it, on an exposure Dataset as load_input returns it (2 exposures)."""
    dset = Dataset.load(cs_project.exposures_cs).take([0, 3])
    wire = Dataset.from_iterator(dset.stream())  # the wire format load_input receives
    exposures = exposures_from_dataset(wire)
    # what alloc_output("particles", 0) returns: the server's fields for location + pick_stats
    template = Dataset.allocate(0, PARTICLE_FIELDS)
    logs, progress = [], []
    config = PickConfig.from_settings(dict(method="blob", diameter_px=DIAMETER_PX, threshold=-1e9))
    result = pick_exposures(exposures, cs_project.root, None, config, log=logs.append,
                            progress=lambda *a: progress.append(a), template=template, salt="P1/J9")
    return wire, exposures, result, logs, progress


def test_live_pick_builds_particles_for_save_output(live_pick, cs_project):
    wire, exposures, result, _, _ = live_pick
    particles = result.particles
    assert set(particles.fields()) == {"uid"} | {f[0] for f in PARTICLE_FIELDS}
    sent = Dataset.from_iterator(particles.stream())  # the bytes save_output sends
    assert len(sent) == len(result.picks) > 20
    assert set(np.asarray(sent["location/micrograph_uid"]).tolist()) == {int(u) for u in exposures["uid"]}
    assert set(sent["location/micrograph_path"]) == {cs_project.rel_paths[0], cs_project.rel_paths[3]}
    np.testing.assert_allclose(np.asarray(sent["location/center_x_frac"]) * 1024, result.picks["x"], atol=1e-3)


def test_live_pick_progress_and_passthrough(live_pick):
    wire, exposures, result, logs, progress = live_pick
    assert [p[:3] for p in progress] == [(1, 2, NAMES[0]), (2, 2, NAMES[3])]
    assert sum(p[3] for p in progress) == len(result.picks)
    assert result.failures == [] and not [m for m in logs if "skipped" in m]
    passthrough = micrographs_passthrough(wire, result.picked_uids)
    assert set(passthrough.prefixes()) == {"micrograph_blob"}
    assert np.asarray(passthrough["uid"]).tolist() == np.asarray(wire["uid"]).tolist()


def test_score_figure_uploads_as_png(live_pick, demo_labels):
    from pupick.core.evaluate import evaluate

    _, _, result, _, _ = live_pick
    evaluation = evaluate(result.picks, demo_labels, DIAMETER_PX / 2, micrographs=[NAMES[0], NAMES[3]])
    fig = score_figure(result.picks, -1.0, evaluation)
    assert len(fig.axes) == 2
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0)  # what log_plot/_upload_plot does
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_inputs_key_labels_by_exposure(cs_project, demo_labels, tmp_path):
    """run_train_job's inputs: particles (loaded by uid) become labels keyed by absolute micrograph paths."""
    exposures = exposures_from_dataset(Dataset.load(cs_project.exposures_cs))
    subset = demo_labels[demo_labels["micrograph"].isin([NAMES[1], NAMES[4]])]
    write_particles(subset, tmp_path / "p.cs", exposures)
    labels = picks_from_dataset(Dataset.load(tmp_path / "p.cs"), exposures)
    micrographs, keyed = training_inputs(exposures, labels, cs_project.root)
    assert micrographs == [cs_project.root / cs_project.rel_paths[1], cs_project.root / cs_project.rel_paths[4]]
    assert set(keyed["micrograph"]) == {str(m) for m in micrographs}
    np.testing.assert_allclose(keyed["x"], subset["x"], atol=1e-3)


# ---------------------------------------------------------------- live CLI, up to the connection


def test_live_cli_refuses_offline_options(cs_project, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pick", "--project", "P3", "--workspace", "W1", "--exposures", "J12.exposures", "--method", "blob",
              "--diameter-px", "56", "-o", "x.cs"])
    assert exc.value.code == 1 and "-o/--plot/--labels are for offline mode" in capsys.readouterr().err


def test_live_cli_needs_workspace(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--project", "P3", "--exposures", "J12.exposures", "--particles", "J13.particles"])
    assert "live mode needs --workspace" in capsys.readouterr().err


def test_live_cli_reaches_the_connection(capsys, monkeypatch):
    port = closed_port()
    monkeypatch.setenv("CRYOSPARC_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("CRYOSPARC_EMAIL", "a@b.c")
    monkeypatch.setenv("CRYOSPARC_PASSWORD", "pw")
    with pytest.raises(SystemExit) as exc:
        main(["pick", "--project", "P3", "--workspace", "W1", "--exposures", "J12.exposures_accepted",
              "--method", "blob", "--diameter-px", "56"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1
    assert f"pupick_cryosparc: error: cannot connect to cryoSPARC at http://127.0.0.1:{port}" in err


def test_live_cli_validates_uids_before_connecting():
    result = CliRunner().invoke(cli, ["pick", "--project", "project3", "--workspace", "W1", "--exposures", "J1.x",
                                      "--method", "blob", "--diameter-px", "56", "--url", "http://127.0.0.1:1"])
    assert isinstance(result.exception, InputError) and "project uid like P3" in str(result.exception)


def test_upload_checks_the_file_before_connecting(cs_project, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["upload", "--particles", str(cs_project.exposures_cs), "--project", "P3", "--workspace", "W1",
              "--url", f"http://127.0.0.1:{closed_port()}"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "not a pupick/cryoSPARC particles file: missing field(s) location/" in err


def test_upload_reaches_the_connection(cs_project, demo_labels, tmp_path, capsys):
    exposures = exposures_from_dataset(Dataset.load(cs_project.exposures_cs))
    write_particles(demo_labels, tmp_path / "p.cs", exposures)
    assert set(live.particles_for_upload(tmp_path / "p.cs").prefixes()) == {"location", "pick_stats"}
    port = closed_port()
    with pytest.raises(SystemExit) as exc:
        main(["upload", "--particles", str(tmp_path / "p.cs"), "--project", "P3", "--workspace", "W1",
              "--url", f"http://127.0.0.1:{port}", "--email", "a@b.c", "--password", "pw"])
    assert exc.value.code == 1 and f"cannot connect to cryoSPARC at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_progress_logger_uses_named_events_when_the_tools_have_them():
    from cryosparc.controllers.job import ExternalJobController

    assert "name" in inspect.signature(ExternalJobController.log).parameters  # tools 5.x
    lines = []

    def log5(text, *, level="text", name=None):
        lines.append((text, name))

    def log4(text, level="text"):
        lines.append((text, None))

    live.progress_logger(log5)(3, 10, "mic", 7)
    assert lines == [("[3/10] mic: 7 picks", "progress")]
    lines.clear()
    progress = live.progress_logger(log4, every=2)
    for done in range(1, 6):
        progress(done, 5, "m", 1)
    assert [t for t, _ in lines] == ["[1/5] m: 1 picks", "[2/5] m: 1 picks", "[4/5] m: 1 picks", "[5/5] m: 1 picks"]


def test_live_cli_checks_refs_and_model_before_connecting(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(SystemExit):
        main(["train", "--project", "P3", "--workspace", "W1", "--exposures", "J12.exposures_accepted",
              "--particles", "particles.cs", "--url", url])
    err = capsys.readouterr().err
    assert "--particles: expected a job output like J12.exposures_accepted, got 'particles.cs'" in err
    (tmp_path / "model.pt").write_bytes(b"not a model")
    with pytest.raises(SystemExit):
        main(["pick", "--project", "P3", "--workspace", "W1", "--exposures", "J12.exposures_accepted",
              "--model", str(tmp_path / "model.pt"), "--url", url])
    err = capsys.readouterr().err
    assert "model.pt" in err and "cannot connect" not in err and err.count("\n") == 1


class NetworklessJob:
    """An External job's lifecycle calls (start/stop/log) recorded; the 5.x signature of stop (a reason string)."""

    project_uid, uid = "P3", "J42"

    def __init__(self):
        self.calls = []

    def start(self, status="waiting"):
        self.calls.append(("start", status))

    def stop(self, error=""):
        self.calls.append(("stop", "failed" if error else "completed", error))

    def log(self, text, *, level="text", name=None):
        self.calls.append(("log", level, text))


@pytest.mark.parametrize("raised,status,reason", [
    (None, "completed", ""),
    (InputError("mic.mrc: no such file"), "failed", "pupick: mic.mrc: no such file"),
    (KeyboardInterrupt(), "failed", "pupick: interrupted (Ctrl-C)"),
    (live.Terminated("terminated by SIGTERM"), "failed", "pupick: terminated by SIGTERM"),
])
def test_lifecycle_always_leaves_success_or_failure(raised, status, reason):
    job = NetworklessJob()
    with pytest.raises(PupickError) if raised is not None else contextlib.nullcontext():
        with live.lifecycle(job):
            if raised is not None:
                raise raised
    assert job.calls == [("start", "running"), ("stop", status, reason)]  # the one line, not a traceback
