"""The CLI starts without torch or Dask: `pupick --help` imports every command's module, and none of them loads either.

The other torch-free paths are tested where they live: `pupick convert` (tests/adapters/test_convert.py), server mode
and `pupick view` (tests/service/test_server_mode_torch_free.py), the RELION job's server mode (tests/relion/test_relion_server.py).
"""
from __future__ import annotations

import json
import subprocess
import sys

from pupick.core.cli import COMMANDS

# runs `pupick ARGS...` in a fresh interpreter, then prints the modules it loaded (as its last stdout line)
RUN = ("import json, sys\nfrom pupick.core.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
       "    print(json.dumps(sorted(sys.modules)))")
HEAVY = ("torch", "dask", "distributed")


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`pupick ARGS` in its own process: the result and the names of the modules it imported."""
    done = subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, timeout=600)
    return done, set(json.loads(done.stdout.strip().splitlines()[-1]))


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY}


def test_help_imports_every_command_and_neither_torch_nor_dask():
    done, modules = run_cli("--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(name in done.stdout for name in COMMANDS)
    assert {f"pupick.core.cli.{m}" for m in COMMANDS.values()} <= modules  # each command's module was imported
    assert heavy(modules) == set()
