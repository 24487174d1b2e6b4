"""A stand-in for cryosparc-tools' HTTP client (`cryosparc.api.APIClient`) that checks every request.

Everything above the HTTP client is the real library: `CryoSPARC`, `ProjectController`, `ExternalJobController`,
`Dataset`. Each call the library makes on `cs.api` is bound against the library's own published signature for that
endpoint (cryosparc/api.pyi, generated from the server's OpenAPI schema), every argument is validated against its
annotation, and the reply is validated against the endpoint's return annotation. The replies come from a small
in-memory server that keeps the state a cryoSPARC instance would (jobs, their inputs, outputs, events, assets).
"""
from __future__ import annotations

import datetime
import importlib.machinery
import importlib.util
import inspect
import itertools
import threading
from functools import lru_cache
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydantic
from cryosparc.dataset import Dataset
from cryosparc.errors import APIError
from cryosparc.models.asset import GridFSAsset
from cryosparc.models.event import ImageEvent, TextEvent
from cryosparc.models.job import Job
from cryosparc.models.job_spec import InputSpec, OutputSpec
from cryosparc.models.project import Project
from cryosparc.models.user import User
from cryosparc.stream import Stream

import cryosparc


@lru_cache(maxsize=1)
def api_signatures():
    """cryosparc/api.pyi loaded as a module: the library's own signature of every API endpoint."""
    path = Path(cryosparc.__file__).with_name("api.pyi")
    loader = importlib.machinery.SourceFileLoader("cryosparc._api_signatures", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class RequestRejected(AssertionError):
    """A call the real server would never accept as sent: unknown endpoint, wrong arguments or types."""


_CONFIG = pydantic.ConfigDict(arbitrary_types_allowed=True)


def _check_value(annotation, value, where: str) -> None:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return
    try:
        adapter = pydantic.TypeAdapter(annotation, config=_CONFIG)
    except Exception:  # noqa: BLE001 - a type pydantic cannot describe: fall back to isinstance
        if isinstance(annotation, type) and not isinstance(value, annotation):
            raise RequestRejected(f"{where}: {value!r} is not a {annotation.__name__}") from None
        return
    try:
        adapter.validate_python(value)
    except pydantic.ValidationError as err:
        raise RequestRejected(f"{where}: {value!r} does not fit {annotation}: {err}") from None


def api_error(status: int, detail: str, method: str = "POST", url: str = "http://cryosparc.test/api") -> APIError:
    """What the real client raises for an error response."""
    res = httpx.Response(status, json={"detail": detail}, request=httpx.Request(method, url))
    return APIError("Received error response", res=res, data={"detail": detail})


class Endpoint:
    def __init__(self, client: "RecordingAPIClient", namespace: str, name: str, signature_fn):
        self.client, self.namespace, self.name, self.fn = client, namespace, name, signature_fn

    def __call__(self, *args, **kwargs):
        where = f"api.{self.namespace + '.' if self.namespace else ''}{self.name}"
        sig = inspect.signature(self.fn)
        try:
            bound = sig.bind(None, *args, **kwargs)
        except TypeError as err:
            raise RequestRejected(f"{where}{args!r}{kwargs!r}: {err}") from None
        bound.apply_defaults()
        arguments = dict(list(bound.arguments.items())[1:])  # without self
        for name, value in arguments.items():
            _check_value(sig.parameters[name].annotation, value, f"{where}({name}=...)")
        self.client.calls.append((where, arguments))
        handler = getattr(self.client.server, f"{self.namespace}_{self.name}".lstrip("_"), None)
        if handler is None:
            raise RequestRejected(f"{where}: called, but this test's server does not expect it")
        result = handler(**arguments)
        _check_value(sig.return_annotation, result, f"{where} reply")
        return result


class Namespace:
    def __init__(self, client: "RecordingAPIClient", name: str, signatures: type):
        self._client, self._name, self._signatures = client, name, signatures

    def __getattr__(self, name: str):
        fn = getattr(self._signatures, name, None)
        if name.startswith("_") or fn is None or not callable(fn):
            raise RequestRejected(f"api.{self._name}.{name}: no such endpoint in cryosparc-tools' API")
        return Endpoint(self._client, self._name, name, fn)


class RecordingAPIClient:
    """Replaces `cryosparc.api.APIClient` (monkeypatch `cryosparc.tools.APIClient`); set `server` first."""

    server: "FakeServer"

    def __init__(self, *args, **kwargs):
        stub = api_signatures().APIClient
        try:
            inspect.signature(stub.__init__).bind(None, *args, **kwargs)
        except TypeError as err:
            raise RequestRejected(f"APIClient{args!r}{kwargs!r}: {err}") from None
        self.calls: list[tuple[str, dict]] = []
        self.server.clients.append(self)
        for name, cls in stub.__annotations__.items():
            setattr(self, name, Namespace(self, name, cls))

    def __getattr__(self, name: str):
        fn = getattr(api_signatures().APIClient, name, None)
        if name.startswith("_") or fn is None:
            raise RequestRejected(f"api.{name}: no such endpoint in cryosparc-tools' API")
        return Endpoint(self, "", name, fn)


# ---------------------------------------------------------------- the server's side


def _now() -> datetime.datetime:
    return datetime.datetime(2025, 1, 1, 12, 0, 0)


class FakeServer:
    """The state of one cryoSPARC project as the endpoints pupick's flow uses see it."""

    def __init__(self, project_uid: str, project_dir: Path, source_outputs: dict[tuple[str, str], tuple[str, Dataset]],
                 output_fields: dict[str, list[tuple]], make_job_dirs: bool = False):
        self.make_job_dirs = make_job_dirs
        self.hold_on: str | None = None  # a log text prefix: that request waits until `release` is set
        self.drop_on: str | None = None  # an endpoint (jobs_add_external_input): it times out instead
        self.held, self.release = threading.Event(), threading.Event()
        self.project_uid, self.project_dir = project_uid, Path(project_dir)
        self.sources = source_outputs  # (job, output) -> (type, dataset)
        self.output_fields = output_fields  # output type -> the server's field template
        self.clients: list[RecordingAPIClient] = []
        self.jobs: dict[str, Job] = {}
        self.events: dict[str, list[tuple[str, str]]] = {}
        self.assets: list[tuple[str, str, str]] = []  # (job, filename, format)
        self.saved: dict[tuple[str, str], Dataset] = {}
        self.uploaded: dict[str, bytes] = {}
        self.statuses: dict[str, list[str]] = {}
        self.refuse: set[str] = set()  # endpoint names that answer with an error
        self._uids = itertools.count(20)
        for (job, output), (kind, _) in source_outputs.items():
            self.jobs.setdefault(job, self._job(job, "source"))
            self._update(job, lambda d: d["spec"]["outputs"].update({output: {"type": kind, "title": output}}))

    def _update(self, job_uid: str, change) -> Job:
        """Change a job's plain data and validate it again as the server's Job model."""
        data = self.jobs[job_uid].model_dump()
        change(data)
        self.jobs[job_uid] = Job.model_validate(data)
        return self.jobs[job_uid]

    @property
    def calls(self) -> list[tuple[str, dict]]:
        return [c for client in self.clients for c in client.calls]

    def _job(self, uid: str, title: str) -> Job:
        return Job.model_validate(dict(
            uid=uid, project_uid=self.project_uid, workspace_uids=["W1"], title=title,
            spec=dict(type="snowflake", ui_tile_width=1, ui_tile_height=1, resource_spec={}, inputs={}, outputs={},
                      params={}),
            job_dir=uid, job_dir_size_last_updated=_now(), uid_num=int(uid[1:]), project_uid_num=3, status_num=0,
            build_errors=[]))

    def _find(self, project_uid: str, job_uid: str) -> Job:
        if project_uid != self.project_uid or job_uid not in self.jobs:
            raise api_error(404, f"Job {project_uid}-{job_uid} not found", "GET")
        return self.jobs[job_uid]

    def _refused(self, name: str) -> None:
        if name in self.refuse:
            raise api_error(422, f"{name} refused by the test server")

    def _status(self, job: Job, status: str) -> Job:
        job.status = status
        self.statuses.setdefault(job.uid, []).append(status)
        return job

    # users, config, projects
    def users_me(self) -> User:
        return User.model_validate(dict(name="pupick", first_name="Pu", last_name="Pick", emails=[]))

    def config_get_version(self) -> str:
        return "v" + cryosparc.__version__

    def projects_find_one(self, project_uid: str) -> Project:
        if project_uid != self.project_uid:
            raise api_error(404, f"Project {project_uid} not found", "GET")
        return Project.model_validate(dict(uid=project_uid, project_dir=str(self.project_dir), owner_user_id="u1",
                                           title="test", size_last_updated=_now(), uid_num=3))

    def projects_get_directory(self, project_uid: str) -> str:
        self.projects_find_one(project_uid)
        return str(self.project_dir)

    def projects_upload_file(self, project_uid: str, stream: Stream, overwrite: bool, path: str) -> str:
        self.uploaded[path] = b"".join(stream.stream())
        return path

    # jobs
    def jobs_create(self, project_uid, workspace_uid, params, type, title, description, created_by_job_uid,
                    enable_bench) -> Job:
        self.projects_find_one(project_uid)
        assert type == "snowflake" and workspace_uid == "W1", (type, workspace_uid)
        uid = f"J{next(self._uids)}"
        self.jobs[uid] = self._job(uid, title)
        self.statuses[uid] = ["building"]
        if self.make_job_dirs:  # cryoSPARC makes the job directory when it creates the job
            (self.project_dir / uid).mkdir(exist_ok=True)
        return self.jobs[uid]

    def jobs_find_one(self, project_uid: str, job_uid: str) -> Job:
        return self._find(project_uid, job_uid)

    def jobs_get_directory(self, project_uid: str, job_uid: str) -> str:
        self._find(project_uid, job_uid)
        return str(self.project_dir / job_uid)

    def jobs_add_external_input(self, project_uid, job_uid, input_name, body: InputSpec) -> Job:
        job = self._find(project_uid, job_uid)
        assert job.status == "building", "inputs are added while building"
        return self._update(job_uid, lambda d: d["spec"]["inputs"].update(
            {input_name: {**body.model_dump(), "connections": []}}))

    def jobs_connect(self, project_uid, job_uid, input_name, source_output_name, source_job_uid) -> Job:
        job = self._find(project_uid, job_uid)
        if input_name not in job.spec.inputs.root:
            raise api_error(422, f"Job {job_uid} has no input {input_name}")
        if (source_job_uid, source_output_name) not in self.sources:
            raise api_error(422, f"Job {source_job_uid} has no output {source_output_name}")
        kind = self.sources[(source_job_uid, source_output_name)][0]
        if kind != job.spec.inputs.root[input_name].type:
            raise api_error(422, f"{source_job_uid}.{source_output_name} is {kind}, input {input_name} takes "
                                 f"{job.spec.inputs.root[input_name].type}")
        return self._update(job_uid, lambda d: d["spec"]["inputs"][input_name]["connections"].append(
            {"job_uid": source_job_uid, "output": source_output_name}))

    def jobs_add_external_output(self, project_uid, job_uid, output_name, body: OutputSpec) -> Job:
        job = self._find(project_uid, job_uid)
        assert job.status == "building", "outputs are added while building"
        if body.passthrough and body.passthrough not in job.spec.inputs.root:
            raise api_error(422, f"passthrough input {body.passthrough} does not exist")
        return self._update(job_uid, lambda d: d["spec"]["outputs"].update({output_name: body.model_dump()}))

    def jobs_mark_running(self, project_uid, job_uid, status) -> Job:
        return self._status(self._find(project_uid, job_uid), status)

    def jobs_mark_completed(self, project_uid, job_uid) -> Job:
        return self._status(self._find(project_uid, job_uid), "completed")

    def jobs_mark_failed(self, project_uid, job_uid, error) -> Job:
        self.events.setdefault(job_uid, []).append(("error", error or ""))
        return self._status(self._find(project_uid, job_uid), "failed")

    def jobs_load_input(self, project_uid, job_uid, input_name, force_join, slots) -> Dataset:
        job = self._find(project_uid, job_uid)
        spec = job.spec.inputs.root.get(input_name)
        if spec is None or not spec.connections:
            raise api_error(422, f"input {input_name} is not connected")
        declared = {s.name for s in spec.slots}
        wanted = declared if isinstance(slots, str) else set(slots)
        if not wanted <= declared:
            raise api_error(422, f"slots {sorted(wanted - declared)} are not slots of input {input_name}")
        conn = spec.connections[0]
        dset = self.sources[(conn.job_uid, conn.output)][1]
        return Dataset.from_iterator(dset.filter_prefixes(sorted(wanted & set(dset.prefixes()))).stream())

    def jobs_get_output_fields(self, project_uid, job_uid, output_name, dtype_params) -> list:
        job = self._find(project_uid, job_uid)
        out = job.spec.outputs.root.get(output_name)
        if out is None:
            raise api_error(422, f"no output {output_name}")
        slots = {s.name for s in out.slots}
        return [f for f in self.output_fields[out.type] if f[0].split("/")[0] in slots]

    def jobs_save_output(self, project_uid, job_uid, output_name, dataset: Dataset, filename, version) -> Job:
        self._refused("save_output")
        job = self._find(project_uid, job_uid)
        assert job.status == "running", "outputs are saved while running"
        out = job.spec.outputs.root.get(output_name)
        if out is None:
            raise api_error(422, f"no output {output_name}")
        from cs_rpc4 import check_output

        declared = [s.name for s in out.slots]
        problem = check_output(dataset, declared, self.output_fields.get(out.type, []))
        if problem:
            raise api_error(422, f"output {output_name}: {problem}")
        # through the wire format; cryoSPARC keeps the declared slots only
        self.saved[(job_uid, output_name)] = Dataset.from_iterator(dataset.stream()).filter_prefixes(declared)
        return job

    def jobs_add_event_log(self, project_uid, job_uid, text, type) -> TextEvent:
        self._find(project_uid, job_uid)
        self.events.setdefault(job_uid, []).append((type, text))
        if self.hold_on and text.startswith(self.hold_on):
            self.held.set()
            self.release.wait(30)
        return TextEvent(project_uid=project_uid, job_uid=job_uid, type=type, text=text)

    def jobs_update_event_log(self, project_uid, job_uid, event_id, text, type) -> TextEvent:
        return self.jobs_add_event_log(project_uid, job_uid, text, type or "text")

    def assets_upload(self, project_uid, job_uid, stream: Stream, filename, format) -> GridFSAsset:
        self._find(project_uid, job_uid)
        b"".join(stream.stream())
        self.assets.append((job_uid, filename, format))
        return GridFSAsset(fileid=f"{len(self.assets):024x}", filename=filename, filetype=format)

    def jobs_add_image_log(self, project_uid, job_uid, images, text, flags) -> ImageEvent:
        self.events.setdefault(job_uid, []).append(("image", text))
        return ImageEvent(project_uid=project_uid, job_uid=job_uid, type="image", text=text)

    def jobs_set_output_image(self, project_uid, job_uid, output_name, body) -> Job:
        return self._find(project_uid, job_uid)

    def jobs_create_external_result(self, project_uid, workspace_uid, body) -> Job:
        job = self.jobs_create(project_uid, workspace_uid, {}, "snowflake", body.spec.title, "", None, False)
        spec = body.spec.model_dump()
        spec["slots"] = [s if isinstance(s, dict) else {"name": s, "dtype": s} for s in spec["slots"]]
        return self._update(job.uid, lambda d: d["spec"]["outputs"].update({body.name: spec}))


def exposure_groups(dset: Dataset, groups) -> Dataset:
    """A copy of an exposures Dataset with the given mscope_params/exp_group_id per exposure."""
    out = dset.copy()
    out["mscope_params/exp_group_id"] = np.asarray(groups, dtype=np.uint32)
    return out


# ---------------------------------------------------------------- the job in another process


class _Bytes:
    """A Stream argument's bytes, sent to the test's process (what the HTTP body would carry)."""

    def __init__(self, data: bytes):
        self.data = data

    def stream(self):
        yield self.data


class ServerProxy:
    """In the job's process: the recorder's `server`, forwarding each validated call to the test's process."""

    def __init__(self, address: tuple[str, int], authkey: bytes):
        self.address, self.authkey, self.clients = address, authkey, []

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(**kwargs):
            kwargs = {k: _Bytes(b"".join(v.stream())) if isinstance(v, Stream) else v for k, v in kwargs.items()}
            try:
                conn = Client(self.address, authkey=self.authkey)
            except OSError as err:  # the server is gone: what httpx raises for a refused connection
                raise httpx.ConnectError(f"[Errno 111] Connection refused ({err.__class__.__name__})") from None
            with conn:
                conn.send((name, kwargs))
                kind, value = conn.recv()
            if kind == "ok":
                return value
            if kind == "api_error":
                raise api_error(*value)
            if kind == "timeout":  # what httpx raises when the server does not answer in time
                raise httpx.ReadTimeout("timed out")
            raise RequestRejected(value)

        return call


class ServerHost:
    """In the test's process: serves a FakeServer to ServerProxy clients on a loopback port the OS picks."""

    def __init__(self, server: FakeServer):
        import os

        self.server, self.authkey = server, os.urandom(16)
        self.listener = Listener(("127.0.0.1", 0), authkey=self.authkey)
        self.address = self.listener.address
        self.rejected: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except (OSError, EOFError):
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        with conn:
            try:
                name, kwargs = conn.recv()
            except (OSError, EOFError):
                return
            handler = getattr(self.server, name, None)
            if name == self.server.drop_on:
                conn.send(("timeout", None))
                return
            try:
                if handler is None:
                    raise RequestRejected(f"{name}: called, but this test's server does not expect it")
                reply = ("ok", handler(**kwargs))
            except APIError as err:
                reply = ("api_error", (err.code, (err.data or {}).get("detail", str(err))))
            except Exception as err:  # noqa: BLE001 - a rejected request: the job's process raises it
                self.rejected.append(f"{type(err).__name__}: {err}")
                reply = ("rejected", f"{type(err).__name__}: {err}")
            try:
                conn.send(reply)
            except OSError:  # the job's process went away (a signal while this request was held)
                pass

    def close(self) -> None:
        """Take the server off the network: from now on the job's requests are refused."""
        self.listener.close()
        self.server.release.set()
