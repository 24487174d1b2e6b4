"""The one resumable-output helper: `pupick pick`, `pupick preprocess`, the RELION job and the service write through it.

An output directory holds a manifest (`pupick_<kind>.json`: version, settings, failures), one record per finished
micrograph in `.pupick_records/` (the resume marker, written last), and the user-visible outputs. A rerun skips a
micrograph only when its record AND its outputs exist; settings that differ from the manifest's are refused unless
`overwrite`, but only when something was finished with them; `overwrite` removes the earlier records and the outputs
they name. A kernel lock (flock) on `.pupick.lock` keeps two runs out of one directory and dies with its holder.
Every file is written under a temporary name and renamed.
"""
from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import __version__
from .config import PreprocessConfig
from .errors import InputError, PupickError
from .names import check_micrograph_name
from .io import (Protected, atomic_path, check_output, check_output_dir, hold_lock, os_reason, read_micrograph,
                 write_mrc, write_text_atomic)
from . import picks_index
from .picking import pick
from .pipeline import check_model, micrograph_items
from .preprocess import MANIFEST as PREPROCESS_MANIFEST, downsample, normalize
from .tables import duplicate_stems, empty_picks, stem

LOCK = ".pupick.lock"
RECORDS = ".pupick_records"
PICK_MANIFEST = "pupick_pick.json"
PICKS_TABLE = "picks.csv"


class OutputDir:
    """A resumable output directory (use as a context manager: it holds the directory's lock)."""

    def __init__(self, path: str | os.PathLike, kind: str, settings: dict[str, Any], *, overwrite: bool = False,
                 remedy: str = "use another output directory or --overwrite", only: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.only = None if only is None else set(only)  # what `overwrite` redoes (None: everything)
        self.remedy = remedy
        self.kind = kind
        self.settings = settings
        self.overwrite = overwrite
        self.manifest_path = self.path / f"pupick_{kind}.json"
        self.records = self.path / RECORDS
        self.manifest: dict[str, Any] = {}
        self._lock_fd: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def __enter__(self) -> "OutputDir":
        self._create()
        self._lock()
        try:
            remove_stale_parts(self.path, self._locked_at)
            self._check_settings()
        except BaseException:
            self._unlock()
            raise
        self.only = None  # needed only by an overwrite's clearing above; a set of every name is not kept for the run
        return self

    def __exit__(self, *exc: object) -> None:
        self._unlock()

    def _create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: exists and is not a directory")
        try:
            self.records.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"{self.path}: cannot create the output directory ({os_reason(err)})") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise InputError(f"{self.path}: the output directory is not writable")

    def _lock(self) -> None:
        lock = self.path / LOCK
        try:
            fd, holder = hold_lock(lock, 0o666)
        except OSError as err:
            raise InputError(f"{lock}: cannot open the lock file ({os_reason(err)})") from None
        if fd is None:
            raise InputError(f"{self.path}: another pupick run (process {holder}) is writing here; wait for it "
                             "to finish or use another output directory")
        self._lock_fd = fd
        self._locked_at = time.time()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock; the kernel does it too if we die
            self._lock_fd = None

    def _check_settings(self) -> None:
        earlier: dict[str, Any] = {}
        if self.manifest_path.exists():
            try:
                earlier = json.loads(self.manifest_path.read_text())
                if not isinstance(earlier, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as err:
                if not self.overwrite and self.finished():
                    raise InputError(f"{self.manifest_path}: unreadable ({err}); remove it or use --overwrite") from None
                earlier = {}
        if self.overwrite:
            others = [n for n in self.finished() if self.only is not None and n not in self.only]
            if others and earlier.get("settings") not in (None, self.settings):
                shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
                raise InputError(
                    f"{self.path}: --overwrite redoes only the micrographs given, and {len(others)} other "
                    f"micrograph(s) ({shown}) were picked with a different "
                    f"{'; '.join(_differences(earlier.get('settings'), self.settings))}; give all the micrographs to "
                    "redo them all, or use another output directory")
            self.clear(self.only)
            if not others:
                earlier = {}
        elif earlier.get("settings") not in (None, self.settings) and self.finished():
            raise InputError(f"{self.path}: holds {self.kind} outputs made with a different "
                             f"{'; '.join(_differences(earlier.get('settings'), self.settings))}; {self.remedy}")
        self.manifest = {"pupick_version": __version__, "kind": self.kind, "settings": self.settings,
                         "failures": earlier.get("failures", {}) if earlier.get("settings") == self.settings else {},
                         **{k: v for k, v in earlier.items() if k not in ("pupick_version", "kind", "settings",
                                                                          "failures")}}
        self.save_manifest()

    # -- records -------------------------------------------------------------------------------------------------
    def _record(self, name: str, suffix: str) -> Path:
        """RECORDS/NAME+suffix, the name checked first (it must not lead out of the directory)."""
        return self.records / f"{check_micrograph_name(name, 'micrograph name', path_ok=True)}{suffix}"

    def finished(self) -> list[str]:
        """Names of the micrographs with a record (finished by some run)."""
        return sorted(p.stem for p in self.records.glob("*.csv")) if self.records.is_dir() else []

    def outputs_of(self, name: str) -> list[Path]:
        """The user-visible files a record says its micrograph produced."""
        index = self._record(name, ".outputs")
        if not index.exists():
            return []
        return [self.path / line for line in index.read_text().splitlines() if line.strip()]

    def is_done(self, name: str, outputs: Sequence[Path] = ()) -> bool:
        """Finished earlier, and every output the user sees is still there (a deleted one is redone)."""
        if not (self._record(name, ".csv")).exists():
            return False
        return all(Path(p).exists() for p in [*self.outputs_of(name), *outputs])

    def pending(self, items: Sequence[Any], files: "PerMicrographFiles | None",
                log: Callable[[str], None] | None = None) -> tuple[list[Any], list[Any]]:
        """(done, to do): the items finished earlier whose outputs still exist, and the rest, in input order.

        One listing of the records and of each output folder, whatever the number of finished micrographs: no
        file of finished work is opened or stat'ed (an on-the-fly rerun costs what is new)."""
        done = self.done_items(items, files)
        names = {i.micrograph for i in done}
        if done and log is not None:
            log(f"{len(done)} micrograph(s) already picked in {self.path}; skipping them")
        return done, [i for i in items if i.micrograph not in names]

    def done_items(self, items: Sequence[Any], files: "PerMicrographFiles | None") -> list[Any]:
        """The items with a record whose per-micrograph file (for this format) is still there, in input order."""
        recorded = _listing(self.records)
        if files is None:
            return [i for i in items if f"{i.micrograph}.csv" in recorded]
        listings: dict[str, set[str]] = {}

        def present(item: Any) -> bool:
            folder, _, name = os.fspath(files.target(item)).rpartition(os.sep)  # relative: no Path arithmetic
            if folder not in listings:
                listings[folder] = _listing(self.path / folder)
            return name in listings[folder]

        return [i for i in items if f"{i.micrograph}.csv" in recorded and present(i)]

    def targets(self, item: Any, files: "PerMicrographFiles | None") -> list[Path]:
        """The user-visible per-micrograph files of an item (none without per-micrograph files)."""
        return [self.path / files.target(item)] if files is not None else []

    def record(self, name: str, table: pd.DataFrame, outputs: Sequence[Path] = ()) -> None:
        """Mark a micrograph finished: its outputs' index, then its record (last: the resume marker)."""
        rel = [os.path.relpath(p, self.path) for p in outputs]
        write_text_atomic(self._record(name, ".outputs"), "".join(f"{r}\n" for r in rel))
        with atomic_path(self._record(name, ".csv")) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        self.manifest["failures"].pop(name, None)

    def fail(self, name: str, reason: str) -> None:
        self.manifest["failures"][name] = reason

    def read(self, name: str) -> pd.DataFrame:
        """A finished micrograph's picks (the record of a pick directory)."""
        return read_table(self._record(name, ".csv"))

    def clear(self, names: set[str] | None = None) -> None:
        """Remove the records of `names` (None: every one) and the outputs they name (what --overwrite means)."""
        for name in self.finished():
            if names is not None and name not in names:
                continue
            for out in self.outputs_of(name):
                out.unlink(missing_ok=True)
            for suffix in (".csv", ".outputs"):
                self._record(name, suffix).unlink(missing_ok=True)

    def save_manifest(self) -> None:
        write_text_atomic(self.manifest_path, json.dumps(self.manifest, indent=1))


def _listing(folder: Path) -> set[str]:
    """The names in a folder (one listing; none when it is missing)."""
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


# core.io's temporary names: .NAME.<8 hex>.part[.SUFFIX]. Under OUT_DIR, a run holding the lock writes the only
# live ones, except `pupick view`'s: its labels.csv, its exports/ and its picture cache, and the rounds/ it picks
# into (each with its own lock).
PART_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.part(\.[^.]+)?$")
NOT_OURS = (".labels.csv.",)
SKIP_DIRS = {"exports", ".pupick_view_cache", "rounds"}


def remove_stale_parts(root: Path, before: float) -> int:
    """Remove temporary files a killed run left under `root` (older than `before`); returns how many."""
    removed = 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in names:
            if not PART_NAME.match(name) or name.startswith(NOT_OURS):
                continue
            path = Path(folder) / name
            try:
                if path.lstat().st_mtime < before:
                    path.unlink()
                    removed += 1
            except OSError:  # gone already, or not ours to remove
                pass
    return removed


def _differences(before: Any, now: dict[str, Any]) -> list[str]:
    """Readable names of the settings that changed (model, format, and each picking field)."""
    before = before if isinstance(before, dict) else {}
    names = {"model_sha256": "model"}
    out = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(names.get(key, key) if key == "model_sha256" else f"{key}: {a} -> {b}")
    return out or ["settings"]


PICK_TABLE_COLUMNS = list(picks_index.COLUMNS)


def read_table(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"micrograph": str, "path": str}, keep_default_na=False, na_values={"score": [""]})
    return df.reindex(columns=PICK_TABLE_COLUMNS)


def write_table(df: pd.DataFrame, target: Path) -> None:
    """A picks table as CSV (micrograph,x,y,score,path), atomically; the format of picks.csv."""
    with atomic_path(target) as tmp:
        df[PICK_TABLE_COLUMNS].to_csv(tmp, index=False, float_format="%.6g")


def gather(out: OutputDir, names: list[str]) -> pd.DataFrame:
    """All finished micrographs' picks in one table; names and paths as categoricals, so 10^7 picks stay small."""
    frames = [f for f in (out.read(s) for s in names) if len(f)]
    if not frames:
        return empty_picks(with_path=True)[PICK_TABLE_COLUMNS]
    sizes = [len(f) for f in frames]
    codes = np.repeat(np.arange(len(frames)), sizes)
    mics = [str(f["micrograph"].iloc[0]) for f in frames]
    paths = [str(f["path"].iloc[0]) for f in frames]
    num = {c: np.concatenate([f[c].to_numpy(dtype=float) for f in frames]) for c in ("x", "y", "score")}
    path_index = {p: i for i, p in enumerate(dict.fromkeys(paths))}
    path_codes = np.array([path_index[p] for p in paths])[codes]
    return pd.DataFrame({
        "micrograph": pd.Categorical.from_codes(codes, categories=mics),
        **num,
        "path": pd.Categorical.from_codes(path_codes, categories=list(path_index)),
    })


COMMITTED = "committed.txt"  # in RECORDS: the micrographs whose rows are in picks.csv, in its order (appended)
PICKS_HEADER = picks_index.HEADER


def _rows(out: "OutputDir", name: str) -> tuple[bytes, bytes]:
    """A finished micrograph's rows of picks.csv, formatted as write_table formats them, and its view-index record
    (scores as the record's text parses, which is picks.csv's text: the record was written with the same %.6g)."""
    df = out.read(name)
    if not len(df):
        return b"", b""
    rows = df[PICK_TABLE_COLUMNS].to_csv(index=False, header=False, float_format="%.6g").encode()
    path = df["path"].iloc[0]
    return rows, picks_index.record(name, path if isinstance(path, str) else "", len(rows),
                                    df["score"].to_numpy(dtype=np.float32))


class PicksCsv:
    """OUTDIR/picks.csv in input order, appended as micrographs finish: a micrograph's rows go in (one write) once
    every earlier input is done or has failed, then its name in .pupick_records/committed.txt, then its record in
    the view index (core.picks_index), then the committed lengths (and the index's CRC-32) in the manifest. A run
    first cuts what lies beyond those lengths (a torn tail). A micrograph that
    finishes before rows already there (a retried failure, a new name that sorts earlier), or an input list that
    no longer matches, makes the run rewrite the file from the records: the same inputs give the same bytes."""

    def __init__(self, out: "OutputDir", items: Sequence[Any], done: Sequence[Any], todo: Sequence[Any]) -> None:
        self.out = out
        self.path = out.path / PICKS_TABLE
        self.list_path = out.records / COMMITTED
        self.index_path = out.records / picks_index.INDEX_NAME
        self.items = list(items)
        self.index = {i.micrograph: n for n, i in enumerate(self.items)}
        done_names = {i.micrograph for i in done}
        # micrographs finished here by runs on other inputs stay listed, after this run's (sorted): no appending then
        self.extras = sorted(set(out.finished()) - set(self.index))
        self.stale = bool(self.extras)  # rows arrived out of order, or extras: rewrite at the end
        committed = [] if self.extras else self._committed(done_names)
        if committed is None:
            self._rewrite(done_names)
            committed = [i.micrograph for i in self.items if i.micrograph in done_names]
        self.last = len(self.items) if self.extras else self.index[committed[-1]] if committed else -1
        in_file = set(committed)
        self.status = {n: True for n in done_names if n not in in_file}  # finished, rows not yet in the file
        self.queue = sorted([*self.status, *(i.micrograph for i in todo)], key=self.index.__getitem__)
        self.next = 0
        self.advance()

    def item(self, name: str) -> Any:
        """The input item of a micrograph of this run."""
        return self.items[self.index[name]]

    def _committed(self, done_names: set[str]) -> list[str] | None:
        """The micrographs in picks.csv, after cutting a torn tail; None when the file must be rewritten."""
        state = self.out.manifest.get("picks_csv")
        if not isinstance(state, dict):
            return None
        size, count, index_size = state.get("bytes"), state.get("micrographs"), state.get("index_bytes")
        try:
            with open(self.list_path, "rb") as fh:
                listing = fh.read()
            if os.path.getsize(self.path) < size or os.path.getsize(self.index_path) < index_size:
                return None  # (an index_size of None: an earlier version's run, without the view index)
        except (OSError, TypeError):
            return None
        lines = listing.split(b"\n")
        if not isinstance(count, int) or len(lines) - 1 < count:
            return None
        names = [line.decode() for line in lines[:count]]
        positions = [self.index.get(n, -1) for n in names]
        last = positions[-1] if positions else -1
        # what the file holds must be exactly the inputs done up to its last micrograph, in input order
        if min(positions, default=0) < 0 or any(b <= a for a, b in zip(positions, positions[1:])):
            return None
        if [i.micrograph for i in self.items[:last + 1] if i.micrograph in done_names] != names:
            return None
        os.truncate(self.path, size)  # the torn tail of a run killed mid-append
        os.truncate(self.list_path, sum(len(line) + 1 for line in lines[:count]))
        os.truncate(self.index_path, index_size)
        return names

    def _save(self, size: int, count: int, index_size: int, index_crc: int) -> None:
        self.out.manifest["picks_csv"] = {"bytes": size, "micrographs": count, "index_bytes": index_size,
                                          "index_crc32": index_crc}
        self.out.save_manifest()

    def _rewrite(self, done_names: set[str]) -> None:
        """picks.csv and its list from the records of every done input, in input order (O(all), rarely)."""
        self.out.manifest.pop("picks_csv", None)
        self.out.save_manifest()  # killed while rewriting: the next run rewrites again
        names = [i.micrograph for i in self.items if i.micrograph in done_names] + self.extras
        index_crc = picks_index.crc(picks_index.MAGIC)
        with atomic_path(self.index_path) as tmp_index, open(tmp_index, "wb") as fi:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
                fh.write(PICKS_HEADER.encode())
                fi.write(picks_index.MAGIC)
                for name in names:
                    rows, entry = _rows(self.out, name)
                    fh.write(rows)
                    fi.write(entry)
                    index_crc = picks_index.crc(entry, index_crc)
        os.utime(self.index_path)  # not older than picks.csv: `pupick view` takes an older index for a stale one
        write_text_atomic(self.list_path, "".join(f"{n}\n" for n in names))
        self._save(os.path.getsize(self.path), len(names), os.path.getsize(self.index_path), index_crc)

    def finished(self, name: str, ok: bool) -> None:
        """A micrograph of this run finished (ok) or failed; commits what is now in order."""
        self.status[name] = ok
        self.advance()

    def advance(self) -> None:
        while self.next < len(self.queue) and self.queue[self.next] in self.status:
            name = self.queue[self.next]
            self.next += 1
            if not self.status.pop(name):
                continue
            if self.index[name] < self.last or self.extras:
                self.stale = True
                continue
            self._append(name)

    def _append(self, name: str) -> None:
        rows, entry = _rows(self.out, name)
        size = _append_once(self.path, rows, create=False)  # picks.csv exists, with its header
        _append_once(self.list_path, f"{name}\n".encode())
        index_size = picks_index.append(self.index_path, entry)
        self.last = self.index[name]
        state = self.out.manifest["picks_csv"]
        self._save(size, state["micrographs"] + 1, index_size, picks_index.crc(entry, state["index_crc32"]))

    def close(self, files: "PerMicrographFiles | None") -> None:
        """At the end of a run: rewrite when rows came out of order."""
        if self.stale:
            self._rewrite({i.micrograph for i in self.out.done_items(self.items, files)})
            self.stale = False


def _append_once(path: Path, data: bytes, create: bool = True) -> int:
    """Append `data` in one write (a killed run leaves it whole or torn at the end, never interleaved); the new size."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0), 0o666)
    try:
        os.write(fd, data)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


@dataclass
class PerMicrographFiles:
    """Where each micrograph's own pick file goes (relative to the output directory) and how it is written."""

    target: Callable[[Any], Path]  # MicrographItem -> path relative to the output directory
    write: Callable[[pd.DataFrame, Path], None]  # (picks, absolute target); must write atomically


@dataclass
class DirRun:
    """A pick run into a directory: this run's result, the micrographs skipped as already done, all picks."""

    run: Any  # PickResult
    skipped: list[str]
    _picks: pd.DataFrame | None  # None: read from picks_path when asked for
    picks_path: Path
    model: Any  # the LoadedModel (None for the blob picker)
    micrographs: list[str] = field(default_factory=list)  # names of every requested micrograph now done
    items: list[Any] = field(default_factory=list)  # every requested MicrographItem
    counts: dict[str, int] = field(default_factory=dict)  # this run's picks per micrograph
    scores: Any = None  # this run's ScoreHistogram

    @property
    def picks(self) -> pd.DataFrame:
        """Every requested micrograph's picks, including earlier runs' (read from picks.csv on first use)."""
        if self._picks is None:
            self._picks = read_table(self.picks_path)
        return self._picks

    @property
    def failures(self) -> list[tuple[str, str]]:
        return self.run.failures


class ScoreHistogram:
    """Pick scores binned at 0.01 (a logit), so a run's score quantiles need no list of all its picks."""

    STEP = 0.01

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.n = 0

    def add(self, scores: Any) -> None:
        keys, counts = np.unique(np.floor(np.asarray(scores, dtype=float) / self.STEP).astype(np.int64),
                                 return_counts=True)
        for k, c in zip(keys.tolist(), counts.tolist()):
            self.bins[k] = self.bins.get(k, 0) + c
        self.n += int(counts.sum())

    def quantile(self, q: float) -> float:
        """The q-quantile of the scores, to the bin (its middle); nan when empty."""
        if not self.n:
            return float("nan")
        keys = sorted(self.bins)
        counts = np.cumsum([self.bins[k] for k in keys])
        at = int(np.searchsorted(counts, q * (self.n - 1) + 1))
        return (keys[min(at, len(keys) - 1)] + 0.5) * self.STEP

    def kth_largest(self, k: int) -> float | None:
        """The k-th highest score, to the bin (None when there are fewer than k)."""
        if k < 1 or k > self.n:
            return None
        seen = 0
        for key in sorted(self.bins, reverse=True):
            seen += self.bins[key]
            if seen >= k:
                return key * self.STEP
        return None


def pick_settings(model: Any, config: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a pick directory's manifest records: the model's identity, the picking fields, output settings."""
    return {"model_sha256": getattr(model, "sha256", None) if config.method == "cnn" else None,
            "pick": config.recorded(), **(extra or {})}


def _file_identity(path: Any) -> dict[str, Any] | None:
    """A model file's path, size and modification time: enough to know it is the file a directory was picked with."""
    if path is None:
        return None
    from .modelmeta import resolve_model

    try:
        path = resolve_model(path)  # a shipped model's name (`general`): its file
        st = os.stat(path)
    except (OSError, PupickError):
        return None
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def nothing_new(out_dir: str | os.PathLike, items: Sequence[Any], files: "PerMicrographFiles | None",
                model_path: Any, config: Any, extra: dict[str, Any]) -> bool:
    """True when an earlier run into `out_dir` picked every item with these settings and model file, and
    picks.csv holds exactly them: a rerun has nothing to do, and needs neither torch nor the model (no file of
    finished work is opened: one listing of the records and of each output folder, the manifest, the list)."""
    root = Path(out_dir)
    try:
        manifest = json.loads((root / PICK_MANIFEST).read_text())
        recorded = manifest["settings"]
        state = manifest["picks_csv"]
        if (recorded.get("pick") != config.recorded() or any(recorded.get(k) != v for k, v in extra.items())
                or "bootstrap" in recorded or manifest.get("failures")):  # picked by the removed bootstrap round
            return False
        if config.method == "cnn" and (manifest.get("model_file") is None
                                       or manifest["model_file"] != _file_identity(model_path)):
            return False
        if state["micrographs"] != len(items) or os.path.getsize(root / PICKS_TABLE) != state["bytes"]:
            return False
        listed = (root / RECORDS / COMMITTED).read_text().split("\n")[:len(items)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    if listed != [i.micrograph for i in items]:
        return False
    return not unfinished(root, items, files)


def unfinished(out_dir: str | os.PathLike, items: Sequence[Any], files: "PerMicrographFiles | None" = None,
               overwrite: bool = False) -> list[Any]:
    """The items a pick run into `out_dir` has left to do (all of them with `overwrite`), without taking the
    directory's lock or creating it: what a prefetch should prepare, so a resumed run reads no finished micrograph."""
    if overwrite:
        return list(items)
    out = OutputDir(out_dir, "pick", {})
    done = {i.micrograph for i in out.done_items(items, files)}
    return [i for i in items if i.micrograph not in done]


def pick_to_dir(
    micrographs: Any,
    model: Any,
    config: Any,
    out_dir: str | os.PathLike,
    *,
    files: PerMicrographFiles | None = None,
    settings: dict[str, Any] | None = None,
    overwrite: bool = False,
    remedy: str | None = None,
    executor: Any = None,
    on_result: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> DirRun:
    """Resumable picking into OUT_DIR: per-micrograph files (optional), records, then OUT_DIR/picks.csv."""
    items = micrograph_items(micrographs)
    model = check_model(model, config, items)
    kw = {"remedy": remedy} if remedy else {}
    settings = dict(settings or {})
    with OutputDir(out_dir, "pick", pick_settings(model, config, settings), overwrite=overwrite,
                   only=[i.micrograph for i in items], **kw) as out:
        root = out.path
        done, todo = out.pending(items, files, log)
        done_names = {i.micrograph for i in done}

        table = PicksCsv(out, items, done, todo)
        counts: dict[str, int] = {}
        scores = ScoreHistogram()

        def finish(res: Any) -> None:
            if res.error is not None:
                out.fail(res.micrograph, res.error)
            else:
                written = out.targets(table.item(res.micrograph), files)
                if files is not None:
                    files.write(res.picks, written[0])
                out.record(res.micrograph, res.picks, written)
                counts[res.micrograph] = len(res.picks)
                scores.add(res.picks["score"].to_numpy(dtype=float))
                if getattr(res, "tile_size", None):  # out of device memory: the smaller scoring tile it took
                    out.manifest.setdefault("tile_size_px", {})[res.micrograph] = res.tile_size
            table.finished(res.micrograph, res.error is None)  # its rows join picks.csv when their turn comes
            if on_result is not None:
                on_result(res)

        try:
            run = pick(todo, model, config, executor=executor, on_result=finish, should_stop=should_stop,
                       progress=progress, log=log, keep_picks=False)
        finally:
            out.save_manifest()  # failures so far, even when interrupted
        table.close(files)
        out.manifest["model_file"] = _file_identity(getattr(model, "path", None))
        finished = [n for n in (i.micrograph for i in items) if n in done_names or n in counts]
        if getattr(model, "path", None) is not None:  # `pupick view` reads its defaults (expected count) from it
            out.manifest["model"] = str(Path(model.path).resolve())
        if run.diameters:  # in the micrographs' own pixels (after any pixel-size rescaling), for `pupick evaluate`
            out.manifest["diameter_px"] = float(np.median(list(run.diameters.values())))
        out.save_manifest()
    return DirRun(run, sorted(done_names), None, root / PICKS_TABLE, model, finished, items, counts, scores)


# -- `pupick preprocess`: a directory of preprocessed micrographs ------------------------------------------------

@dataclass
class BatchResult:
    """What a batch run did: written, skipped (already there), failed (path, reason), factor per micrograph."""

    written: list[str]
    skipped: list[str]
    failures: list[tuple[str, str]]
    factors: dict[str, float]


def _manifest_settings(config: PreprocessConfig) -> dict:
    return {"factor": config.factor, "diameter_A": config.diameter_A, "diameter_px": config.diameter_px,
            "pixel_size": config.pixel_size, "normalize": config.normalize, "seed": config.seed}


def preprocess_to_dir(
    paths: list, out_dir, config: PreprocessConfig, workers: int = 1, overwrite: bool = False, progress: bool = True
) -> BatchResult:
    """Preprocess micrographs into OUT_DIR/<stem>.mrc (float32, downsampled pixel size in the header).

    Existing outputs are skipped unless `overwrite`; a manifest records the settings and each factor, and a rerun with
    different settings is refused unless `overwrite`. Failures are collected, not raised, so one bad file does not
    stop the batch. Threads, not processes: the FFTs and file reads release the GIL and memory stays shared.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    stems = [stem(p) for p in paths]
    dupes = duplicate_stems(stems)
    if dupes:
        raise InputError(f"two input micrographs share the name {dupes[0]!r}; outputs would collide")
    inputs = Protected(paths)
    check_output(out_dir / PREPROCESS_MANIFEST, "text", inputs)
    for name in stems:  # never over an input (e.g. OUT_DIR is where the micrographs are), nor another kind of file
        check_output(out_dir / f"{name}.mrc", "mrc", inputs, probe=False)

    fft_workers = max(1, (os.cpu_count() or 1) // max(1, workers))
    result = BatchResult([], [], [], {})
    with OutputDir(out_dir, "preprocess", _manifest_settings(config), overwrite=overwrite) as out:
        entries: dict = dict(out.manifest.get("micrographs", {}))

        def one(path: Path) -> tuple[str, str, float | None, str | None]:
            name = stem(path)
            target = out.path / f"{name}.mrc"
            if out.is_done(name, [target]):
                return name, "skipped", entries.get(name, {}).get("factor"), None
            try:
                mic = read_micrograph(path)
                factor = config.resolve_factor(mic.pixel_size)
                small = downsample(mic.image, factor, workers=fft_workers)
                image = normalize(small, config.normalize, config.seed, config.gmm_samples)
                ps = config.pixel_size or mic.pixel_size
                write_mrc(target, image, ps * factor if ps else None)
                entry = {"source": str(path), "factor": factor, "pixel_size": ps,
                         "shape": [int(mic.image.shape[0]), int(mic.image.shape[1])]}
                entries[name] = entry
                out.record(name, pd.DataFrame([{**entry, "shape": None, "ny": entry["shape"][0],
                                                "nx": entry["shape"][1]}]), [target])
                return name, "written", factor, None
            except InputError as err:
                out.fail(name, str(err))
                return name, "failed", None, str(err)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            bar = tqdm(total=len(paths), unit="mic", desc="preprocess", disable=not progress or None)
            for name, status, factor, error in pool.map(one, [Path(p) for p in paths]):
                bar.update()
                if status == "failed":
                    result.failures.append((name, error or "failed"))
                else:
                    getattr(result, status).append(name)
                    if factor is not None:
                        result.factors[name] = factor
            bar.close()
        out.manifest["micrographs"] = {k: v for k, v in entries.items() if k in set(out.finished())}
        out.save_manifest()
    return result
