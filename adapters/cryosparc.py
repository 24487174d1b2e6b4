"""cryoSPARC .cs files through cryosparc-tools' Dataset: exposures in, particle picks in and out (offline)."""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from pupick.core.errors import InputError
from pupick.core.names import check_micrograph_name
from pupick.core.io import atomic_path
from pupick.core.tables import MIC_COLUMNS, stem, validate_picks

from .naming import match_across, strip_motion_suffix, strip_uid

# A particle `location` + `pick_stats` result as cryoSPARC pickers write it (live mode saves the server's own
# field list from alloc_output instead, filling these where present).
PARTICLE_FIELDS: list[tuple] = [
    ("location/micrograph_uid", "<u8"),
    ("location/exp_group_id", "<u4"),
    ("location/micrograph_path", "O"),
    ("location/micrograph_shape", "<u4", (2,)),
    ("location/micrograph_psize_A", "<f4"),
    ("location/center_x_frac", "<f4"),
    ("location/center_y_frac", "<f4"),
    ("location/min_dist_A", "<f4"),  # the pickers' minimum distance between picks (0 when unknown)
    ("pick_stats/ncc_score", "<f4"),
    ("pick_stats/power", "<f4"),
    ("pick_stats/template_idx", "<u4"),
    ("pick_stats/angle_rad", "<f4"),
]

# Exposure fields we map into the Micrographs table (beyond micrograph_blob/path); CTF in RELION-like units.
_CTF_FIELDS = {"ctf/df1_A": "defocus_u", "ctf/df2_A": "defocus_v", "ctf/df_angle_rad": "defocus_angle"}

_JOB_DIR = re.compile(r"J\d+")
_LONG_UID_PREFIX = re.compile(r"^\d{12,}_")


def micrograph_name(path: str | os.PathLike) -> str:
    """Name for a .cs path: fully cleaned if cryoSPARC wrote it (in `J<n>/` or a long uid prefix), else suffix-free."""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts
    in_job_dir = any(_JOB_DIR.fullmatch(part) for part in parts[:-1])
    name = strip_motion_suffix(stem(path))
    return strip_uid(name) if in_job_dir or _LONG_UID_PREFIX.match(name) else name


def load_dataset(path: str | os.PathLike):
    """Load a .cs file with cryosparc-tools; an unreadable file is an InputError."""
    from cryosparc.dataset import Dataset

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return Dataset.load(path)
    except Exception as err:  # DatasetLoadError wraps numpy/format errors
        cause = err.__cause__ or err
        raise InputError(f"{path}: not a readable cryoSPARC .cs file ({cause})") from None


def _require(dset, fields: Sequence[str], source: str, what: str) -> None:
    missing = [f for f in fields if f not in dset]
    if missing:
        present = ", ".join(sorted(dset.prefixes())) or "none"
        hint = ""
        if what == "exposures" and dset.prefixes():
            hint = ("; cryoSPARC keeps slots made by earlier jobs in the output's `_passthrough_` .cs: "
                    "give that file as well")
        raise InputError(f"{source}: not a cryoSPARC {what} file: missing field(s) {', '.join(missing)} "
                         f"(slots present: {present}){hint}")


def _unique_names(paths: Sequence[str]) -> list[str]:
    """Cleaned names, falling back to the plain stem where two paths clean to the same name."""
    cleaned = [micrograph_name(p) for p in paths]
    counts: dict[str, int] = {}
    for c in cleaned:
        counts[c] = counts.get(c, 0) + 1
    names = [c if counts[c] == 1 else stem(p) for c, p in zip(cleaned, paths)]
    for name in dict.fromkeys(names):
        check_micrograph_name(name, "cryoSPARC micrograph name")
    return names


def _column(dset, field: str, dtype, default) -> np.ndarray:
    """A Dataset column as a numpy array, or `default` repeated when the field is absent."""
    if field in dset:
        return np.asarray(dset[field], dtype=dtype)
    return np.full(len(dset), default, dtype=dtype)


def exposures_from_dataset(dset, source: str = "exposures") -> pd.DataFrame:
    """A Micrographs table (+ uid, CTF columns where present) from an exposure Dataset."""
    _require(dset, ["micrograph_blob/path"], source, "exposures")
    n = len(dset)
    paths = [str(p) for p in dset["micrograph_blob/path"]]
    if "micrograph_blob/shape" in dset:
        shape = np.asarray(dset["micrograph_blob/shape"], dtype=float).reshape(n, 2)
        shape[shape <= 0] = np.nan
    else:
        shape = np.full((n, 2), np.nan)
    psize = _column(dset, "micrograph_blob/psize_A", float, np.nan)
    psize = np.where(psize > 0, psize, np.nan)
    group = _column(dset, "mscope_params/exp_group_id", int, 1)
    df = pd.DataFrame({
        "micrograph": pd.Series(_unique_names(paths), dtype=object),
        "path": pd.Series(paths, dtype=object),
        "pixel_size": psize, "ny": shape[:, 0], "nx": shape[:, 1], "optics_group": group,
        "uid": np.asarray(dset["uid"], dtype=np.uint64),
    })
    for field, col in _CTF_FIELDS.items():
        if field in dset:
            values = np.asarray(dset[field], dtype=float)
            df[col] = np.degrees(values) if field.endswith("_rad") else values
    return df[MIC_COLUMNS + [c for c in df.columns if c not in MIC_COLUMNS]]


def load_exposures(paths: str | os.PathLike | Sequence[str | os.PathLike]):
    """Load one exposures .cs, or join several by uid (an output's .cs and its `_passthrough_` .cs)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise InputError("no exposures .cs given")
    dsets = [load_dataset(p) for p in paths]
    if len(dsets) == 1:
        return dsets[0]
    from cryosparc.dataset import Dataset

    uids = [set(np.asarray(d["uid"]).tolist()) for d in dsets]
    for p, u in zip(paths[1:], uids[1:]):
        if u != uids[0]:
            raise InputError(f"{p}: holds {len(u)} exposures, {len(u & uids[0])} of them in {paths[0]} "
                             f"({len(uids[0])}); give files of one cryoSPARC output")
    try:
        return Dataset.innerjoin_many(*dsets)
    except AssertionError:
        raise InputError(f"{', '.join(map(str, paths))}: the files share a field name with different types") from None


def read_exposures(path: str | os.PathLike | Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Read an exposures .cs (or several joined by uid) as a Micrographs table (+ uid, CTF columns)."""
    source = str(path) if isinstance(path, (str, os.PathLike)) else " + ".join(map(str, path))
    return exposures_from_dataset(load_exposures(path), source)


def _scores(dset) -> np.ndarray:
    """Logit scores: pick_stats/power when it is ours (ncc_score = sigmoid(power)), else logit(ncc_score)."""
    n = len(dset)
    power = np.asarray(dset["pick_stats/power"], dtype=float) if "pick_stats/power" in dset else None
    ncc = np.asarray(dset["pick_stats/ncc_score"], dtype=float) if "pick_stats/ncc_score" in dset else None
    if power is not None and (ncc is None or np.allclose(ncc, _sigmoid(power), atol=1e-5)):
        return power
    if ncc is not None:
        p = np.clip(ncc, 1e-7, 1 - 1e-7)
        return np.log(p) - np.log1p(-p)
    return np.full(n, np.nan)


def picks_from_dataset(dset, exposures: pd.DataFrame | None = None, source: str = "particles") -> pd.DataFrame:
    """A Picks table (+ path, micrograph_uid, uid) from a particle Dataset with a `location` slot."""
    _require(dset, ["location/center_x_frac", "location/center_y_frac"], source, "particles")
    n = len(dset)
    mic_uid = None
    if "location/micrograph_uid" in dset:
        mic_uid = np.asarray(dset["location/micrograph_uid"], dtype=np.uint64)
    paths = [str(p) for p in dset["location/micrograph_path"]] if "location/micrograph_path" in dset else None
    shape = None
    if "location/micrograph_shape" in dset:
        shape = np.asarray(dset["location/micrograph_shape"], dtype=float).reshape(n, 2)
    names: list[str] | None = None
    if exposures is not None and len(exposures):
        rows = _exposure_rows(mic_uid, paths, exposures, source)
        exp_shape = exposures[["ny", "nx"]].to_numpy(dtype=float)[rows]
        shape = exp_shape if shape is None else np.where(shape > 0, shape, exp_shape)
        names = list(exposures["micrograph"].to_numpy()[rows])
        paths = list(exposures["path"].to_numpy()[rows])
        mic_uid = exposures["uid"].to_numpy(dtype=np.uint64)[rows]
    if paths is None:
        raise InputError(f"{source}: particles have no location/micrograph_path; give the exposures .cs to name them")
    if shape is None or not np.all(shape > 0):
        raise InputError(f"{source}: location/micrograph_shape is missing or zero; give the exposures .cs for shapes")
    if names is None:
        unique = list(dict.fromkeys(paths))
        name_of = dict(zip(unique, _unique_names(unique)))
        names = [name_of[p] for p in paths]
    x = np.asarray(dset["location/center_x_frac"], dtype=float) * shape[:, 1]
    y = np.asarray(dset["location/center_y_frac"], dtype=float) * shape[:, 0]
    df = pd.DataFrame({"micrograph": pd.Series(names, dtype=object), "x": x, "y": y, "score": _scores(dset),
                       "path": pd.Series(paths, dtype=object)})
    if mic_uid is not None:
        df["micrograph_uid"] = mic_uid
    df["uid"] = np.asarray(dset["uid"], dtype=np.uint64)
    return df


def _exposure_rows(mic_uid, paths, exposures: pd.DataFrame, source: str) -> np.ndarray:
    """Row index into `exposures` for each particle: by uid when both sides have one, else by name."""
    if mic_uid is not None and "uid" in exposures.columns:
        index = {int(u): i for i, u in enumerate(exposures["uid"].to_numpy(dtype=np.uint64))}
        rows = np.array([index.get(int(u), -1) for u in mic_uid], dtype=int)
        if (rows >= 0).all():
            return rows
        if paths is None:
            raise InputError(f"{source}: {int((rows < 0).sum())} particle(s) name a micrograph uid "
                             "that is not in the exposures")
    if paths is None:
        raise InputError(f"{source}: particles have neither micrograph uids nor paths to match the exposures")
    mapping = match_exposures(paths, exposures, source)
    rows = np.array([mapping.get(p, -1) for p in paths], dtype=int)
    if (rows < 0).any():
        missing = sorted({p for p, r in zip(paths, rows) if r < 0})
        raise InputError(_mismatch_message(missing, exposures, source))
    return rows


def match_exposures(keys: Sequence[str], exposures: pd.DataFrame, what: str = "picks") -> dict[str, int]:
    """Map micrograph names/paths to exposure rows: by path, stem, then without cryoSPARC uid prefix/suffix."""
    paths = [str(p) for p in exposures["path"]]
    keys = list(dict.fromkeys(str(k) for k in keys))
    if not keys:
        return {}
    return match_across(keys, paths, what)


def _mismatch_message(missing: Sequence[str], exposures: pd.DataFrame, what: str) -> str:
    ex = ", ".join(str(p) for p in exposures["path"].head(3)) or "(none)"
    return (f"{what}: {len(missing)} micrograph(s) are not in the exposures, e.g. {', '.join(missing[:3])}; "
            f"exposures hold e.g. {ex} (names match by path, stem, or without cryoSPARC's uid prefix and "
            "motion-correction suffix)")


def _sigmoid(score: np.ndarray) -> np.ndarray:
    out = np.empty_like(score, dtype=float)
    pos = score >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-score[pos]))
    e = np.exp(score[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread 64-bit hash of uint64 values."""
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def exposure_uids(names: Sequence[str]) -> np.ndarray:
    """Deterministic 64-bit exposure uids derived from micrograph names (same name, same uid), for tables without.

    cryoSPARC's Import Particle Stack matches particles to its own exposures by micrograph name, not by these uids.
    """
    import hashlib

    return np.array([int.from_bytes(hashlib.sha256(f"pupick-exposure:{n}".encode()).digest()[:8], "little")
                     for n in names], dtype=np.uint64)


def particle_uids(mic_uid: np.ndarray, x: np.ndarray, y: np.ndarray, salt: str = "") -> np.ndarray:
    """Deterministic, content-derived 64-bit particle uids (same picks and salt -> same uids; all distinct)."""
    import hashlib

    salt64 = np.uint64(int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little"))
    xi = np.round(np.asarray(x, dtype=float) * 16).astype(np.int64).astype(np.uint64)
    yi = np.round(np.asarray(y, dtype=float) * 16).astype(np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        uids = _mix64(_mix64(_mix64(np.asarray(mic_uid, dtype=np.uint64) ^ salt64) ^ xi) ^ (yi << np.uint64(1)))
    if np.unique(uids).size == uids.size:
        return uids
    # identical picks (or a hash collision) get the next free value
    seen: set[int] = set()
    for i, u in enumerate(uids.tolist()):
        while u in seen:
            u = (u + 1) % (1 << 64)
        seen.add(u)
        uids[i] = u
    return uids


def particles_dataset(picks: pd.DataFrame, exposures: pd.DataFrame, template=None, salt: str = "",
                      drop_unmatched: bool = False, source: str = "picks", min_dist_px=None):
    """A cryoSPARC particle Dataset (location + pick_stats) for picks on the given exposures.

    With a `template` (e.g. a server-allocated output) the result has exactly its fields, with the template's types:
    ours filled, others zero. Picks on micrographs missing from the exposures are an error unless `drop_unmatched`.
    `min_dist_px` (one value, or one per pick) fills location/min_dist_A with the micrograph's pixel size.
    """
    from cryosparc.dataset import Dataset

    picks = validate_picks(picks, source)
    if "path" not in exposures.columns:
        raise InputError(f"{source}: the micrographs give no file paths; give a RELION micrographs STAR, a cryoSPARC "
                         "exposures .cs or the micrograph files")
    if "uid" not in exposures.columns:  # a RELION (or any) micrograph table: uids from the names, as cryoSPARC
        exposures = exposures.assign(uid=exposure_uids(exposures["micrograph"].astype(str)))  # matches by name
    for col in ("ny", "nx"):
        if col not in exposures.columns:
            exposures = exposures.assign(**{col: np.nan})
    keys = picks["micrograph_uid"] if "micrograph_uid" in picks.columns else None
    if keys is not None:
        index = {int(u): i for i, u in enumerate(exposures["uid"].to_numpy(dtype=np.uint64))}
        rows = np.array([index.get(int(u), -1) for u in keys.to_numpy(dtype=np.uint64)], dtype=int)
    else:
        names = picks["path"].astype(str) if "path" in picks.columns else picks["micrograph"].astype(str)
        mapping = match_exposures(names, exposures, source)
        rows = np.array([mapping.get(k, -1) for k in names], dtype=int)
    unmatched = rows < 0
    if unmatched.any() and not drop_unmatched:
        missing = sorted(set(picks.loc[unmatched, "micrograph"].astype(str)))
        raise InputError(_mismatch_message(missing, exposures, source))
    picks, rows = picks[~unmatched].reset_index(drop=True), rows[~unmatched]

    ny = exposures["ny"].to_numpy(dtype=float)[rows]
    nx = exposures["nx"].to_numpy(dtype=float)[rows]
    if not (np.isfinite(ny).all() and np.isfinite(nx).all() and (ny > 0).all() and (nx > 0).all()):
        raise InputError(f"{source}: the micrograph sizes are unknown (a cryoSPARC .cs stores coordinates as fractions "
                         "of them): give an exposures .cs with micrograph_blob/shape, or micrographs whose files can "
                         "be read from here (run from the RELION project directory)")
    x, y = picks["x"].to_numpy(), picks["y"].to_numpy()
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        i = int(np.flatnonzero(~(np.isfinite(x) & np.isfinite(y)))[0])
        raise InputError(f"{source}: row {i + 1}: coordinate ({x[i]:g}, {y[i]:g}) is not a finite number")
    outside = (x < 0) | (y < 0) | (x > nx) | (y > ny)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise InputError(f"{source}: row {i + 1}: coordinate ({x[i]:g}, {y[i]:g}) lies outside micrograph "
                         f"{picks['micrograph'].iloc[i]} ({int(nx[i])} x {int(ny[i])} px)")
    score = picks["score"].to_numpy(dtype=float)
    score = np.where(np.isfinite(score), score, 0.0)  # no score: power 0, ncc 0.5 (consistent with each other)
    mic_uid = exposures["uid"].to_numpy(dtype=np.uint64)[rows]
    psize = np.zeros(len(rows))
    if "pixel_size" in exposures.columns:
        psize = exposures["pixel_size"].to_numpy(dtype=float)[rows]
    group = exposures["optics_group"].to_numpy()[rows] if "optics_group" in exposures.columns else np.ones(len(rows))

    dset = Dataset({"uid": particle_uids(mic_uid, x, y, salt)})
    served = [f for f in template.descr() if f[0] != "uid"] if template is not None else []
    names = {f[0] for f in served}
    dset.add_fields(served + [f for f in PARTICLE_FIELDS if f[0] not in names])  # the server's types win
    dset["location/micrograph_uid"] = mic_uid
    dset["location/exp_group_id"] = np.nan_to_num(np.asarray(group, dtype=float), nan=1).astype(np.uint32)
    dset["location/micrograph_path"] = exposures["path"].astype(str).to_numpy(dtype=object)[rows]
    dset["location/micrograph_shape"] = np.stack([ny, nx], axis=1).astype(np.uint32)
    dset["location/micrograph_psize_A"] = np.nan_to_num(psize, nan=0.0).astype(np.float32)
    dset["location/center_x_frac"] = (x / nx).astype(np.float32)
    dset["location/center_y_frac"] = (y / ny).astype(np.float32)
    dist = np.zeros(len(rows)) if min_dist_px is None else np.broadcast_to(
        np.asarray(min_dist_px, dtype=float)[~unmatched] if np.ndim(min_dist_px) else float(min_dist_px), len(rows))
    dset["location/min_dist_A"] = np.nan_to_num(dist * psize, nan=0.0).astype(np.float32)
    dset["pick_stats/power"] = score.astype(np.float32)
    dset["pick_stats/ncc_score"] = _sigmoid(score).astype(np.float32)
    if template is not None:  # the server's field list is authoritative: save exactly those
        dset.filter_fields([f for f, *_ in template.descr()])
    return dset


def read_particles(path: str | os.PathLike, exposures: pd.DataFrame | str | os.PathLike | None = None) -> pd.DataFrame:
    """Read a particle .cs (location slot) as a Picks table (+ path, micrograph_uid, uid)."""
    if exposures is not None and not isinstance(exposures, pd.DataFrame):
        exposures = read_exposures(exposures)
    return picks_from_dataset(load_dataset(path), exposures, str(path))


def write_particles(picks: pd.DataFrame, path: str | os.PathLike, exposures: pd.DataFrame | str | os.PathLike,
                    salt: str = "", drop_unmatched: bool = False) -> int:
    """Write picks as a cryoSPARC particle .cs (location + pick_stats) atomically; returns the rows written."""
    if not isinstance(exposures, pd.DataFrame):
        exposures = read_exposures(exposures)
    dset = particles_dataset(picks, exposures, salt=salt or str(Path(path).name), drop_unmatched=drop_unmatched,
                             source=str(path))
    save_dataset(dset, path)
    return len(dset)


def write_particles_stream(pieces: Iterable[pd.DataFrame], path: str | os.PathLike, exposures: pd.DataFrame,
                           names: Sequence[str], salt: str = "") -> int:
    """write_particles for picks that come in pieces (e.g. picks.csv read a chunk at a time), in their order:
    `names` (the micrograph paths the pieces name) are matched to the exposures once; nothing holds all the picks."""
    salt = salt or str(Path(path).name)
    mapping = match_exposures(list(dict.fromkeys(map(str, names))), exposures, str(path))
    uids = exposures["uid"].to_numpy(dtype=np.uint64)
    rows = 0
    with particles_cs_writer(path, exposures["path"].astype(str)) as writer:
        for piece in pieces:
            if not len(piece):
                continue
            keys = piece["micrograph"].astype(str)  # by path when there is one, as particles_dataset matches
            if "path" in piece.columns:
                keys = piece["path"].where(piece["path"].notna() & (piece["path"] != ""), keys).astype(str)
            new = set(keys) - set(mapping)
            if new:  # names not given up front
                mapping.update(match_exposures(sorted(new), exposures, str(path)))
                missing = sorted(new - set(mapping))
                if missing:
                    raise InputError(_mismatch_message(missing, exposures, str(path)))
            at = np.array([mapping[k] for k in keys])
            used = np.unique(at)
            writer.append(particles_dataset(piece.assign(micrograph_uid=uids[at]), exposures.iloc[used], salt=salt,
                                            source=str(path)))
            rows += len(piece)
    return rows


def save_dataset(dset, path: str | os.PathLike) -> None:
    """Save a Dataset as a .cs in numpy format (what cryoSPARC 4.x and 5.x both read), atomically."""
    with atomic_path(path) as tmp:
        dset.save(tmp)


class ParticleCsWriter:
    """A particles .cs in numpy format written a Dataset chunk at a time (cryoSPARC reads it as `save_dataset`'s).

    The .npy header is reserved at the start and rewritten with the row count at the end, so no list of all the
    particles is ever held; strings are fixed-width (`string_bytes`: the longest micrograph path in UTF-8 and a NUL)."""

    SHAPE_DIGITS = 20  # the header is sized for any row count

    def __init__(self, fh, string_bytes: int) -> None:
        self.fh = fh
        self.dtype = np.dtype([("uid", "<u8")] + [(f[0], f"S{max(1, string_bytes)}", *f[2:]) if f[1] == "O" else f
                                                  for f in PARTICLE_FIELDS])
        self.rows = 0
        self._header_len = len(self._header(10 ** self.SHAPE_DIGITS - 1))
        fh.write(self._header(0, self._header_len))

    def _header(self, rows: int, size: int | None = None) -> bytes:
        text = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (rows,)})
        total = size or -(-(len(text) + 11) // 64) * 64  # magic, version, length, text, "\n": a multiple of 64
        text = text.ljust(total - 11) + "\n"
        if len(text) > 0xFFFF:
            raise ValueError("particle fields too long for a .npy 1.0 header")
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")

    def append(self, dset) -> None:
        """Add a Dataset's rows (fields as `particles_dataset` makes them), in order."""
        if not len(dset):
            return
        rec = np.zeros(len(dset), self.dtype)
        for name in self.dtype.names:
            column = np.asarray(dset[name])
            if column.dtype.char == "O":
                column = np.asarray(dset[name].to_fixed())
                if column.dtype.itemsize > self.dtype[name].itemsize:
                    raise ValueError(f"{name}: a string longer than the writer's width")
            rec[name] = column
        self.fh.write(rec.tobytes())
        self.rows += len(dset)

    def finish(self) -> None:
        """Write the row count into the reserved header."""
        self.fh.flush()
        self.fh.seek(0)
        self.fh.write(self._header(self.rows, self._header_len))
        self.fh.seek(0, os.SEEK_END)


@contextmanager
def particles_cs_writer(path: str | os.PathLike, paths: Sequence[str]) -> Iterator[ParticleCsWriter]:
    """A ParticleCsWriter for `path`, sized for these micrograph paths; on success the file is renamed into place,
    on failure nothing is left."""
    width = max((len(str(p).encode()) for p in paths), default=0) + 1  # as cryosparc-tools: a NUL after each
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            writer = ParticleCsWriter(fh, width)
            yield writer
            writer.finish()
