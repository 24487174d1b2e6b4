"""Micrograph I/O (MRC, TIFF, PNG/JPEG), input-list expansion and atomic writes."""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from .errors import InputError
from .tables import IMAGE_EXTENSIONS

MIN_SIZE = 32  # pixels per side; anything smaller cannot hold a particle and a receptive field


@dataclass
class Micrograph:
    """A micrograph's pixels (float32, row = y, column = x) and its pixel size in Å (None if unknown)."""

    image: np.ndarray
    pixel_size: float | None
    path: Path


def _check_pixels(image: np.ndarray, path: Path) -> np.ndarray:
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise InputError(f"{path}: expected a 2-D image or a single-section stack, got shape {tuple(image.shape)}")
    if min(image.shape) < MIN_SIZE:
        raise InputError(f"{path}: image is too small ({image.shape[1]}x{image.shape[0]} px; need >= {MIN_SIZE})")
    image = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(image)
    if not finite.all():
        bad = int((~finite).sum())
        raise InputError(f"{path}: {bad} pixel(s) are NaN or infinite")
    if float(image.max()) == float(image.min()):
        raise InputError(f"{path}: image is constant (every pixel = {float(image.min())})")
    return image


def mrc_from_stream(fh: BinaryIO):
    """An MRC read from an open binary file, read-only (mrcfile.MrcFile does the same with a file it opens)."""
    from mrcfile.mrcinterpreter import MrcInterpreter

    mrc = MrcInterpreter(permissive=True)
    mrc._iostream, mrc._read_only = fh, True
    mrc._read()
    return mrc


def _read_mrc(path: Path, fh: BinaryIO) -> tuple[np.ndarray, float | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrc_from_stream(fh) as mrc:
                if mrc.data is None:
                    raise InputError(f"{path}: not a readable MRC file (no data block; truncated or corrupt header)")
                data = np.array(mrc.data, dtype=np.float32)  # a writable copy of the read-only array
                voxel = mrc.voxel_size
                ps = float(voxel.x) if voxel is not None else 0.0
    except InputError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable MRC file ({err})") from None
    return data, (ps if ps > 0 and np.isfinite(ps) else None)


def _read_tiff(path: Path, fh: BinaryIO) -> tuple[np.ndarray, float | None]:
    import tifffile

    try:
        with tifffile.TiffFile(fh, name=path.name) as tif:  # a descriptor's file object: named, not opened by name
            data = tif.asarray()
    except Exception as err:  # tifffile raises several unrelated types for corrupt files
        raise InputError(f"{path}: not a readable TIFF file ({err})") from None
    if data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] > 4:
        data = data[..., :3].mean(axis=-1)
    return data, None


def _read_pil(path: Path, fh: BinaryIO) -> tuple[np.ndarray, float | None]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(fh) as im:
            im.load()
            # 16-bit and float images keep their values; only colour images are reduced to luminance
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
                data = np.asarray(im)
            else:
                data = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise InputError(f"{path}: not a readable image ({err})") from None
    return data, None


_READERS = {
    ".mrc": _read_mrc, ".mrcs": _read_mrc, ".tif": _read_tiff, ".tiff": _read_tiff,
    ".png": _read_pil, ".jpg": _read_pil, ".jpeg": _read_pil,
}


def read_micrograph(path: str | os.PathLike, roots: Sequence[str] | None = None) -> Micrograph:
    """Read one micrograph as float32 with its pixel size (MRC header; None for formats without one).

    The file is opened by core.confine.open_confined (under `roots`, else this process's read roots, if any) and
    read from that descriptor only."""
    from .confine import open_confined

    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"{path}: unknown image extension {path.suffix!r} (known: {', '.join(IMAGE_EXTENSIONS)})")
    try:
        fh = open_confined(path, roots)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    with fh:
        data, ps = reader(path, fh)
    return Micrograph(_check_pixels(data, path), ps, path)


def read_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(ny, nx) of a micrograph without reading all its pixels where the format allows."""
    path = Path(path)
    if path.suffix.lower() in (".mrc", ".mrcs"):
        import mrcfile

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                    shape = mrc.data.shape
            return int(shape[-2]), int(shape[-1])
        except Exception as err:
            raise InputError(f"{path}: not a readable MRC file ({err})") from None
    img = read_micrograph(path).image
    return int(img.shape[0]), int(img.shape[1])


def _create_temp_beside(target: Path) -> Path:
    """Create an empty temporary file beside `target` with the mode a plain open() would give.

    mkstemp makes files 0600 whatever the umask; opening with 0666 lets the kernel apply the umask instead. A file
    that replaces an existing one keeps that file's permissions, as writing into it with open() would.
    """
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = None
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.part{target.suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        return tmp
    raise FileExistsError(f"{target}: no free temporary name beside it")


# Errors of the place written to, not of pupick: a full disk or quota, a read-only or refusing filesystem.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM})


def os_reason(err: OSError) -> str:
    """An OSError's reason in words, lower case ("no space left on device", "read-only file system")."""
    return (err.strerror or str(err)).lower()


def is_write_error(err: BaseException) -> bool:
    """True for an OSError that the place written to causes (full, over quota, read-only, not permitted)."""
    return isinstance(err, OSError) and err.errno in WRITE_ERRNOS


def is_disk_error(err: BaseException) -> bool:
    """True for an OSError only a write can cause: a full disk or quota, a file too large, a read-only filesystem."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def cannot_write(target: str | os.PathLike, err: OSError) -> InputError:
    """The one-line error for a write that failed: the path and why ("no space left on device in DIR")."""
    target = Path(target)
    where = err.filename if isinstance(err.filename, str) and err.filename else target
    return InputError(f"{target}: cannot write ({_reason(Path(where), err)})")


_cannot_write = cannot_write


def _reason(where: Path, err: OSError) -> str:
    """Why a path cannot be written, in words (the blocking file for 'not a directory')."""
    if isinstance(err, NotADirectoryError) or err.errno == errno.ENOTDIR:
        for parent in [where, *where.parents]:
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a file, not a directory"
    if isinstance(err, FileExistsError):
        return f"{where} exists and is not a directory"
    return f"{os_reason(err)} in {where.parent}" if err.strerror else str(err)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`, on failure remove it.

    The file ends with the permissions a plain open() gives under the umask (or the replaced file's).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _create_temp_beside(target)
    except OSError as err:
        raise _cannot_write(target, err) from None
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as err:
        if is_write_error(err):  # the disk filled up (or turned read-only) while writing: one line
            raise cannot_write(target, err) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def hold_lock(path: Path, create_mode: int, extra_flags: int = 0) -> tuple[int | None, str]:
    """An exclusive, non-blocking `flock` on `path`: (its descriptor, "") when taken, else (None, the holder's pid as
    written in the file, or "unknown"); the taker writes its own pid. OSError if the file cannot be opened."""
    import fcntl  # POSIX only; io is imported on every platform

    fd = os.open(path, os.O_RDWR | os.O_CREAT | extra_flags, create_mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        return None, holder
    try:  # the holder's pid, for the message a second taker gets (nothing lost if it cannot be written)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as err:
        if not is_write_error(err):
            os.close(fd)
            raise
    return fd, ""


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write a text file under a temporary name and rename it into place."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


# ---------------------------------------------------------------- the output rule, for every command
# No command writes over one of its inputs, and an existing output is replaced only by the same kind of file.

_MAGIC = [(b"\x93NUMPY", "npy"), (b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg"), (b"II*\x00", "tiff"),
          (b"MM\x00*", "tiff"), (b"%PDF", "pdf")]
KIND_NAMES = {"torch": "a model file", "npy": "a cryoSPARC .cs file", "png": "a PNG image", "jpeg": "a JPEG image",
              "tiff": "a TIFF image", "pdf": "a PDF", "mrc": "an MRC image", "zip": "a zip archive",
              "text": "a text file", "binary": "a binary file", "empty": "an empty file"}


def file_kind(path: str | os.PathLike) -> str:
    """What an existing file holds, from its first bytes: torch, npy, png, jpeg, tiff, pdf, mrc, zip, text, ..."""
    with open(path, "rb") as fh:
        head = fh.read(8192)
    if not head:
        return "empty"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b"PK\x03\x04"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                return "torch" if any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist()) else "zip"
        except (zipfile.BadZipFile, OSError):
            return "zip"
    if len(head) >= 212 and head[208:211] == b"MAP":
        return "mrc"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError as err:  # a multi-byte character cut at the end of the sample is still text
            if err.start >= len(head) - 3:
                return "text"
    return "binary"


class Protected:
    """The inputs of a command, indexed once: files by device and inode, directories by resolved path."""

    def __init__(self, inputs: Sequence[str | os.PathLike] = ()) -> None:
        self.files: dict[tuple[int, int], Path] = {}
        self.folders: list[tuple[Path, Path]] = []
        for item in inputs:
            p = item if isinstance(item, Path) else Path(item)
            try:
                st = os.stat(p)
            except (OSError, ValueError):
                continue
            if stat.S_ISDIR(st.st_mode):  # one stat an input (an on-the-fly rerun's inputs are many)
                self.folders.append((p, p.resolve()))
            else:
                self.files[(st.st_dev, st.st_ino)] = p

    def why(self, target: Path) -> str | None:
        """Why writing `target` would write over an input, or None."""
        try:
            st = target.stat()
        except OSError:
            return None
        if (st.st_dev, st.st_ino) in self.files:
            return "is an input of this command"
        resolved = target.resolve()
        for shown, folder in self.folders:
            if resolved.is_relative_to(folder):
                return f"lies in the input directory {shown}"
        return None


def _writable_ancestor(target: Path) -> None:
    """Raise InputError unless files can be created where `target` will go (nothing is left behind)."""
    for parent in target.parents:
        if parent.exists():
            break
    else:
        return
    if not parent.is_dir():
        raise InputError(f"{target}: cannot write ({parent} is a file, not a directory)")
    try:
        _create_temp_beside(parent / target.name).unlink()
    except OSError as err:
        raise InputError(f"{target}: cannot write in {parent} ({os_reason(err)})") from None


def check_output(target: str | os.PathLike, kind: str, inputs: Sequence[str | os.PathLike] | Protected = (),
                 probe: bool = True) -> None:
    """Refuse an output that is one of `inputs`, an existing file of another kind, or cannot be written.

    `kind` is what will be written (a `file_kind` value, e.g. "torch" for a model, "text" for CSV/STAR/JSON);
    an empty file of any kind may be replaced. Inputs that are directories protect every file inside them.
    `probe=False` skips the writability probe (for many files in one directory already checked with
    check_output_dir). For many targets, pass the inputs once as `Protected(inputs)`.
    """
    target = Path(target)
    if target.is_dir():
        raise InputError(f"{target}: is a directory; give a file name")
    if target.exists():
        why = (inputs if isinstance(inputs, Protected) else Protected(inputs)).why(target)
        if why:
            raise InputError(f"{target}: {why}; choose another output name")
        found = file_kind(target)
        if found != kind and found != "empty":
            raise InputError(f"{target}: exists and is {KIND_NAMES.get(found, found)}, not "
                             f"{KIND_NAMES.get(kind, kind)}; refusing to replace it (remove it or choose "
                             "another name)")
    if probe:
        _writable_ancestor(target)


def check_output_dir(path: str | os.PathLike) -> None:
    """Refuse an output directory that is a file, lies under a file, or cannot be written in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a directory")
    if path.is_dir():
        try:
            _create_temp_beside(path / "pupick").unlink()
        except OSError as err:
            raise InputError(f"{path}: cannot write in this directory ({os_reason(err)})") from None
        return
    _writable_ancestor(path)


def write_mrc(path: str | os.PathLike, image: np.ndarray, pixel_size: float | None = None) -> None:
    """Write a float32 MRC (mode 2) with the pixel size in the header, atomically."""
    import mrcfile

    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(image, dtype=np.float32))
            if pixel_size:
                mrc.voxel_size = float(pixel_size)


def expand_inputs(items: Sequence[str | os.PathLike], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Expand files, directories, globs and @list.txt files (one path a line) into a sorted-unique path list.

    Directories contribute their files with a known extension (not recursive); order follows the input, with
    each directory's and glob's files sorted by name; duplicates are dropped.
    """
    out: list[Path] = []
    for item in items:
        s = str(item)
        if s.startswith("@"):
            listfile = Path(s[1:])
            try:
                lines = listfile.read_text().splitlines()
            except OSError as err:
                raise InputError(f"{listfile}: cannot read the list file ({err.strerror})") from None
            base = listfile.parent
            entries = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
            if not entries:
                raise InputError(f"{listfile}: the list file names no micrographs (nothing to do)")
            out.extend(expand_inputs([e if os.path.isabs(e) or Path(e).exists() else str(base / e) for e in entries], extensions))
            continue
        p = Path(s)
        if p.is_dir():
            try:
                with os.scandir(p) as entries:  # the entry's type comes with the listing: no stat per file
                    names = sorted(e.name for e in entries  # names, not Paths: sorting Paths is slow
                                   if os.path.splitext(e.name)[1].lower() in extensions and e.is_file())
                files = [p / name for name in names]
            except OSError as err:
                raise InputError(f"{p}: cannot read the directory ({err.strerror})") from None
            if not files:
                raise InputError(f"{p}: directory holds no micrographs ({', '.join(extensions)})")
            out.extend(files)
        elif any(ch in s for ch in "*?["):
            files = sorted(Path(f) for f in glob.glob(s) if Path(f).is_file())
            if not files:
                raise InputError(f"{s}: pattern matches no files")
            out.extend(files)
        else:
            if not p.exists():
                raise InputError(f"{p}: no such file")
            out.append(p)
    return list(dict.fromkeys(out))
