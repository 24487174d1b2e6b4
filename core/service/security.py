"""The service's security rules, one place each: the bind rule, the token file, token checks, data-root confinement.

Nothing here opens a user's path: confinement resolves names with `os.path.realpath` (lstat/readlink only) and
refuses before any file is read.
"""
from __future__ import annotations

import glob
import hmac
import ipaddress
import os
import stat
from pathlib import Path
from typing import Sequence

from ..errors import Forbidden, InputError, NotRegularFile  # noqa: F401 (Forbidden: callers import it from here)
from ..tables import IMAGE_EXTENSIONS


def is_loopback(host: str) -> bool:
    """True for loopback addresses and 'localhost' (the only binds that need no token)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if not is_loopback(host) and not token:
        raise InputError(f"binding {host} (not loopback) needs a token: give --token-file FILE "
                         "(one line, readable only by its owner)")


def read_token_file(path: str | os.PathLike) -> str:
    """The token in a file that only its owner can read (one line); InputError otherwise."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as err:
        raise InputError(f"{p}: cannot read the token file ({err.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p}: the token file is not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"{p}: the token file is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                         f"run chmod 600 {p}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{p}: cannot read the token file ({err})") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise InputError(f"{p}: the token file must hold the token on one line")
    token = lines[0]
    if len(token) < 16 or any(c.isspace() for c in token):
        raise InputError(f"{p}: the token must be at least 16 characters without spaces")
    return token


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries the token (constant-time comparison)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


class DataRoots:
    """The directories whose files clients may name; everything else is refused with `Forbidden`."""

    def __init__(self, roots: Sequence[str | os.PathLike]) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in roots]

    def __bool__(self) -> bool:
        return bool(self.roots)

    def _inside(self, real: str) -> bool:
        return any(real == str(r) or real.startswith(str(r).rstrip(os.sep) + os.sep) for r in self.roots)

    def confine(self, name: str) -> Path:
        """The absolute, normalised form of `name` (as the client wrote it), after checking that its real target is
        under a data root. Relative names are taken relative to the first root."""
        if not isinstance(name, str) or not name:
            raise InputError("a path must be a non-empty string")
        if "\x00" in name:  # the OS would refuse it; named here so the client learns why
            raise InputError("a path must not contain a NUL character")
        if not self.roots:
            raise Forbidden(f"{name}: this server has no --data-root, so it reads no paths (use /v1/pick/upload)")
        p = Path(name)
        if not p.is_absolute():
            p = self.roots[0] / p
        real = os.path.realpath(p)  # resolves '..' and every symlink without opening the target
        if not self._inside(real):
            raise Forbidden(f"{name}: outside the server's data roots")
        return Path(os.path.normpath(p))

    def regular_file(self, name: str) -> Path:
        """`confine(name)`, which must name a regular file (stat only: a FIFO is refused without being opened)."""
        p = self.confine(name)
        if p.is_file():
            return p
        if p.exists():
            raise NotRegularFile(f"{name}: not a regular file (a directory, FIFO, socket or device); not read")
        raise InputError(f"{name}: no such file")

    def expand(self, items: Sequence[str], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
        """Files, directories and globs (each confined) expanded to micrograph paths, in order, without duplicates.

        Strings, not Paths: a job may name 50,000 files, and each Path interns its parts (the interning table grows
        to fit them all and never shrinks)."""
        out: list[str] = []
        for item in items:
            if not isinstance(item, str):
                raise InputError("micrographs must be a list of strings (paths, directories or globs)")
            if any(ch in item for ch in "*?["):
                out.extend(self._glob(item, extensions))
                continue
            p = self.confine(item)
            if p.is_dir():
                files = self._listing(item, p, extensions)
                if not files:
                    raise InputError(f"{item}: directory holds no micrographs ({', '.join(extensions)})")
                out.extend(files)
            elif p.is_file():
                if p.suffix.lower() not in extensions:
                    raise InputError(f"{item}: unknown image extension {p.suffix!r} "
                                     f"(known: {', '.join(extensions)})")
                out.append(str(p))
            elif p.exists():
                raise NotRegularFile(f"{item}: not a regular file (a FIFO, socket or device); not read")
            else:
                raise InputError(f"{item}: no such file")
        return list(dict.fromkeys(out))

    def _listing(self, item: str, directory: Path, extensions: Sequence[str]) -> list[str]:
        """The micrographs in a confined directory, by name. An entry that is no symlink lies where the directory
        really is, so only symlinks are resolved again (one listing, no stat or realpath per plain file: a
        50,000-micrograph folder is listed in a fraction of the time and memory)."""
        try:
            with os.scandir(directory) as listing:
                entries = sorted((e for e in listing if os.path.splitext(e.name)[1].lower() in extensions),
                                 key=lambda e: e.name)
        except OSError as err:
            raise InputError(f"{item}: cannot read the directory ({err.strerror})") from None
        files = []
        for entry in entries:
            if entry.is_symlink():
                target = self.confine(entry.path)  # its target must lie under a data root too
                if target.is_file():
                    files.append(str(target))
            elif entry.is_file(follow_symlinks=False):
                files.append(entry.path)
        return files

    def _glob(self, pattern: str, extensions: Sequence[str]) -> list[str]:
        # wildcards only in the file name, and the directory must be inside a root before it is listed, so no
        # directory outside the roots is ever read
        p = Path(pattern)
        if any(ch in part for part in p.parts[:-1] for ch in "*?["):
            raise InputError(f"{pattern}: wildcards are allowed in the file name only, not in directories")
        directory = self.confine(str(p.parent) if p.parent != Path("") else ".")
        files = []
        for f in sorted(glob.glob(str(directory / p.name))):
            fp = self.confine(f)
            if fp.suffix.lower() in extensions and fp.is_file():
                files.append(str(fp))
        if not files:
            raise InputError(f"{pattern}: pattern matches no micrographs")
        return files
