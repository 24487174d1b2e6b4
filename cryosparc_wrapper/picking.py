"""Picking cryoSPARC exposures: resolve micrographs in the project directory, pick, build the particle Dataset.

Everything here works on real cryosparc-tools Datasets and local files; no server is involved.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pupick.adapters.cryosparc import particles_dataset
from pupick.core.config import PickConfig
from pupick.core.errors import InputError
from pupick.core.io import read_shape
from pupick.core.tables import stem

Log = Callable[[str], None]
Progress = Callable[[int, int, str, int], None]  # (done, total, micrograph name, picks on it)


@dataclass
class PickResult:
    """Picks on cryoSPARC exposures, the particle Dataset to save, and what failed."""

    picks: pd.DataFrame  # micrograph, x, y, score, path (as in the .cs), micrograph_uid
    particles: object  # cryosparc.dataset.Dataset with location + pick_stats
    picked_uids: np.ndarray  # exposure uids that were picked (possibly with zero particles)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path as in the .cs, reason)
    seconds: float = 0.0
    evaluation: object = None  # core.evaluate.EvalResult when reference picks were given
    count: int | None = None  # particles written, when streamed (`picks` then holds only the kept micrographs')
    scores: object = None  # core.outputs.ScoreHistogram of every pick, when streamed

    @property
    def n_particles(self) -> int:
        return len(self.picks) if self.count is None else self.count


def resolve_paths(exposures: pd.DataFrame, project_dir: str | os.PathLike, source: str = "exposures") -> list[Path]:
    """Absolute micrograph paths: .cs paths are relative to the project directory (absolute ones kept)."""
    root = Path(project_dir)
    if not root.is_dir():
        raise InputError(f"{root}: project directory does not exist (give the cryoSPARC project directory)")
    paths = [Path(p) if os.path.isabs(str(p)) else root / str(p) for p in exposures["path"]]
    if paths and not any(p.is_file() for p in paths[:50]) and not any(p.is_file() for p in paths):
        raise InputError(f"{source}: none of the {len(paths)} micrographs exist under {root} (e.g. {paths[0]}); "
                         "is this the project directory the .cs paths are relative to?")
    return paths


def _shape_problem(path: Path, ny: float, nx: float) -> str | None:
    """Why the .cs shape cannot be used for this file, or None when it agrees."""
    if not (np.isfinite(ny) and np.isfinite(nx)):
        return None
    shape = read_shape(path)
    if shape != (int(ny), int(nx)):
        return f"image is {shape[1]} x {shape[0]} px but the exposure says {int(nx)} x {int(ny)} px"
    return None


def pick_exposures(
    exposures: pd.DataFrame,
    project_dir: str | os.PathLike,
    model,
    config: PickConfig,
    log: Log = print,
    progress: Progress | None = None,
    template=None,
    salt: str = "",
    show_progress: bool = False,
    executor=None,
    client=None,
    sink: Callable[[object], None] | None = None,
    keep: Callable[[str], bool] | None = None,
) -> PickResult:
    """Pick every exposure's micrograph and build the cryoSPARC particle Dataset (location + pick_stats).

    With a `sink`, each micrograph's particle Dataset goes to it as soon as every earlier exposure is done (input
    order), and no Dataset of all the particles is built: the result keeps only the picks of micrographs `keep`
    names (for an evaluation), their count and a histogram of all scores."""
    from pupick.core.picking import pick

    exposures = exposures.reset_index(drop=True).copy()
    paths = resolve_paths(exposures, project_dir)
    # each exposure at its own pixel size (psize_A), so a set with two pixel sizes is picked in one call
    table = pd.DataFrame({"micrograph": [f"{i}:{stem(p)}" for i, p in enumerate(paths)],
                          "path": [str(p) for p in paths],
                          "pixel_size": exposures["pixel_size"] if "pixel_size" in exposures.columns else np.nan})
    total = len(paths)
    found: dict[int, pd.DataFrame] = {}
    nms: dict[int, float] = {}
    failures: list[tuple[str, str]] = []
    stream = _InOrder(exposures, template, salt, sink, keep) if sink is not None else None

    def on_result(res) -> None:
        i = int(res.micrograph.split(":", 1)[0])
        if res.error is not None:
            failures.append((str(exposures.at[i, "path"]), res.error))
            if stream is not None:
                stream.done(i, None, 0.0)
            return
        path = paths[i]
        ny, nx = float(exposures.at[i, "ny"]), float(exposures.at[i, "nx"])
        problem = _shape_problem(Path(path), ny, nx)
        if problem:
            failures.append((str(exposures.at[i, "path"]), problem))
            log(f"skipped {exposures.at[i, 'path']}: {problem}")
            if stream is not None:
                stream.done(i, None, 0.0)
            return
        if not np.isfinite(ny) or not np.isfinite(nx):
            exposures.at[i, "ny"], exposures.at[i, "nx"] = read_shape(path)
        name = str(exposures.at[i, "micrograph"])
        if stream is not None:
            stream.done(i, res.picks, res.min_distance_px or 0.0)
        else:
            found[i] = res.picks
            nms[i] = res.min_distance_px or 0.0
        if progress is not None:
            progress((stream.picked if stream else len(found)) + len(failures), total, name, len(res.picks))

    start = time.perf_counter()
    if client is not None:  # `model` is the server's name for it
        _pick_on_server(client, table, model, config, on_result, log)
    else:
        from pupick.core.pipeline import check_model, micrograph_items

        model = check_model(model, config, micrograph_items(table))  # the general model: set to the size
        pick(table, model, config, on_result=on_result, progress=show_progress, log=log,  # it logs its failures
             keep_picks=False, executor=executor)  # on_result keeps them
    seconds = time.perf_counter() - start
    if total and not (stream.picked if stream else found):
        first = failures[0][1] if failures else "no micrograph was picked"
        raise InputError(f"all {total} micrographs failed (first: {first})")
    if stream is not None:
        return stream.result(failures, seconds)

    parts = []
    for i, df in sorted(found.items()):
        part = pd.DataFrame({
            "micrograph": str(exposures.at[i, "micrograph"]), "x": df["x"].to_numpy(dtype=float),
            "y": df["y"].to_numpy(dtype=float), "score": df["score"].to_numpy(dtype=float),
        })
        part["path"] = str(exposures.at[i, "path"])
        part["micrograph_uid"] = np.full(len(part), exposures.at[i, "uid"], dtype=np.uint64)
        parts.append(part)
    picks = pd.concat(parts, ignore_index=True) if parts else _empty()
    # the NMS distance each micrograph was picked with (original px), for location/min_dist_A
    min_dist = np.concatenate([np.full(len(df), nms[i]) for i, df in sorted(found.items())]) if found else np.zeros(0)
    particles = particles_dataset(picks, exposures, template=template, salt=salt, source="picks",
                                  min_dist_px=min_dist)
    picked = exposures["uid"].to_numpy(dtype=np.uint64)[sorted(found)]
    return PickResult(picks, particles, picked, failures, seconds)


class _InOrder:
    """Hands each micrograph's particle Dataset to a sink in exposure order, holding only those that finished
    ahead of an earlier one (the executor's window), never all of them."""

    def __init__(self, exposures: pd.DataFrame, template, salt: str, sink, keep) -> None:
        from pupick.core.outputs import ScoreHistogram

        self.exposures, self.template, self.salt, self.sink, self.keep = exposures, template, salt, sink, keep
        self.waiting: dict[int, tuple[pd.DataFrame | None, float]] = {}
        self.next = 0
        self.picked = 0
        self.count = 0
        self.scores = ScoreHistogram()
        self.kept: list[pd.DataFrame] = []
        self.uids: list[int] = []

    def done(self, i: int, picks: pd.DataFrame | None, min_distance_px: float) -> None:
        """Exposure i finished (picks None: it failed); send whatever is now in order."""
        self.waiting[i] = (picks, min_distance_px)
        self.picked += picks is not None
        while self.next in self.waiting:
            picks, distance = self.waiting.pop(self.next)
            if picks is not None:
                self._send(self.next, picks, distance)
            self.next += 1

    def _send(self, i: int, df: pd.DataFrame, distance: float) -> None:
        row = self.exposures.iloc[[i]]
        part = pd.DataFrame({"micrograph": str(row["micrograph"].iloc[0]), "x": df["x"].to_numpy(dtype=float),
                             "y": df["y"].to_numpy(dtype=float), "score": df["score"].to_numpy(dtype=float)})
        part["path"] = str(row["path"].iloc[0])
        part["micrograph_uid"] = np.full(len(part), row["uid"].iloc[0], dtype=np.uint64)
        if len(part):
            self.sink(particles_dataset(part, row, template=self.template, salt=self.salt, source="picks",
                                        min_dist_px=distance))
        self.count += len(part)
        scores = part["score"].to_numpy()
        self.scores.add(scores[np.isfinite(scores)])
        self.uids.append(int(row["uid"].iloc[0]))
        if self.keep is not None and self.keep(str(row["micrograph"].iloc[0])):
            self.kept.append(part)

    def result(self, failures: list[tuple[str, str]], seconds: float) -> PickResult:
        for i in sorted(self.waiting):  # behind an exposure the picker never reported: still written, in order
            picks, distance = self.waiting.pop(i)
            if picks is not None:
                self._send(i, picks, distance)
        picks = pd.concat(self.kept, ignore_index=True) if self.kept else _empty()
        return PickResult(picks, None, np.array(self.uids, dtype=np.uint64), failures, seconds,
                          count=self.count, scores=self.scores)


def _pick_on_server(client, table: pd.DataFrame, model: str | None, config: PickConfig, on_result, log: Log) -> None:
    """Pick the table's micrographs on a `pupick serve` and hand each result to `on_result`, as a local run does."""
    from types import SimpleNamespace

    from pupick.core.client import pick_settings

    names = {f"exposure_{i}": str(m) for i, m in enumerate(table["micrograph"])}  # server-safe names
    sent = [{"micrograph": n, "path": str(p), "pixel_size": None if pd.isna(s) else float(s)}
            for n, p, s in zip(names, table["path"], table["pixel_size"])]
    job_id = client.submit_pick(sent, model, pick_settings(config))
    log(f"server job {job_id}: picking {len(sent)} micrograph(s) on {client.url}")
    final = client.wait(job_id, on_progress=lambda j: log(f"server job {job_id}: {j.get('done')}/{j.get('total')}"))
    if final["state"] != "done":
        raise InputError(f"server job {job_id} {final['state']}: {final.get('error') or 'no reason given'}")
    records = pd.DataFrame.from_records(client.picks(job_id, "json")["picks"],
                                        columns=["micrograph", "x", "y", "score", "path"])
    groups = {str(k): g for k, g in records.groupby("micrograph", sort=False)}
    failed = {f["micrograph"]: f.get("error") or "failed" for f in final.get("failures") or ()}
    radius = (config.extract.min_distance_px if getattr(config.extract, "min_distance_px", None)
              else (final.get("diameter_px") or 0.0) / 2)
    for name, micrograph in names.items():
        part = groups.get(name, records.iloc[0:0])
        on_result(SimpleNamespace(micrograph=micrograph, error=failed.get(name),
                                  picks=part[["x", "y", "score"]].astype(float).reset_index(drop=True),
                                  min_distance_px=radius))


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"micrograph": pd.Series([], dtype=object), "x": [], "y": [], "score": [],
                         "path": pd.Series([], dtype=object), "micrograph_uid": pd.Series([], dtype=np.uint64)})


def micrographs_passthrough(exposure_dset, uids: np.ndarray):
    """The picked exposures' micrograph_blob slot (uid-aligned), for the job's `micrographs` output."""
    kept = exposure_dset.filter_prefixes(["micrograph_blob"], copy=True)
    return kept.mask(np.isin(np.asarray(kept["uid"], dtype=np.uint64), np.asarray(uids, dtype=np.uint64)))


def summary_lines(result: PickResult, n_exposures: int) -> list[str]:
    """Short human summary of a picking run."""
    n = result.n_particles
    done = len(result.picked_uids)
    per_mic = n / done if done else 0.0
    lines = [f"picked {n} particles on {done} of {n_exposures} micrographs ({per_mic:.1f} per micrograph, "
             f"{result.seconds / max(done, 1):.2f} s per micrograph)"]
    if n:
        if result.scores is not None:  # streamed: from the binned scores (to 0.01)
            q = [result.scores.quantile(p) for p in (0.5, 0.05, 0.95)]
        else:
            s = result.picks["score"].to_numpy(dtype=float)
            q = [np.nanmedian(s), np.nanpercentile(s, 5), np.nanpercentile(s, 95)]
        lines.append(f"score (logit) median {q[0]:.2f}, 5-95% {q[1]:.2f} .. {q[2]:.2f}; in Inspect Picks, threshold pick_stats/power (a lower cut "
                     "only: the highest power are the best picks)")
    if result.failures:
        path, reason = result.failures[0]
        lines.append(f"{len(result.failures)} micrograph(s) failed, e.g. {path}: {reason}")
    return lines


def score_figure(picks: pd.DataFrame, threshold: float | None = None, evaluation=None, result: PickResult | None = None):
    """A matplotlib Figure: histogram of pick scores (logit) and, with an evaluation, its PR curve (a streamed
    `result`'s binned scores instead of `picks`, when given)."""
    from matplotlib.figure import Figure

    ncols = 2 if evaluation is not None else 1
    fig = Figure(figsize=(5 * ncols, 3.6))
    ax = fig.add_subplot(1, ncols, 1)
    if result is not None and result.scores is not None:
        bins = result.scores.bins
        if bins:
            keys = np.array(sorted(bins))
            width = max(1, int(np.ceil((keys[-1] - keys[0] + 1) / 60)))  # at most ~60 bars, as below
            groups = keys // width
            edges = np.unique(groups)
            heights = [sum(bins[k] for k in keys[groups == g]) for g in edges]
            step = result.scores.STEP
            ax.bar(edges * width * step, heights, width=width * step, align="edge", color="#4477aa")
        n_picks, n_mics = result.n_particles, len(result.picked_uids)
    else:
        scores = picks["score"].to_numpy(dtype=float)
        scores = scores[np.isfinite(scores)]
        if len(scores):
            ax.hist(scores, bins=min(60, max(10, len(scores) // 20)), color="#4477aa")
        n_picks, n_mics = len(picks), picks["micrograph"].nunique()
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="#cc3311", linestyle="--", label=f"threshold {threshold:g}")
        ax.legend(loc="upper right")
    ax.set_xlabel("score (logit) = pick_stats/power")
    ax.set_ylabel("picks")
    ax.set_title(f"{n_picks} picks on {n_mics} micrographs")
    if evaluation is not None:
        ax2 = fig.add_subplot(1, 2, 2)
        curve = evaluation.curve
        ax2.plot(curve["recall"], curve["precision"], color="#228833")
        ax2.set_xlim(0, 1)
        ax2.set_ylim(0, 1.02)
        ax2.set_xlabel("recall")
        ax2.set_ylabel("precision")
        ax2.set_title(f"AP {evaluation.ap:.3f}, best F1 {evaluation.best_f1:.3f}")
    fig.tight_layout()
    return fig
