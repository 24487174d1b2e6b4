"""Run a console-script entry point in process, as a test sees it: (exit code, stdout, stderr)."""
from __future__ import annotations

from typing import Any, Callable


def run_console(main: Callable[[list[str]], Any], capsys: Any, args: list) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err
