"""Keep freed memory in the process for reuse (glibc malloc on Linux), so big tensors do not page-fault every call.

glibc serves allocations above its mmap threshold (dynamic, at most 32 MB) with fresh mmap()ed pages and returns
them to the kernel on free: every network call on a large scoring tile or training batch then touches new pages
(the first write of each 4 KiB page is a minor fault, zero-filled by the kernel). On a 1024² tile that was 78 000
faults and a quarter of the network's time per view. With mmap off for large blocks and a high trim threshold,
freed blocks stay in the heap and the next call reuses them: memory stays at the peak of one call instead.
"""
from __future__ import annotations

import ctypes
import platform
import threading

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap above this goes back to the kernel

_lock = threading.Lock()
_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed large blocks for reuse (once per process); False where that is not glibc."""
    with _lock:
        if "done" not in _state:
            _state["done"] = _configure()
        return _state["done"]


def _configure() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the trim threshold first, so that a heap never shrinks after each call
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_MMAP_MAX, 0))


def release_free_memory() -> bool:
    """Hand the free memory of every malloc arena back to the kernel (glibc malloc_trim); False where not glibc.

    For after a large, short-lived allocation (a 50,000-micrograph request): with the high trim threshold above, what
    it freed would otherwise stay resident for the life of the process. The scorer's kept blocks go too; its next
    call faults them in once.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
