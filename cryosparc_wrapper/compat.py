"""What differs between cryosparc-tools releases (4.4-4.7 and 5.x), detected once from the installed library.

Everything version-dependent that live mode touches is decided here, by looking at the installed classes rather
than at version numbers: the connection style, the slot syntax, the error classes, and how a job is marked
running, completed or failed.
"""
from __future__ import annotations

import inspect
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class Tools:
    """The installed cryosparc-tools, as live mode needs to know it."""

    version: str
    base_url: bool  # CryoSPARC(base_url=...) (5.x) or only host + base_port + license (4.x)
    slot_key: str  # a slot dict names its field prefix with "name" (5.x Slot) or "prefix" (4.x Datafield)
    stop_takes_reason: bool  # ExternalJob.stop(error: str) (5.x) or stop(error: bool) (4.x)
    refused: tuple[type, ...]  # what the library raises when cryoSPARC refuses a request or a job step
    network: tuple[type, ...]  # transport errors that reach pupick unwrapped (httpx in 5.x)


def external_job_class() -> type:
    """The External job class: ExternalJobController (5.x) or ExternalJob (4.x)."""
    try:
        from cryosparc.controllers.job import ExternalJobController

        return ExternalJobController
    except ImportError:
        from cryosparc.job import ExternalJob

        return ExternalJob


@lru_cache(maxsize=1)
def tools() -> Tools:
    """Detect the installed cryosparc-tools' features (once per process)."""
    import cryosparc
    import cryosparc.errors as errors
    import cryosparc.spec as spec
    from cryosparc.tools import CryoSPARC

    refused = []
    for module_name in ("cryosparc.errors", "cryosparc.command"):
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:
            continue
        for name in ("APIError", "CommandError", "ExternalJobError", "InvalidSlotsError"):
            cls = getattr(module, name, None)
            if isinstance(cls, type) and cls not in refused:
                refused.append(cls)
    network: list[type] = []
    try:
        import httpx

        network.append(httpx.TransportError)
    except ImportError:
        pass
    stop = inspect.signature(external_job_class().stop).parameters.get("error")
    return Tools(
        version=getattr(cryosparc, "__version__", "unknown"),
        base_url="base_url" in inspect.signature(CryoSPARC.__init__).parameters,
        slot_key="name" if hasattr(spec, "Slot") else "prefix",
        stop_takes_reason=stop is not None and isinstance(stop.default, str),
        refused=tuple(refused) or (errors.DatasetLoadError,),
        network=tuple(network),
    )


def slot(spec: str) -> Any:
    """A slot in pupick's notation ("location", or "?mscope_params" for an optional one) in the tools' syntax."""
    if not spec.startswith("?"):
        return spec
    name = spec[1:]
    return {tools().slot_key: name, "dtype": name, "required": False}


def port_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """An input/output spec (add_input/add_output keywords) with its slots in the installed tools' syntax."""
    return {**spec, "slots": [slot(s) for s in spec.get("slots", [])]}


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


_NETWORK_TEXT = re.compile(r"URL Error|Timeout Error|did not reply within timeout")  # 4.x CommandError texts


def is_network_error(err: BaseException) -> bool:
    """cryoSPARC could not be reached, or did not answer in time (not a refusal)."""
    for e in _chain(err):
        if isinstance(e, tools().network) or isinstance(e, (ConnectionError, socket.timeout, TimeoutError)):
            return True
        if type(e).__name__ == "CommandError" and _NETWORK_TEXT.search(str(e)):
            return True
    return False


def is_refused(err: BaseException) -> bool:
    """An error raised by cryosparc-tools for a refused request or a bad job set-up (not a pupick bug)."""
    return isinstance(err, tools().refused) or is_network_error(err)


def reason(err: BaseException) -> str:
    """One line saying why cryoSPARC (or cryosparc-tools) refused a request: the server's detail when it sent one."""
    data = getattr(err, "data", None)
    if isinstance(data, dict) and data.get("detail"):  # 5.x: the server's JSON error
        detail = data["detail"]
        return str(detail if not isinstance(detail, list) else "; ".join(
            str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail))
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    if len(lines) > 1 and re.match(r"^\*\*\* \(.*\) Encount", lines[0]):  # 4.x: the JSON-RPC error's message
        return lines[1]
    text = re.sub(r"^\*\*\* (\[API\] )?\([^)]*\) ", "", lines[0])
    if text.startswith("Encounted error from JSONRPC") and err.__cause__ is not None:  # 4.x transport
        return reason(err.__cause__)
    return text


def mark_running(job) -> None:
    """Set the External job running (both releases: job.start("running"))."""
    job.start("running")


def mark_stopped(job, failure: str = "") -> None:
    """Mark the job completed, or failed with `failure` as its one-line reason."""
    if tools().stop_takes_reason:
        job.stop(error=failure)  # 5.x: the reason goes to the event log and the job's error
        return
    if failure:  # 4.x: stop() takes only a flag; the reason goes to the event log first
        job.log(failure, level="error")
    job.stop(error=bool(failure))
