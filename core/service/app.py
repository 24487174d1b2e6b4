"""The FastAPI app of `pupick serve`: HTTP in, engine jobs out. Thin: check, queue, report.

Every error a client can cause is a 4xx with `{"error": "<one sentence>"}`; nothing returns a traceback.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..allocator import release_free_memory
from ..errors import (InputError, InvalidModel, MissingSetting, ModelFileError, ModelTooLarge, NotRegularFile,
                      PupickError, one_line)
from ..confine import open_confined, read_roots, set_read_roots
from ..modelmeta import read_config
from ..names import check_micrograph_name
from ..picking import pick
from ..pipeline import check_model_settings
from ..tables import duplicate_stems, stem
from . import settings as settings_map
from .downloads import json_body, open_star_body
from .jobs import FINISHED, MAX_JOB_MICROGRAPHS, MAX_QUEUE, JobStore, KeyReused, QueueFull, TooLarge
from .metrics import Metrics
from .models import ModelConflict, ModelRegistry, UnknownModel, check_name
from .security import DataRoots, Forbidden, bearer_ok, check_bind
from .statelock import StateLock
from .view import ViewState, make_router
from .worker import TRIM_AFTER, Workers, disk_full

log = logging.getLogger("pupick.serve")
MB = 1 << 20
DISK_RETRY_S = 10.0
MAX_UPLOADS = 8  # POST /v1/pick/upload bodies received at once (each may spool up to --max-upload-mb to --state)
BODY_IDLE_S = 30.0  # a request body that sends nothing for this long gets 408 (slow-body clients hold nothing)
PUBLIC_PATHS = ("/health",)


@dataclass
class ServeConfig:
    """Everything `pupick serve` is started with; checked once here."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8765
    data_roots: tuple[str, ...] = ()
    models_dir: Optional[Path] = None
    token: Optional[str] = None
    devices: tuple[str, ...] = ("cpu",)
    max_queue: int = MAX_QUEUE  # micrographs waiting across jobs (429 past it)
    max_job_micrographs: int = MAX_JOB_MICROGRAPHS  # micrographs in one job (413 past it)
    retention_hours: float = 168.0
    model_cache: int = 4
    max_upload_mb: float = 1024.0  # one micrograph through /v1/pick/upload
    max_model_mb: float = 256.0
    max_json_mb: float = 16.0
    executor: Any = None  # an engine executor (e.g. the cluster's); None: local
    start_workers: bool = True
    disk_retry_s: float = DISK_RETRY_S  # while --state is full, how often the paused workers look again
    lock: Any = None  # the StateLock the front end took (None: create_app takes it)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_bind(self.host, self.token)
        for option, value in (("--max-queue", self.max_queue), ("--max-job-micrographs", self.max_job_micrographs),
                              ("--model-cache", self.model_cache)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{option} must be a whole number >= 1 (got {value})")
        for option, value in (("--retention", self.retention_hours), ("--max-upload-mb", self.max_upload_mb),
                              ("--max-model-mb", self.max_model_mb), ("--max-json-mb", self.max_json_mb),
                              ("--disk-retry", self.disk_retry_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                     and value > 0):
                raise InputError(f"{option} must be a finite number > 0 (got {value})")
        for root in self.data_roots:
            if not Path(root).is_dir():
                raise InputError(f"{root}: --data-root is not a directory")
        if self.models_dir is not None and not Path(self.models_dir).is_dir():
            raise InputError(f"{self.models_dir}: --models is not a directory")
        self.state_dir = Path(self.state_dir)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"{self.state_dir}: cannot create the --state directory ({err.strerror})") from None


# ---------------------------------------------------------------- request bodies
class MicrographRef(BaseModel):
    """One micrograph with what the suite's table knows: its name and pixel size (Å/px; else the file header)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    micrograph: Optional[str] = Field(None, min_length=1, max_length=500)
    pixel_size: Optional[float] = Field(None, gt=0, allow_inf_nan=False)


class PickRequest(BaseModel):
    """POST /v1/pick: micrographs (paths, directories or globs under a data root, or {path, micrograph, pixel_size}
    objects), a model name, settings."""

    model_config = ConfigDict(extra="forbid")
    micrographs: list[Union[str, MicrographRef]] = Field(min_length=1)
    model: Optional[str] = None
    settings: Optional[dict[str, Any]] = None


class TrainRequest(BaseModel):
    """POST /v1/train: micrographs, labels (CSV text or a path under a data root), train settings, a model name."""

    model_config = ConfigDict(extra="forbid")
    micrographs: list[str] = Field(min_length=1)
    labels_csv: Optional[str] = None
    labels_path: Optional[str] = None
    settings: Optional[dict[str, Any]] = None
    name: Optional[str] = None


class HealthBody(BaseModel):
    """GET /health: ok or failing, nothing more (it needs no token)."""

    status: str


class ErrorBody(BaseModel):
    """Every error: one sentence."""

    model_config = ConfigDict(extra="forbid")
    error: str


ERROR_RESPONSES: dict = {code: {"model": ErrorBody, "description": why} for code, why in (
    (400, "bad input (a file that cannot be read, a malformed body)"),
    (401, "missing or wrong token"),
    (403, "a path outside the data roots"),
    (404, "no such model, job or endpoint"),
    (405, "method not allowed"),
    (408, "the request body stalled"),
    (409, "the job or model is not in a state that allows this"),
    (413, "a body or job over its limit"),
    (422, "bad settings or request fields"),
    (429, "the queue (or the upload slots) is full; see Retry-After"),
    (503, "not ready: no worker runs"),
    (507, "the server's state directory is full"))}


class SettingsError(PupickError):
    """Bad request settings (HTTP 422)."""


class BodyTooLarge(PupickError):
    """A request body over its limit (HTTP 413)."""


class StateFull(PupickError):
    """--state has no space, or cannot be written (HTTP 507)."""


STATE_FULL = "the server's state directory is full; new jobs are refused until its administrator frees space"


class NotFound(PupickError):
    """An unknown job (HTTP 404)."""


class Conflict(PupickError):
    """The job is not in a state that allows this (HTTP 409)."""


STATUS = [(StateFull, 507), (Forbidden, 403), (NotRegularFile, 422), (ModelTooLarge, 413), (InvalidModel, 422),
          (UnknownModel, 404), (NotFound, 404), (ModelConflict, 409), (Conflict, 409),
          (SettingsError, 422), (MissingSetting, 422), (BodyTooLarge, 413), (TooLarge, 413), (ModelFileError, 400), (InputError, 400),
          (PupickError, 400)]


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


# ---------------------------------------------------------------- ASGI middleware (auth, body limits, metrics)
class Guard:
    """Bearer token on everything but /health, request-size limits, and a response counter."""

    def __init__(self, app, token: str | None, limits: dict[str, int], default_limit: int, metrics: Metrics) -> None:
        self.app, self.token, self.limits, self.default_limit, self.metrics = app, token, limits, default_limit, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        started = refused = False

        async def counted_send(message):
            nonlocal started
            if refused and started:
                return  # the 413 went out already; what the app says after it is dropped
            if message["type"] == "http.response.start":
                started = True
                self.metrics.requests.labels(f"{message['status'] // 100}xx").inc()
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"referrer-policy", b"no-referrer"),
                                                                 (b"x-content-type-options", b"nosniff")]
            await send(message)

        public = path in PUBLIC_PATHS or UI_PUBLIC.match(path)
        if self.token and not public and not self._authorised(scope, headers):
            resp = _error(401, "missing or wrong token: send 'Authorization: Bearer <token>'",
                          {"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, counted_send)
        limit = self.limits.get(path, self.default_limit)
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _error(400, "bad Content-Length header")(scope, receive, counted_send)
            if n > limit:
                return await _error(413, f"request body of {n} bytes is over this endpoint's limit of {limit} bytes")(
                    scope, receive, counted_send)
        seen = 0

        body_done = False

        async def limited_receive():
            nonlocal seen, refused, body_done
            if refused:
                return {"type": "http.disconnect"}
            if body_done:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), BODY_IDLE_S)
                except asyncio.TimeoutError:  # a slow body holds nothing: answer 408 and stop reading
                    if not started:
                        await _error(408, f"the request body stalled for {BODY_IDLE_S:g} s")(scope, receive,
                                                                                              counted_send)
                    refused = True
                    return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > limit:  # a chunked body has no Content-Length to refuse up front: answer 413 here
                    if not started:
                        await _error(413, f"request body is over this endpoint's limit of {limit} bytes")(
                            scope, receive, counted_send)
                    refused = True
                    return {"type": "http.disconnect"}  # the app stops reading and its answer is dropped
            return message

        try:
            return await self.app(scope, limited_receive, counted_send)
        except Exception as err:  # the app's handlers answered already (and logged); else answer here, once
            if started:
                return
            if disk_full(err):
                return await _error(507, STATE_FULL)(scope, receive, counted_send)
            if isinstance(err, BodyTooLarge):
                return await _error(413, str(err))(scope, receive, counted_send)
            log.error("internal error on %s:\n%s", path, traceback.format_exc())
            return await _error(500, f"internal error ({type(err).__name__}); the server log has the details")(
                scope, receive, counted_send)

    def _authorised(self, scope, headers: dict) -> bool:
        if bearer_ok(headers.get("authorization"), self.token):
            return True
        # browser pages (docs, /ui) cannot set headers on navigation or <img>: the token may come as ?token=
        from urllib.parse import parse_qs

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token", [None])[0]
        return given is not None and bearer_ok(f"Bearer {given}", self.token)


# ---------------------------------------------------------------- the app
class Service:
    """The server's parts, shared by the routes."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.lock = cfg.lock or StateLock(cfg.state_dir)  # first: a second server on this --state touches nothing
        self.exit_code = 0
        self.uploads_in_flight = 0
        from concurrent.futures import ThreadPoolExecutor

        self.ready_pool = ThreadPoolExecutor(1, thread_name_prefix="pupick-ready")  # /ready never waits for the
        # request threads, which slow requests may all hold
        self.roots = DataRoots(cfg.data_roots)
        self.store = JobStore(cfg.state_dir, cfg.max_queue, cfg.max_job_micrographs)
        self.registry = ModelRegistry(cfg.state_dir, cfg.models_dir, cfg.model_cache, log=log.warning)
        self.metrics = Metrics(self.store.counts, self.store.waiting, self.registry.loaded_count)
        self.workers = Workers(list(cfg.devices), self.store, self.registry, self.metrics, cfg.executor,
                               cache_dir=cfg.state_dir / "cache", roots=tuple(self.roots.roots),
                               disk_retry_s=cfg.disk_retry_s, on_fatal=self.fatal)
        self.uploads = cfg.state_dir / "uploads"
        self._janitor_stop = threading.Event()

    def start(self) -> None:
        recovered = self.store.recover()
        if recovered:
            log.info(json.dumps({"event": "recovered", "jobs": recovered}))
        self._recheck_queued()
        shutil.rmtree(self.uploads, ignore_errors=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        # every read of this process (training, the pages' images, an upload) is confined where it opens the file
        self._outer_roots = read_roots()
        set_read_roots([*self.roots.roots, self.uploads])
        self.workers.start(workers=self.cfg.start_workers)  # the supervisor runs either way: it lifts a disk pause
        threading.Thread(target=self._janitor, name="pupick-janitor", daemon=True).start()

    def stop(self) -> None:
        self._janitor_stop.set()
        self.workers.stop()
        self.ready_pool.shutdown(wait=False)
        set_read_roots(getattr(self, "_outer_roots", ()))

    def fatal(self, reason: str) -> None:
        """A worker cannot be restarted (its job is back in the queue): exit 1 at once, for the service manager.

        No graceful shutdown: it may need threads that cannot be had. Jobs other workers were running are re-queued
        at the next start, as after kill -9."""
        log.critical(json.dumps({"event": "fatal", "reason": reason}))
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.exit_code = 1
        os._exit(1)

    def healthy(self) -> bool:
        """ok: a worker runs (when workers were asked for) and the state takes writes."""
        if not self.cfg.start_workers:
            return self.workers.db_ok and not self.workers.paused.is_set()
        return self.workers.healthy()

    @asynccontextmanager
    async def upload_slot(self):
        """One of MAX_UPLOADS bodies spooled to --state at once (429 past it); taken and freed on the event loop."""
        if self.uploads_in_flight >= MAX_UPLOADS:
            raise QueueFull(f"{MAX_UPLOADS} uploads are in flight, the most this server takes at once; retry later")
        self.uploads_in_flight += 1
        try:
            yield
        finally:
            self.uploads_in_flight -= 1

    def check_room(self) -> None:
        """Refuse new work while --state is full (507)."""
        if self.workers.paused.is_set():
            raise StateFull(STATE_FULL)

    def _recheck_queued(self) -> None:
        """Queued jobs (re-queued ones too) whose micrographs this server's data roots no longer hold fail now."""
        for job in self.store.list("queued", limit=1 << 30):
            for _, path, _ in self.store.micrographs(job.id):
                try:
                    self.roots.confine(path)
                except PupickError as err:
                    reason = (f"{one_line(err)} (the server restarted with another --data-root; "
                              "the job was not run)")
                    self.store.finish(job.id, "failed", reason)
                    log.info(json.dumps({"event": "job", "job": job.id, "state": "failed", "error": reason}))
                    break

    def _janitor(self) -> None:
        """Every so often: finished jobs, models no job loaded, and training cache files past --retention go."""
        keep = self.cfg.retention_hours * 3600
        while not self._janitor_stop.wait(min(60.0, keep / 4)):
            try:
                removed = self.store.purge(keep)
                models = self.registry.purge_unused(keep, self.store.models_in_use())
                cache = [] if self.store.training() else _purge_files(self.cfg.state_dir / "cache", keep)
            except Exception as err:  # a failed sweep is retried on the next one; the server goes on
                log.error(json.dumps({"event": "purge-failed", "error": one_line(err)}))
                continue
            if removed or models or cache:
                log.info(json.dumps({"event": "purged", "jobs": removed, "models": models, "cache_files": len(cache)}))

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained enough to take a job (1-60)."""
        rate = self.metrics.rate()
        waiting = self.store.waiting()
        return int(min(60, max(1, math.ceil(waiting / rate / 4) if rate > 0 else 5)))


def _purge_files(folder: Path, older_than_s: float) -> list[Path]:
    """Remove the files under `folder` last modified more than `older_than_s` ago (and the folders left empty)."""
    cutoff = time.time() - older_than_s
    removed = []
    for path in sorted(folder.rglob("*"), reverse=True) if folder.is_dir() else []:
        try:
            if path.is_symlink() or path.is_file():
                if path.lstat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        except OSError:
            pass
    return removed


def create_app(cfg: ServeConfig) -> FastAPI:
    """The ASGI app for a ServeConfig (workers start with the app's lifespan)."""
    svc = Service(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.start()
        try:
            yield
        finally:
            await run_in_threadpool(svc.stop)

    app = FastAPI(title="pupick serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  responses=ERROR_RESPONSES, description="Particle picking as a service: pick and train jobs on micrographs under the "
                              "server's data roots. Every error is `{\"error\": sentence}`.")
    app.state.service = svc
    _errors(app, svc)
    _docs(app)
    _routes(app, svc)
    _mount_ui(app, svc)
    limits = {"/v1/pick/upload": int(cfg.max_upload_mb * MB), "/v1/models": int(cfg.max_model_mb * MB)}
    app.add_middleware(Guard, token=cfg.token, limits=limits, default_limit=int(cfg.max_json_mb * MB),
                       metrics=svc.metrics)
    return app


def _errors(app: FastAPI, svc: Service) -> None:
    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, err: QueueFull):
        svc.metrics.rejected.labels("queue_full").inc()
        return _error(429, str(err), {"Retry-After": str(svc.retry_after())})

    @app.exception_handler(PupickError)
    async def pupick_error(request: Request, err: PupickError):
        if disk_full(err):
            svc.workers.pause(err)
            return _error(507, STATE_FULL)
        status = next(code for cls, code in STATUS if isinstance(err, cls))
        if isinstance(err, TooLarge):
            svc.metrics.rejected.labels("too_large").inc()
        return _error(status, str(err))

    @app.exception_handler(KeyReused)
    async def key_reused(request: Request, err: KeyReused):
        return _error(422, str(err))

    @app.exception_handler(TooLarge)
    async def too_large(request: Request, err: TooLarge):
        svc.metrics.rejected.labels("too_large").inc()
        return _error(413, str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        errors = err.errors()
        # the deepest location is the most specific (a union such as str | MicrographRef reports every branch)
        first = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {}
        kind = first.get("type", "")
        if kind == "json_invalid":
            return _error(400, f"malformed JSON body ({first.get('ctx', {}).get('error', 'cannot parse')})")
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "str", "MicrographRef"))
        msg = first.get("msg", "invalid request")
        if kind == "extra_forbidden":
            return _error(422, f"unknown field {where!r} in the request body")
        if kind == "missing":
            return _error(422, f"the request needs the field {where!r}")
        if where == "" and kind in ("model_attributes_type", "dict_type"):
            return _error(422, "the request body must be a JSON object")
        return _error(422, f"{where or 'request'}: {msg}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        if err.status_code == 404 and err.detail == "Not Found":
            return _error(404, f"no such endpoint: {request.method} {request.url.path}")
        if err.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}")
        if err.status_code == 400 and err.detail == "There was an error parsing the body":  # FastAPI's, not JSON's
            too_long = isinstance(err.__cause__, ValueError) and "digits" in str(err.__cause__)
            limit = sys.get_int_max_str_digits()
            return _error(400, "malformed JSON body (" + (f"a number of more than {limit} digits" if too_long
                                                           else "it cannot be parsed") + ")")
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception):
        if disk_full(err):
            svc.workers.pause(err)
            return _error(507, STATE_FULL)
        log.error("internal error on %s %s:\n%s", request.method, request.url.path, traceback.format_exc())
        return _error(500, f"internal error ({type(err).__name__}); the server log has the details")


def _docs(app: FastAPI) -> None:
    """The Swagger UI docs page with its assets served from the swagger-ui-bundle package (nothing from a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # docs page missing, API intact
        return
    assets = Path(swagger_ui_path)
    names = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css",
             "favicon-32x32.png": "image/png"}

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request):
        token = request.query_params.get("token")
        suffix = f"?token={token}" if token else ""
        return get_swagger_ui_html(openapi_url=f"/openapi.json{suffix}", title="pupick serve: API",
                                   swagger_js_url=f"/docs/assets/swagger-ui-bundle.js{suffix}",
                                   swagger_css_url=f"/docs/assets/swagger-ui.css{suffix}",
                                   swagger_favicon_url=f"/docs/assets/favicon-32x32.png{suffix}")

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str):
        if name not in names:
            raise NotFound(f"no docs asset {name!r}")
        return FileResponse(assets / name, media_type=names[name])


def _mount_ui(app: FastAPI, svc: Service) -> None:
    """The browser pages (core/service/view.py) for each finished pick job at /ui/jobs/<id>/, when this pupick has
    them. The page and its static files hold no data; everything under api/ needs the token like any endpoint."""
    app.mount("/ui/jobs", JobPages(svc, ViewState, make_router))


READ_ONLY = ("the pages under pupick serve only show a job: train with POST /v1/train and pick with POST /v1/pick, "
             "which queue like any job")


class JobPages:
    """ASGI app: /ui/jobs/<id>/... -> the pages' router for STATE/jobs/<id> (built once per job, kept in a small LRU).

    Read-only but for labels: training, picking and exports from the pages would bypass the queue, its bounds, the
    audit log and the metrics, so only GET and HEAD pass, and PUT of a micrograph's labels (bounded by
    view_labels: numbers inside the micrograph, 10,000 per micrograph, 1 MiB per request), which claims no worker. The page and its assets are the same static files for any
    id; the job is looked up only under api/, which the Guard has already checked the token for."""

    def __init__(self, svc: Service, view_state, make_router, keep: int = 8) -> None:
        from collections import OrderedDict

        self.svc, self.view_state, self.make_router, self.keep = svc, view_state, make_router, keep
        self.apps: "OrderedDict[str, Any]" = OrderedDict()
        self.lock = threading.Lock()

    def _app(self, job_id: str):
        with self.lock:
            if job_id in self.apps:
                self.apps.move_to_end(job_id)
                return self.apps[job_id]
        job = self.svc.store.get(job_id, with_failures=False)
        if job is None or job.kind != "pick":
            raise NotFound(f"no pick job {job_id!r} to show")
        if job.state != "done":
            raise Conflict(f"job {job_id} is {job.state}; its pages come when it is done")
        paths = [Path(p) for _, p, _ in self.svc.store.micrographs(job_id)]
        state = self.view_state(self.svc.store.job_dir(job_id), micrographs=paths)
        sub = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        sub.include_router(self.make_router(state))

        @sub.exception_handler(RequestValidationError)
        async def invalid(request: Request, err: RequestValidationError):
            first = err.errors()[0] if err.errors() else {}
            where = ".".join(str(x) for x in first.get("loc", ()))
            return _error(422, f"{where or 'request'}: {first.get('msg', 'invalid request')}")

        @sub.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, err: StarletteHTTPException):
            if err.status_code == 404:
                return _error(404, f"no such page endpoint: {request.method} {request.url.path}")
            return _error(err.status_code, str(err.detail))

        with self.lock:
            self.apps[job_id] = sub
            while len(self.apps) > self.keep:
                self.apps.popitem(last=False)
        return sub

    async def __call__(self, scope, receive, send):
        root = scope.get("root_path", "")
        rest = scope["path"][len(root):] if scope["path"].startswith(root) else scope["path"]
        job_id, _, tail = rest.lstrip("/").partition("/")
        if scope["method"] not in ("GET", "HEAD") and not (scope["method"] == "PUT" and tail.startswith("api/labels/")):
            return await _error(405, READ_ONLY, {"Allow": "GET, HEAD"})(scope, receive, send)
        if not re.fullmatch(r"[0-9a-f]{1,64}", job_id):  # ids are hex; nothing else reaches the page's HTML
            return await _error(404, f"no pick job {job_id!r} to show")(scope, receive, send)
        if not tail.startswith("api/"):
            return await self._static(scope, tail)(scope, receive, send)
        try:
            sub = await run_in_threadpool(self._app, job_id)
        except PupickError as err:
            status = next(code for cls, code in STATUS if isinstance(err, cls))
            return await _error(status, str(err))(scope, receive, send)
        child = dict(scope)
        child["root_path"] = f"{root}/{job_id}"
        await sub(child, receive, send)


    @staticmethod
    def _static(scope, tail: str) -> Response:
        """The pages' HTML (tail '') or one asset (static/NAME): the same for every job id."""
        from .view import STATIC_TYPES, UI_DIR

        if tail == "":
            path = scope["path"] if scope["path"].endswith("/") else scope["path"] + "/"
            html = (UI_DIR / "index.html").read_text().replace("__BASE__", path)
            return Response(html, media_type="text/html", headers={"Cache-Control": "no-store"})
        name = tail[len("static/"):] if tail.startswith("static/") else ""
        target = UI_DIR / name
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name) or target.suffix not in STATIC_TYPES \
                or not target.is_file():
            return _error(404, f"no page asset {tail!r}")
        return FileResponse(target, media_type=STATIC_TYPES[target.suffix], headers={"Cache-Control": "no-cache"})


UI_PUBLIC = re.compile(r"^/ui/jobs/[0-9a-f]{1,64}/(static/[A-Za-z0-9._-]+)?$")  # the pages' HTML and assets: no data


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _key(request: Request, body: BaseModel) -> dict:
    """The client's Idempotency-Key bound to this endpoint and a hash of the body (a retried submission returns the
    job the first one made; the same key with another body is refused)."""
    import hashlib

    key = request.headers.get("idempotency-key")
    if key is None:
        return {"key": None}
    if not (0 < len(key) <= 128 and key.isprintable()):
        raise InputError("Idempotency-Key must be 1-128 printable characters")
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    return {"key": f"{request.url.path} {key}", "body_sha256": digest}


def _settings_or_422(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except InputError as err:
        raise SettingsError(str(err)) from None


def _pick_config_or_422(settings: dict | None, devices: tuple[str, ...]):
    """The request's PickConfig, refused (422) where any of this server's devices could not run it (int8 on CUDA)."""
    configs = [_settings_or_422(settings_map.pick_config, settings, device=d) for d in devices or ("auto",)]
    return configs[0]


def _check_model_settings(model_path: Path, config) -> None:
    """Settings the model needs, checked at submission (422), not by a job that fails (pipeline.check_model_settings;
    the job applies the same rules again)."""
    meta = read_config(model_path)
    if meta is not None:
        check_model_settings(meta, config)


def _trim_after(micrographs: int) -> BackgroundTask | None:
    """After the answer to a large submission (its listing and checks freed by then), the memory it held goes back
    to the kernel: the allocator keeps freed memory (core.allocator), which would hold it for the server's life."""
    return BackgroundTask(release_free_memory) if micrographs >= TRIM_AFTER else None


def _pick_items(given: list, roots: DataRoots) -> list[tuple[str, str, float | None]]:
    """(name, path, pixel size) per micrograph: strings expand like the CLI's inputs, objects name one file each."""
    out: list[tuple[str, str, float | None]] = []
    for i, entry in enumerate(given):
        if isinstance(entry, str):
            out.extend((stem(p), p, None) for p in roots.expand([entry]))
            continue
        if entry.micrograph is not None:
            _name_or_422(entry.micrograph, f"micrographs[{i}].micrograph")
        path = roots.regular_file(entry.path)
        out.append((entry.micrograph or stem(path), str(path), entry.pixel_size))
    for name, path, _ in out:
        _name_or_422(name, f"micrograph name of {path}")
    dupes = duplicate_stems([name for name, _, _ in out])
    if dupes:
        raise InputError(f"two micrographs share the name {dupes[0]!r}; their picks could not be told apart")
    return out


def _name_or_422(name: Any, where: str) -> str:
    """A client's micrograph name checked before it names any file (422 naming the field otherwise)."""
    try:
        return check_micrograph_name(name, where)
    except InputError as err:
        raise SettingsError(str(err)) from None


def _unique_stems(paths: list[str]) -> None:
    for p in paths:
        _name_or_422(stem(p), f"micrograph name of {p}")
    dupes = duplicate_stems([stem(p) for p in paths])
    if dupes:
        raise InputError(f"two micrographs share the name {dupes[0]!r}; their picks could not be told apart")


def _routes(app: FastAPI, svc: Service) -> None:
    store, registry, roots = svc.store, svc.registry, svc.roots

    @app.get("/health", tags=["status"], responses={503: {"model": HealthBody, "description": "failing"}},
             response_model=HealthBody)
    async def health() -> HealthBody:
        """ok, or 503 failing: no worker runs, or the state (directory or database) takes no writes. No token."""
        if svc.healthy():
            return HealthBody(status="ok")
        return JSONResponse({"status": "failing"}, status_code=503)

    @app.get("/ready", tags=["status"])
    async def ready():
        """Readiness: the workers run, the device computes, and a model loads."""
        return await asyncio.get_running_loop().run_in_executor(svc.ready_pool, ready_check)

    def ready_check():
        if not svc.cfg.start_workers:
            return _error(503, "this server runs no workers (--no-workers)")
        if cfg_workers_missing(svc):
            return _error(503, "the device worker is not running")
        try:
            import torch

            for device in svc.workers.devices:
                x = torch.ones(4, device=device)
                if float((x + x).sum()) != 8.0:
                    return _error(503, f"device {device} computes wrong results")
            models = registry.list()
            if models:
                registry.load(models[0].name, None, svc.workers.devices[0])
        except Exception as err:  # any failure here means not ready
            return _error(503, f"not ready: {one_line(err)}")
        return {"ready": True, "devices": svc.workers.devices, "models": len(models), "queue": store.waiting()}

    @app.get("/metrics", tags=["status"], response_class=PlainTextResponse)
    def metrics():
        """Prometheus metrics (pupick_*)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------ models
    @app.get("/v1/models", tags=["models"])
    def list_models() -> dict:
        """Registered models: name, architecture, diameter, pixel size, hash."""
        return {"models": [m.public() for m in registry.list()]}

    @app.get("/v1/models/{name}", tags=["models"])
    def get_model(name: str) -> dict:
        """One registered model."""
        return registry.get(name).public()

    @app.get("/v1/models/{name}/file", tags=["models"], response_class=FileResponse,
             responses={200: {"content": {"application/octet-stream": {}}, "description": "the model file"}})
    def download_model(name: str):
        """The model file (state_dict + config)."""
        entry = registry.get(name)
        return FileResponse(entry.path, media_type="application/octet-stream", filename=f"{entry.name}.pt")

    @app.delete("/v1/models/{name}", tags=["models"])
    def delete_model(name: str) -> dict:
        """Remove an uploaded or trained model."""
        registry.delete(name)
        return {"deleted": name}

    @app.post("/v1/models", tags=["models"], status_code=201,
              openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}})
    async def upload_model(request: Request, name: str = Query(..., description="name to register it under")):
        """Upload a model file (the raw bytes as the body); loaded with weights_only=True and checked first."""
        check_name(name)
        svc.check_room()
        async with svc.upload_slot():
            return await _upload_model(request, name)

    async def _upload_model(request: Request, name: str):
        tmp = await _spool(request, registry.own_dir, int(svc.cfg.max_model_mb * MB))
        try:
            entry, created = await run_in_threadpool(registry.add_upload, name, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        log.info(json.dumps({"event": "model", "name": name, "sha256": entry.sha256, "created": created,
                             "client": _client(request)}))
        return JSONResponse(entry.public(), status_code=201 if created else 200)

    # ------------------------------------------------------------ jobs
    @app.post("/v1/pick", tags=["jobs"], status_code=202)
    def submit_pick(body: PickRequest, request: Request) -> JSONResponse:
        """Queue a pick job; returns 202 {"job": ID} at once."""
        svc.check_room()
        config = _pick_config_or_422(body.settings, tuple(svc.workers.devices))
        model, sha = None, None
        if config.method == "cnn":
            if not body.model:
                raise SettingsError("the request needs a model name (or settings.method 'blob' with a diameter)")
            entry = registry.get(body.model)
            model, sha = entry.name, entry.sha256
            _check_model_settings(entry.path, config)
        elif body.model:
            raise SettingsError("the blob picker takes no model (drop 'model' or use settings.method 'cnn')")
        mics = _pick_items(body.micrographs, roots)
        job_id = store.submit("pick", {"model": model, "model_sha256": sha, "settings": body.settings or {}},
                              mics, client=_client(request), **_key(request, body))
        log.info(json.dumps({"event": "submitted", "job": job_id, "kind": "pick", "micrographs": len(mics),
                             "model": model, "client": _client(request)}))
        return JSONResponse({"job": job_id, "total": len(mics)}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job_id}"}, background=_trim_after(len(mics)))

    @app.post("/v1/train", tags=["jobs"], status_code=202)
    def submit_train(body: TrainRequest, request: Request) -> JSONResponse:
        """Queue a training job; when done its result is a newly registered model (job field 'model')."""
        svc.check_room()
        _settings_or_422(settings_map.train_config, body.settings)
        if body.name is not None:
            check_name(body.name)
            try:
                registry.get(body.name)
            except UnknownModel:
                pass
            else:
                raise ModelConflict(f"model {body.name!r} exists; delete it first or pick another name")
        if (body.labels_csv is None) == (body.labels_path is None):
            raise SettingsError("give the labels as exactly one of 'labels_csv' (CSV text) or 'labels_path'")
        paths = roots.expand(body.micrographs)
        _unique_stems(paths)
        labels = _labels(body, roots, svc.uploads, int(svc.cfg.max_json_mb * MB))
        names = {stem(p) for p in paths}
        if not set(labels["micrograph"].astype(str)) & names:
            raise InputError("the labels name none of the given micrographs")
        csv = labels[["micrograph", "x", "y"]].to_csv(index=False)
        job_id = store.submit("train", {"name": body.name, "settings": body.settings or {}, "labels_csv": csv},
                              [(stem(p), p) for p in paths], client=_client(request), **_key(request, body))
        log.info(json.dumps({"event": "submitted", "job": job_id, "kind": "train", "micrographs": len(paths),
                             "labels": int(len(labels)), "client": _client(request)}))
        return JSONResponse({"job": job_id, "total": len(paths)}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job_id}"}, background=_trim_after(len(paths)))

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(state: Optional[str] = Query(None, pattern="^(queued|running|done|failed|cancelled)$"),
                  limit: int = Query(1000, ge=1, le=100_000)) -> dict:
        """Jobs, newest first."""
        return {"jobs": [j.public() for j in store.list(state, limit)]}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str) -> dict:
        """A job's state, done/total and failures (a training job adds epoch, loss, validation AP and its model)."""
        return _job(store, job_id).public()

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], status_code=202)
    def cancel_job(job_id: str) -> JSONResponse:
        """Cancel a job (a running one stops between micrographs)."""
        job = _job(store, job_id)
        if job.state in FINISHED:
            raise Conflict(f"job {job_id} is already {job.state}; nothing to cancel")
        job = store.request_cancel(job_id)
        return JSONResponse(job.public(), status_code=202)

    @app.get("/v1/jobs/{job_id}/picks", tags=["jobs"],
             responses={200: {"content": {"text/csv": {}, "application/json": {}, "text/plain": {}},
                              "description": "the picks as csv, json or star"}})
    def job_picks(job_id: str, format: str = Query("csv", pattern="^(csv|json|star)$")):
        """A finished pick job's picks: csv (exactly picks.csv), json (every float as computed) or star (one RELION
        particles table)."""
        job = _job(store, job_id)
        if job.kind != "pick":
            raise Conflict(f"job {job_id} is a {job.kind} job; it has no picks")
        if job.state != "done":
            raise Conflict(f"job {job_id} is {job.state} ({job.done + job.failed} of {job.total} micrographs); "
                           "picks come when it is done")
        table = store.job_dir(job_id) / "picks.csv"
        if not table.is_file():
            raise Conflict(f"job {job_id} has no picks table")
        if format == "csv":
            return FileResponse(table, media_type="text/csv", filename=f"{job_id}.csv")
        if format == "json":  # streamed: memory holds one micrograph's picks, whatever the job's size
            return StreamingResponse(json_body(store, job_id), media_type="application/json")
        return StreamingResponse(open_star_body(table), media_type="text/plain")

    @app.post("/v1/pick/upload", tags=["jobs"],
              openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}})
    async def pick_upload(request: Request, model: Optional[str] = None, name: str = "upload") -> dict:
        """Pick one micrograph sent as the body (MRC) and return its picks at once; settings as query parameters."""
        t0 = time.perf_counter()
        svc.check_room()
        if not svc.cfg.start_workers:
            return _error(503, "this server runs no workers (--no-workers); nothing can be picked")
        async with svc.upload_slot():
            return await _pick_upload(request, model, name, t0)

    async def _pick_upload(request: Request, model: Optional[str], name: str, t0: float) -> dict:
        query = {k: v for k, v in request.query_params.items() if k not in ("model", "name", "token")}
        settings = {k: _query_value(v) for k, v in query.items()}
        config = _pick_config_or_422(settings, tuple(svc.workers.devices))
        _name_or_422(name, "name")
        entry = None
        if config.method == "cnn":
            if not model:
                raise SettingsError("the request needs ?model=NAME (or method=blob with a diameter)")
            entry = registry.get(model)
            _check_model_settings(entry.path, config)
        directory = Path(tempfile.mkdtemp(dir=svc.uploads))
        try:
            tmp = await _spool(request, directory, int(svc.cfg.max_upload_mb * MB))
            target = directory / f"{name}.mrc"
            os.replace(tmp, target)

            def run(device: str):
                loaded = registry.load(entry.name, entry.sha256, device) if entry else None
                # here, never on a cluster: the uploaded file lives only on this machine
                return pick([target], loaded, settings_map.pick_config(settings, device=device), progress=False,
                            log=lambda m: None)

            # awaited on the event loop: a request waiting for the worker holds no thread of the request pool
            result = await asyncio.wrap_future(svc.workers.submit(run))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if result.failures:
            reason = str(result.failures[0][1]).replace(str(target), name)
            raise InputError(reason)
        svc.metrics.upload_seconds.observe(time.perf_counter() - t0)
        picks = result.picks
        return {"micrograph": name, "model": entry.name if entry else None,
                "picks": [{"x": float(x), "y": float(y), "score": float(s)}
                          for x, y, s in zip(picks["x"], picks["y"], picks["score"])],
                "seconds": round(time.perf_counter() - t0, 4)}


def cfg_workers_missing(svc: Service) -> bool:
    return svc.cfg.start_workers and not svc.workers.alive()


def _job(store: JobStore, job_id: str):
    job = store.get(job_id)
    if job is None:
        raise NotFound(f"unknown job {job_id!r}")
    return job


def _labels(body: TrainRequest, roots: DataRoots, uploads: Path, limit: int):
    import pandas as pd

    if body.labels_csv is not None:
        try:
            df = pd.read_csv(io.StringIO(body.labels_csv), sep=None, engine="python")
        except Exception as err:  # pandas raises several types for malformed text
            raise InputError(f"labels_csv: unreadable label table ({str(err).splitlines()[0]})") from None
        missing = [c for c in ("micrograph", "x", "y") if c not in df.columns]
        if missing:
            raise InputError(f"labels_csv: missing column(s) {', '.join(missing)} (need micrograph, x, y)")
        for c in ("x", "y"):
            if not pd.api.types.is_numeric_dtype(df[c]):
                raise InputError(f"labels_csv: column {c} must be numeric")
        if df.empty:
            raise InputError("labels_csv: no labeled particles")
        df["micrograph"] = df["micrograph"].astype(str)
        return df
    path = roots.confine(body.labels_path)
    if not path.exists():
        raise InputError(f"{body.labels_path}: labels file not found")
    from pupick.adapters.registry import read_picks

    # read from copies made through confined descriptors: a FIFO or a file swapped for a symlink is never opened
    sources = [path] if not path.is_dir() else sorted(p for p in path.iterdir() if not p.name.startswith("."))
    with tempfile.TemporaryDirectory(dir=uploads) as tmp:
        copy = Path(tmp) / path.name
        if path.is_dir():
            copy.mkdir()
        budget = limit
        for src in sources:
            if path.is_dir() and not src.is_file():
                continue
            try:
                fh = open_confined(src, roots.roots)
            except FileNotFoundError:
                raise InputError(f"{src}: labels file not found") from None
            with fh, open(copy / src.name if path.is_dir() else copy, "wb") as out:
                data = fh.read(budget + 1)
                budget -= len(data)
                if budget < 0:
                    raise BodyTooLarge(f"{body.labels_path}: labels over this server's limit of {limit} bytes")
                out.write(data)
        df = read_picks(copy)
    df["micrograph"] = df["micrograph"].astype(str)
    return df


def _query_value(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


async def _spool(request: Request, directory: Path, limit: int) -> Path:
    """The request body written to a temporary file (413 past `limit`, 400 when empty)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=directory)
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"upload is over this endpoint's limit of {limit} bytes")
                fh.write(chunk)
        if size == 0:
            raise InputError("the request body is empty; send the file's bytes")
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)
