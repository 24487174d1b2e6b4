"""Micrographs as pictures for the browser: binned, contrast-stretched, encoded once and cached on disk.

Binning (the mean of factor x factor blocks) rather than the pipeline's Fourier crop: for display it looks the same,
and it reads a 4096² MRC straight from its memory map in a fraction of the FFT's time (the first view's budget is 1 s).
"""
from __future__ import annotations

import hashlib
import io
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..confine import open_confined
from ..io import atomic_path, mrc_from_stream, read_micrograph
from ..tables import stem

RENDER_VERSION = 2
SIZES = {"thumb": 192, "view": 1024, "detail": 2048}  # longest side of the picture, at most
STRETCH_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Picture:
    """An encoded picture and its binning factor: picture pixel i covers original pixels i*factor ... i*factor+factor-1."""

    data: bytes
    media_type: str
    factor: float
    shape: tuple[int, int]  # the original micrograph's (ny, nx)


def factor_for(shape: tuple[int, int], size: int) -> int:
    """The smallest integer factor that brings the longest side to at most `size` (integer: exact pixel spacing)."""
    return max(1, math.ceil(max(shape) / size - 1e-9))


def stretch(image: np.ndarray) -> np.ndarray:
    """Linear contrast stretch between robust percentiles (of a subsample) to 8 bits."""
    flat = image.ravel()
    step = max(1, flat.size // 262_144)
    lo, hi = np.percentile(flat[::step], STRETCH_PERCENTILES)
    if not hi > lo:
        lo, hi = float(flat.min()), float(flat.max()) or 1.0
    out = (image - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0, 255).astype(np.uint8)


def bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (the remainder rows/columns are dropped); picture pixel i covers original
    pixels i*factor ... i*factor + factor - 1. Fast on a memory map: the file is read once, in order."""
    if factor == 1:
        return np.asarray(image, dtype=np.float32)
    ny, nx = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = np.asarray(image[:ny, :nx], dtype=np.float32).reshape(ny // factor, factor, nx // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def binned(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int], int]:
    """(picture pixels as float32, the original (ny, nx), the factor) for the longest side <= size.

    Every format is read from a descriptor opened by core.confine.open_confined (the server's data roots); an MRC
    with mrcfile, other formats through core.io."""
    if path.suffix.lower() not in (".mrc", ".mrcs"):
        image = read_micrograph(path).image
        factor = factor_for(image.shape, size)
        return bin_image(image, factor), tuple(int(v) for v in image.shape), factor
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_confined(path) as fh, mrc_from_stream(fh) as mrc:
                data = mrc.data
                if data is None:
                    raise ValueError("no data block; truncated or corrupt header")
                if data.ndim == 3 and data.shape[0] == 1:
                    data = data[0]
                if data.ndim != 2 or min(data.shape) < 2:
                    raise ValueError(f"expected a 2-D image, got shape {tuple(data.shape)}")
                shape = (int(data.shape[0]), int(data.shape[1]))
                factor = factor_for(shape, size)
                return bin_image(data, factor).copy(), shape, factor
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable MRC file ({err})") from None


def _encode(pixels: np.ndarray) -> tuple[bytes, str]:
    from PIL import Image, features

    im = Image.fromarray(pixels, mode="L")
    buf = io.BytesIO()
    if features.check("webp"):
        im.save(buf, format="WEBP", quality=88, method=0)
        return buf.getvalue(), "image/webp"
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), "image/png"


class Renderer:
    """Renders micrographs at the page sizes, caching each picture on disk (and the last few in memory)."""

    def __init__(self, cache_dir: Path, memory_items: int = 64) -> None:
        self.cache_dir = Path(cache_dir)
        self.memory: dict[str, Picture] = {}
        self.memory_items = memory_items
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Lock] = {}

    def _key(self, path: Path, size: str) -> str:
        st = path.stat()
        ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{size}|{RENDER_VERSION}"
        return hashlib.sha256(ident.encode()).hexdigest()[:20]

    def picture(self, path: Path, size: str = "view") -> Picture:
        """The micrograph at `size` (thumb | view | detail), from the cache when it is there."""
        if size not in SIZES:
            raise InputError(f"unknown picture size {size!r} (choose {', '.join(SIZES)})")
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        key = self._key(path, size)
        with self._lock:
            if key in self.memory:
                return self.memory[key]
            busy = self._busy.setdefault(key, threading.Lock())
        with busy:  # one render per picture, however many requests ask for it at once
            with self._lock:
                if key in self.memory:
                    return self.memory[key]
            pic = self._from_disk(stem(path), key) or self._render(path, size, stem(path), key)
            with self._lock:
                self.memory[key] = pic
                while len(self.memory) > self.memory_items:
                    self.memory.pop(next(iter(self.memory)))
                self._busy.pop(key, None)
            return pic

    def _from_disk(self, name: str, key: str) -> Picture | None:
        for f in self.cache_dir.glob(f"{glob_escape(name)}-{key}-*"):
            try:
                factor, ny, nx = f.stem[len(name) + len(key) + 2:].split("_")
                media = "image/webp" if f.suffix == ".webp" else "image/png"
                return Picture(f.read_bytes(), media, float(factor), (int(ny), int(nx)))
            except (OSError, ValueError):
                continue
        return None

    def _render(self, path: Path, size: str, name: str, key: str) -> Picture:
        if size == "thumb":  # from the viewer's picture: the expensive read and crop happen once for both
            view = self.picture(path, "view")
            from PIL import Image

            with Image.open(io.BytesIO(view.data)) as im:
                im.thumbnail((SIZES["thumb"], SIZES["thumb"]))
                pixels = np.asarray(im.convert("L"))
            factor = view.shape[1] / pixels.shape[1]  # thumbnails carry no picks: an approximate factor is enough
            shape = view.shape
        else:
            image, shape, factor = binned(path, SIZES[size])
            pixels = stretch(image)
        data, media = _encode(pixels)
        pic = Picture(data, media, float(factor), shape)
        ext = ".webp" if media == "image/webp" else ".png"
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.cache_dir / f"{name}-{key}-{factor:.6g}_{shape[0]}_{shape[1]}{ext}") as tmp:
                tmp.write_bytes(data)
        except OSError:
            pass  # a read-only OUTDIR still shows pictures, only without the disk cache
        return pic


def glob_escape(name: str) -> str:
    """`name` with glob metacharacters escaped."""
    import glob

    return glob.escape(name)
