"""Shared helpers for the bench/ scripts: the real-data sets, the quality protocol, machine info, timing and memory.

Every bench script imports this module (run from the repo root as `python bench/<name>.py`; the script's own folder is
on sys.path, so `from common import ...` works; `sys.path.insert(0, str(Path(__file__).parent))` makes it explicit).

Sets and the quality protocol (issue 3)
- `DATA_ROOT`: /work/shared/data (the repo's ../shared/data); override with env PUPICK_BENCH_DATA or `--data`.
- `discover_sets(root=DATA_ROOT, names=None) -> (sets: list[BenchSet], skipped: list[(name, reason)])`: every folder
  with a set.json; a folder without labels, without micrographs, or whose labels match no micrograph is *skipped* with
  a one-line reason (print it, put it in your JSON as `"skipped"`; run_all reports it).
- `load_set(dir) -> BenchSet` (raises `SetSkipped(reason)`). BenchSet fields:
  name, dir, diameter_px (original px), factor (set.json), pixel_size_A (None if unknown), micrographs (all, sorted by
  file name), labels (DataFrame micrograph,x,y: all labels that match a micrograph, file-row order),
  train (first floor(0.6 n) micrographs), test (the rest), train_labels (the 30% subsample, seed 0, as the protocol
  says), test_labels (ALL labels of the test micrographs), expected_particles (mean labels per train micrograph, over
  all train labels, not the 30%), match_radius (diameter_px / 2, original px), n_unmatched_labels;
  helpers `.stems(paths)`, `.preprocess_config(**kw)` (PreprocessConfig with the set's diameter_px and factor),
  `.train_config(**kw)` (TrainConfig with that preprocess + expected_particles), `.pick_config(**kw)`.
- `split_sorted(micrographs, train_fraction=0.6)`, `subsample_labels(labels, train_stems, fraction=0.3, seed=0)` and
  `expected_particles(labels, train_stems)` are the protocol's pieces, usable alone.
- `evaluate_test(picks, bset) -> dict`: pupick.core.evaluate on the test micrographs (all their labels, match radius
  half a diameter) -> `{ap, best_f1, precision, recall, threshold, n_picks, n_labels, n_micrographs,
  picks_per_micrograph, curve: {precision: [...], recall: [...]}}` (curve thinned to <= 200 points, for the plot).

Measuring
- `machine_info() -> dict` (cpu model, flags of interest, logical cores, cores usable by this process, RAM, torch /
  numpy / python versions, torch threads, git commit); `now_utc()` ISO date.
- `reset_peak_rss()` then `peak_rss_mb()`: this process's peak resident memory (VmHWM) since the reset, in MiB.
- `run_measured(cmd, env=None, cwd=None, timeout=None) -> Measured(seconds, peak_rss_mb, returncode, stdout, stderr)`:
  a subprocess's wall time and its own peak RSS (from wait4), the cleanest memory number; never raises on failure.
- `timed(fn, *a, **kw) -> (result, seconds)`; `repeat(fn, n) -> list of seconds`.
- `summarize(values) -> {median, min, max, spread (max-min), rel_spread (spread/median), n, values}`: report medians
  and the noise with this.

Output
- `result_doc(name, results, **extra) -> dict` ({name, date, machine, results, ...}); `write_result(name, results,
  **extra) -> Path` writes bench/out/<name>.json atomically and returns the path. `OUT_DIR` is bench/out.
- Result rows that run_all.py renders into BENCHMARKS.md's quality table: one dict per (set, method) with keys
  `set`, `method` ("cnn" | "blob" | "bootstrap" | other), and any of `ap`, `best_f1`, `precision`, `recall`,
  `picks_per_micrograph`, `train_seconds`, `pick_seconds_per_micrograph`, `peak_rss_mb` (medians), `ap_runs` (the
  per-seed APs, for the noise), `curve` ({precision, recall}, from evaluate_test), `notes`. `quality_row(...)` builds
  one. Anything else in the JSON is shown by run_all as a compact per-script section.
- `bench_args(description, argv=None)`: argparse with --quick, --sets NAME..., --data DIR, --threads N (default 2);
  it calls `torch.set_num_threads` only if torch is already imported (use `set_threads(n)` after importing torch).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "bench" / "out"
DATA_ROOT = Path(os.environ.get("PUPICK_BENCH_DATA", str(REPO.parent / "shared" / "data")))
IMAGE_EXTENSIONS = (".mrc", ".mrcs", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
CURVE_POINTS = 200


class SetSkipped(Exception):
    """A set folder that cannot be benchmarked (no labels, no micrographs, labels matching nothing)."""


def _stem(name: str) -> str:
    from pupick.core.tables import stem

    return stem(name)


# ---------------------------------------------------------------- the protocol


def split_sorted(micrographs: Sequence[Path], train_fraction: float = 0.6) -> tuple[list[Path], list[Path]]:
    """Sort by file name; the first floor(train_fraction * n) train, the rest test."""
    mics = sorted(micrographs, key=lambda p: Path(p).name)
    n_train = int(math.floor(train_fraction * len(mics)))
    return mics[:n_train], mics[n_train:]


def pooled_labels(labels: pd.DataFrame, stems: Sequence[str]) -> pd.DataFrame:
    """The labels of `stems`, pooled in the given micrograph order, file-row order within each."""
    order = {s: i for i, s in enumerate(stems)}
    sel = labels[labels["micrograph"].isin(order)].copy()
    sel["_mic_order"] = sel["micrograph"].map(order)
    sel["_row"] = np.arange(len(sel))
    sel = sel.sort_values(["_mic_order", "_row"], kind="stable")
    return sel.drop(columns=["_mic_order", "_row"]).reset_index(drop=True)


def subsample_labels(labels: pd.DataFrame, train_stems: Sequence[str], fraction: float = 0.3,
                     seed: int = 0) -> pd.DataFrame:
    """sort(default_rng(seed).choice(N, round(fraction N), replace=False)) of the pooled train labels."""
    pool = pooled_labels(labels, list(train_stems))
    n = len(pool)
    keep = np.sort(np.random.default_rng(seed).choice(n, int(round(fraction * n)), replace=False))
    return pool.iloc[keep].reset_index(drop=True)


def expected_particles(labels: pd.DataFrame, train_stems: Sequence[str]) -> float:
    """Mean number of labels per train micrograph (micrographs without labels count as 0)."""
    stems = list(train_stems)
    if not stems:
        return float("nan")
    return float(labels["micrograph"].isin(stems).sum()) / len(stems)


@dataclass
class BenchSet:
    """One shared data set with the quality protocol applied."""

    name: str
    dir: Path
    diameter_px: float
    factor: float | None
    pixel_size_A: float | None
    micrographs: list[Path]
    labels: pd.DataFrame
    train: list[Path]
    test: list[Path]
    train_labels: pd.DataFrame
    test_labels: pd.DataFrame
    expected_particles: float
    match_radius: float
    n_unmatched_labels: int = 0
    meta: dict = field(default_factory=dict)

    @staticmethod
    def stems(paths: Iterable[Path]) -> list[str]:
        """Micrograph stems of paths."""
        return [_stem(str(p)) for p in paths]

    def preprocess_config(self, **kw: Any):
        """PreprocessConfig with this set's diameter (original px) and factor."""
        from pupick.core.config import PreprocessConfig

        kw.setdefault("diameter_px", self.diameter_px)
        kw.setdefault("factor", self.factor)
        return PreprocessConfig(**kw)

    def train_config(self, preprocess: dict | None = None, **kw: Any):
        """TrainConfig for this set (its preprocessing, expected particles = the protocol's mean)."""
        from pupick.core.config import TrainConfig

        kw.setdefault("expected_particles", self.expected_particles)
        return TrainConfig(preprocess=self.preprocess_config(**(preprocess or {})), **kw)

    def pick_config(self, **kw: Any):
        """PickConfig for this set (diameter in original px, for the blob picker)."""
        from pupick.core.config import PickConfig

        kw.setdefault("diameter_px", self.diameter_px)
        if not hasattr(PickConfig, "from_settings"):  # code before the settings registry (baseline runs, issue 19)
            return PickConfig(**kw)
        return PickConfig.from_settings(kw)

    def summary(self) -> dict:
        """Plain-JSON description of the set and the split."""
        return {
            "set": self.name, "diameter_px": self.diameter_px, "factor": self.factor,
            "pixel_size_A": self.pixel_size_A, "n_micrographs": len(self.micrographs),
            "n_train": len(self.train), "n_test": len(self.test), "n_labels": len(self.labels),
            "n_train_labels_used": len(self.train_labels), "n_test_labels": len(self.test_labels),
            "expected_particles": self.expected_particles, "match_radius": self.match_radius,
            "n_unmatched_labels": self.n_unmatched_labels,
        }


def _read_labels(set_dir: Path) -> pd.DataFrame:
    csv = set_dir / "particles.csv"
    if not csv.is_file():
        raise SetSkipped(f"{set_dir.name}: no labels (particles.csv missing)")
    try:
        df = pd.read_csv(csv, sep=None, engine="python")
    except Exception as err:  # any parse failure means the set cannot be used
        raise SetSkipped(f"{set_dir.name}: particles.csv unreadable ({err})") from None
    missing = [c for c in ("micrograph", "x", "y") if c not in df.columns]
    if missing:
        raise SetSkipped(f"{set_dir.name}: particles.csv lacks column(s) {', '.join(missing)}")
    if df.empty:
        raise SetSkipped(f"{set_dir.name}: particles.csv has no rows")
    df = df[["micrograph", "x", "y"]].copy()
    df["micrograph"] = [_stem(str(m)) for m in df["micrograph"]]
    df["x"] = pd.to_numeric(df["x"], errors="coerce")
    df["y"] = pd.to_numeric(df["y"], errors="coerce")
    return df.dropna(subset=["x", "y"]).reset_index(drop=True)


def load_set(set_dir: str | os.PathLike, train_fraction: float = 0.6, label_fraction: float = 0.3,
             seed: int = 0) -> BenchSet:
    """Load a set folder (set.json, micrographs/, particles.csv) and apply the quality protocol's split."""
    set_dir = Path(set_dir)
    meta_path = set_dir / "set.json"
    if not meta_path.is_file():
        raise SetSkipped(f"{set_dir.name}: no set.json")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as err:
        raise SetSkipped(f"{set_dir.name}: set.json is not valid JSON ({err})") from None
    diameter = meta.get("diameter_px")
    if not isinstance(diameter, (int, float)) or not diameter > 0:
        raise SetSkipped(f"{set_dir.name}: set.json has no positive diameter_px")
    mic_dir = set_dir / "micrographs"
    mics = sorted((p for p in mic_dir.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                  key=lambda p: p.name) if mic_dir.is_dir() else []
    if len(mics) < 2:
        raise SetSkipped(f"{set_dir.name}: fewer than 2 micrographs in micrographs/")
    labels = _read_labels(set_dir)
    stems = [_stem(p.name) for p in mics]
    matched = labels["micrograph"].isin(stems)
    if not matched.any():
        some_l = ", ".join(sorted(labels["micrograph"].unique())[:3])
        some_m = ", ".join(stems[:3])
        raise SetSkipped(f"{set_dir.name}: labels match no micrograph (labels name {some_l}; micrographs are {some_m})")
    n_unmatched = int((~matched).sum())
    labels = labels[matched].reset_index(drop=True)
    train, test = split_sorted(mics, train_fraction)
    train_stems = [_stem(p.name) for p in train]
    test_stems = [_stem(p.name) for p in test]
    train_labels = subsample_labels(labels, train_stems, label_fraction, seed)
    if train_labels.empty:
        raise SetSkipped(f"{set_dir.name}: no labels on the training micrographs")
    test_labels = pooled_labels(labels, test_stems)
    if test_labels.empty:
        raise SetSkipped(f"{set_dir.name}: no labels on the test micrographs")
    factor = meta.get("factor")
    ps = meta.get("pixel_size_A")
    return BenchSet(
        name=str(meta.get("set") or set_dir.name), dir=set_dir, diameter_px=float(diameter),
        factor=float(factor) if isinstance(factor, (int, float)) else None,
        pixel_size_A=float(ps) if isinstance(ps, (int, float)) and ps > 0 else None,
        micrographs=mics, labels=labels, train=train, test=test, train_labels=train_labels,
        test_labels=test_labels, expected_particles=expected_particles(labels, train_stems),
        match_radius=float(diameter) / 2.0, n_unmatched_labels=n_unmatched, meta=meta,
    )


def discover_sets(root: str | os.PathLike = DATA_ROOT, names: Sequence[str] | None = None,
                  **kw: Any) -> tuple[list[BenchSet], list[tuple[str, str]]]:
    """Every set folder under root (optionally only `names`); unusable ones come back in `skipped` with a reason."""
    root = Path(root)
    sets: list[BenchSet] = []
    skipped: list[tuple[str, str]] = []
    if not root.is_dir():
        return sets, [(str(root), "data folder does not exist")]
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if names:
        wanted = set(names)
        unknown = wanted - {d.name for d in dirs}
        skipped += [(n, "no such set folder") for n in sorted(unknown)]
        dirs = [d for d in dirs if d.name in wanted]
    for d in dirs:
        try:
            sets.append(load_set(d, **kw))
        except SetSkipped as why:
            skipped.append((d.name, str(why)))
    return sets, skipped


# ---------------------------------------------------------------- evaluation


def thin_curve(precision: Sequence[float], recall: Sequence[float], n: int = CURVE_POINTS) -> dict:
    """At most n points of a PR curve (evenly over its length, last point kept), as plain lists."""
    p = np.asarray(precision, dtype=float)
    r = np.asarray(recall, dtype=float)
    if len(p) > n:
        idx = np.unique(np.linspace(0, len(p) - 1, n).round().astype(int))
        p, r = p[idx], r[idx]
    return {"precision": [round(float(v), 5) for v in p], "recall": [round(float(v), 5) for v in r]}


def evaluate_test(picks: pd.DataFrame, bset: BenchSet, micrographs: Sequence[str] | None = None) -> dict:
    """AP, best F1 and a thinned PR curve of picks on the set's test micrographs (all their labels)."""
    from pupick.core.evaluate import evaluate

    stems = list(micrographs) if micrographs is not None else bset.stems(bset.test)
    res = evaluate(picks, bset.test_labels, bset.match_radius, micrographs=stems)
    curve = getattr(res, "curve", None)
    out = {
        "ap": float(res.ap), "best_f1": float(res.best_f1), "precision": float(res.precision),
        "recall": float(res.recall), "threshold": float(res.threshold), "n_picks": int(res.n_picks),
        "n_labels": int(res.n_labels), "n_micrographs": int(res.n_micrographs),
        "picks_per_micrograph": float(res.n_picks) / max(1, len(stems)),
    }
    if curve is not None and len(curve):
        out["curve"] = thin_curve(curve["precision"], curve["recall"])
    return out


def quality_row(set_name: str, method: str, **values: Any) -> dict:
    """One row of the quality table (see the module docstring for the keys run_all renders)."""
    row = {"set": set_name, "method": method}
    row.update({k: _plain(v) for k, v in values.items()})
    return row


# ---------------------------------------------------------------- machine, time, memory


def now_utc() -> str:
    """Current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _cpu_model() -> tuple[str, list[str]]:
    model, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have]
    except OSError:
        pass
    return model, flags


def machine_info() -> dict:
    """CPU model, cores, memory and library versions of this machine."""
    model, flags = _cpu_model()
    info: dict[str, Any] = {
        "cpu_model": model, "cpu_flags": flags, "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gb"] = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = bool(torch.cuda.is_available())
    except Exception:  # torch missing is reported, not fatal
        info["torch"] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def reset_peak_rss() -> None:
    """Reset this process's peak-RSS counter (Linux clear_refs); no-op elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB since start or the last reset_peak_rss()."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Measured:
    """Wall time and peak RSS of one subprocess run."""

    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: Sequence[str], env: dict | None = None, cwd: str | os.PathLike | None = None,
                 timeout: float | None = None) -> Measured:
    """Run a command; return its wall time, its own peak RSS (from wait4) and its output; never raises on failure."""
    import tempfile

    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=fo, stderr=fe, text=True,
                                env={**os.environ, **(env or {})}, cwd=cwd)
        note = ""
        hwm = 0.0
        while True:
            hwm = max(hwm, _vm_hwm_mb(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - t0 > timeout:
                proc.kill()
                note = f"\n[killed after {timeout} s]"
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        # ru_maxrss is NOT used: Linux carries it over fork and exec, so a child of a large parent (this bench, after
        # training) reports the parent's size. VmHWM belongs to the child's own address space since its exec.
        return Measured(seconds, hwm or usage.ru_maxrss / 1024.0, proc.returncode, fo.read(), fe.read() + note)


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a running process in MiB; 0 if it cannot be read (or has exited)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def timed(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(fn(*args, **kwargs), wall seconds)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def repeat(fn: Callable[[], Any], n: int) -> list[float]:
    """Wall seconds of n calls of fn()."""
    return [timed(fn)[1] for _ in range(n)]


def summarize(values: Iterable[float]) -> dict:
    """Median, range and relative spread of repeated measurements (NaNs dropped)."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"median": None, "min": None, "max": None, "spread": None, "rel_spread": None, "n": 0, "values": []}
    med = statistics.median(vals)
    spread = max(vals) - min(vals)
    return {"median": med, "min": min(vals), "max": max(vals), "spread": spread,
            "rel_spread": (spread / abs(med)) if med else None, "n": len(vals), "values": vals}


# ---------------------------------------------------------------- output and arguments


def _plain(v: Any) -> Any:
    """numpy/pandas scalars and arrays to JSON-able builtins."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def result_doc(name: str, results: list, **extra: Any) -> dict:
    """The shared JSON shape: {name, date, machine, results, ...extra}."""
    return _plain({"name": name, "date": now_utc(), "machine": machine_info(), "results": results, **extra})


def write_result(name: str, results: list, **extra: Any) -> Path:
    """Write bench/out/<name>.json atomically; return its path."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    target = OUT_DIR / f"{name}.json"
    tmp = target.with_suffix(".json.part")
    tmp.write_text(json.dumps(result_doc(name, results, **extra), indent=1))
    os.replace(tmp, target)
    return target


def set_threads(n: int = 2) -> None:
    """Limit torch (and BLAS via env, for children) to n threads."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def bench_args(description: str, argv: Sequence[str] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """Common arguments: --quick, --sets, --data, --threads (plus any `extra` adds)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="a few-minute subset")
    ap.add_argument("--sets", nargs="*", default=None, help="set folder names (default: all)")
    ap.add_argument("--data", type=Path, default=DATA_ROOT, help="folder holding the set folders")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    if extra is not None:
        extra(ap)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    return args


def register_plan(name: str, plan: Sequence[Sequence[Any]]) -> None:
    """Make a candidate layer plan trainable and loadable as architecture `name` in this process only
    (`seed_spread.py --set-config '{"arch": NAME, "plan": [...]}'`); the shipped registry's files are unchanged."""
    import pupick.core.config as config
    import pupick.core.modelarchive as modelarchive
    import pupick.core.modelfile as modelfile
    import pupick.core.models as models

    plan = [tuple(entry) for entry in plan]
    if models.PLANS.get(name, plan) != plan:
        raise ValueError(f"{name!r} is already an architecture with another plan")
    models.PLANS[name] = plan
    config.FEATURE_LAYERS[name] = len(plan)
    models.MODELS[name] = models._builder(name)
    config.ARCHITECTURES = modelarchive.ARCHITECTURES = modelfile.ARCHITECTURES = (
        *dict.fromkeys((*config.ARCHITECTURES, name)),)
