"""Retraining rounds started from the browser: train on the labels, then re-pick every micrograph, in a thread.

Each round N lives in OUTDIR/rounds/N/: model.pt (+ its training history), labels.csv (the labels it learned from),
and the picks written by the engine's resumable `pick_to_dir` (picks.csv, manifest, records). Nothing outside that
folder is written, so earlier rounds and the original picks stay as they were.
"""
from __future__ import annotations

import inspect
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import PickConfig, PreprocessConfig, TrainConfig
from ..errors import AbortRequested, InputError, PupickError
from ..io import atomic_path, write_text_atomic
from ..outputs import pick_to_dir
from .view_data import MODEL, ViewState
from .view_labels import LabelStore

# the picking settings of the original run that carry over to a round's CNN picking: manifest field -> setting name
CARRIED_PICK_SETTINGS = {"threshold": "threshold", "min_distance_px": "min_distance", "min_distance_A": "min_distance_A",
                         "max_picks": "max_picks", "border_px": "border", "pixel_size": "pixel_size", "seed": "seed"}


@dataclass
class JobStatus:
    """What the page shows of the running (or last) job."""

    kind: str  # train | pick
    round: int
    state: str = "running"  # running | done | failed | cancelled
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    history: list[dict] = field(default_factory=list)  # epoch, loss per finished epoch
    done: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    started: float = field(default_factory=time.time)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.state == "running":
            return d
        d["seconds"] = time.time() - self.started
        return d


def _epoch_values(args: tuple, kwargs: dict) -> tuple[int | None, float | None]:
    """(epoch, loss) from whatever an engine's on_epoch callback passes: a dict, a row or an object."""
    for item in (*args, kwargs):
        get = item.get if isinstance(item, dict) else (lambda k, _i=item: getattr(_i, k, None))
        try:
            epoch, loss = get("epoch"), get("loss")
        except Exception:
            continue
        if epoch is not None or loss is not None:
            return (int(epoch) if epoch is not None else None), (float(loss) if loss is not None else None)
    return None, None


def call_train(paths: list[Path], labels, config, output: Path, on_epoch: Callable, should_stop: Callable[[], bool],
               log: Callable[[str], None]):
    """Run the engine's `train`, passing the progress callbacks its signature offers, and write `output`."""
    from ..train import train  # torch: here, so that `pupick view` starts without it

    params = inspect.signature(train).parameters
    kw: dict[str, Any] = {}
    for name, value in (("on_epoch", on_epoch), ("should_stop", should_stop), ("log", log), ("progress", False)):
        if name in params:
            kw[name] = value
    if "output" in params:
        return train(paths, labels, config, output, **kw)
    result = train(paths, labels, config, **kw)
    result.save(output)
    return result


def call_pick_to_dir(paths: list[Path], model: Path, config, out_dir: Path, on_one: Callable[[], None],
                     should_stop: Callable[[], bool], log: Callable[[str], None]):
    """Run the engine's resumable `pick_to_dir` into `out_dir`, calling `on_one` after each micrograph."""
    params = inspect.signature(pick_to_dir).parameters
    kw: dict[str, Any] = {"should_stop": should_stop, "progress": False, "log": log}
    if "on_result" in params:
        kw["on_result"] = lambda *_: on_one()
    else:
        kw["writer"] = lambda *_: on_one()
    return pick_to_dir(paths, model, config, out_dir, **{k: v for k, v in kw.items() if k in params})


class RoundRunner:
    """Runs one job at a time (training a round, or picking with a round's model) in a background thread."""

    def __init__(self, state: ViewState, labels: LabelStore) -> None:
        self.state = state
        self.labels = labels
        self.status: JobStatus | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def current(self) -> dict[str, Any] | None:
        with self._lock:
            return self.status.to_dict() if self.status else None

    def cancel(self) -> bool:
        """Ask the running job to stop (training between steps or epochs, picking between micrographs)."""
        if not self.busy():
            return False
        self._stop.set()
        return True

    def _start(self, status: JobStatus, work: Callable[[JobStatus], None]) -> dict[str, Any]:
        with self._lock:
            if self.busy():
                raise RuntimeError("a job is already running; wait for it or cancel it")
            self._stop.clear()
            self.status = status

            def run() -> None:
                try:
                    work(status)
                    status.state = "done"
                except AbortRequested:
                    status.state = "cancelled"
                    status.message = "cancelled"
                except PupickError as err:
                    status.state, status.error = "failed", str(err)
                except Exception as err:  # the page must learn that the job died, not wait forever
                    status.state, status.error = "failed", f"{type(err).__name__}: {err}"
                finally:
                    status.seconds = time.time() - status.started

            self._thread = threading.Thread(target=run, name=f"pupick-view-{status.kind}", daemon=True)
            self._thread.start()
            return status.to_dict()

    # ------------------------------------------------------------ training

    def train_settings(self, epochs: int | None, expected: float | None) -> dict[str, Any]:
        """The training settings a round uses: the model diameter from the picks, all labelled micrographs, no split."""
        st = self.state
        source = st.newest_picked_round()
        diameter = st.diameter(source)
        if not diameter:
            raise InputError("the particle diameter is unknown (the picks' manifest and model record none): "
                             "restart `pupick view` with --diameter-px")
        epochs = TrainConfig.epochs if epochs is None else int(epochs)
        if not 1 <= epochs <= 100:
            raise InputError(f"epochs must be between 1 and 100 (got {epochs})")
        if expected is not None and not (math.isfinite(expected) and expected > 0):
            raise InputError(f"expected particles must be a positive number (got {expected})")
        pick = (st.manifest(0).get("settings") or {}).get("pick") or {}
        return {"diameter_px": float(diameter), "epochs": epochs, "expected_particles": expected,
                "pixel_size": pick.get("pixel_size"), "test_split": 0.0, "seed": 0}

    def start_train(self, epochs: int | None = None, expected: float | None = None) -> dict[str, Any]:
        """Train a new round's model on every labelled micrograph."""
        settings = self.train_settings(epochs, expected)
        labels = self.labels.table()
        paths = self.state.micrograph_paths()
        labels = labels[labels["micrograph"].isin(list(paths))]
        if labels.empty:
            raise InputError("no labels on the micrographs shown: label a few particles first (label mode)")
        names = list(dict.fromkeys(labels["micrograph"]))
        mics = [Path(paths[n]) for n in names]
        config = TrainConfig(
            preprocess=PreprocessConfig(diameter_px=settings["diameter_px"], pixel_size=settings["pixel_size"],
                                        seed=settings["seed"]),
            epochs=settings["epochs"], expected_particles=settings["expected_particles"],
            test_split=settings["test_split"], seed=settings["seed"],
            cache_dir=str(self.state.cache_dir / "train"))
        n = self.state.next_round()
        folder = self.state.round_dir(n)
        status = JobStatus("train", n, epochs=settings["epochs"], total=settings["epochs"],
                           message=f"training on {len(labels)} labels in {len(mics)} micrograph(s)")

        def on_epoch(*args, **kwargs) -> None:
            epoch, loss = _epoch_values(args, kwargs)
            if epoch is not None:
                status.epoch = status.done = epoch
            if loss is not None:
                status.loss = loss
                status.history.append({"epoch": status.epoch, "loss": loss})

        def work(status: JobStatus) -> None:
            import json

            folder.mkdir(parents=True, exist_ok=False)
            with atomic_path(folder / "labels.csv") as tmp:
                labels.to_csv(tmp, index=False, float_format="%.2f")
            try:
                result = call_train(mics, labels, config, folder / MODEL, on_epoch, self._stop.is_set,
                                    lambda m: setattr(status, "message", m))
            except BaseException:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)  # a round without a model is no round; only ours is in it
                raise
            history = getattr(result, "history", None)
            if history is not None and len(history):
                status.history = [{"epoch": int(r.epoch), "loss": float(r.loss)} for r in history.itertuples()]
                status.epoch = status.done = int(history["epoch"].iloc[-1])
                status.loss = float(history["loss"].iloc[-1])
            write_text_atomic(folder / "training.json", json.dumps(
                {"settings": settings, "micrographs": names, "n_labels": int(len(labels)),
                 "history": status.history}, indent=1))
            status.message = f"round {n}: model trained on {len(labels)} labels"

        return self._start(status, work)

    # ------------------------------------------------------------ picking

    def pick_config(self):
        """The original run's picking settings that apply to a CNN (threshold, distances, border, pixel size, seed)."""
        pick = (self.state.manifest(0).get("settings") or {}).get("pick") or {}
        kept = {option: pick[field] for field, option in CARRIED_PICK_SETTINGS.items() if pick.get(field) is not None}
        if pick.get("method", "cnn") == "cnn":
            kept.update({k: pick[k] for k in ("stride", "views") if pick.get(k) is not None})
        return PickConfig.from_settings(kept)

    def start_pick(self, n: int | None = None) -> dict[str, Any]:
        """Re-pick every micrograph with round N's model (default: the newest trained round) into rounds/N/."""
        st = self.state
        trained = [r["round"] for r in st.rounds() if r["model"]]
        if n is None:
            if not trained:
                raise InputError("no trained round yet: press Train first")
            n = trained[-1]
        if n not in trained:
            raise InputError(f"round {n} has no trained model")
        folder = st.round_dir(n)
        paths = [Path(p) for p in st.micrograph_paths().values()]
        if not paths:
            raise InputError("no micrograph paths known: restart `pupick view` with --micrographs")
        config = self.pick_config()
        status = JobStatus("pick", n, total=len(paths), message=f"picking {len(paths)} micrograph(s) with round {n}")

        def one() -> None:
            status.done += 1

        def work(status: JobStatus) -> None:
            def stop() -> bool:
                return self._stop.is_set()

            result = call_pick_to_dir(paths, folder / MODEL, config, folder, one, stop,
                                      lambda m: setattr(status, "message", m))
            failures = getattr(getattr(result, "run", result), "failures", [])
            status.done = status.total
            status.message = (f"round {n}: {len(result.picks)} picks on {len(paths)} micrograph(s)"
                              + (f"; {len(failures)} failed" if failures else ""))

        return self._start(status, work)
