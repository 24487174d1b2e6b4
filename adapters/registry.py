"""One entry point for every pick format: FORMATS, read_picks, write_picks, read_micrographs.

- read_picks(path, fmt=None, micrographs=None, **kw) -> Picks. `path` is a file or a directory of per-micrograph
  files; fmt is detected from the extension (and a .tsv/.txt header) when not given. With `micrographs` (a
  Micrographs table), picks are checked against the micrograph shapes.
- write_picks(df, path, fmt=None, micrographs=None, box_size=None, diameter_px=None, suffix="pupick",
  version=30001, base_dir=None, overwrite=True) -> list[Path] written. Per-micrograph formats (relion, box, eman2)
  write into a directory (or one file when there is one micrograph and `path` has the format's extension).
- read_micrographs(path, read_shapes=False) -> Micrographs from a RELION micrographs STAR, a cryoSPARC exposures
  .cs, or micrograph files (a directory, glob, @list or one image; shapes from the headers).
- check_coordinates(picks, source, micrographs=None) and scale_picks(picks, factor) for the convert command.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pupick.core.errors import InputError
from pupick.core.io import Protected, check_output, check_output_dir
from pupick.core.tables import IMAGE_EXTENSIONS, empty_picks, stem, validate_picks


@dataclass(frozen=True)
class Format:
    """A pick file format: its name, file extensions and whether it holds one micrograph per file."""

    name: str
    extensions: tuple[str, ...]
    per_micrograph: bool
    description: str


FORMATS: dict[str, Format] = {
    "star": Format("star", (".star",), False,
                   "RELION STAR: reads coordinate lists, particles, per-micrograph and coords_suffix files; "
                   "writes one data_particles table"),
    "relion": Format("relion", (".star",), True,
                     "RELION per-micrograph coordinate STARs + the autopick.star list, in a directory"),
    "box": Format("box", (".box",), True, "EMAN .box (corner + box size), one per micrograph"),
    "eman2": Format("eman2", ("_info.json",), True, "EMAN2 <micrograph>_info.json (boxes), one per micrograph"),
    "topaz": Format("topaz", (".txt", ".tsv"), False, "Topaz table: image_name x_coord y_coord [score]"),
    "csv": Format("csv", (".csv",), False, "CSV table: micrograph,x,y[,score][,path]"),
    "tsv": Format("tsv", (".tsv",), False, "TSV table: micrograph x y [score] [path]"),
    "cs": Format("cs", (".cs",), False, "cryoSPARC particles .cs (cryosparc-tools)"),
}


def format_list() -> str:
    """`star (.star), relion (directory), ...` for error messages."""
    return ", ".join(f"{f.name} ({'directory of ' if f.per_micrograph else ''}{'/'.join(f.extensions)})"
                     for f in FORMATS.values())


def _check_fmt(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (formats: {format_list()})")
    return FORMATS[fmt]


def _sniff_header(path: Path) -> str | None:
    try:
        with open(path, "r", errors="replace") as fh:
            for line in fh:
                if line.strip() and not line.lstrip().startswith("#"):
                    fields = line.replace(",", " ").split()
                    if "image_name" in fields:
                        return "topaz"
                    if "micrograph" in fields:
                        return "tsv"
                    return None
    except OSError:
        return None
    return None


def detect_format(path: str | os.PathLike, for_writing: bool = False) -> str:
    """The format name for a file path from its extension (and, for reading .tsv/.txt, its header)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith("_info.json") or name.endswith(".json"):
        return "eman2"
    ext = path.suffix.lower()
    if ext == ".star":
        return "star"
    if ext in (".box", ".cs", ".csv"):
        return ext[1:]
    if ext in (".tsv", ".txt"):
        if not for_writing and path.is_file():
            sniffed = _sniff_header(path)
            if sniffed:
                return sniffed
            raise InputError(f"{path}: cannot tell the table's format from its header (Topaz tables start with "
                             "image_name x_coord y_coord; pick tables with micrograph x y); give --from")
        return "topaz" if ext == ".txt" else "tsv"
    what = "a directory" if path.is_dir() or not ext else f"extension {ext!r}"
    raise InputError(f"{path}: cannot tell the format from {what}; give the format with --from/--to "
                     f"(formats: {format_list()})")


def _cryosparc():
    try:
        from . import cryosparc
    except ModuleNotFoundError as err:
        if err.name in ("pupick.adapters.cryosparc", "cryosparc", "cryosparc.dataset"):
            raise InputError(f"cryoSPARC .cs support is unavailable ({err}); install cryosparc-tools") from None
        raise
    return cryosparc


# ---------------------------------------------------------------- reading


def _read_file(path: Path, fmt: str, **kw) -> pd.DataFrame:
    if fmt in ("star", "relion"):
        from . import relion

        return relion.read_star_picks(path, base_dir=kw.get("base_dir"), suffix=kw.get("suffix"))
    if fmt == "box":
        from .eman import read_box

        return read_box(path)
    if fmt == "eman2":
        from .eman import read_info_json

        return read_info_json(path)
    if fmt == "topaz":
        from .topaz import read_topaz

        return read_topaz(path)
    if fmt in ("csv", "tsv"):
        from .table import read_table

        return read_table(path, sep="," if fmt == "csv" else None)
    if fmt == "cs":
        return _cryosparc().read_particles(path)
    raise InputError(f"{path}: format {fmt!r} cannot be read (formats: {format_list()})")


def _dir_files(path: Path, fmt: str | None) -> tuple[str, list[Path]]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    kinds = {
        "eman2": [p for p in files if p.name.lower().endswith("_info.json")],
        "box": [p for p in files if p.suffix.lower() == ".box"],
        "relion": [p for p in files if p.suffix.lower() == ".star"],
    }
    if fmt is not None:
        fmt = "relion" if fmt == "star" else fmt
        if fmt not in kinds:
            raise InputError(f"{path}: a directory can hold per-micrograph files of formats "
                             f"{', '.join(kinds)}, not {fmt!r}")
        chosen = fmt
    else:
        present = [k for k, v in kinds.items() if v]
        if len(present) > 1:
            raise InputError(f"{path}: the directory holds several pick formats ({', '.join(present)}); "
                             "give the format")
        if not present:
            raise InputError(f"{path}: no pick files found in the directory (looked for .star, .box, _info.json)")
        chosen = present[0]
    if not kinds[chosen]:
        raise InputError(f"{path}: no {chosen} files in the directory")
    return chosen, kinds[chosen]


def _read_dir(path: Path, fmt: str | None, **kw) -> pd.DataFrame:
    chosen, files = _dir_files(path, fmt)
    if chosen == "relion":
        from . import relion

        from .star import read_star

        stars = [read_star(p) for p in files if not p.name.startswith("coords_suffix_")]
        lists = [st for st in stars if relion._kind(st) == "list"]
        if len(lists) > 1:
            raise InputError(f"{path}: the directory holds {len(lists)} coordinate lists "
                             f"({', '.join(st.path.name for st in lists[:3])}); give one of them")
        if lists:
            return relion._coordinate_list(lists[0], kw.get("base_dir"))
        tables = [relion._coordinates(st, suffix=kw.get("suffix")) for st in stars]
    else:
        tables = [_read_file(p, chosen) for p in files]
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else empty_picks()


def read_picks(path: str | os.PathLike, fmt: str | None = None, micrographs: pd.DataFrame | None = None,
               **kw) -> pd.DataFrame:
    """Picks from a file or a directory of per-micrograph files, checked (and bounded when shapes are known)."""
    path = Path(path)
    if fmt is not None:
        _check_fmt(fmt)
    if path.is_dir():
        df = _read_dir(path, fmt, **kw)
    else:
        if not path.exists():
            raise InputError(f"{path}: no such file or directory")
        df = _read_file(path, fmt or detect_format(path), **kw)
    df = validate_picks(df, str(path))
    check_coordinates(df, str(path), micrographs)
    return df


def check_coordinates(picks: pd.DataFrame, source: str, micrographs: pd.DataFrame | None = None) -> None:
    """InputError for a pick that is not finite, negative, or outside its micrograph (when the shape is known)."""
    x = picks["x"].to_numpy(dtype=float)
    y = picks["y"].to_numpy(dtype=float)
    bad = ~np.isfinite(x) | ~np.isfinite(y) | (x < 0) | (y < 0)
    limits = ""
    if (micrographs is not None and len(micrographs) and len(picks) and {"nx", "ny", "path"} <= set(micrographs.columns)
            and micrographs["nx"].notna().any()):
        from .naming import match_across

        mapping = match_across(picks["micrograph"].astype(str), micrographs["path"].astype(str).tolist(), source)
        rows = picks["micrograph"].astype(str).map(mapping).to_numpy(dtype=float)  # NaN: no micrograph row
        known = ~np.isnan(rows)
        nx, ny = np.full(len(picks), np.nan), np.full(len(picks), np.nan)
        nx[known] = micrographs["nx"].to_numpy(dtype=float)[rows[known].astype(int)]
        ny[known] = micrographs["ny"].to_numpy(dtype=float)[rows[known].astype(int)]
        outside = (np.isfinite(nx) & (x >= nx)) | (np.isfinite(ny) & (y >= ny))
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            limits = f" (the micrograph is {int(nx[i])} x {int(ny[i])} px: x < {int(nx[i])}, y < {int(ny[i])})"
        bad |= outside
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{source}: pick {i + 1} on micrograph {picks['micrograph'].iloc[i]}: "
                         f"x={x[i]:g}, y={y[i]:g} is outside the micrograph{limits}"
                         + (f" ({int(bad.sum())} such picks)" if bad.sum() > 1 else ""))


def scale_picks(picks: pd.DataFrame, factor: float) -> pd.DataFrame:
    """Coordinates multiplied by `factor` (e.g. 4 from a 4x-binned frame to the unbinned one)."""
    if not factor > 0 or not np.isfinite(factor):
        raise InputError(f"--coord-factor must be a positive number (got {factor})")
    out = picks.copy()
    out["x"] = out["x"] * factor
    out["y"] = out["y"] * factor
    return out


# ---------------------------------------------------------------- writing


def _file_stem(picks: pd.DataFrame) -> dict[str, str]:
    """Relative output name (no extension) per micrograph: its stem, or its path when stems collide."""
    from .relion import JOB_PREFIX

    names = picks["micrograph"].astype(str).unique().tolist()
    paths = {}
    if "path" in picks.columns:
        paths = picks.dropna(subset=["path"]).groupby("micrograph")["path"].first().astype(str).to_dict()
    stems = [stem(n) for n in names]
    counts = Counter(stems)
    out = {}
    for n, s in zip(names, stems):
        if counts[s] == 1:
            out[n] = s
        else:
            rel = JOB_PREFIX.sub("", paths.get(n, n).replace("\\", "/").lstrip("/"), count=1)
            out[n] = str(Path(rel).parent / stem(rel))
    return out


def _refuse_existing(targets: list[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [t for t in targets if t.exists()]
    if existing:
        raise InputError(f"{existing[0]}: already exists ({len(existing)} output file(s) would be replaced); "
                         "choose another output or allow overwriting")


def write_picks(df: pd.DataFrame, path: str | os.PathLike, fmt: str | None = None,
                micrographs: pd.DataFrame | None = None, box_size: int | None = None,
                diameter_px: float | None = None, suffix: str = "pupick", version: int | str | None = 30001,
                base_dir: str | os.PathLike | None = None, overwrite: bool = True,
                inputs: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Write picks in a format (detected from the extension when not given); returns the files written.

    No file of `inputs` (nor inside an input directory) is written over, and an existing output is replaced only
    when it is the same kind of file (core.io.check_output).
    """
    try:
        return _write_picks(df, Path(path), fmt, micrographs, box_size, diameter_px, suffix, version, base_dir,
                            overwrite, list(inputs))
    except OSError as err:
        where = err.filename or path
        raise InputError(f"{where}: cannot write ({err.strerror or err})") from None


STREAMED_FORMATS = ("csv", "tsv", "star", "topaz")


def write_picks_stream(pieces: Iterable[pd.DataFrame], path: str | os.PathLike, fmt: str) -> int:
    """write_picks for a single-file format (STREAMED_FORMATS) from the pieces of one table, in order: the same
    bytes as for their concatenation, written a piece at a time and renamed into place; returns the rows written.
    (topaz: the score column is written, as it is for picks whose scores are known.)"""
    from pupick.core.io import atomic_path

    if fmt not in STREAMED_FORMATS:
        raise InputError(f"{path}: {fmt} cannot be written in pieces (choose {', '.join(STREAMED_FORMATS)})")
    rows = 0
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        if fmt == "star":
            from .relion import particles_star_chunks

            def counted():
                nonlocal rows
                for piece in pieces:
                    rows += len(piece)
                    yield piece

            for text in particles_star_chunks(counted()):
                fh.write(text)
            return rows
        first = True
        for piece in pieces:
            if not len(piece) and not first:
                continue
            if fmt == "topaz":
                from .topaz import topaz_text

                fh.write(topaz_text(piece, header=first, score=True))
            else:
                from .table import table_text

                fh.write(table_text(piece, "," if fmt == "csv" else "\t", header=first))
            first = False
            rows += len(piece)
        if first:
            raise ValueError("write_picks_stream needs at least one piece (an empty one gives the header)")
    return rows


def _guard(targets: list[Path], kind: str, inputs: list) -> None:
    """The output rule for every target, probing the writability of each directory once."""
    probed: set[Path] = set()
    protected = Protected(inputs)
    for t in targets:
        check_output(t, kind, protected, probe=t.parent not in probed)
        probed.add(t.parent)


def _write_picks(df, path: Path, fmt, micrographs, box_size, diameter_px, suffix, version, base_dir,
                 overwrite, inputs) -> list[Path]:
    fmt = fmt or detect_format(path, for_writing=True)
    spec = _check_fmt(fmt)
    picks = validate_picks(df, "picks")
    kind = "npy" if fmt == "cs" else "text"
    if spec.per_micrograph:
        single = any(path.name.lower().endswith(e) for e in spec.extensions) and not path.is_dir()
        if fmt == "relion":
            from . import relion

            v = relion.parse_version(version)
            if single:
                if picks["micrograph"].nunique() > 1:
                    raise InputError(f"{path}: {picks['micrograph'].nunique()} micrographs cannot go into one "
                                     "per-micrograph STAR; give a directory")
                _refuse_existing([path], overwrite)
                _guard([path], kind, inputs)
                relion.write_coordinates_star(picks, path, v)
                return [path]
            if not overwrite and path.is_dir() and any(path.rglob("*.star")):
                raise InputError(f"{path}: already holds STAR files; choose an empty output directory")
            check_output_dir(path)
            return relion.write_star_dir(picks, path, suffix=suffix, micrographs=micrographs, version=v,
                                         base_dir=base_dir, check=lambda targets: _guard(targets, kind, inputs))
        from .eman import box_size_for, write_box, write_info_json

        size = box_size_for(box_size, diameter_px) if fmt == "box" else None
        ext = ".box" if fmt == "box" else "_info.json"
        if single:
            if picks["micrograph"].nunique() > 1:
                raise InputError(f"{path}: {picks['micrograph'].nunique()} micrographs cannot go into one "
                                 f"{ext} file; give a directory")
            targets = {str(picks["micrograph"].iloc[0]) if len(picks) else "": path}
        else:
            if path.exists() and not path.is_dir():
                raise InputError(f"{path}: exists and is not a directory ({fmt} writes one file per micrograph)")
            check_output_dir(path)
            targets = {m: path / f"{rel}{ext}" for m, rel in _file_stem(picks).items()}
        _refuse_existing(list(targets.values()), overwrite)
        _guard(list(targets.values()), kind, inputs)
        groups = dict(tuple(picks.groupby("micrograph", sort=False))) if len(picks) else {}
        for mic, target in targets.items():
            rows = groups.get(mic, picks.iloc[0:0])
            if fmt == "box":
                write_box(rows, target, size)
            else:
                write_info_json(rows, target)
        return list(targets.values())
    _refuse_existing([path], overwrite)
    _guard([path], kind, inputs)
    if fmt == "star":
        from . import relion

        relion.write_particles_star(picks, path, relion.parse_version(version))
    elif fmt == "topaz":
        from .topaz import write_topaz

        write_topaz(picks, path)
    elif fmt in ("csv", "tsv"):
        from .table import write_table

        write_table(picks, path, sep="," if fmt == "csv" else "\t")
    elif fmt == "cs":
        if micrographs is None:
            raise InputError(f"{path}: writing cryoSPARC particles needs the exposures (--micrographs exposures.cs)")
        _cryosparc().write_particles(picks, path, micrographs)
    return [path]


# ---------------------------------------------------------------- micrographs


def _mrc_pixel_size(path: Path) -> float:
    if path.suffix.lower() not in (".mrc", ".mrcs"):
        return float("nan")
    import mrcfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                ps = float(mrc.voxel_size.x)
    except Exception:
        return float("nan")
    return ps if ps > 0 and np.isfinite(ps) else float("nan")


def read_micrographs(path: str | os.PathLike, read_shapes: bool = False) -> pd.DataFrame:
    """Micrographs table from a micrographs STAR, an exposures .cs, or micrograph files (shapes from headers)."""
    s = str(path)
    p = Path(s)
    ext = p.suffix.lower()
    if ext == ".star":
        from .relion import read_micrographs_star

        return read_micrographs_star(p, read_shapes=read_shapes)
    if ext == ".cs":
        if not p.is_file():
            raise InputError(f"{p}: no such file")
        return _cryosparc().read_exposures(p)
    if p.is_dir() or ext in IMAGE_EXTENSIONS or s.startswith("@") or any(c in s for c in "*?["):
        from pupick.core.io import expand_inputs, read_shape
        from pupick.core.tables import make_micrographs

        files = expand_inputs([s])
        return make_micrographs([str(f) for f in files], pixel_size=[_mrc_pixel_size(f) for f in files],
                                shapes=[read_shape(f) for f in files])
    raise InputError(f"{p}: micrographs must be a RELION micrographs STAR, a cryoSPARC exposures .cs, "
                     f"or micrograph files ({', '.join(IMAGE_EXTENSIONS)})")

