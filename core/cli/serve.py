"""`pupick serve`: run the picking service (FastAPI on uvicorn) with warm models, a job store and a device worker."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from ..errors import InputError, PupickError
from ..service.jobs import MAX_JOB_MICROGRAPHS, MAX_QUEUE
from ..service.security import check_bind, read_token_file
from ._common import UserError, run_core


def _usage(fn, *args, **kwargs):
    """Call a check; a PupickError is bad usage: one line, exit status 2, before any work starts."""
    try:
        return fn(*args, **kwargs)
    except PupickError as err:
        error = UserError(str(err))
        error.exit_code = 2
        raise error from None


CONNECTIONS = 1000  # open connections at most; past it uvicorn answers 503 at once (each costs a little memory)


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/pupick/serve (or ~/.local/state/pupick/serve)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pupick" / "serve"


def _devices(spec: str) -> tuple[str, ...]:
    from ..score import choose_device  # torch: here, since `pupick --help` imports every command's module

    return tuple(dict.fromkeys(str(choose_device(s)) for s in spec.split(",") if s.strip()))


def _executor(spec: str | None, workers: int | None):
    if not spec:
        return None
    try:
        from ..cluster import executor_from_spec  # Dask: only for --cluster
    except ImportError:
        raise InputError("--cluster needs pupick's cluster support (pupick.core.cluster), which this installation "
                         "lacks") from None
    return executor_from_spec(spec, workers)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token-file.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--data-root", "data_roots", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Directory whose files clients may name (repeatable); every other path is refused (403).")
@click.option("--models", "models_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Directory of model files; each *.pt is registered under its file stem.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default=None,
              help="Job store, job outputs, uploaded and trained models [default: $XDG_STATE_HOME/pupick/serve].")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the bearer token on one line (mode 600). Required off loopback.")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:N; a comma list runs one worker per device.")
@click.option("--max-queue", type=int, default=MAX_QUEUE, show_default=True,
              help="Most micrographs waiting at once, across all jobs; a job past it gets 429 (retry later).")
@click.option("--max-job-micrographs", type=int, default=MAX_JOB_MICROGRAPHS, show_default=True,
              help="Most micrographs in one job; a larger job gets 413 (split it).")
@click.option("--retention", type=float, default=168.0, show_default=True,
              help="Hours a finished job (and its outputs) is kept.")
@click.option("--model-cache", type=int, default=4, show_default=True, help="Models kept loaded on the device.")
@click.option("--max-upload-mb", type=float, default=1024.0, show_default=True,
              help="Largest micrograph accepted by /v1/pick/upload.")
@click.option("--max-model-mb", type=float, default=256.0, show_default=True, help="Largest model upload.")
@click.option("--ssl-certfile", type=click.Path(dir_okay=False, exists=True), default=None,
              help="TLS certificate (PEM); with --ssl-keyfile the service speaks HTTPS.")
@click.option("--ssl-keyfile", type=click.Path(dir_okay=False, exists=True), default=None, help="TLS private key.")
@click.option("--cluster", default=None,
              help="Pick on a Dask cluster: local:N, tcp://HOST:PORT, tls://... or jobqueue:CONFIG.yaml.")
@click.option("--cluster-workers", type=int, default=None, help="Workers to start for --cluster local:/jobqueue:.")
@click.option("--forwarded-allow-ips", default=None,
              help="Proxies (comma list of IPs, or *) whose X-Forwarded-For/-Proto headers are believed; without it "
                   "such headers are ignored and the client is the connection's address.")
@click.option("--no-workers", is_flag=True,
              help="Queue jobs but run none (a scratch server for testing clients; /ready says not ready).")
@click.option("--disk-retry", type=float, default=10.0, show_default=True,
              help="Seconds between checks for free space while --state is full (work resumes by itself).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def command(host, port, data_roots, models_dir, state_dir, token_file, device, max_queue, max_job_micrographs,
            retention, model_cache, max_upload_mb, max_model_mb, ssl_certfile, ssl_keyfile, cluster, cluster_workers,
            forwarded_allow_ips, no_workers, disk_retry, log_level):
    """Serve picking and training over HTTP (jobs on files under --data-root, models warm on the device)."""
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise click.UsageError("TLS needs both --ssl-certfile and --ssl-keyfile")
    token = _usage(read_token_file, token_file) if token_file else None
    _usage(check_bind, host, token)
    devices = _usage(_devices, device)
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, log_level.upper()), format="%(message)s")

    import uvicorn

    class _Announcing(uvicorn.Server):
        """uvicorn's server, saying the address it bound once it has bound it."""

        def __init__(self, config: "uvicorn.Config", announce) -> None:
            super().__init__(config)
            self.announce = announce

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started and self.servers and self.servers[0].sockets:
                self.announce(self.servers[0].sockets[0].getsockname()[1])

    # the app (FastAPI, about a second to import) here, not at the top: `pupick --help` imports every command
    from ..service.app import ServeConfig, create_app

    cfg = _usage(ServeConfig, state_dir=Path(state_dir) if state_dir else default_state_dir(), host=host,
                 port=port, data_roots=tuple(data_roots), models_dir=Path(models_dir) if models_dir else None,
                 token=token, devices=devices, max_queue=max_queue, max_job_micrographs=max_job_micrographs,
                 retention_hours=retention, model_cache=model_cache, max_upload_mb=max_upload_mb,
                 max_model_mb=max_model_mb, start_workers=not no_workers, disk_retry_s=disk_retry)
    from ..service.statelock import StateLock

    cfg.lock = _usage(StateLock, cfg.state_dir)  # before anything under --state is touched
    executor = cfg.executor = _usage(_executor, cluster, cluster_workers)  # last: a cluster starts workers
    app = run_core(create_app, cfg)
    scheme = "https" if ssl_certfile else "http"
    roots = ", ".join(str(r) for r in data_roots) or "none (uploads only)"
    models = len(app.state.service.registry.list())

    def announce(bound: int) -> None:  # after binding, so that --port 0 says the port it got
        click.echo(f"pupick serve: {scheme}://{host}:{bound} on {', '.join(devices)}; data roots: {roots}; "
                   f"state: {cfg.state_dir}; {models} model(s); "
                   f"{'token required' if token else 'no token (loopback only)'}", err=True)

    server = _Announcing(uvicorn.Config(
        app, host=host, port=port, log_level="warning" if log_level == "info" else log_level, access_log=False,
        ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_graceful_shutdown=10,
        proxy_headers=bool(forwarded_allow_ips), forwarded_allow_ips=forwarded_allow_ips or "",
        limit_concurrency=CONNECTIONS), announce)
    try:
        server.run()
        if not server.started:
            sys.exit(1)  # uvicorn said why (the address in use, say)
    finally:
        close = getattr(executor, "close", None)
        if callable(close):
            close()
    if app.state.service.exit_code:
        sys.exit(app.state.service.exit_code)
