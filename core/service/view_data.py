"""What the browser pages show of one `pupick pick` output directory: rounds, micrographs, picks, failures."""
from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..evaluate import evaluate
from ..tables import stem
from .view_index import RoundIndex, build_index, extends, from_sidecar, load_index, save_index
from .view_rows import MicrographRows

MANIFEST = "pupick_pick.json"  # core.pipeline.MANIFEST (kept literal: importing the pipeline pulls in scoring)
PICKS = "picks.csv"
RECORDS = ".pupick_records"
ROUNDS = "rounds"
LABELS = "labels.csv"
CACHE = ".pupick_view_cache"
MODEL = "model.pt"
SCORE_STEP = 0.01  # core.outputs.ScoreHistogram.STEP (kept literal: core.outputs imports the pipeline)


@dataclass
class ViewState:
    """One OUTDIR seen in the browser: its picks (round 0) and retraining rounds, labels and micrographs.

    `labels` is the user's label file (read once, never written); the working copy is OUTDIR/labels.csv.
    `micrographs` are the requested micrograph paths (failures are those without a finished record).
    """

    outdir: Path
    labels: Path | None = None
    micrographs: list[Path] | None = None
    diameter_px: float | None = None  # overrides what the manifest and model record
    cache_dir: Path | None = None  # rendered images; default OUTDIR/.pupick_view_cache
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _indexes: dict = field(default_factory=dict, init=False, repr=False)
    _rows: dict = field(default_factory=dict, init=False, repr=False)
    _paths: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.outdir = Path(self.outdir)
        if not self.outdir.is_dir():
            raise InputError(f"{self.outdir}: no such directory (give a `pupick pick` output directory)")
        if not (self.outdir / PICKS).is_file() and not (self.outdir / MANIFEST).is_file():
            raise InputError(f"{self.outdir}: holds no {PICKS} or {MANIFEST}; is it a `pupick pick` output directory?")
        if self.labels is not None:
            self.labels = Path(self.labels)
            if not self.labels.exists():
                raise InputError(f"{self.labels}: labels file not found")
        if self.micrographs is not None:
            self.micrographs = [Path(p) for p in self.micrographs]
        if self.diameter_px is not None and not self.diameter_px > 0:
            raise InputError(f"particle diameter must be positive (got {self.diameter_px} px)")
        self.cache_dir = Path(self.cache_dir) if self.cache_dir else self.outdir / CACHE

    # ------------------------------------------------------------ rounds

    def round_dir(self, n: int) -> Path:
        """Round 0 is OUTDIR itself (the original picks); round N >= 1 is OUTDIR/rounds/N."""
        if n == 0:
            return self.outdir
        if n < 0:
            raise InputError(f"no round {n}")
        return self.outdir / ROUNDS / str(n)

    def rounds(self) -> list[dict[str, Any]]:
        """Every round: number, whether it has picks and a model."""
        out = [{"round": 0, "picks": (self.outdir / PICKS).is_file(), "model": False}]
        base = self.outdir / ROUNDS
        if base.is_dir():
            numbers = sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)
            for n in numbers:
                d = base / str(n)
                out.append({"round": n, "picks": (d / PICKS).is_file(), "model": (d / MODEL).is_file()})
        return out

    def newest_picked_round(self) -> int:
        """The newest round that has picks (0 when no retraining round has been picked)."""
        return max([r["round"] for r in self.rounds() if r["picks"]], default=0)

    def next_round(self) -> int:
        return max(r["round"] for r in self.rounds()) + 1

    def check_round(self, n: int) -> Path:
        d = self.round_dir(n)
        if n and not d.is_dir():
            raise InputError(f"no round {n} in {self.outdir}")
        return d

    def manifest(self, n: int = 0) -> dict:
        """The round's pick manifest ({} when missing or unreadable)."""
        path = self.check_round(n) / MANIFEST
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------ picks

    def picks(self, n: int = 0) -> pd.DataFrame:
        """The round's whole picks.csv (micrograph, x, y, score, path): for Apply threshold only; the pages use index()."""
        path = self.check_round(n) / PICKS
        if not path.is_file():
            raise InputError(f"round {n} has no picks yet ({path})")
        try:
            df = pd.read_csv(path, dtype={"micrograph": str, "path": str}, keep_default_na=False,
                             na_values={"score": [""], "x": [""], "y": [""]})
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: unreadable picks table ({str(err).splitlines()[0]})") from None
        missing = [c for c in ("micrograph", "x", "y", "score") if c not in df.columns]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
        if "path" not in df.columns:
            df["path"] = ""
        return df  # not kept: at 50,000 micrographs it is gigabytes

    def picks_chunks(self, n: int, threshold: float, rows: int = 20_000):
        """The round's picks scoring >= threshold, read from picks.csv `rows` rows at a time (the first piece may be
        empty: it carries the columns); for Apply threshold's single-file formats."""
        path = self.check_round(n) / PICKS
        if not path.is_file():
            raise InputError(f"round {n} has no picks yet ({path})")
        try:
            reader = pd.read_csv(path, dtype={"micrograph": str, "path": str}, keep_default_na=False,
                                 na_values={"score": [""], "x": [""], "y": [""]}, chunksize=rows)
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: unreadable picks table ({str(err).splitlines()[0]})") from None

        def chunks():
            try:
                yield from reader
            except ValueError as err:
                raise InputError(f"{path}: unreadable picks table ({str(err).splitlines()[0]})") from None

        def pieces():
            with reader:
                first = True
                for chunk in chunks():
                    missing = [c for c in ("micrograph", "x", "y", "score") if c not in chunk.columns]
                    if missing:
                        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
                    if "path" not in chunk.columns:
                        chunk["path"] = ""
                    kept = chunk[chunk["score"] >= threshold]
                    if len(kept) or first:
                        yield kept
                    first = False
                if first:  # no rows at all: the header alone
                    yield pd.DataFrame({c: pd.Series(dtype=float if c in ("x", "y", "score") else object)
                                        for c in ("micrograph", "x", "y", "score", "path")})

        return pieces()

    def index(self, n: int = 0) -> RoundIndex:
        """The round's picks.csv streamed once into a RoundIndex (view_index.py), rebuilt only when the file changed."""
        path = self.check_round(n) / PICKS
        if not path.is_file():
            raise InputError(f"round {n} has no picks yet ({path})")
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            cached = self._indexes.get(n)
            if cached is not None and cached.key == key:
                return cached
        index = load_index(path, key, self.cache_dir)
        if index is None:  # the pick run's index, checked; a run appending: only the new rows are read
            base = cached if extends(cached, key) else None
            if base is None:
                base = from_sidecar(path, key, path.parent / RECORDS, self.manifest(n).get("picks_csv"))
            if base is not None and base.key == key:
                index = base  # nothing to keep: the run's index is there for the next start too
            else:
                index = build_index(path, key, base if extends(base, key) else
                                    load_index(path, key, self.cache_dir, any_version=True))
                save_index(index, self.cache_dir)
        with self._lock:
            self._indexes[n] = index
            self._rows.pop(n, None)
        return index

    def picks_of(self, name: str, n: int = 0) -> dict[str, list[float | None]]:
        """{x, y, score} of one micrograph's picks, by descending score (read from picks.csv when asked)."""
        df = self.index(n).picks_of(name)
        if not len(df) and name not in self.micrograph_paths():
            raise LookupError(f"unknown micrograph {name!r}")
        df = df.sort_values("score", ascending=False, kind="stable")
        return {c: _finite_list(df[c].to_numpy(dtype=float)) for c in ("x", "y", "score")}

    def picks_of_many(self, names: list[str], n: int = 0) -> pd.DataFrame:
        """The picks of the given micrographs only (what an evaluation against labels needs)."""
        index = self.index(n)
        frames = [index.picks_of(m) for m in names]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else index.picks_of("")

    # ------------------------------------------------------------ micrographs

    def micrograph_paths(self) -> dict[str, str]:
        """{stem: path} of every micrograph known: the requested list, then the paths the picks of any round name."""
        indexes = [self.index(r["round"]) for r in self.rounds() if r["picks"]]
        key = tuple(i.key for i in indexes)
        with self._lock:
            if self._paths is not None and self._paths[0] == key:
                return self._paths[1]
        paths: dict[str, str] = {}
        for p in self.micrographs or []:
            paths.setdefault(stem(p), str(p))
        for index in indexes:
            for name, path in zip(index.names, index.paths):
                if path:
                    paths.setdefault(name, path)
        with self._lock:
            self._paths = (key, paths)
        return paths

    def done_micrographs(self, n: int = 0) -> set[str] | None:
        """Stems with a finished per-micrograph record in the round (None when the round keeps no records)."""
        records = self.check_round(n) / RECORDS
        if not records.is_dir():
            return None
        return {name[:-4] for name in os.listdir(records) if name.endswith(".csv")}

    def failures(self, n: int = 0) -> dict[str, str]:
        """{stem: reason} for requested micrographs the round did not pick (from the manifest when it records them)."""
        out: dict[str, str] = {}
        recorded = self.manifest(n).get("failures") or []
        if isinstance(recorded, dict):  # {micrograph: reason}, as core.outputs records them
            recorded = list(recorded.items())
        for item in recorded:
            if isinstance(item, dict):
                where, reason = item.get("micrograph") or item.get("path"), item.get("error") or item.get("reason")
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                where, reason = item
            else:
                continue
            if where:
                out[stem(str(where))] = str(reason or "failed")
        if self.micrographs:
            done = self.done_micrographs(n)
            if done is None:
                done = set(self.index(n).names) if (self.round_dir(n) / PICKS).is_file() else set()
            for p in self.micrographs:
                s = stem(p)
                if s not in done and s not in out:
                    out[s] = "not in the picks: picking failed or has not reached it (see the pick run's log)"
        return out

    def table(self, n: int = 0) -> "MicrographRows":
        """Every micrograph of the round (view_rows.py), built once per version of picks.csv and the manifest."""
        index = self.index(n)
        man = self.check_round(n) / MANIFEST
        records = self.round_dir(n) / RECORDS
        key = (index.key, _mtime(man), _mtime(records))
        with self._lock:
            cached = self._rows.get(n)
            if cached is not None and cached.key == key:
                return cached
        paths = self.micrograph_paths()
        failures = self.failures(n)
        names = list(dict.fromkeys([*paths, *index.names, *(self.done_micrographs(n) or ()), *failures]))
        rows = MicrographRows(key, index, names, paths, failures)
        with self._lock:
            self._rows[n] = rows
        return rows

    def micrograph_table(self, n: int = 0) -> list[dict[str, Any]]:
        """One row per micrograph: name, path, pick count, score range and the error of a failed one."""
        rows = self.table(n)
        return rows.window(0, len(rows.names))["micrographs"]

    def path_of(self, name: str) -> Path:
        """The image file of a micrograph the pages know."""
        path = self.micrograph_paths().get(name)
        if not path:
            raise LookupError(f"unknown micrograph {name!r}")
        return Path(path)

    # ------------------------------------------------------------ sizes

    def diameter(self, n: int = 0) -> float | None:
        """The particle diameter in original pixels: --diameter-px, else what the round's manifest or model says."""
        if self.diameter_px:
            return float(self.diameter_px)
        for r in (n, 0):
            man = self.manifest(r) if self.round_dir(r).is_dir() else {}
            d = man.get("diameter_px") or (man.get("settings") or {}).get("pick", {}).get("diameter_px")
            if d:
                return float(d)
            model = self.model_config(r)
            if model.get("diameter_px"):
                return float(model["diameter_px"])
        return None

    def model_config(self, n: int = 0) -> dict:
        """The plain config of the round's model (round N: rounds/N/model.pt; round 0: the manifest's model)."""
        if n:
            path = self.round_dir(n) / MODEL
        else:
            path = Path(self.manifest(0).get("model") or "")
            if not str(path) or str(path) == ".":
                return {}
        if not path.is_file():
            return {}
        from ..modelmeta import read_config

        plain = read_config(path)  # without torch: the first view need not wait for it (~1-2 s)
        if plain is not None:
            return dict(plain)
        from ..modelfile import load_model  # torch: here, so that `pupick view` starts without it

        try:
            return dict(load_model(path).config)
        except Exception:  # an unreadable model only loses the defaults it would give
            return {}


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _finite_list(values: np.ndarray) -> list[float | None]:
    """Plain floats for JSON, with None where a value is not finite (JSON has no NaN)."""
    if np.isfinite(values).all():
        return values.tolist()
    return [_finite(v) for v in values]


def _finite(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def suggest_threshold(index: RoundIndex, labelled_picks: pd.DataFrame | None, labels: pd.DataFrame | None,
                      radius: float | None, expected: float | None, n_micrographs: int,
                      labelled: list[str]) -> dict[str, Any] | None:
    """A working threshold: best F1 against the labels when there are any, else where picks meet the expected count."""
    if not len(index.scores):
        return None
    if labels is not None and len(labels) and radius and labelled and labelled_picks is not None:
        ev = evaluate(labelled_picks, labels, radius, micrographs=labelled)
        if math.isfinite(ev.threshold):
            return {"threshold": ev.threshold, "reason": f"best F1 {ev.best_f1:.3f} against the labels"}
    if expected and n_micrographs:
        t = index.kth_largest(int(round(expected * n_micrographs)))
        if t is not None:  # to the 0.01 bin below, as `pupick pick` prints it (core.outputs.ScoreHistogram)
            return {"threshold": math.floor(t / SCORE_STEP) * SCORE_STEP, "reason": f"keeps the model's expected {expected:g} particles per micrograph"}
    return None
