"""core.allocator: freed large blocks are kept for reuse (no fresh pages on the next allocation)."""
import platform
import resource

import numpy as np
import pytest

from pupick.core.allocator import keep_freed_memory, release_free_memory


def _faults_of_a_fresh_array(mb: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(mb << 18, dtype=np.float32)  # written, so every page is touched
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_a_freed_large_block_is_reused_without_page_faults():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # once per process; later calls say the same
    _faults_of_a_fresh_array(80)  # the heap grows to hold it once
    # fresh pages: about 550 faults here (transparent huge pages), 20 480 without them; reused: none
    assert _faults_of_a_fresh_array(80) < 100


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_released_memory_leaves_the_process():
    assert keep_freed_memory() is True
    _faults_of_a_fresh_array(80)  # kept in the heap after it is freed
    kept = _rss_mb()
    assert release_free_memory() is True
    assert _rss_mb() < kept - 60  # the 80 MB block went back to the kernel
    assert _faults_of_a_fresh_array(80) > 400  # and the next one takes fresh pages again
