"""The older cryosparc-tools release the live tests drive, installed next to the 5.x one from `make install`.

Two releases cannot share a process: the 4.x one runs in subprocesses with its directory on PYTHONPATH.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# PUPICK_TEST_CS4=4.6.1 (or 4.4.1 ...) runs the same tests against another 4.x release, in its own directory.
CS47_RELEASE = os.environ.get("PUPICK_TEST_CS4", "4.7.1")
CS47_DIR = Path(__file__).resolve().parents[2] / (".venv-cs47" if CS47_RELEASE == "4.7.1" else
                                                  f".venv-cs{CS47_RELEASE.replace('.', '')}")


def ensure_cs47(target: Path = CS47_DIR) -> Path:
    """Install that cryosparc-tools release (no dependencies: the venv has them) into `target` once (the registry)."""
    marker = target / "cryosparc" / "__init__.py"
    if marker.is_file() and f'"{CS47_RELEASE}"' in marker.read_text():
        return target
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp),
                    f"cryosparc-tools=={CS47_RELEASE}"], check=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
