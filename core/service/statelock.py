"""One server per state directory: an exclusive `flock` on STATE/serve.lock, taken before anything else is touched.

The lock lives as long as the process (the kernel drops it when the process dies, kill -9 included), so a stale
lock file never blocks a restart. The file holds the owner's pid, for the refusal message.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import InputError
from ..io import hold_lock

LOCK_NAME = "serve.lock"


class StateLocked(InputError):
    """Another `pupick serve` holds this --state (exit 2)."""


class StateLock:
    """The held lock on one state directory; `release()` (or process exit) frees it."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        try:
            fd, owner = hold_lock(self.path, 0o600, os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise InputError(f"{self.path}: cannot open the state lock ({err.strerror})") from None
        if fd is None:
            raise StateLocked(f"{Path(state_dir)}: another pupick serve (pid {owner}) uses this --state; stop it "
                              "or give another --state")
        self.fd: int | None = fd

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race a server starting now)."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
