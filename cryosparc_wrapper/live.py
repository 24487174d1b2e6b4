"""Live mode: a cryoSPARC External job driven through cryosparc-tools.

The job's shape (inputs, outputs, slots) and the connection arguments are plain data built by functions
that run without a server, and the work inside the job is `picking.pick_exposures` / `training.train_on_exposures`.
The cryosparc-tools calls are confined to `connect`, `create_job`, `save_output`, `lifecycle`, `run_pick_job`,
`run_train_job` and `run_upload`, which need a reachable cryoSPARC instance.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import re
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from pupick.core.errors import AbortRequested, InputError, PupickError

from . import compat

# The External job's ports. Input names double as passthrough sources for outputs.
# mscope_params (optional) gives each particle its exposure group (location/exp_group_id)
# Slots in pupick's notation ("?" = optional); compat.port_spec turns them into the installed tools' syntax.
EXPOSURE_INPUT: dict[str, Any] = dict(type="exposure", name="micrographs", min=1, max=1,
                                      slots=["micrograph_blob", "?mscope_params"], title="Micrographs to pick")
EXPOSURE_SLOTS = ["micrograph_blob", "mscope_params"]  # what the picking job loads from its input
PARTICLE_INPUT: dict[str, Any] = dict(type="particle", name="particles", min=1, max=1, slots=["location"],
                                      title="Training particles (locations)")
PARTICLE_OUTPUT: dict[str, Any] = dict(type="particle", name="particles", slots=["location", "pick_stats"],
                                       title="pupick particles")
MICROGRAPH_OUTPUT: dict[str, Any] = dict(type="exposure", name="micrographs", slots=["micrograph_blob"],
                                         passthrough="micrographs", title="Picked micrographs")

# While cryoSPARC cannot be reached, keep trying to mark a job stopped this long (SLURM's KillWait is 30 s).
STOP_RETRY_S = 20.0
STOP_RETRY_ENV = "PUPICK_CRYOSPARC_STOP_RETRY_S"  # tests shorten it

_RETRY_WARNINGS = r"\*\*\* (API client|CommandClient)"  # 5.x and 4.x clients' per-retry warnings

_REF = re.compile(r"^(J\d+)[./:](\w+)$")
_PROJECT = re.compile(r"^P\d+$")
_WORKSPACE = re.compile(r"^W\d+$")


@dataclass
class Connection:
    """How to reach cryoSPARC: a base URL (5.x) or host + base port (4.x), and credentials."""

    url: str | None = None
    host: str | None = None
    base_port: int | None = None
    license: str | None = None
    email: str | None = None
    password: str | None = None


def parse_output_ref(ref: str, what: str = "--exposures") -> tuple[str, str]:
    """`J12.exposures_accepted` (or J12/..., J12:...) -> ("J12", "exposures_accepted")."""
    m = _REF.match(ref.strip())
    if not m:
        raise InputError(f"{what}: expected a job output like J12.exposures_accepted, got {ref!r}")
    return m.group(1), m.group(2)


def check_uids(project: str, workspace: str) -> None:
    """Project and workspace uids look like P3 and W1."""
    if not _PROJECT.match(project):
        raise InputError(f"--project: expected a project uid like P3, got {project!r}")
    if not _WORKSPACE.match(workspace):
        raise InputError(f"--workspace: expected a workspace uid like W1, got {workspace!r}")


def tools_accept_base_url(cryosparc_class: type | None = None) -> bool:
    """Whether the installed cryosparc-tools' CryoSPARC() takes a base URL (5.x) or only host/port (4.x)."""
    if cryosparc_class is None:
        from cryosparc.tools import CryoSPARC as cryosparc_class
    return "base_url" in inspect.signature(cryosparc_class.__init__).parameters


def connection_kwargs(conn: Connection, accepts_base_url: bool = True) -> dict[str, Any]:
    """Keyword arguments for cryosparc.tools.CryoSPARC from a Connection (only what was given)."""
    if conn.url and (conn.host or conn.base_port):
        raise InputError("give either --url (cryoSPARC 5) or --host/--base-port (cryoSPARC 4), not both")
    # explicit None for the style not used: CryoSPARC() would otherwise fill it from the environment
    kwargs: dict[str, Any] = {"base_url": None} if accepts_base_url else {}
    if conn.url:
        url = conn.url if re.match(r"^https?://", conn.url) else "http://" + conn.url
        if accepts_base_url:
            kwargs.update(base_url=url, host=None, base_port=None)
        else:  # 4.x tools: host and base port only
            parsed = urlparse(url)
            if not parsed.hostname:
                raise InputError(f"--url: cannot read a host name from {conn.url!r}")
            kwargs.update(host=parsed.hostname, base_port=parsed.port or 39000)
    elif conn.host or conn.base_port:
        kwargs.update(host=conn.host or "localhost", base_port=int(conn.base_port or 39000))
    else:
        raise InputError("no cryoSPARC instance given: use --url (5.x, e.g. http://csparc:39000) or "
                         "--host and --base-port (4.x), or set CRYOSPARC_BASE_URL")
    if conn.license:
        kwargs["license"] = conn.license
    elif not accepts_base_url:
        raise InputError("cryosparc-tools 4.x needs the license id: --license or CRYOSPARC_LICENSE_ID")
    if conn.email:
        kwargs["email"] = conn.email
    if conn.password:
        kwargs["password"] = conn.password
    return kwargs


def connect(conn: Connection):
    """Open a cryosparc-tools session (network)."""
    from cryosparc.tools import CryoSPARC

    kwargs = connection_kwargs(conn, tools_accept_base_url(CryoSPARC))
    where = kwargs.get("base_url") or f"{kwargs.get('host')}:{kwargs.get('base_port')}"
    try:
        with warnings.catch_warnings():  # the client's per-retry warnings; the version warning still shows
            warnings.filterwarnings("ignore", message=_RETRY_WARNINGS)
            return CryoSPARC(**kwargs)
    except Exception as err:  # cryosparc-tools raises RuntimeError/ValueError/TypeError with long texts
        cause = err.__cause__ or err
        if compat.is_refused(cause):
            reason = compat.reason(cause)
        else:
            lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
            reason = lines[0].split(". ")[0].rstrip(".") if lines else "no reason given"
        hint = ""
        if "authentication" in reason.lower():
            hint = " (give --email and --password, or log in once with `python -m cryosparc.tools login`)"
        raise InputError(f"cannot connect to cryoSPARC at {where}: {reason}{hint}") from None


def job_dir(job) -> Path:
    """The job directory (a property in tools 5.x, a method in 4.x)."""
    d = job.dir
    if callable(d) and not isinstance(d, PurePath):
        d = d()
    return Path(str(d))


def project_dir(project, override: str | os.PathLike | None = None) -> Path:
    """The project directory as seen from this machine: --project-dir, else the server's path."""
    if override:
        return Path(override)
    d = project.dir
    if callable(d) and not isinstance(d, PurePath):
        d = d()
    return Path(str(d))


def progress_logger(log: Callable[..., Any], every: int = 25) -> Callable[[int, int, str, int], None]:
    """A progress callback for job.log: one line updated in place (tools 5.x `name=`), else every Nth line."""
    try:
        named = "name" in inspect.signature(log).parameters
    except (TypeError, ValueError):
        named = False

    def progress(done: int, total: int, name: str, n: int) -> None:
        line = f"[{done}/{total}] {name}: {n} picks"
        if named:
            log(line, name="progress")
        elif done == 1 or done == total or done % every == 0:
            log(line)

    return progress


def save_output(job, name: str, dset, image=None) -> None:
    """job.save_output plus the output's thumbnail where the installed tools can set one (network)."""
    job.save_output(name, dset)
    if image is not None and hasattr(job, "set_output_image"):
        try:
            job.set_output_image(name, image)
        except Exception as err:  # a thumbnail is not worth failing the job for
            job.log(f"could not set the output image: {err}", level="warning")


server_reason = compat.reason


def _is_tools_error(err: BaseException) -> bool:
    """An error raised by cryosparc-tools for a refused request or bad job setup (not a pupick bug)."""
    return compat.is_refused(err)


class Terminated(BaseException):
    """SIGTERM arrived (kill, timeout, a SLURM time limit); raised in the main thread like KeyboardInterrupt."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"terminated by {signal.Signals(signum).name}")


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Around all of live mode: SIGTERM interrupts the work (so the job can be marked failed) instead of killing
    the process, and the clients' per-retry warnings stay off the terminal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_RETRY_WARNINGS)
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            yield
        except Terminated as err:  # before any job existed
            raise AbortRequested(str(err)) from None
        finally:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C or SIGTERM must not cut short the request that marks the job failed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_retry_seconds() -> float:
    """How long to keep trying to mark a job stopped while cryoSPARC cannot be reached (inside SLURM's kill grace)."""
    try:
        return max(0.0, float(os.environ.get(STOP_RETRY_ENV, STOP_RETRY_S)))
    except ValueError:
        return STOP_RETRY_S


def job_name(job) -> str:
    """P3-J20."""
    return f"{job.project_uid}-{job.uid}"


def failure_line(err: BaseException) -> str:
    """pupick's one line for why a job failed (what cryoSPARC's event log and the job's error show)."""
    if isinstance(err, Terminated):
        text = str(err)
    elif isinstance(err, KeyboardInterrupt):
        text = "interrupted (Ctrl-C)"
    elif isinstance(err, PupickError):
        text = str(err)
    elif compat.is_refused(err):
        text = f"cryoSPARC: {compat.reason(err)}"
    else:
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        text = f"internal error: {type(err).__name__}" + (f": {lines[0].strip()}" if lines else "")
    return "pupick: " + " ".join(text.split())


def finish(job, failure: str = "") -> None:
    """Mark the job completed (or failed with `failure`), retrying for a bounded time while cryoSPARC is unreachable.

    Raises InputError naming the job, and how to mark it failed, when it cannot be done."""
    retry_s = stop_retry_seconds()
    deadline = time.monotonic() + retry_s
    with _signals_ignored():
        while True:
            outcome: list[BaseException | None] = []

            def attempt() -> None:
                try:
                    compat.mark_stopped(job, failure)
                    outcome.append(None)
                except BaseException as err:  # noqa: BLE001 - judged below
                    outcome.append(err)

            worker = threading.Thread(target=attempt, daemon=True)  # a hung request must not outlive the deadline
            worker.start()
            worker.join(max(0.1, deadline - time.monotonic()))
            err = outcome[0] if outcome else TimeoutError("no answer")
            if err is None:
                return
            if not (compat.is_network_error(err) or isinstance(err, TimeoutError)):
                raise InputError(f"cryoSPARC did not mark External job {job_name(job)} "
                                 f"{'failed' if failure else 'completed'}: {compat.reason(err)}") from None
            if time.monotonic() >= deadline:
                raise InputError(
                    f"External job {job_name(job)} may still show as running: cryoSPARC could not be reached "
                    f"for {retry_s:g} s ({compat.reason(err)}); once it is back, mark the job failed with "
                    f"`pupick_cryosparc mark-failed --project {job.project_uid} --job {job.uid}`") from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _raise_failed(job, err: BaseException, line: str) -> None:
    """After the job is marked failed: the error to show the user (one line), or the original for a pupick bug."""
    if isinstance(err, (Terminated, KeyboardInterrupt)):
        raise AbortRequested(f"{line.removeprefix('pupick: ')}; External job {job_name(job)} is marked failed") \
            from None
    if isinstance(err, PupickError):
        raise err
    if compat.is_refused(err):
        raise InputError(f"External job {job_name(job)} failed: {line.removeprefix('pupick: ')}") from None
    raise err  # a bug in pupick: the job is marked failed; the traceback is for the report


@contextlib.contextmanager
def lifecycle(job) -> Iterator[Any]:
    """The job runs inside: it ends completed, or failed with pupick's one line (errors, Ctrl-C, SIGTERM).

    A request cryoSPARC refuses becomes one line (PupickError), not a traceback."""
    try:
        compat.mark_running(job)
    except BaseException as err:
        line = failure_line(err)
        finish(job, line)
        _raise_failed(job, err, line)
    try:
        yield job
    except BaseException as err:
        line = failure_line(err)
        finish(job, line)
        _raise_failed(job, err, line)
    else:
        finish(job)


def create_job(cs, project: str, workspace: str, title: str, inputs: list[tuple[dict, str]],
               outputs: list[dict]):
    """Create the External job, add and connect its inputs, add its outputs (network).

    A refused request is one line; a job that was created but cannot be set up is marked failed, never left
    building."""
    try:
        job = cs.find_project(project).create_external_job(workspace, title=title)
    except Exception as err:
        if not _is_tools_error(err):
            raise
        what = "reach cryoSPARC to create" if compat.is_network_error(err) else "create"
        raise InputError(f"cannot {what} an External job in {project} {workspace}: cryoSPARC: "
                         f"{server_reason(err)}") from None
    try:
        for spec, ref in inputs:
            source_job, source_output = parse_output_ref(ref, spec["name"])
            job.add_input(**compat.port_spec(spec))
            job.connect(spec["name"], source_job, source_output)
        for spec in outputs:
            job.add_output(**compat.port_spec(spec))
    except BaseException as err:  # refused by the server, by cryosparc-tools' own checks, a signal, or a bug
        line = failure_line(err)
        finish(job, line)
        if isinstance(err, (PupickError, ValueError)) or compat.is_refused(err):
            raise InputError(f"External job {job_name(job)} could not be set up and is marked failed: "
                             f"{line.removeprefix('pupick: ').removeprefix('cryoSPARC: ')}") from None
        _raise_failed(job, err, line)
    return job


def log_plot(job, figure, text: str) -> None:
    """job.log_plot with a text fit for file names: cryosparc-tools names the plot's asset files after it."""
    job.log_plot(figure, re.sub(r"[/\\]+", " ", text))


def run_pick_job(cs, project: str, workspace: str, exposures_ref: str, model, config, title: str = "pupick pick",
                 project_dir_override: str | None = None, echo=print, executor=None) -> str:
    """Create and run a picking External job; returns its uid (network)."""
    from pupick.adapters.cryosparc import exposures_from_dataset

    from .picking import micrographs_passthrough, pick_exposures, score_figure, summary_lines

    job = create_job(cs, project, workspace, title, [(EXPOSURE_INPUT, exposures_ref)],
                     [PARTICLE_OUTPUT, MICROGRAPH_OUTPUT])
    echo(f"created External job {project}-{job.uid}")
    with lifecycle(job):
        dset = job.load_input(EXPOSURE_INPUT["name"], EXPOSURE_SLOTS)
        exposures = exposures_from_dataset(dset, f"{exposures_ref} (exposures)")
        root = project_dir(cs.find_project(project), project_dir_override)
        job.log(f"pupick: picking {len(exposures)} micrographs from {exposures_ref} in {root}")

        result = pick_exposures(exposures, root, model, config, log=job.log, progress=progress_logger(job.log),
                                template=job.alloc_output(PARTICLE_OUTPUT["name"], 0), salt=f"{project}/{job.uid}",
                                executor=executor)
        figure = score_figure(result.picks, config.extract.threshold)
        save_output(job, PARTICLE_OUTPUT["name"], result.particles, image=figure)
        save_output(job, MICROGRAPH_OUTPUT["name"], micrographs_passthrough(dset, result.picked_uids))
        log_plot(job, figure, "pupick score distribution (logit); Inspect Picks thresholds pick_stats/power")
        for line in summary_lines(result, len(exposures)):
            job.log(line)
            echo(line)
    return job.uid


def run_train_job(cs, project: str, workspace: str, exposures_ref: str, particles_ref: str, config,
                  title: str = "pupick train", project_dir_override: str | None = None, echo=print) -> str:
    """Create and run a training External job; the model lands in the job directory (network)."""
    from pupick.adapters.cryosparc import exposures_from_dataset, picks_from_dataset

    from .training import train_on_exposures, train_summary

    job = create_job(cs, project, workspace, title,
                     [(EXPOSURE_INPUT, exposures_ref), (PARTICLE_INPUT, particles_ref)], [])
    echo(f"created External job {project}-{job.uid}")
    with lifecycle(job):
        exposures = exposures_from_dataset(job.load_input(EXPOSURE_INPUT["name"], ["micrograph_blob"]), exposures_ref)
        labels = picks_from_dataset(job.load_input(PARTICLE_INPUT["name"], ["location"]), exposures, particles_ref)
        root = project_dir(cs.find_project(project), project_dir_override)
        target = job_dir(job) if project_dir_override is None else root / job.uid
        local = target.is_dir() and os.access(target, os.W_OK)
        with tempfile.TemporaryDirectory(prefix="pupick_cryosparc_") as tmp:
            output = (target if local else Path(tmp)) / "pupick_model.pt"
            if config.cache_dir is None:  # keep preprocessed micrographs out of the job directory
                config = dataclasses.replace(config, cache_dir=str(Path(tmp) / "cache"))
            result = train_on_exposures(exposures, labels, root, config, output, log=job.log)
            if not local:  # the job directory is not mounted here: upload the files into it
                for f in (output, output.with_suffix(".train.tsv"), output.with_suffix(".train.png")):
                    if f.exists():
                        job.upload(f.name, str(f), overwrite=True)
            plot = output.with_suffix(".train.png")
            if plot.exists():
                log_plot(job, str(plot), "pupick training curves (loss per epoch; validation AP with --test-split)")
        line = train_summary(result).replace(str(output), str(target / output.name))
        job.log(line)
        echo(line)
    return job.uid


def particles_for_upload(path: str | os.PathLike):
    """Load a particles .cs and check it has what Inspect Picks and Extract need (location + pick_stats)."""
    from pupick.adapters.cryosparc import PARTICLE_FIELDS, load_dataset

    dset = load_dataset(path)
    if "location/min_dist_A" not in dset:  # written before pupick filled it: unknown
        dset.add_fields([("location/min_dist_A", "<f4")])
    missing = [f[0] for f in PARTICLE_FIELDS if f[0].startswith("location/") and f[0] not in dset]
    missing += [f for f in ("pick_stats/power", "pick_stats/ncc_score") if f not in dset]
    if missing:
        raise InputError(f"{path}: not a pupick/cryoSPARC particles file: missing field(s) {', '.join(missing)}")
    return dset.filter_prefixes(["location", "pick_stats"])


def run_upload(cs, project: str, workspace: str, particles_cs: str | os.PathLike, title: str = "pupick particles",
               echo=print) -> str:
    """Save an offline particles .cs into the project as an External job's `particles` output (network)."""
    dset = particles_for_upload(particles_cs)
    spec = {k: v for k, v in PARTICLE_OUTPUT.items() if k != "passthrough"}
    job = create_job(cs, project, workspace, title, [], [spec])
    with lifecycle(job):
        job.save_output(spec["name"], dset)
        job.log(f"pupick: {len(dset)} particles from {Path(particles_cs).name}")
    echo(f"saved {len(dset)} particles from {particles_cs} as {project}-{job.uid} output `particles`")
    return job.uid


def run_mark_failed(cs, project: str, job_uid: str, reason: str, echo=print) -> None:
    """Mark an External job failed (one left running after kill -9 or a lost node) (network)."""
    try:
        job = cs.find_external_job(project, job_uid)
    except Exception as err:
        if not _is_tools_error(err):
            raise
        raise InputError(f"cannot find External job {project}-{job_uid}: cryoSPARC: {server_reason(err)}") from None
    finish(job, "pupick: " + " ".join(reason.split()))
    echo(f"External job {project}-{job_uid} is marked failed")
