"""Training in a child process, so RELION's Abort stops it at once (training has no check points of its own)."""
from __future__ import annotations

import math
import multiprocessing
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import pandas as pd

from pupick.core.errors import PupickError

from .common import set_threads
from .job import RelionJob

POLL_SECONDS = 0.2


class TrainingCrashed(PupickError):
    """The training process ended without a result (killed, out of memory, or a bug)."""


def _child(conn, micrographs: list[Path], labels: pd.DataFrame, config: Any, output: Path, threads: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's SIGTERM handler must not outlive the fork
    try:
        from pupick.core.train import train

        set_threads(threads)
        result = train(micrographs, labels, config, output, progress=False,
                       log=lambda message: print(message, flush=True))
        best_ap = float(result.best_ap)
        conn.send(("ok", {"best_epoch": int(result.best_epoch), "best_ap": best_ap if math.isfinite(best_ap) else None,
                          "pi": float(result.pi)}))
    except PupickError as err:
        conn.send(("error", str(err)))
    except BaseException as err:  # a bug: the traceback goes to run.err
        traceback.print_exc()
        conn.send(("bug", f"internal error {type(err).__name__}: {err} (please report this with run.err)"))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        conn.close()


def run_training(job: RelionJob, micrographs: list[Path], labels: pd.DataFrame, config: Any, output: Path,
                 threads: int) -> dict[str, Any]:
    """Run core training in a child process; stop it when RELION asks to abort; return best_epoch/best_ap/pi."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    sys.stdout.flush()
    sys.stderr.flush()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, micrographs, labels, config, output, threads), name="pupick-train")
    proc.start()
    send.close()
    finished = False
    try:
        while True:
            if receive.poll(POLL_SECONDS):
                try:
                    status, payload = receive.recv()
                except EOFError:
                    proc.join()
                    raise TrainingCrashed(f"training stopped without a result (exit code {proc.exitcode})") from None
                finished = True
                break
            job.check_abort()
            if not proc.is_alive() and not receive.poll(0):
                raise TrainingCrashed(f"training stopped without a result (exit code {proc.exitcode}; "
                                      "killed, or out of memory?)")
    finally:
        if finished:
            proc.join(timeout=30)  # the child exits right after sending its result
        if proc.is_alive():  # aborted or failed here: stop the training at once
            proc.terminate()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        receive.close()
    if status != "ok":
        raise (TrainingCrashed if status == "bug" else PupickError)(payload)
    return payload
