"""RELION STAR files (3.0, 3.1/4.x, 5.x): micrographs, coordinates, coordinate lists, particles.

Public functions (Picks/Micrographs tables as defined in pupick.core.tables):

- read_micrographs_star(path, read_shapes=False, base_dir=None) -> Micrographs
    3.0 (one table; pixel size = rlnDetectorPixelSize * 1e4 / rlnMagnification) or 3.1+ (data_optics +
    data_micrographs; rlnMicrographPixelSize, else rlnMicrographOriginalPixelSize). `path` is exactly as written in
    the STAR; ny/nx are NaN unless read_shapes (MRC headers, paths resolved against base_dir, default: the project).
- read_coordinates_star(path, micrograph=None, micrograph_path=None) -> Picks   (one per-micrograph file)
- read_coordinate_list(path, base_dir=None) -> Picks   (RELION 4/5 `data_coordinate_files`; `path` column = the
    micrograph as listed; coordinate paths resolved against base_dir, default: the project directory found above)
- read_coords_suffix(path, base_dir=None) -> Picks   (legacy `coords_suffix_<suffix>.star`)
- read_particles_star(path) -> Picks   (3.1+ data_optics + data_particles, or a 3.0 single table)
- read_star_picks(path, **kw) -> Picks   (any of the above, recognised by content)
- write_coordinates_star(picks_one_mic, path, version=30001)   (per-micrograph: rlnCoordinateX, rlnCoordinateY,
    rlnClassNumber 0, rlnAutopickFigureOfMerit = score (-999 when unknown), rlnAnglePsi 0)
- write_coordinate_list(entries[micrograph_path, coordinates_path], path, version=30001)
- write_particles_star(picks, path, version=30001)   (one table data_particles: rlnMicrographName + coordinates)
- write_star_dir(picks, out_dir, suffix="pupick", micrographs=None, version=30001, list_name=None, base_dir=None)
    -> list[Path]   (per-micrograph files + the list, for `pupick convert --to relion`; with version=None and a
    micrographs table read from a STAR, RELION 3.0's coords_suffix_<suffix>.star instead of the list)
- coordinate_file_name(micrograph_path, suffix="pupick") -> str   (RELION's rule: drop a leading
    `Jobtype/jobNNN/`, replace the extension by `_<suffix>.star`)

`version`: 30001 writes `# version 30001` (RELION 3.1/4.x), 50001 for RELION 5, None for the 3.0 layout (no line).
Micrograph names: `micrograph` is the stem, unless two different paths in one file share a stem; then it is the
path as written (so `a/001.mrc` and `b/001.mrc` stay distinct and match by relative path).
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from pupick.core.errors import InputError
from pupick.core.names import check_micrograph_name
from pupick.core.tables import empty_micrographs, empty_picks, make_micrographs, make_picks, stem, validate_picks

from pupick.core.io import write_text_atomic

from .star import StarFile, read_star, write_star

MISSING_FOM = -999.0  # RELION's marker for "no figure of merit"
JOB_PREFIX = re.compile(r"^[A-Za-z0-9]+/job\d+/")
KNOWN_SUFFIXES = ("_autopick", "_manualpick", "_pupick", "_topaz", "_pick", "_coords", "_coordinates")
CTF_COLUMNS = {
    "rlnDefocusU": "defocus_u", "rlnDefocusV": "defocus_v", "rlnDefocusAngle": "defocus_angle",
    "rlnCtfAstigmatism": "ctf_astigmatism", "rlnCtfMaxResolution": "ctf_max_resolution",
    "rlnCtfFigureOfMerit": "ctf_figure_of_merit", "rlnVoltage": "voltage",
    "rlnSphericalAberration": "spherical_aberration", "rlnAmplitudeContrast": "amplitude_contrast",
    "rlnCtfImage": "ctf_image",
}
VERSIONS = {"3.0": None, "3.1": 30001, "4": 30001, "4.0": 30001, "5": 50001, "5.0": 50001}


def parse_version(value: str | int | None) -> int | None:
    """'3.0' -> None, '3.1'/'4' -> 30001, '5' -> 50001; ints pass through."""
    if value is None or isinstance(value, int):
        return value
    if str(value).isdigit() and len(str(value)) == 5:
        return int(value)
    if str(value) not in VERSIONS:
        raise InputError(f"unknown RELION version {value!r} (known: 3.0, 3.1, 4, 5)")
    return VERSIONS[str(value)]


def micrograph_names(paths: Sequence[str], source: str | os.PathLike | None = None) -> list[str]:
    """Stems, except where two different paths share a stem: those keep the path as written, less any leading '/'
    and '.'/'..' parts (a name becomes files under an output directory). Each name passes check_micrograph_name."""
    unique = list(dict.fromkeys(str(p) for p in paths))
    stems = {p: stem(p) for p in unique}
    owners: dict[str, int] = {}
    for s in stems.values():
        owners[s] = owners.get(s, 0) + 1
    name = {p: (_relative_name(p) if owners[s] > 1 else s) for p, s in stems.items()}
    where = f"{source}: micrograph name" if source else "micrograph name"
    for n in dict.fromkeys(name.values()):
        check_micrograph_name(n, where, path_ok=True)
    return [name[str(p)] for p in paths]


def _relative_name(path: str) -> str:
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return "/".join(p for p in parts if p not in ("/", ".", ".."))


def project_dir(path: str | os.PathLike) -> Path:
    """The RELION project directory of a file inside `Jobtype/jobNNN/`, else the file's directory."""
    path = Path(path).absolute()
    parent = path.parent
    if re.fullmatch(r"job\d+", parent.name) and parent.parent != parent:
        return parent.parent.parent
    return parent


def coordinate_file_name(micrograph_path: str, suffix: str = "pupick") -> str:
    """RELION's coordinate file name for a micrograph: `MotionCorr/job002/Movies/a.mrc` -> `Movies/a_pupick.star`."""
    rel = JOB_PREFIX.sub("", _relative_name(str(micrograph_path)), count=1)
    parent = str(PurePosixPath(rel).parent)
    name = f"{stem(rel)}_{suffix}.star"
    return check_micrograph_name(name if parent in ("", ".") else f"{parent}/{name}", "coordinate file name",
                                 path_ok=True)


# ---------------------------------------------------------------- micrographs


def read_micrographs_star(path: str | os.PathLike, read_shapes: bool = False,
                          base_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Micrographs table from a RELION micrographs STAR (3.0 or 3.1+ with optics)."""
    star = read_star(path)
    name = "micrographs" if "micrographs" in star.blocks else star.find("rlnMicrographName")
    if name is None:
        if star.find("rlnMicrographMovieName") is not None:
            raise InputError(f"{star.path}: this is a movies STAR; give the micrographs STAR (after motion correction)")
        raise InputError(f"{star.path}: no block with _rlnMicrographName (blocks: {star.names()})")
    block = star.block(name)
    paths = star.strings(name, "rlnMicrographName")
    n = len(paths)
    has_groups = "rlnOpticsGroup" in block.columns
    groups = star.numbers(name, "rlnOpticsGroup", integer=True) if has_groups else np.ones(n, int)
    pixel = np.full(n, np.nan)
    optics = star.blocks.get("optics")
    if isinstance(optics, pd.DataFrame):
        ogroups = star.numbers("optics", "rlnOpticsGroup", integer=True)
        candidates = ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize")
        col = next((c for c in candidates if c in optics.columns), None)
        if col is None:
            raise InputError(f"{star.path}: block data_optics has neither _rlnMicrographPixelSize nor "
                             "_rlnMicrographOriginalPixelSize")
        by_group = dict(zip(ogroups.tolist(), star.numbers("optics", col).tolist()))
        for i, g in enumerate(groups.tolist()):
            if g not in by_group:
                raise InputError(f"{star.path}: block data_{name}, {star.where(name, i)}: optics group {g} "
                                 f"is not in data_optics (groups: {', '.join(map(str, by_group))})")
            pixel[i] = by_group[g]
    elif "rlnMicrographPixelSize" in block.columns:
        pixel = star.numbers(name, "rlnMicrographPixelSize")
    elif "rlnDetectorPixelSize" in block.columns and "rlnMagnification" in block.columns:
        pixel = star.numbers(name, "rlnDetectorPixelSize") * 1e4 / star.numbers(name, "rlnMagnification")
    extra = {}
    for col, short in CTF_COLUMNS.items():
        if col in block.columns:
            extra[short] = block[col].tolist() if col == "rlnCtfImage" else star.numbers(name, col)
    if isinstance(optics, pd.DataFrame):
        for col, short in CTF_COLUMNS.items():
            if col in optics.columns and short not in extra:
                values = dict(zip(star.numbers("optics", "rlnOpticsGroup", integer=True).tolist(),
                                  star.numbers("optics", col).tolist()))
                extra[short] = [values[g] for g in groups.tolist()]
    if n == 0:
        return empty_micrographs()
    shapes = None
    if read_shapes:
        from pupick.core.io import read_shape

        base = Path(base_dir) if base_dir is not None else project_dir(star.path)
        shapes = []
        for p in paths:
            full = Path(p) if os.path.isabs(p) else base / p
            if not full.is_file():
                raise InputError(f"{star.path}: micrograph {p} not found (looked in {base})")
            shapes.append(read_shape(full))
    mics = make_micrographs(paths, pixel_size=pixel, shapes=shapes, extra=extra)
    mics["micrograph"] = micrograph_names(paths, star.path)
    mics["optics_group"] = groups.astype(int)
    mics.attrs["source"] = str(star.path)  # lets a RELION 3.0 coords_suffix file name this STAR
    return mics


# ---------------------------------------------------------------- coordinates (read)


def _scores(star: StarFile, name: str) -> np.ndarray | None:
    block = star.block(name)
    if "rlnAutopickFigureOfMerit" not in block.columns:
        return None
    score = star.numbers(name, "rlnAutopickFigureOfMerit", allow_nan=True)
    return np.where(score == MISSING_FOM, np.nan, score)


def _coordinate_block(star: StarFile) -> str | None:
    return star.find("rlnCoordinateX", "rlnCoordinateY")


def micrograph_from_coordinate_file(path: str | os.PathLike, suffix: str | None = None) -> str:
    """The micrograph stem a per-micrograph coordinate file belongs to (`a_autopick.star` -> `a`)."""
    base = Path(path).name
    for ext in ("_info.json", ".json", ".star", ".box", ".txt", ".tsv", ".csv"):
        if base.lower().endswith(ext) and len(base) > len(ext):
            base = base[: -len(ext)]
            break
    for s in ([f"_{suffix.lstrip('_')}"] if suffix else list(KNOWN_SUFFIXES)):
        if base.endswith(s) and len(base) > len(s):
            return base[: -len(s)]
    return base


def read_coordinates_star(path: str | os.PathLike, micrograph: str | None = None,
                          micrograph_path: str | None = None, suffix: str | None = None) -> pd.DataFrame:
    """Picks from one per-micrograph coordinate STAR (an empty file is a micrograph without picks)."""
    return _coordinates(read_star(path), micrograph, micrograph_path, suffix)


def _coordinates(star: StarFile, micrograph: str | None = None, micrograph_path: str | None = None,
                 suffix: str | None = None) -> pd.DataFrame:
    path = star.path
    mic = micrograph or (stem(micrograph_path) if micrograph_path else micrograph_from_coordinate_file(path, suffix))
    if not star.blocks:
        return empty_picks(with_path=micrograph_path is not None)
    name = _coordinate_block(star)
    if name is None:
        first = next((b for b, v in star.blocks.items() if isinstance(v, pd.DataFrame)), None)
        if first is None:
            raise InputError(f"{star.path}: no loop block with _rlnCoordinateX/_rlnCoordinateY "
                             f"(blocks: {star.names()})")
        star.column(first, "rlnCoordinateX")  # raises, naming the block and its columns
        star.column(first, "rlnCoordinateY")
    x = star.numbers(name, "rlnCoordinateX")
    y = star.numbers(name, "rlnCoordinateY")
    return make_picks(mic, x, y, _scores(star, name), path=micrograph_path)


def _resolve(entry: str, list_path: Path, base_dir: str | os.PathLike | None) -> Path:
    if os.path.isabs(entry):
        return Path(entry)
    if base_dir is not None:
        return Path(base_dir) / entry
    here = list_path.absolute().parent
    for candidate in [project_dir(list_path), here, *here.parents, Path.cwd()]:
        if (candidate / entry).exists():
            return candidate / entry
    return project_dir(list_path) / entry


def read_coordinate_list(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Picks from a RELION 4/5 coordinate list (data_coordinate_files: micrograph -> coordinate STAR)."""
    return _coordinate_list(read_star(path), base_dir)


def _coordinate_list(star: StarFile, base_dir: str | os.PathLike | None) -> pd.DataFrame:
    name = "coordinate_files"
    if name not in star.blocks:
        name = star.find("rlnMicrographName", "rlnMicrographCoordinates")
    if name is None:
        raise InputError(f"{star.path}: no block data_coordinate_files (blocks: {star.names()})")
    mics = star.strings(name, "rlnMicrographName")
    coords = star.strings(name, "rlnMicrographCoordinates")
    names = micrograph_names(mics, star.path)
    tables = []
    for i, (mic, mname, cfile) in enumerate(zip(mics, names, coords)):
        full = _resolve(cfile, star.path, base_dir)
        if not full.is_file():
            raise InputError(f"{star.path}: block data_{name}, {star.where(name, i)}: coordinate file {cfile} not found"
                             f" (looked in {full.parent})")
        tables.append(read_coordinates_star(full, micrograph=mname, micrograph_path=mic))
    tables = [t for t in tables if len(t)]
    if not tables:
        return empty_picks(with_path=True)
    return pd.concat(tables, ignore_index=True)


def read_coords_suffix(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Picks from a legacy `coords_suffix_<suffix>.star` (it names the micrographs STAR; files sit beside it)."""
    path = Path(path)
    m = re.fullmatch(r"coords_suffix_(.+)\.star", path.name)
    if m is None:
        raise InputError(f"{path}: not a coords_suffix_<suffix>.star file")
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    if not lines:
        raise InputError(f"{path}: empty; it should name the micrographs STAR the picks belong to")
    mics_star = _resolve(lines[0], path, base_dir)
    if not mics_star.is_file():
        raise InputError(f"{path}: micrographs STAR {lines[0]} not found (looked in {mics_star.parent})")
    mics = read_micrographs_star(mics_star)
    tables = []
    for mic, mname in zip(mics["path"], mics["micrograph"]):
        cfile = path.parent / coordinate_file_name(mic, m.group(1))
        if cfile.is_file():
            tables.append(read_coordinates_star(cfile, micrograph=mname, micrograph_path=mic))
    tables = [t for t in tables if len(t)]
    if not tables:
        return empty_picks(with_path=True)
    return pd.concat(tables, ignore_index=True)


def read_particles_star(path: str | os.PathLike) -> pd.DataFrame:
    """Picks from a particles STAR (3.1+ data_particles, or a 3.0 single table) with rlnMicrographName."""
    return _particles(read_star(path))


def _particles(star: StarFile) -> pd.DataFrame:
    if "particles" in star.blocks:
        name = "particles"
    else:
        name = star.find("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY")
        if name is None:
            name = star.find("rlnCoordinateX") or star.find("rlnMicrographName")
            if name is None:
                raise InputError(f"{star.path}: no block with particle coordinates (blocks: {star.names()})")
    mics = star.strings(name, "rlnMicrographName")
    x = star.numbers(name, "rlnCoordinateX")
    y = star.numbers(name, "rlnCoordinateY")
    return make_picks(micrograph_names(mics, star.path), x, y, _scores(star, name), path=mics)


def star_kind(path: str | os.PathLike) -> str:
    """'coords_suffix' | 'list' | 'particles' | 'coordinates' | 'micrographs' | 'empty', from name and content."""
    path = Path(path)
    if path.name.startswith("coords_suffix_"):
        return "coords_suffix"
    star = read_star(path)
    return _kind(star)


def _kind(star: StarFile) -> str:
    if not star.blocks:
        return "empty"
    if star.find("rlnMicrographName", "rlnMicrographCoordinates") is not None:
        return "list"
    coords = star.find("rlnCoordinateX") or star.find("rlnCoordinateY")
    if coords is not None:  # a file missing one of the pair still reads as picks, so the error names the column
        block = star.blocks[coords]
        return "particles" if "rlnMicrographName" in block.columns else "coordinates"
    if star.find("rlnMicrographName") is not None:
        return "micrographs"
    return "unknown"


def read_star_picks(path: str | os.PathLike, base_dir: str | os.PathLike | None = None,
                    suffix: str | None = None) -> pd.DataFrame:
    """Picks from any RELION coordinate flavour: list, particles, per-micrograph or coords_suffix."""
    if Path(path).name.startswith("coords_suffix_"):
        return read_coords_suffix(path, base_dir)
    star = read_star(path)
    kind = _kind(star)
    if kind == "list":
        return _coordinate_list(star, base_dir)
    if kind == "particles":
        return _particles(star)
    if kind in ("coordinates", "empty"):
        return _coordinates(star, suffix=suffix)
    if kind == "micrographs":
        raise InputError(f"{path}: this is a micrographs STAR (no coordinates); give it with --micrographs")
    raise InputError(f"{path}: no block with _rlnCoordinateX/_rlnCoordinateY or a coordinate list "
                     f"(blocks: {star.names()})")


# ---------------------------------------------------------------- writing


def _coordinates_frame(picks: pd.DataFrame) -> pd.DataFrame:
    score = picks["score"].to_numpy(dtype=float) if "score" in picks.columns else np.full(len(picks), np.nan)
    n = len(picks)
    return pd.DataFrame({
        "rlnCoordinateX": picks["x"].to_numpy(dtype=float),
        "rlnCoordinateY": picks["y"].to_numpy(dtype=float),
        "rlnClassNumber": np.zeros(n, dtype=np.int64),
        "rlnAutopickFigureOfMerit": np.where(np.isfinite(score), score, MISSING_FOM),
        "rlnAnglePsi": np.zeros(n, dtype=float),
    })


def write_coordinates_star(picks: pd.DataFrame, path: str | os.PathLike, version: int | None = 30001) -> None:
    """One micrograph's picks as a RELION coordinate STAR (atomic)."""
    if "micrograph" in picks.columns and picks["micrograph"].nunique() > 1:
        raise InputError(f"{path}: a coordinate STAR holds one micrograph, got {picks['micrograph'].nunique()}")
    write_star([("", _coordinates_frame(picks))], path, version)


def write_coordinate_list(entries: pd.DataFrame, path: str | os.PathLike, version: int | None = 30001) -> None:
    """A RELION 4/5 coordinate list: data_coordinate_files with rlnMicrographName, rlnMicrographCoordinates."""
    for col in ("micrograph_path", "coordinates_path"):
        if col not in entries.columns:
            raise InputError(f"{path}: coordinate list entries need columns micrograph_path, coordinates_path")
    frame = pd.DataFrame({
        "rlnMicrographName": entries["micrograph_path"].astype(str).to_numpy(dtype=object),
        "rlnMicrographCoordinates": entries["coordinates_path"].astype(str).to_numpy(dtype=object),
    })
    write_star([("coordinate_files", frame)], path, 30001 if version is None else version)


LIST_COLUMNS = ["rlnMicrographName", "rlnMicrographCoordinates"]


def write_coordinate_list_stream(entries: Iterable[tuple[str, str]], path: str | os.PathLike,
                                 version: int | None = 30001, chunk: int = 10_000) -> int:
    """write_coordinate_list's file (the same bytes) from (micrograph path, coordinates path) pairs, written
    `chunk` rows at a time and renamed into place; returns how many rows."""
    from itertools import islice

    from pupick.core.io import atomic_path

    from .star import LOOP_END, loop_head, loop_rows

    rows = 0
    entries = iter(entries)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(loop_head("coordinate_files", LIST_COLUMNS, 30001 if version is None else version))
        while batch := list(islice(entries, chunk)):
            fh.write(loop_rows(pd.DataFrame(batch, columns=LIST_COLUMNS, dtype=object).astype(str)))
            rows += len(batch)
        fh.write(LOOP_END)
    return rows


def read_coordinate_list_stream(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """The (micrograph path, coordinates path) rows of a coordinate list, a line at a time (the file is never held
    whole); an OSError when it cannot be read, InputError when it is not a coordinate list."""
    from .star import _tokens

    columns: list[str] = []
    in_loop = False
    with open(path) as fh:
        for line in fh:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if text.startswith("data_"):
                if columns:
                    break  # only the first block
                in_loop = False
            elif text.startswith("loop_"):
                in_loop = True
            elif text.startswith("_"):
                columns.append(text.split()[0][1:])
            elif in_loop and columns:
                if not set(LIST_COLUMNS) <= set(columns):
                    raise InputError(f"{path}: not a coordinate list (no {' and '.join(LIST_COLUMNS)})")
                values = _tokens(text)
                yield values[columns.index(LIST_COLUMNS[0])], values[columns.index(LIST_COLUMNS[1])]


def _particles_frame(picks: pd.DataFrame) -> pd.DataFrame:
    names = picks["micrograph"]
    if "path" in picks.columns:
        names = picks["path"].where(picks["path"].notna(), picks["micrograph"])
    frame = _coordinates_frame(picks)
    frame.insert(0, "rlnMicrographName", names.astype(str).to_numpy(dtype=object))
    return frame


def write_particles_star(picks: pd.DataFrame, path: str | os.PathLike, version: int | None = 30001) -> None:
    """All picks in one table (data_particles: rlnMicrographName, coordinates, figure of merit)."""
    write_star([("particles", _particles_frame(picks))], path, version)


def particles_star_chunks(pieces: Iterable[pd.DataFrame], version: int | None = 30001) -> Iterator[str]:
    """write_particles_star's text, piece by piece of the picks (the same text as for their concatenation)."""
    from .star import LOOP_END, loop_head, loop_rows

    yield loop_head("particles", list(_particles_frame(empty_picks(with_path=True)).columns), version)
    for piece in pieces:
        yield loop_rows(_particles_frame(validate_picks(piece, "picks")))
    yield LOOP_END


def write_star_dir(picks: pd.DataFrame, out_dir: str | os.PathLike, suffix: str = "pupick",
                   micrographs: pd.DataFrame | None = None, version: int | None = 30001,
                   list_name: str | None = None, base_dir: str | os.PathLike | None = None,
                   check: Callable[[list[Path]], None] | None = None) -> list[Path]:
    """Per-micrograph coordinate STARs under out_dir, and the list (3.1+) when micrograph paths are known.

    `check(targets)`, when given, sees every file about to be written before the first is (e.g. the output rule).

    Micrographs in `micrographs` without picks get an empty file, so RELION sees every micrograph as done.
    List entries are relative to base_dir (default: the current directory, RELION's project directory).
    """
    out_dir = Path(out_dir)
    entries: dict[str, tuple[str | None, pd.DataFrame]] = {}  # micrograph -> (path, rows)
    for mic, rows in picks.groupby("micrograph", sort=False):
        path = None
        if "path" in rows.columns and rows["path"].notna().any():
            path = str(rows["path"].dropna().iloc[0])
        entries[str(mic)] = (path, rows)
    if micrographs is not None and len(micrographs):
        from .naming import match_across

        paths = micrographs["path"].astype(str).tolist()
        mapping = match_across(list(entries), paths, "picks", require_all=True)
        by_row = {i: entries[k][1] for k, i in mapping.items()}
        # every micrograph of the table, in its order; those without picks get an empty file
        entries = {str(name): (paths[i], by_row.get(i, empty_picks()))
                   for i, name in enumerate(micrographs["micrograph"].astype(str))}
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    targets = {mic: out_dir / coordinate_file_name(mpath if mpath else f"{mic}.mrc", suffix)
               for mic, (mpath, _) in entries.items()}
    list_target = out_dir / (list_name or f"{'autopick' if suffix == 'pupick' else suffix}.star")
    if check is not None:
        check(list(targets.values()) + ([list_target] if version is not None else []))
    written: list[Path] = []
    listed = []
    for mic, (mpath, rows) in entries.items():
        target = targets[mic]
        write_coordinates_star(rows.assign(micrograph=mic) if len(rows) else rows, target, version)
        written.append(target)
        if mpath:
            try:
                shown = os.path.relpath(target.absolute(), base.absolute())
                if shown.startswith(".."):
                    shown = str(target.absolute())
            except ValueError:
                shown = str(target.absolute())
            listed.append((mpath, shown))
    if version is not None and listed and len(listed) == len(entries):
        write_coordinate_list(pd.DataFrame(listed, columns=["micrograph_path", "coordinates_path"]), list_target,
                              version)
        written.append(list_target)
    elif version is None and micrographs is not None and micrographs.attrs.get("source"):
        # RELION 3.0 finds the files through coords_suffix_<suffix>.star, which names the micrographs STAR
        source = Path(micrographs.attrs["source"]).absolute()
        try:
            shown = os.path.relpath(source, base.absolute())
        except ValueError:
            shown = str(source)
        target = out_dir / f"coords_suffix_{suffix}.star"
        write_text_atomic(target, (str(source) if shown.startswith("..") else shown) + "\n")
        written.append(target)
    return written
