"""The lifecycle of one RELION External job run: always exactly one exit file, output nodes before SUCCESS."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pupick.core.errors import AbortRequested, BadName, PupickError, RemovedOption

from .nodes import write_output_nodes

SUCCESS = "RELION_JOB_EXIT_SUCCESS"
FAILURE = "RELION_JOB_EXIT_FAILURE"
ABORTED = "RELION_JOB_EXIT_ABORTED"
EXIT_FILES = (SUCCESS, FAILURE, ABORTED)
ABORT_NOW = "RELION_JOB_ABORT_NOW"  # created by RELION's Abort button


class Terminated(PupickError):
    """The process got SIGTERM (a queue system or a user killing the job)."""


@dataclass
class RelionJob:
    """What a running job may do: check for an abort request, register output nodes, say which RELION runs it."""

    out_dir: Path
    program: str
    version: int = 4
    nodes: list[tuple[str, str]] = field(default_factory=list)
    status: str | None = None  # one of EXIT_FILES once the run has ended
    bad_input: bool = False  # failed on a micrograph name that cannot name a file (exit status 2)

    def abort_requested(self) -> bool:
        """True when RELION's abort file exists."""
        return (self.out_dir / ABORT_NOW).exists()

    def check_abort(self) -> None:
        """Raise AbortRequested if RELION asked the job to stop."""
        if self.abort_requested():
            raise AbortRequested("abort requested (RELION_JOB_ABORT_NOW)")

    def add_output_node(self, name: str, label: str) -> None:
        """Register an output node (name relative to the project directory) to list on SUCCESS."""
        self.nodes.append((name, label))

    @property
    def exit_code(self) -> int:
        return 0 if self.status == SUCCESS else 2 if self.bad_input else 1


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "w"):  # a read-only job directory: nothing can be written
        pass


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def check_job_dir(out: Path) -> None:
    """Remove the previous run's exit files; InputError naming the job directory if it cannot be written."""
    from pupick.core.io import cannot_write, is_write_error

    try:
        for name in EXIT_FILES:  # a continued job still has the previous run's exit file
            _remove(out / name)
    except OSError as err:
        if is_write_error(err):
            raise cannot_write(out, err) from None
        raise


def _same_file(stream, path: Path) -> bool:
    """Is `stream` already writing into `path` (RELION appends stderr to run.err itself)?"""
    try:
        return os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
    except (OSError, ValueError, AttributeError):
        return False


def report_error(out_dir: Path | None, message: str) -> None:
    """Put the reason last in run.err: on stderr, and appended to <o>run.err when stderr goes elsewhere."""
    line = message if message.endswith("\n") else message + "\n"
    sys.stdout.flush()
    sys.stderr.write(line)
    sys.stderr.flush()
    if out_dir is not None and out_dir.is_dir():
        run_err = out_dir / "run.err"
        if not _same_file(sys.stderr, run_err):
            with contextlib.suppress(OSError), open(run_err, "a") as fh:
                fh.write(line)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception so the finally block still writes FAILURE."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise Terminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def relion_job(out_dir: str | os.PathLike, program: str = "pupick") -> Iterator[RelionJob]:
    """Run the body as one RELION job: stale exit files removed first; SUCCESS (after RELION_OUTPUT_NODES.star),
    ABORTED (abort file removed) or FAILURE (reason last in run.err) written at the end, whatever happens."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_job_dir(out)
    job = RelionJob(out_dir=out, program=program)
    status, reason = FAILURE, "stopped before finishing"
    try:
        with _sigterm_raises():
            yield job
            write_output_nodes(out, job.nodes, job.version)
        status = SUCCESS
    except AbortRequested:
        status, reason = ABORTED, ""
        print(f"{program}: aborted on request; finished results are kept, continue the job to resume", flush=True)
    except PupickError as err:
        reason = str(err)
        job.bad_input = isinstance(err, (BadName, RemovedOption))
    except KeyboardInterrupt:
        reason = "interrupted"
    except Exception as err:  # a bug, not a user mistake: keep the traceback for the report
        from pupick.core.io import cannot_write, is_disk_error

        if is_disk_error(err):  # a full or read-only disk where nothing caught it sooner: no bug, one line
            reason = str(cannot_write(err.filename or out, err))
        else:
            traceback.print_exc()
            reason = f"internal error {type(err).__name__}: {err} (please report this with run.err)"
    finally:
        job.status = status
        if status == FAILURE:
            report_error(out, f"{program}: error: {reason}")
        sys.stdout.flush()
        for name in EXIT_FILES:
            if name != status:
                _remove(out / name)
        _touch(out / status)
        if status == ABORTED:
            _remove(out / ABORT_NOW)
