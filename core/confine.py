"""Reads confined to data roots when the file is opened: `open_confined(path, roots)`.

The check at submission (core.service.security.DataRoots) looks at names; between it and the read a file can be
swapped for a symlink or a FIFO. So every read of a client's file opens it here: the real path is resolved and must
lie under a root, it is opened without following a symlink in its last part (O_NOFOLLOW) and without blocking
(O_NONBLOCK: a FIFO never holds a thread), `fstat` must show a regular file, and the real path of the opened
descriptor (/proc/self/fd) must again lie under a root, so a directory swapped on the way is caught as well. Then
the caller reads from that descriptor only.

Without roots (the CLI, a RELION job) symlinks are followed as usual; the regular-file and no-blocking checks stay.
A process that serves clients sets its roots once (`set_read_roots`); they also travel with the work sent to Dask
workers (MicrographItem.roots), so a worker on another machine checks the same roots.
"""
from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO, Sequence

from .errors import Forbidden, NotRegularFile

_READ_ROOTS: tuple[str, ...] = ()


def set_read_roots(roots: Sequence[str | os.PathLike]) -> None:
    """Confine every later read of this process (micrographs, labels) to these directories; () lifts it."""
    global _READ_ROOTS
    _READ_ROOTS = tuple(os.path.realpath(r) for r in roots)


def read_roots() -> tuple[str, ...]:
    """The roots set for this process (empty: reads are not confined)."""
    return _READ_ROOTS


def inside(real: str, roots: Sequence[str]) -> bool:
    """Whether the resolved path `real` is one of `roots` or lies under one."""
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _fd_path(fd: int, fallback: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the resolved name, accepted only if it is the same file as the descriptor
        real = os.path.realpath(fallback)
        a, b = os.fstat(fd), os.stat(real)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            raise Forbidden(f"{fallback}: changed while it was opened") from None
        return real


def open_confined(path: str | os.PathLike, roots: Sequence[str | os.PathLike] | None = None) -> BinaryIO:
    """`path` opened for binary reading after the checks above (roots None: this process's roots)."""
    roots = tuple(os.path.realpath(r) for r in roots) if roots is not None else _READ_ROOTS
    name = os.fspath(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    if roots:
        target = os.path.realpath(name)
        if not inside(target, roots):
            raise Forbidden(f"{name}: outside the server's data roots")
        name, flags = target, flags | os.O_NOFOLLOW
    try:
        fd = os.open(name, flags)
    except OSError as err:
        if roots and err.errno in (getattr(os, "ELOOP", 40), getattr(os, "EMLINK", 31)):
            raise Forbidden(f"{path}: became a symbolic link after it was checked; not read") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path}: not a regular file (a directory, FIFO, socket or device); not read")
        if roots and not inside(_fd_path(fd, name), roots):
            raise Forbidden(f"{path}: outside the server's data roots")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | os.PathLike) -> Path:
    """The path, if it names a regular file (stat only, nothing opened); NotRegularFile / FileNotFoundError else."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(f"{path}: not a regular file (a directory, FIFO, socket or device)")
    return Path(path)
