"""core.hardware: the CPU's flags, read once, as whole words."""
from __future__ import annotations

from pathlib import Path

import pytest

from pupick.core.hardware import cpu_flags, cpu_has


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo (not Linux)")
def test_flags_are_the_words_of_the_cpuinfo_flags_lines():
    text = Path("/proc/cpuinfo").read_text()
    first = next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split()
    assert set(first) <= cpu_flags()
    assert cpu_has(first[0]) and cpu_has("no_such_flag", first[-1])
    assert not cpu_has("no_such_flag") and not cpu_has("avx512")  # a prefix of a flag is not a flag
