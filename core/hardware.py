"""What the CPU offers, read once: the instruction-set flags that decide the scoring arithmetic."""
from __future__ import annotations

import functools
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read, e.g. not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    lines = (line.split(":", 1)[-1] for line in text.splitlines() if line.startswith("flags"))
    return frozenset(word for line in lines for word in line.split())


def cpu_has(*names: str) -> bool:
    """True when the CPU has any of these flags."""
    return any(n in cpu_flags() for n in names)
