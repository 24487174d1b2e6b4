"""Micrograph name matching across suites: cryoSPARC uid prefixes and motion-correction suffixes.

`canonical_name(name)` reduces a micrograph name to the form all suites share; `match_across(keys, micrographs)`
maps table names onto micrograph paths: first by the core rule (relative path, then stem), then, for names still
unmatched, after removing motion-correction suffixes, then a cryoSPARC uid prefix on either side, then both.
A stage only accepts unique hits; two candidates at one stage is an ambiguity error.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Iterable, Sequence

from pupick.core.errors import InputError
from pupick.core.tables import describe_mismatch, match_names, stem

UID_PREFIX = re.compile(r"^\d+_")
# longest first: `_patch_aligned_doseweighted` must not leave `_patch_aligned` behind
MOTION_SUFFIXES = ("_patch_aligned_doseweighted", "_patch_aligned", "_doseweighted", "_rigid_aligned")


def strip_motion_suffix(name: str) -> str:
    """Remove one trailing motion-correction suffix (`mic_patch_aligned_doseweighted` -> `mic`)."""
    for suffix in MOTION_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def strip_uid(name: str) -> str:
    """Remove a leading cryoSPARC uid prefix (`012345_mic` -> `mic`); a name that is only digits stays."""
    stripped = UID_PREFIX.sub("", name, count=1)
    return stripped or name


def canonical_name(name: str | os.PathLike) -> str:
    """Stem without a cryoSPARC uid prefix and motion-correction suffix: the name every suite agrees on."""
    return strip_uid(strip_motion_suffix(stem(name)))


_FORMS: list[tuple[Callable[[str], str], Callable[[str], str]]] = [
    (strip_motion_suffix, strip_motion_suffix),
    (lambda s: strip_uid(strip_motion_suffix(s)), strip_motion_suffix),
    (strip_motion_suffix, lambda s: strip_uid(strip_motion_suffix(s))),
    (lambda s: strip_uid(strip_motion_suffix(s)), lambda s: strip_uid(strip_motion_suffix(s))),
]


def match_across(
    keys: Iterable[str],
    micrographs: Sequence[str | os.PathLike],
    what: str = "picks",
    require_all: bool = False,
) -> dict[str, int]:
    """Map each key to an index into `micrographs` by path, stem, then cross-suite forms.

    Raises InputError when a key is ambiguous, when nothing matches, or (require_all) when any key is unmatched;
    the message lists examples of both sides.
    """
    keys = list(dict.fromkeys(str(k) for k in keys))
    result = match_names(keys, micrographs, what)
    mic_stems = [stem(m) for m in micrographs]
    for key_form, mic_form in _FORMS:
        todo = [k for k in keys if k not in result]
        if not todo:
            break
        index: dict[str, list[int]] = {}
        for i, s in enumerate(mic_stems):
            index.setdefault(mic_form(s), []).append(i)
        for k in todo:
            hits = index.get(key_form(stem(k)), [])
            if len(hits) > 1:
                names = ", ".join(str(micrographs[i]) for i in hits[:3])
                raise InputError(f"{what}: micrograph name {k!r} is ambiguous; it matches {names}")
            if hits:
                result[k] = hits[0]
    missing = [k for k in keys if k not in result]
    if keys and not result:
        raise InputError(describe_mismatch(keys, micrographs, what))
    if require_all and missing:
        examples = ", ".join(missing[:4])
        known = ", ".join(mic_stems[:4])
        raise InputError(
            f"{what}: {len(missing)} micrograph name(s) match none of the {len(mic_stems)} micrographs "
            f"(e.g. {examples}; micrographs: {known})"
        )
    return result
