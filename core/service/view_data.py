"""What the browser pages show of one `pupick pick` output directory: rounds, micrographs, picks, failures."""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..evaluate import evaluate
from ..tables import stem

MANIFEST = "pupick_pick.json"  # core.pipeline.MANIFEST (kept literal: importing the pipeline pulls in scoring)
PICKS = "picks.csv"
RECORDS = ".pupick_records"
ROUNDS = "rounds"
LABELS = "labels.csv"
CACHE = ".pupick_view_cache"
MODEL = "model.pt"


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
    _tables: dict = field(default_factory=dict, init=False, repr=False)

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
        """The round's picks.csv (micrograph, x, y, score, path), re-read only when the file changed."""
        path = self.check_round(n) / PICKS
        if not path.is_file():
            raise InputError(f"round {n} has no picks yet ({path})")
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._tables.get(n)
            if cached is not None and cached[0] == key:
                return cached[1]
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
        with self._lock:
            self._tables[n] = (key, df)
        return df

    def picks_by_micrograph(self, n: int = 0) -> dict[str, dict[str, list[float]]]:
        """{micrograph: {x, y, score}} with each micrograph's picks sorted by descending score."""
        df = self.picks(n)
        out: dict[str, dict[str, list[float]]] = {}
        if df.empty:
            return out
        for name, g in df.groupby("micrograph", sort=False):
            g = g.sort_values("score", ascending=False, kind="stable")
            out[str(name)] = {c: _finite_list(g[c].to_numpy(dtype=float)) for c in ("x", "y", "score")}
        return out

    # ------------------------------------------------------------ micrographs

    def micrograph_paths(self) -> dict[str, str]:
        """{stem: path} of every micrograph known: the requested list, then the paths the picks of any round name."""
        paths: dict[str, str] = {}
        for p in self.micrographs or []:
            paths.setdefault(stem(p), str(p))
        for r in self.rounds():
            if not r["picks"]:
                continue
            df = self.picks(r["round"])
            if df.empty:
                continue
            for name, path in df[["micrograph", "path"]].drop_duplicates("micrograph").itertuples(index=False):
                if path:
                    paths.setdefault(str(name), str(path))
        return paths

    def done_micrographs(self, n: int = 0) -> set[str] | None:
        """Stems with a finished per-micrograph record in the round (None when the round keeps no records)."""
        records = self.check_round(n) / RECORDS
        if not records.is_dir():
            return None
        return {p.name[:-4] for p in records.glob("*.csv")}

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
                df = self.picks(n) if (self.round_dir(n) / PICKS).is_file() else None
                done = set(df["micrograph"].astype(str)) if df is not None else set()
            for p in self.micrographs:
                s = stem(p)
                if s not in done and s not in out:
                    out[s] = "not in the picks: picking failed or has not reached it (see the pick run's log)"
        return out

    def micrograph_table(self, n: int = 0) -> list[dict[str, Any]]:
        """One row per micrograph: name, path, pick count, score range and the error of a failed one."""
        df = self.picks(n)
        paths = self.micrograph_paths()
        failures = self.failures(n)
        stats: dict[str, tuple[int, float, float]] = {}
        if not df.empty:
            g = df.groupby("micrograph", sort=False)["score"]
            for name, n_picks, lo, hi in zip(g.size().index, g.size().to_numpy(), g.min().to_numpy(),
                                             g.max().to_numpy()):
                stats[str(name)] = (int(n_picks), float(lo), float(hi))
        names = list(dict.fromkeys([*paths, *stats, *(self.done_micrographs(n) or ()), *failures]))
        rows = []
        for name in names:
            n_picks, lo, hi = stats.get(name, (0, math.nan, math.nan))
            rows.append({"name": name, "path": paths.get(name), "n": n_picks, "score_min": _finite(lo),
                         "score_max": _finite(hi), "error": failures.get(name)})
        return rows

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
        from ..modelfile import load_model  # torch: here, so that `pupick view` starts without it

        try:
            return dict(load_model(path).config)
        except Exception:  # an unreadable model only loses the defaults it would give
            return {}


def _finite_list(values: np.ndarray) -> list[float | None]:
    """Plain floats for JSON, with None where a value is not finite (JSON has no NaN)."""
    if np.isfinite(values).all():
        return values.tolist()
    return [_finite(v) for v in values]


def _finite(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def suggest_threshold(picks: pd.DataFrame, labels: pd.DataFrame | None, radius: float | None,
                      expected: float | None, micrographs: list[str]) -> dict[str, Any] | None:
    """A working threshold: best F1 against the labels when there are any, else where picks meet the expected count."""
    if picks.empty:
        return None
    if labels is not None and len(labels) and radius:
        labelled = sorted(set(labels["micrograph"].astype(str)) & set(micrographs))
        if labelled:
            ev = evaluate(picks, labels, radius, micrographs=labelled)
            if math.isfinite(ev.threshold):
                return {"threshold": ev.threshold, "reason": f"best F1 {ev.best_f1:.3f} against the labels"}
    if expected and micrographs:
        k = int(round(expected * len(micrographs)))
        scores = np.sort(picks["score"].to_numpy(dtype=float))[::-1]
        if 1 <= k <= len(scores):
            return {"threshold": float(scores[k - 1]),
                    "reason": f"keeps the model's expected {expected:g} particles per micrograph"}
    return None
