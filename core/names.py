"""The one check of a micrograph name, wherever one arrives (a client, a STAR file, a .cs), before it names a file.

A name becomes `.pupick_records/NAME.csv`, `NAME.outputs`, `exact/NAME.csv` and their temporary `.NAME.csv.x.part.csv`
siblings, so it must be a plain file name: no '/', '\\', NUL or control characters, not '.' or '..', no leading dot
(that is where temporary and hidden files live) and at most 200 UTF-8 bytes (every file made from it then fits the
file systems' 255-byte limit). Nothing is normalised: Linux file systems compare names byte for byte, so two names
name the same file only when they are equal, and equal names are refused where the micrographs are gathered.

RELION keeps a micrograph's relative path as its name when two paths share a stem (`Movies/a.mrc`, see
adapters.relion.micrograph_names); such a name is accepted with `path_ok=True` when every '/'-separated part
passes the same rule, so the files made from it stay under the directory they are made in.
"""
from __future__ import annotations

import unicodedata

from .errors import BadName

MAX_NAME_BYTES = 200
MAX_PATH_NAME_BYTES = 1000  # a path-form name (RELION's); each part is still at most MAX_NAME_BYTES
_BAD_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")  # control characters, lone surrogates, line/paragraph separators
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def _part_problem(part: str) -> str | None:
    if part == "":
        return "is empty"
    if part in (".", ".."):
        return f"is {part!r}"
    if part.startswith("."):
        return "starts with '.'"
    for ch in part:
        if ch in "/\\":
            return f"holds {ch!r}"
        if ch == "\x00":
            return "holds a NUL character"
        if unicodedata.category(ch) in _BAD_CATEGORIES or ch in _BIDI:
            return f"holds the control character U+{ord(ch):04X}"
    if len(part.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes (UTF-8)"
    return None


def check_micrograph_name(name: object, where: str = "micrograph name", path_ok: bool = False) -> str:
    """The name unchanged if it may name files (see the module docstring); InputError naming `where` otherwise.

    `path_ok`: a relative path of such names (RELION's rule for two micrographs sharing a stem) is also accepted.
    """
    if not isinstance(name, str):
        raise BadName(f"{where} {name!r} is not a string")
    parts = name.split("/") if path_ok else [name]
    if path_ok and len(name.encode("utf-8", "surrogatepass")) > MAX_PATH_NAME_BYTES:
        problem: str | None = f"is longer than {MAX_PATH_NAME_BYTES} bytes (UTF-8)"
    else:
        problem = next((p for p in map(_part_problem, parts) if p), None)
    if problem:
        shown = repr(name if len(name) <= 80 else name[:77] + "...")
        raise BadName(f"{where} {shown} {problem}; a micrograph name must be a plain file name "
                         f"(no '/', '\\', NUL or control characters, not '.' or '..', no leading '.', "
                         f"at most {MAX_NAME_BYTES} bytes)")
    return name
