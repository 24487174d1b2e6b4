"""Real filesystems that fill up or refuse writes, for the full-disk and read-only tests.

A small tmpfs is a disk that really runs out of space (ENOSPC), a read-only bind mount one that really refuses writes
(EROFS); `chmod` cannot stand in, since CI runs as root. Both need root with the right to mount: without it the
tests skip, loudly (the reason is in pytest's summary), except under CI=true where they fail.
"""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


def _unavailable(reason: str) -> None:
    message = f"needs root and the right to mount a filesystem: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: this test must run)")
    pytest.skip(f"SKIPPED LOUDLY - {message}")


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        _unavailable(f"`mount {' '.join(args)}` failed: {done.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the block, unmounted afterwards even on failure."""
    if os.geteuid() != 0:
        _unavailable(f"running as uid {os.geteuid()}")
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` (a directory, made if missing) bound read-only onto itself for the block; writable again after."""
    if os.geteuid() != 0:
        _unavailable(f"running as uid {os.geteuid()}")
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,ro,bind", str(path))
        yield path
    finally:
        _umount(path)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the filesystem of `disk` with one file until at most `leave` bytes are free; returns that file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        chunk = b"\0" * 4096
        try:
            while True:
                st = os.statvfs(disk)
                if st.f_bavail * st.f_frsize <= leave:
                    break
                fh.write(chunk)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
    return filler
