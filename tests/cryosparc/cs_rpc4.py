"""A cryoSPARC 4.x master as cryosparc-tools 4.7.1 sees it: JSON-RPC over HTTP on base_port+2/+3/+5, on loopback.

The client is the real 4.7.1 library (installed by `cs47_path` into its own directory, run in a subprocess): it
learns its methods from `system.describe`. This server answers only the methods that 4.7.1's own `job.py`,
`project.py` and `tools.py` call (read with `ast` at test time), and refuses a call whose positional count or
keyword names differ from every call those files make. The replies keep the state a 4.x instance would: job
documents, their inputs, outputs, events and statuses.
"""
from __future__ import annotations

import ast
import io
import json
import socket
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, unquote_plus, urlparse

from cryosparc.dataset import Dataset

SERVICES = {"cli": 2, "vis": 3, "rtp": 5}  # attribute on CryoSPARC -> base port offset


def library_calls(package: Path) -> dict[tuple[str, str], set[tuple[int, frozenset]]]:
    """(service, method) -> {(positional count, keyword names)} for every `....cli.NAME(...)`/`.vis.`/`.rtp.` call."""
    calls: dict[tuple[str, str], set] = defaultdict(set)
    for name in ("job.py", "project.py", "tools.py"):
        for node in ast.walk(ast.parse((package / name).read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and owner.attr in SERVICES:
                keywords = frozenset(k.arg for k in node.keywords if k.arg)
                calls[(owner.attr, node.func.attr)].add((len(node.args), keywords))
    return dict(calls)


class RpcRejected(Exception):
    """A call 4.7.1's own code never makes this way."""


class Rpc4Server:
    """One project on a 4.x master; `start()` binds the three services on loopback."""

    def __init__(self, package: Path, project_uid: str, project_dir: Path, sources: dict, output_fields: dict,
                 make_job_dirs: bool = False, version: str = "4.7.1"):
        self.calls_allowed = library_calls(package)
        self.version = version
        self.project_uid, self.project_dir = project_uid, Path(project_dir)
        self.sources = sources  # (job, output) -> (type, Dataset)
        self.output_fields = output_fields  # type -> [(field, dtype)...] the server's templates
        self.make_job_dirs = make_job_dirs
        self.jobs: dict[str, dict] = {}
        self.statuses: dict[str, list[str]] = {}
        self.events: dict[str, list[tuple[str, str]]] = {}
        self.saved: dict[tuple[str, str], Dataset] = {}
        self.uploaded: dict[str, bytes] = {}
        self.assets: list[tuple[str, str, str]] = []
        self.calls: list[tuple[str, str, object]] = []
        self.rejected: list[str] = []
        self.refuse: set[str] = set()
        self.hold_on: str | None = None  # a log text prefix: that request waits until `release` is set
        self.drop_on: str | None = None  # a method name: the connection is dropped instead of answered
        self.held, self.release = threading.Event(), threading.Event()
        self.lock = threading.RLock()
        self._next = 20
        for (job, output), (kind, _) in sources.items():
            self.jobs.setdefault(job, self._doc(job, "source"))
            self.jobs[job]["output_result_groups"].append({"name": output, "type": kind})
        self.servers: list[ThreadingHTTPServer] = []
        self.base_port = 0

    # ------------------------------------------------------------ network

    def start(self) -> "Rpc4Server":
        """Bind base+2, base+3, base+5 on 127.0.0.1 (a base whose three ports are all free), serve in threads."""
        for _ in range(100):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                base = probe.getsockname()[1] - 2
            servers = []
            try:
                for service, offset in SERVICES.items():
                    servers.append(self._http(service, base + offset))
            except OSError:
                for s in servers:
                    s.server_close()
                continue
            self.servers, self.base_port = servers, base
            for s in servers:
                threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            return self
        raise RuntimeError("no three free ports for the 4.x services")

    def stop(self) -> None:
        """Take the master off the network (connections are refused from now on)."""
        for s in self.servers:
            s.shutdown()
            s.server_close()
        self.servers = []
        self.release.set()

    def _http(self, service: str, port: int) -> ThreadingHTTPServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self._body()
                url = urlparse(self.path)
                if server.drop_on and url.path == "/api" and json.loads(body).get("method") == server.drop_on:
                    self.close_connection = True  # the network fails mid-request: no answer at all
                    return
                try:
                    status, ctype, reply = server.handle(service, url.path, parse_qs(url.query), body)
                except Exception as err:  # noqa: BLE001 - RpcRejected, or a call this server cannot answer
                    server.rejected.append(f"{type(err).__name__}: {err}")
                    status, ctype, reply = 500, "application/json", json.dumps({"error": str(err)}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:  # the client went away (a signal while this request was held)
                    pass

            do_GET = do_POST

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":  # a stream: urllib chunks it
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                    if size == 0:
                        return b"".join(chunks)

        return ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def handle(self, service: str, path: str, query: dict, body: bytes):
        if path == "/api":
            request = json.loads(body)
            method, params = request["method"], request["params"]
            if method == "system.describe":
                procs = sorted(m for (s, m) in self.calls_allowed if s == service)
                return 200, "application/json", json.dumps(
                    {"jsonrpc": "2.0", "result": {"procs": [{"name": m} for m in procs]}}).encode()
            self._check(service, method, params)
            self.calls.append((service, method, params))
            try:
                with self.lock:
                    result = getattr(self, f"{service}_{method}")(*params) if isinstance(params, list) else \
                        getattr(self, f"{service}_{method}")(**params)
            except Refused as err:
                error = {"code": err.code, "name": "Error", "message": str(err), "data": None}
                return 200, "application/json", json.dumps({"jsonrpc": "2.0", "error": error}).encode()
            message = params.get("message", "") if isinstance(params, dict) else ""
            if method == "job_send_streamlog" and self.hold_on and message.startswith(self.hold_on):
                self.held.set()  # this reply waits (outside the lock: other requests are answered meanwhile)
                self.release.wait(30)
            return 200, "application/json", json.dumps({"jsonrpc": "2.0", "result": result}).encode()
        if service != "vis":
            raise RpcRejected(f"{service} {path}: 4.7.1 sends no such request")
        parts = [unquote(p) for p in path.strip("/").split("/")]
        with self.lock:
            if path == "/load_job_input":
                return self.load_job_input(**json.loads(body))
            if len(parts) == 8 and parts[0] == "external" and parts[7] == "dataset":
                return self.save_output(parts[4], unquote_plus(parts[6]), body)
            if len(parts) == 5 and parts[0] == "projects" and parts[4] == "files":
                fmt = query.get("format", [""])[0]
                name = query.get("filename", [f"asset.{fmt}"])[0]
                self.assets.append((parts[3], name, fmt))
                asset = {"fileid": f"{len(self.assets):024x}", "filename": name, "filetype": fmt}
                return 200, "application/json", json.dumps(asset).encode()
            if len(parts) == 3 and parts[0] == "projects" and parts[2] == "files":
                self.uploaded[query["path"][0]] = body
                return 200, "text/plain", b"ok"
        raise RpcRejected(f"vis {path}: 4.7.1 sends no such request")

    def _check(self, service: str, method: str, params) -> None:
        shapes = self.calls_allowed.get((service, method))
        if shapes is None:
            raise RpcRejected(f"{service}.{method}: 4.7.1's job.py/project.py/tools.py never call it")
        shape = (0, frozenset(params)) if isinstance(params, dict) else (len(params), frozenset())
        if shape not in shapes:
            raise RpcRejected(f"{service}.{method}{params!r}: 4.7.1 calls it only as {sorted(map(str, shapes))}")

    # ------------------------------------------------------------ state

    def _doc(self, uid: str, title: str) -> dict:
        return {"uid": uid, "project_uid": self.project_uid, "job_type": "snowflake", "title": title,
                "status": "building", "input_slot_groups": [], "output_result_groups": [], "output_results": []}

    def _job(self, project_uid: str, job_uid: str) -> dict:
        if project_uid != self.project_uid or job_uid not in self.jobs:
            raise Refused(f"Job {project_uid}-{job_uid} not found", 404)
        return self.jobs[job_uid]

    def _status(self, job: dict, status: str) -> None:
        job["status"] = status
        self.statuses.setdefault(job["uid"], []).append(status)

    @staticmethod
    def _slot(spec, where: str) -> dict:
        """A 4.x SlotSpec: a slot name, or a Datafield {dtype, prefix[, required]}."""
        if isinstance(spec, str):
            return {"dtype": spec, "prefix": spec, "required": True}
        if not isinstance(spec, dict) or not {"dtype", "prefix"} <= set(spec) <= {"dtype", "prefix", "required"}:
            raise Refused(f"{where}: invalid slot {spec!r} (a 4.x slot is a name or {{dtype, prefix, required}})", 422)
        return {"required": True, **spec}

    # command_core (cli)
    def cli_get_id_by_email_password(self, email, password):
        return "0123456789abcdef01234567"

    def cli_get_running_version(self):
        return "v" + self.version

    def cli_get_project(self, project_uid):
        if project_uid != self.project_uid:
            raise Refused(f"Project {project_uid} not found", 404)
        return {"uid": project_uid, "project_dir": str(self.project_dir), "title": "test"}

    def cli_get_project_dir_abs(self, project_uid):
        return self.cli_get_project(project_uid)["project_dir"]

    def cli_get_job(self, project_uid, job_uid):
        return self._job(project_uid, job_uid)

    def cli_get_job_dir_abs(self, project_uid, job_uid):
        self._job(project_uid, job_uid)
        return str(self.project_dir / job_uid)

    def cli_run_external_job(self, project_uid, job_uid, status):
        job = self._job(project_uid, job_uid)
        if job["status"] != "building":
            raise Refused(f"Job {job_uid} is {job['status']}, not building", 422)
        self._status(job, status)

    def cli_set_job_status(self, project_uid, job_uid, status):
        self._status(self._job(project_uid, job_uid), status)

    def cli_job_send_streamlog(self, project_uid, job_uid, message, error=False, flags=None, imgfiles=None):
        self._job(project_uid, job_uid)
        kind = "image" if imgfiles else ("error" if error else "text")
        self.events.setdefault(job_uid, []).append((kind, message))
        return f"{len(self.events[job_uid]):024x}"

    # command_vis (vis)
    def vis_create_external_job(self, project_uid, workspace_uid, user, title, desc):
        self.cli_get_project(project_uid)
        if workspace_uid != "W1":
            raise Refused(f"Workspace {workspace_uid} not found", 404)
        uid = f"J{self._next}"
        self._next += 1
        self.jobs[uid] = self._doc(uid, title)
        self.statuses[uid] = ["building"]
        if self.make_job_dirs:
            (self.project_dir / uid).mkdir(exist_ok=True)
        return uid

    def vis_add_external_job_input(self, project_uid, job_uid, type, name, min, max, slots, title):
        job = self._job(project_uid, job_uid)
        if job["status"] != "building":
            raise Refused("inputs are added while building", 422)
        slots = [self._slot(s, f"input {name}") for s in slots]
        job["input_slot_groups"].append({"name": name, "type": type, "count_min": min, "count_max": max,
                                         "slots": slots, "title": title, "connections": []})

    def vis_connect_external_job(self, project_uid, source_job_uid, source_output, target_job_uid, target_input,
                                 slots, title, desc):
        job = self._job(project_uid, target_job_uid)
        group = next((g for g in job["input_slot_groups"] if g["name"] == target_input), None)
        if group is None:
            raise Refused(f"Job {target_job_uid} has no input {target_input}", 422)
        if (source_job_uid, source_output) not in self.sources:
            self._job(project_uid, source_job_uid)
            raise Refused(f"Job {source_job_uid} does not have output {source_output}", 422)
        kind = self.sources[(source_job_uid, source_output)][0]
        if kind != group["type"]:
            raise Refused(f"{source_job_uid}.{source_output} is {kind}; input {target_input} takes {group['type']}",
                          422)
        group["connections"].append({"job_uid": source_job_uid, "group_name": source_output})

    def vis_add_external_job_output(self, project_uid, job_uid, type, name, slots, passthrough, title):
        job = self._job(project_uid, job_uid)
        if job["status"] != "building":
            raise Refused("outputs are added while building", 422)
        slots = [self._slot(s, f"output {name}") for s in slots]
        job["output_result_groups"].append({"name": name, "type": type, "title": title, "slots": slots})
        for s in slots:
            fields = [[f[0].split("/", 1)[1], f[1] if len(f) == 2 else f"{f[2][0]}{f[1]}"]
                      for f in self.output_fields[type] if f[0].split("/")[0] == s["dtype"]]
            job["output_results"].append({"group_name": name, "name": s["prefix"], "passthrough": False,
                                          "min_fields": fields})
        if passthrough:
            group = next((g for g in job["input_slot_groups"] if g["name"] == passthrough), None)
            if group is None:
                raise Refused(f"passthrough input {passthrough} does not exist", 422)
            for s in group["slots"]:
                job["output_results"].append({"group_name": name, "name": s["prefix"], "passthrough": True,
                                              "min_fields": []})

    # command_vis HTTP endpoints
    def load_job_input(self, project_uid, job_uid, input_name, slots):
        job = self._job(project_uid, job_uid)
        group = next((g for g in job["input_slot_groups"] if g["name"] == input_name), None)
        if group is None or not group["connections"]:
            raise RpcRejected(f"load_job_input: input {input_name} is not connected")
        declared = {s["prefix"] for s in group["slots"]}
        if not set(slots) <= declared:
            raise RpcRejected(f"load_job_input: slots {sorted(set(slots) - declared)} are not declared")
        conn = group["connections"][0]
        dset = self.sources[(conn["job_uid"], conn["group_name"])][1]
        kept = dset.filter_prefixes(sorted(set(slots or declared) & set(dset.prefixes())))
        return 200, "application/x-cryosparc-dataset", b"".join(kept.stream())

    def save_output(self, job_uid: str, output_name: str, body: bytes):
        job = self._job(self.project_uid, job_uid)
        if "save_output" in self.refuse:
            return 422, "text/plain", b"save_output refused by the test server"
        if job["status"] != "running":
            return 422, "text/plain", f"Job {job_uid} is {job['status']}: outputs are saved while running".encode()
        group = next((g for g in job["output_result_groups"] if g["name"] == output_name), None)
        if group is None:
            return 422, "text/plain", f"no output {output_name}".encode()
        dset = Dataset.load(io.BytesIO(body))
        problem = check_output(dset, [s["prefix"] for s in group["slots"]], self.output_fields[group["type"]])
        if problem:
            return 422, "text/plain", problem.encode()
        self.saved[(job_uid, output_name)] = dset.filter_prefixes([s["prefix"] for s in group["slots"]])
        return 200, "text/plain", b"ok"


class Refused(Exception):
    """The server refuses the request (a JSON-RPC error with this code)."""

    def __init__(self, message: str, code: int = 500):
        super().__init__(message)
        self.code = code


def check_output(dset: Dataset, slots: list[str], template: list[tuple]) -> str | None:
    """Why cryoSPARC would refuse this output: a declared slot missing, or a field of another kind or shape than the
    server's (a float where it keeps unsigned integers, a scalar for a pair); float widths may differ."""
    import numpy as np

    missing = [s for s in slots if s not in dset.prefixes()]
    if missing:
        return f"output lacks slots {missing}"
    expected = {f[0]: np.dtype(Dataset.allocate(0, [f]).descr()[1][1:] if len(f) > 2 else f[1])
                for f in template if f[0].split("/")[0] in slots}
    for field in dset.descr()[1:]:
        got = np.dtype(tuple(field[1:]) if len(field) > 2 else field[1])
        want = expected.get(field[0])
        if want is not None and (got.base.kind, got.shape) != (want.base.kind, want.shape):
            return f"field {field[0]} is {got.str if not got.shape else got}, cryoSPARC keeps {want}"
    return None
