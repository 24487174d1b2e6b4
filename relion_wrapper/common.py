"""Pieces both executables share: the entry-point frame, inputs read through the adapters, threads."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from pupick.core.errors import InputError

from .job import RelionJob, check_job_dir, relion_job, report_error
from .nodes import detect_version
from .protocol import ExternalArgs, Param, find_out_dir, parse_external, text

# Server mode: the job runs on a `pupick serve` (core/client.py); this process then never imports torch.
SERVER_PARAMS = (
    Param("server", text, "pupick server URL, e.g. http://gpu-box:8765: the work runs there (default: here)"),
    Param("token_file", text, "file holding the server's token on one line (default: $PUPICK_TOKEN_FILE)"),
)


def say(message: str) -> None:
    """One line to run.out, flushed at once so RELION's GUI shows progress (lost, not fatal, on a full disk)."""
    try:
        print(message, flush=True)
    except OSError:
        pass


def help_text(program: str, summary: str, inputs: Sequence[str], params: Sequence[Param]) -> str:
    """What `PROGRAM --help` prints: how RELION's External job runs it and the parameters it accepts."""
    width = max((len(p.name) for p in params), default=0)
    lines = [f"usage: {program} --o JOB_DIR {' '.join(f'--{i} FILE' for i in inputs)} [--PARAMETER VALUE]... [--j N]",
             "", summary, "",
             "Run it as a RELION External job: put this program in 'External executable', the inputs in the Input "
             "tab, and each parameter as a row of the Params tab (label = the name below).", "",
             "parameters:"]
    lines += [f"  {p.name:<{width}}  {p.help}" for p in params]
    return "\n".join(lines) + "\n"


def failures_error(failures: Sequence[tuple[object, str]], what: str = "picked") -> InputError:
    """One line naming every micrograph that failed and why (RELION shows the last line of run.err)."""
    named = "; ".join(f"{path}: {reason}" for path, reason in failures)
    return InputError(f"{len(failures)} micrograph(s) could not be {what} ({named}); the others are saved - "
                      "continue the job to retry")


def run_external(program: str, body: Callable[[RelionJob, ExternalArgs], None], argv: Sequence[str] | None,
                 help_page: str | None = None) -> int:
    """Parse RELION's command line inside the job lifecycle, run `body`, return the exit status.

    `-h`/`--help` prints `help_page` (see help_text) and returns 0 without touching any job directory."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if help_page is not None and any(a in ("-h", "--help") for a in argv):
        sys.stdout.write(help_page)
        return 0
    out = find_out_dir(argv)
    if out is None:
        report_error(None, f"{program}: error: --o (the job's output directory) is missing; "
                           "this program is meant to be run by RELION's External job")
        return 1
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        report_error(None, f"{program}: error: cannot create the job directory {out} ({err.strerror})")
        return 1
    try:
        check_job_dir(Path(out))
    except InputError as err:  # read-only: not even the exit file can be written
        report_error(None, f"{program}: error: {err}")
        return 1
    with relion_job(out, program=program) as job:
        say(f"{program} {' '.join(argv)}")
        args = parse_external(argv)
        body(job, args)
    return job.exit_code


def end_process(code: int) -> None:
    """Exit at once: the exit file is written and every output closed, and tearing down torch after an abort
    can take many seconds in which RELION would still see a running process."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def set_version(job: RelionJob, override: str | None) -> None:
    """Pick RELION 4 or 5 node labels from the project's default_pipeline.star (or the relion_version parameter)."""
    job.version, how = detect_version(Path("."), override)
    say(f"RELION version: {how}")


def set_threads(threads: int) -> None:
    """Use --j as the number of CPU threads for torch."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def read_micrographs(path: str) -> pd.DataFrame:
    """The micrographs STAR (--in_mics) as a Micrographs table; paths as written (relative to the project)."""
    from pupick.adapters.relion import read_micrographs_star

    mics = read_micrographs_star(path)
    if not len(mics):
        raise InputError(f"{path}: lists no micrographs")
    return mics.reset_index(drop=True)


def pixel_size_of(value: float) -> float | None:
    """A pixel size from a table cell, None when unknown (the engine's rule)."""
    from pupick.core.pipeline import known_pixel_size

    return known_pixel_size(value)


def connect(values: dict):
    """A client for the `server` parameter (token from `token_file` or $PUPICK_TOKEN_FILE); None without one."""
    if not values.get("server"):
        if values.get("token_file"):
            raise InputError("parameter token_file needs parameter server (the pupick server URL)")
        return None
    from pupick.core.client import Client

    client = Client.connect(values["server"], values.get("token_file"))
    say(f"pupick server {client.url}")
    return client
