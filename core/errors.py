"""Errors with messages fit for users: one line naming the file and the problem."""
from __future__ import annotations


class PupickError(Exception):
    """Base class; the CLI and every wrapper print str(error) and exit non-zero, never a traceback."""


class InputError(PupickError):
    """A user's input file or option is unusable (missing, corrupt, wrong shape, no match)."""


class ModelFileError(PupickError):
    """A model file is not a pupick model, or comes from an incompatible version."""


class AbortRequested(PupickError):
    """The host asked the job to stop (e.g. RELION's abort file)."""


class BadName(InputError):
    """A micrograph name that cannot name a file (core.names): bad input, exit status 2, HTTP 422."""


class RemovedOption(InputError):
    """An option or setting pupick no longer has (core.config.REMOVED): bad usage, exit status 2, HTTP 422."""


class MissingSetting(InputError):
    """A setting this run needs that was not given, found before any work: bad usage, exit status 2, HTTP 422."""


class Forbidden(PupickError):
    """A path that lies outside every data root of a server (HTTP 403)."""


class NotRegularFile(InputError):
    """A path that names a directory, FIFO, socket or device where a file's bytes are read (HTTP 422)."""


class ModelTooLarge(ModelFileError):
    """A model file bigger than any registered architecture could be, or with compressed entries (HTTP 413)."""


class InvalidModel(ModelFileError):
    """A model file whose tensors do not fit the architecture its config names (HTTP 422)."""


ERROR_CHARS = 600  # longer messages have their middle elided, so a value a client sent is never echoed whole


def one_line(message: object, limit: int = ERROR_CHARS) -> str:
    """The message on one line (each run of whitespace one space), at most about `limit` characters."""
    text = " ".join(str(message).split())
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]} …[{len(text) - head - tail} characters left out]… {text[-tail:]}"
