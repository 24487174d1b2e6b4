"""The GPU check's stages (issue 31), one per process, run by bench/gpu_check.sh; results go into one JSON file after
every stage, so a run cut short still leaves the figures of the stages that finished.

Stages (in the order gpu_check.sh runs them):
  prepare   the bundled micrographs Fourier-upsampled to 4096² and to 5760x4092 (K3), their labels scaled, and a
            ResNet8-u32 trained on the originals at 5.36 Å/px (as bench/serve.py --demo), so picking the big ones
            downsamples by 4 (4096²) and 5.625 (K3)
  picking   per 4096² and per K3 micrograph in bf16: the whole `pupick pick` process, and warm in this process
            (median of repeats); AP against the scaled labels
  cpu_ap    the same micrographs picked on the CPU (precision auto); AP difference to the GPU (pass: <= 0.005)
  training  `pupick demo`'s protocol (core/cli/demo.py: training time, picking time, held-out AP) on the device
  busy      200 4096² micrographs in one run: GPU utilisation sampled (nvidia-smi, else torch.cuda.utilization),
            the scorer's share of the wall time, and the reader queue as the scorer turns to each micrograph
            (pass: GPU busy >= 80% of the wall time, the queue never empty after micrograph 5)
  memory    peak GPU memory (allocated and reserved by torch) picking 4096² and K3 micrographs
  tests     the `cuda`-marked tests (PUPICK_REQUIRE_CUDA=1: they fail rather than skip without CUDA)

--dry-run runs every stage on the CPU at the smallest sizes (1024² and 1440x1023, a factor-4 model, 12 micrographs
in the busy run, a shortened demo schedule): the script's own bugs show before GPU time is spent. Figures that need
a GPU (utilisation, GPU memory) are null there.

Also: --preflight (python, torch, CUDA, the dependencies or their wheels in .whl/: one line on failure, exit 2),
--requirements (pupick's dependencies without torch, for bench/gpu_wheels.sh), --missing (those not installed),
--mark STAGE STATUS (what gpu_check.sh records for a stage that timed out or died), --summary.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo"
WHEELS = REPO / ".whl"
STAGES = ("prepare", "picking", "cpu_ap", "training", "busy", "memory", "tests")
DIAMETER_PX = 56  # the bundled EMPIAR-10028 micrographs, original pixels
PIXEL_SIZE = 5.36  # Å/px of the bundled micrographs (their headers leave it unset)
AP_TOLERANCE = 0.005  # GPU bf16 vs the CPU path
BUSY_LEAST = 0.80  # GPU busy share of the busy run's wall time
QUEUE_FROM = 5  # the reader queue must hold a prepared micrograph from this micrograph on
TEST_EXTRA = "test"  # pyproject extra whose pytest the tests stage needs


@dataclass(frozen=True)
class Plan:
    """Sizes and settings of one run: the real one on a GPU, or the dry run on the CPU."""

    device: str
    precision: str
    square: tuple[int, int]  # (rows, columns)
    k3: tuple[int, int]
    model_factor: int  # the model's downsampling at 5.36 Å/px; picking the upsampled ones multiplies it
    units: int
    epochs: int
    steps: int
    train_tile: int
    n_busy: int
    repeats: int
    per_size: int  # micrographs per size (of the five bundled ones)
    demo_schedule: dict


def workers() -> int:
    """Reader threads: all but two cores (the scorer's thread and the sampler), at least one."""
    return max(1, (os.cpu_count() or 2) - 2)


GPU_PLAN = Plan("cuda", "bf16", (4096, 4096), (4092, 5760), 1, 32, 2, 20, 160, 200, 3, 5, {})
DRY_PLAN = Plan("cpu", "fp32", (1024, 1024), (1023, 1440), 8, 8, 1, 4, 64, 8, 1, 2,
                {"units": 8, "epochs": 1, "steps_per_epoch": 4, "tile_size": 64})


# ------------------------------------------------------------------------------------------------ the results file
def load(out: Path) -> dict:
    try:
        doc = json.loads(out.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def save(out: Path, doc: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_plain) + "\n")
    os.replace(tmp, out)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return str(v)


def record(out: Path, stage: str, **fields: Any) -> None:
    """Merge fields into one stage's entry and write the file (atomically)."""
    doc = load(out)
    doc.setdefault("stages", {}).setdefault(stage, {}).update(fields)
    save(out, doc)


# ------------------------------------------------------------------------------------------------ preflight, install
def requirements() -> list[str]:
    """pupick's dependencies from pyproject.toml, without torch, plus the test extra's pytest."""
    text = (REPO / "pyproject.toml").read_text()
    try:
        import tomllib

        project = tomllib.loads(text)["project"]
        deps, extra = project["dependencies"], project["optional-dependencies"].get(TEST_EXTRA, [])
    except ImportError:  # python 3.10: the two lists are plain enough for a pattern
        deps = re.findall(r'^\s*"([^"]+)"', text.split("dependencies = [", 1)[1].split("]", 1)[0], re.M)
        extra = [d for d in re.findall(r'"(pytest[^"]*)"', text)]
    wanted = [d for d in deps if _name(d) != "torch"]
    return wanted + [d for d in extra if _name(d) == "pytest"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def missing() -> list[str]:
    """The requirements that are not installed (or installed at a version they exclude)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for req in requirements():
        try:
            have = version(_name(req))
        except PackageNotFoundError:
            out.append(req)
            continue
        floor = re.search(r">=\s*([0-9][0-9.]*)", req)
        if floor and _version_tuple(have) < _version_tuple(floor.group(1)):
            out.append(req)
    return out


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


def _wheel_names(folder: Path) -> set[str]:
    return {re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() for w in folder.glob("*.whl")}


def preflight(dry: bool) -> str | None:
    """None when the check can run here; otherwise the one line that says why not."""
    if sys.version_info < (3, 10):
        return f"python {sys.version.split()[0]} is too old (pupick needs 3.10-3.12)"
    try:
        import torch
    except ImportError:
        return f"torch is not installed for {sys.executable} (this check uses the torch already there; set PYTHON=...)"
    if _version_tuple(torch.__version__) < (2, 1):
        return f"torch {torch.__version__} is too old (pupick needs >= 2.1)"
    if not dry and not torch.cuda.is_available():
        return (f"torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda}); "
                "run on a GPU machine, or --dry-run")
    if not (DEMO / "particles.csv").is_file():
        return f"{DEMO}: the bundled demo data is missing"
    lacking = missing()
    if lacking:
        have = _wheel_names(WHEELS) if WHEELS.is_dir() else set()
        absent = [r for r in lacking if re.sub(r"[-_.]+", "-", _name(r)) not in have]
        if absent:
            return (f"missing {', '.join(_name(r) for r in absent)}: not installed and no wheel in {WHEELS} "
                    "(run bench/gpu_wheels.sh where there is network, and carry .whl/)")
    if not _pupick_here() and "setuptools" not in (_wheel_names(WHEELS) if WHEELS.is_dir() else set()):
        return (f"pupick is not installed from {REPO} and {WHEELS} has no setuptools wheel to build it "
                "(run bench/gpu_wheels.sh)")
    return None


def _pupick_here() -> bool:
    """pupick.core imports from this checkout (an editable install of this repo)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("pupick.core")
    except (ImportError, ValueError):
        return False
    return bool(spec and spec.origin and Path(spec.origin).resolve().is_relative_to(REPO))


# ------------------------------------------------------------------------------------------------ helpers
def plan_of(dry: bool) -> Plan:
    return DRY_PLAN if dry else GPU_PLAN


def _bench_common():
    sys.path.insert(0, str(REPO / "bench"))
    import common

    return common


def upsample(image, shape: tuple[int, int]):
    """A square micrograph Fourier-interpolated onto a square grid of shape[1] pixels a side, cropped to shape[0]
    rows: pixel k of the result lies at k * (n / shape[1]) of the original (n: its side)."""
    import numpy as np
    import scipy.fft as sf

    n, side = image.shape[0], shape[1]
    f = sf.fftshift(sf.fft2(image.astype(np.float32), workers=-1))
    big = np.zeros((side, side), np.complex64)
    o = side // 2 - n // 2
    big[o:o + n, o:o + n] = f
    up = sf.ifft2(sf.ifftshift(big), workers=-1).real.astype(np.float32) * (side / n) ** 2
    return np.ascontiguousarray(up[: shape[0]])


def micrographs(work: Path, size: str) -> list[Path]:
    return sorted((work / size).glob("*.mrc"))


def labels_of(work: Path):
    import pandas as pd

    return pd.read_csv(work / "labels.csv")


def scale_of(work: Path, size: str) -> float:
    return float(json.loads((work / "sizes.json").read_text())[size])


def ap_of(picks, work: Path, size: str, mics: list[Path]) -> float:
    from pupick.core.evaluate import default_match_radius, evaluate

    radius = default_match_radius(DIAMETER_PX * scale_of(work, size))
    return float(evaluate(picks, labels_of(work), radius, micrographs=[m.stem for m in mics]).ap)


def pick_config(device: str, precision: str, n_workers: int):
    from pupick.core.config import PickConfig

    return PickConfig.from_settings({"device": device, "precision": precision, "workers": n_workers, "seed": 0})


def device_info() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
                    count=torch.cuda.device_count())
    else:
        info["name"] = "cpu (dry run)"
    return info


# ------------------------------------------------------------------------------------------------ stages
def stage_prepare(plan: Plan, work: Path, out: Path) -> dict:
    """The big micrographs and their labels, and the picking model."""
    import numpy as np
    import pandas as pd
    import torch

    from pupick.core.config import PreprocessConfig, TrainConfig
    from pupick.core.io import read_micrograph, write_mrc
    from pupick.core.train import train

    common = _bench_common()
    record(out, "prepare", machine=common.machine_info(), device=device_info())
    originals = sorted((DEMO / "micrographs").glob("*.mrc"))
    labels = pd.read_csv(DEMO / "particles.csv")
    t0 = time.perf_counter()
    scaled, sizes = [], {}
    for size, shape in (("square", plan.square), ("k3", plan.k3)):
        folder = work / size
        folder.mkdir(parents=True, exist_ok=True)
        scale = shape[1] / 1024
        sizes[size] = scale
        for p in originals[:plan.per_size]:
            name = f"{p.stem}_{size}"
            image = read_micrograph(p).image
            write_mrc(folder / f"{name}.mrc", upsample(image, shape), PIXEL_SIZE / scale)
            mine = labels[labels["micrograph"] == p.stem]
            x, y = mine["x"].to_numpy() * scale, mine["y"].to_numpy() * scale
            keep = y < shape[0]
            scaled.append(pd.DataFrame({"micrograph": name, "x": x[keep], "y": y[keep]}))
    pd.concat(scaled).to_csv(work / "labels.csv", index=False)
    (work / "sizes.json").write_text(json.dumps(sizes))
    t_data = time.perf_counter() - t0
    config = TrainConfig(preprocess=PreprocessConfig(diameter_px=DIAMETER_PX, factor=plan.model_factor,
                                                     pixel_size=PIXEL_SIZE),
                         units=plan.units, epochs=plan.epochs, steps_per_epoch=plan.steps, batch_size=4,
                         tile_size=plan.train_tile, expected_particles=150, test_split=0.0, seed=0,
                         device=plan.device, cache_dir=str(work / "model.cache"))
    t1 = time.perf_counter()
    train(originals, labels, config, log=lambda m: None).save(work / "model.pt")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"square": list(plan.square), "k3": list(plan.k3), "micrographs_per_size": plan.per_size,
            "data_seconds": round(t_data, 2), "model_train_seconds": round(time.perf_counter() - t1, 2),
            "model": f"ResNet8-u{plan.units}, factor {plan.model_factor} at {PIXEL_SIZE} Å/px, "
                     f"{plan.epochs}x{plan.steps} steps on the 5 originals (all labels)"}


def _warm(mics: list[Path], model: Any, config: Any, repeats: int) -> tuple[Any, list[float], list[float]]:
    """Pick once to warm up, then `repeats` times: (last result, seconds per micrograph, score seconds per mic)."""
    from pupick.core.picking import pick

    pick(mics[:1], model, config, log=lambda m: None)
    walls, scores, result = [], [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = pick(mics, model, config, log=lambda m: None)
        walls.append((time.perf_counter() - t0) / len(mics))
        scores.append(result.timings.get("seconds_score", float("nan")) / max(1, result.n_done))
    return result, walls, scores


def stage_picking(plan: Plan, work: Path, out: Path) -> dict:
    """Whole-process and warm picking speed per micrograph, 4096² and K3, in the plan's precision; AP."""
    from pupick.core.modelfile import load_model

    common = _bench_common()
    model_path = work / "model.pt"
    n_workers = workers()
    model = load_model(model_path)
    found: dict[str, Any] = {"precision": plan.precision, "workers": n_workers}
    for size in ("square", "k3"):
        mics = micrographs(work, size)
        target = work / f"pick_{size}"
        cmd = [sys.executable, "-m", "pupick.core.cli", "pick", *map(str, mics), "--model", str(model_path), "-o",
               str(target), "--device", plan.device, "--precision", plan.precision, "--workers", str(n_workers),
               "--overwrite"]
        m = common.run_measured(cmd, env={"PYTHONWARNINGS": "ignore"})
        whole: dict[str, Any] = {"seconds": round(m.seconds, 3), "per_micrograph": round(m.seconds / len(mics), 4),
                                 "returncode": m.returncode, "peak_rss_mb": round(m.peak_rss_mb, 1)}
        if m.returncode != 0:
            whole["error"] = (m.stderr.strip().splitlines() or ["?"])[-1]
        result, walls, scores = _warm(mics, model, pick_config(plan.device, plan.precision, n_workers), plan.repeats)
        found[size] = {"micrographs": len(mics), "whole_process": whole,
                       "warm_per_micrograph": common.summarize(walls), "warm_score_per_micrograph":
                       common.summarize(scores), "ap": round(ap_of(result.picks, work, size, mics), 4),
                       "failures": [f"{p}: {r}" for p, r in result.failures]}
        record(out, "picking", **found)  # a cut run keeps the first size
    return found


def stage_cpu_ap(plan: Plan, work: Path, out: Path) -> dict:
    """The same micrographs on the CPU path (precision auto): AP, and its difference to the device's."""
    import torch

    from pupick.core.modelfile import load_model
    from pupick.core.picking import pick

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(work / "model.pt")
    gpu = load(out).get("stages", {}).get("picking", {})
    found: dict[str, Any] = {"precision": "auto"}
    for size in ("square", "k3"):
        mics = micrographs(work, size)
        t0 = time.perf_counter()
        result = pick(mics, model, pick_config("cpu", "auto", 1), log=lambda m: None)
        cpu_ap = round(ap_of(result.picks, work, size, mics), 4)
        row: dict[str, Any] = {"ap": cpu_ap, "seconds_per_micrograph": round((time.perf_counter() - t0) / len(mics), 3)}
        if isinstance(gpu.get(size), dict) and gpu[size].get("ap") is not None:
            row["gpu_ap"] = gpu[size]["ap"]
            row["ap_difference"] = round(gpu[size]["ap"] - cpu_ap, 4)
            row["within_tolerance"] = abs(row["ap_difference"]) <= AP_TOLERANCE
        found[size] = row
        record(out, "cpu_ap", **found)
    found["tolerance"] = AP_TOLERANCE
    return found


def stage_training(plan: Plan, work: Path, out: Path) -> dict:
    """`pupick demo`'s protocol on the device: training and picking time, held-out AP."""
    from pupick.core.cli import demo

    if plan.demo_schedule:  # the dry run: the demo's schedule, shortened
        demo.DEMO_TRAIN = {**demo.DEMO_TRAIN, **plan.demo_schedule}
    r = demo.run_demo(DEMO, work / "demo", 0, plan.device, lambda m: None)
    return {"train_seconds": round(r["train_seconds"], 2), "pick_seconds": round(r["pick_seconds"], 2),
            "ap": round(float(r["ap"]), 4), "held_out": r["held_out"], "schedule": dict(demo.DEMO_TRAIN)}


class UtilisationSampler:
    """GPU utilisation (%) and memory used (MiB) every 100 ms from `nvidia-smi -lms`, else torch.cuda.utilization
    polled in a thread; nothing on a machine without either. Sample times are time.time()."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float | None]] = []  # (time, utilisation %, memory MiB)
        self.source: str | None = None
        self._proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "UtilisationSampler":
        import shutil

        import torch

        if not torch.cuda.is_available():
            return self
        if shutil.which("nvidia-smi"):
            # its own timestamps: a pipe may hand the lines over late and in bursts (stdbuf asks for each line)
            cmd = ["nvidia-smi", "-i", "0", "--query-gpu=timestamp,utilization.gpu,memory.used",
                   "--format=csv,noheader,nounits", "-lms", "100"]
            if shutil.which("stdbuf"):
                cmd = ["stdbuf", "-oL", *cmd]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.source = "nvidia-smi"
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        else:
            self.source = "torch.cuda.utilization"
            self._thread = threading.Thread(target=self._poll_torch, daemon=True)
        self._thread.start()
        return self

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                when = dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()  # local time, as time.time
            except ValueError:
                when = time.time()  # an unexpected timestamp format: the line's arrival
            try:
                self.samples.append((when, float(parts[1]), float(parts[2])))
            except (ValueError, IndexError):
                continue

    def _poll_torch(self) -> None:
        import torch

        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), float(torch.cuda.utilization()), None))
            except Exception:  # noqa: BLE001 - no NVML: no samples
                self.source = None
                return
            time.sleep(0.1)

    def stop(self) -> None:
        time.sleep(0.3)  # the last samples of the run
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(5)

    def between(self, t0: float, t1: float) -> dict:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if not inside:
            return {"source": self.source, "samples": 0, "samples_in_all": len(self.samples), "busy_fraction": None,
                    "peak_memory_used_mib": None}
        memory = [s[2] for s in inside if s[2] is not None]
        return {"source": self.source, "samples": len(inside),
                "busy_fraction": round(statistics.fmean(s[1] for s in inside) / 100, 3),
                "peak_memory_used_mib": max(memory) if memory else None}


def stage_busy(plan: Plan, work: Path, out: Path) -> dict:
    """One run over n_busy 4096² micrographs (links to the five): is the GPU kept busy, is the reader queue fed?"""
    from pupick.core.executors import LocalExecutor
    from pupick.core.modelfile import load_model
    from pupick.core.picking import pick

    sources = micrographs(work, "square")
    folder = work / "busy"
    folder.mkdir(exist_ok=True)
    mics = []
    for i in range(plan.n_busy):
        link = folder / f"m{i:03d}_{sources[i % len(sources)].stem}.mrc"
        if not link.exists():
            link.symlink_to(sources[i % len(sources)].resolve())
        mics.append(link)
    n_workers = workers()
    model = load_model(work / "model.pt")
    config = pick_config(plan.device, plan.precision, n_workers)
    pick(mics[:1], model, config, log=lambda m: None)  # model on the device, buffers made: not the run's start-up
    ready: list[int] = []
    sampler = UtilisationSampler().start()
    try:
        t0 = time.time()
        result = pick(mics, model, config, executor=LocalExecutor(n_workers, observe=lambda i, n: ready.append(n)),
                      log=lambda m: None)
        t1 = time.time()
    finally:
        sampler.stop()
    wall = t1 - t0
    later = ready[QUEUE_FROM:]
    gpu = sampler.between(t0, t1)
    found = {"micrographs": len(mics), "done": result.n_done, "workers": n_workers, "wall_seconds": round(wall, 2),
             "per_micrograph": round(wall / len(mics), 4),
             "scorer_busy_fraction": round(result.timings.get("seconds_score", 0.0) / wall, 3),
             "read_seconds_per_micrograph": round(result.timings.get("seconds_read", 0.0) / max(1, result.n_done), 4),
             "gpu": gpu, "queue_ready": {"min_after_5": min(later) if later else None,
                                         "empty_after_5": sum(1 for n in later if n == 0),
                                         "median": statistics.median(ready) if ready else None},
             "queue_never_empty_after_5": bool(later) and min(later) > 0,
             "gpu_busy_pass": None if gpu["busy_fraction"] is None else gpu["busy_fraction"] >= BUSY_LEAST}
    return found


def stage_memory(plan: Plan, work: Path, out: Path) -> dict:
    """Peak GPU memory picking each size (torch's allocator: allocated and reserved); peak RSS on the CPU."""
    import torch

    from pupick.core.modelfile import load_model
    from pupick.core.picking import pick

    common = _bench_common()
    model = load_model(work / "model.pt")
    config = pick_config(plan.device, plan.precision, workers())
    found: dict[str, Any] = {}
    for size in ("square", "k3"):
        mics = micrographs(work, size)
        pick(mics[:1], model, config, log=lambda m: None)
        common.reset_peak_rss()
        cuda = torch.cuda.is_available() and plan.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        pick(mics, model, config, log=lambda m: None)
        row: dict[str, Any] = {"peak_rss_mb": round(common.peak_rss_mb(), 1), "gpu_allocated_mib": None,
                               "gpu_reserved_mib": None}
        if cuda:
            row["gpu_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            row["gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        found[size] = row
        record(out, "memory", **found)
    return found


def cuda_test_files() -> list[str]:
    """The test files that hold `cuda`-marked tests."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                  if "mark.cuda" in p.read_text(errors="replace"))


def stage_tests(plan: Plan, work: Path, out: Path) -> dict:
    """The cuda-marked tests; on a GPU they must run (PUPICK_REQUIRE_CUDA=1), in the dry run they skip."""
    import xml.etree.ElementTree as ET

    report = work / "tests.xml"
    report.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if not plan.device == "cpu":
        env["PUPICK_REQUIRE_CUDA"] = "1"
    files = cuda_test_files()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={report}",
           *files]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    found: dict[str, Any] = {"files": files, "returncode": done.returncode,
                             "pytest_seconds": round(time.perf_counter() - t0, 1)}
    if not report.exists():
        found["error"] = (done.stderr.strip() or done.stdout.strip() or "no report").splitlines()[-1]
        return found
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = []
    for case in suite.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            first = (bad.get("message") or "").strip().splitlines()
            failed.append(f"{case.get('name')}: {first[0][:300] if first else '?'}")
    found.update(counts, failed=failed)
    return found


RUNNERS: dict[str, Callable[[Plan, Path, Path], dict]] = {
    "prepare": stage_prepare, "picking": stage_picking, "cpu_ap": stage_cpu_ap, "training": stage_training,
    "busy": stage_busy, "memory": stage_memory, "tests": stage_tests}
assert tuple(RUNNERS) == STAGES


def run_stage(stage: str, dry: bool, work: Path, out: Path) -> int:
    """Run one stage and record it: status ok with its figures, or failed with one line."""
    plan = plan_of(dry)
    record(out, stage, status="running", started=_now())
    t0 = time.perf_counter()
    try:
        figures = RUNNERS[stage](plan, work, out)
    except Exception as err:  # noqa: BLE001 - a stage's failure is recorded in one line; the next stage still runs
        line = " ".join(f"{type(err).__name__}: {err}".split())[:500]
        record(out, stage, status="failed", error=line, seconds=round(time.perf_counter() - t0, 1))
        print(f"gpu_check: {stage} failed: {line}", file=sys.stderr)
        return 1
    record(out, stage, status="ok", seconds=round(time.perf_counter() - t0, 1), **figures)
    return 0


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


# ------------------------------------------------------------------------------------------------ summary
def summary(out: Path) -> list[str]:
    doc = load(out)
    st = doc.get("stages", {})
    dev = st.get("prepare", {}).get("device", {})
    lines = [f"GPU check {'(dry run) ' if doc.get('dry_run') else ''}on {dev.get('name', '?')} "
             f"(torch {dev.get('torch', '?')}): {out}"]
    for stage in STAGES:
        s = st.get(stage, {})
        seconds = "" if s.get("seconds") is None else f"{s['seconds']:.0f} s"
        head = f"  {stage:<9} {s.get('status', 'not run'):<8} {seconds:>6}"
        lines.append(head + ("  " + s["error"] if s.get("error") else ""))
    pk, cpu = st.get("picking", {}), st.get("cpu_ap", {})
    plan = doc.get("plan", {})
    for size, label in (("square", "square"), ("k3", "K3")):
        if isinstance(pk.get(size), dict):
            r = pk[size]
            rows, cols = plan.get(size, ("?", "?"))
            warm = r["warm_per_micrograph"].get("median")
            lines.append(f"  pick {label} {cols}x{rows} ({pk.get('precision')}): warm {warm:.3f} s/micrograph, whole "
                         f"process {r['whole_process']['per_micrograph']:.3f} s/micrograph ({r['micrographs']} "
                         f"micrographs), AP {r['ap']:.4f}")
            c = cpu.get(size)
            if isinstance(c, dict) and "ap_difference" in c:
                lines.append(f"    CPU AP {c['ap']:.4f}: difference {c['ap_difference']:+.4f} "
                             f"({'PASS' if c['within_tolerance'] else 'FAIL'}: within {AP_TOLERANCE})")
    tr = st.get("training", {})
    if tr.get("status") == "ok":
        lines.append(f"  demo protocol: train {tr['train_seconds']} s, pick {tr['pick_seconds']} s, AP {tr['ap']}")
    b = st.get("busy", {})
    if b.get("status") == "ok":
        busy = b["gpu"]["busy_fraction"]
        verdict = "n/a" if b["gpu_busy_pass"] is None else ("PASS" if b["gpu_busy_pass"] else "FAIL")
        lines.append(f"  {b['micrographs']} micrographs, {b['workers']} readers: {b['per_micrograph']:.3f} s each, "
                     f"GPU busy {'n/a' if busy is None else f'{busy:.0%}'} ({verdict}: >= {BUSY_LEAST:.0%}), scorer "
                     f"busy {b['scorer_busy_fraction']:.0%}, reader queue empty "
                     f"{b['queue_ready']['empty_after_5']} times after micrograph {QUEUE_FROM} "
                     f"({'PASS' if b['queue_never_empty_after_5'] else 'FAIL'})")
    mem = st.get("memory", {})
    for size in ("square", "k3"):
        if isinstance(mem.get(size), dict):
            lines.append(f"  peak memory {size}: GPU allocated {mem[size]['gpu_allocated_mib']} MiB, reserved "
                         f"{mem[size]['gpu_reserved_mib']} MiB; RSS {mem[size]['peak_rss_mb']} MB")
    t = st.get("tests", {})
    if "tests" in t:
        lines.append(f"  cuda tests: {t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped")
        lines += [f"    FAILED {f}" for f in t.get("failed", [])]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="every stage on the CPU at the smallest sizes")
    ap.add_argument("--out", type=Path, help="the results file (JSON)")
    ap.add_argument("--work", type=Path, help="scratch folder (micrographs, model, picks)")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--stage", choices=STAGES)
    what.add_argument("--preflight", action="store_true")
    what.add_argument("--requirements", action="store_true")
    what.add_argument("--missing", action="store_true")
    what.add_argument("--mark", nargs=2, metavar=("STAGE", "STATUS"))
    what.add_argument("--begin", action="store_true", help="start the results file")
    what.add_argument("--summary", action="store_true")
    ap.add_argument("--seconds", type=float, default=None, help="with --mark: the stage's time box")
    args = ap.parse_args(argv)
    if args.requirements:
        print("\n".join(requirements()))
        return 0
    if args.missing:
        print("\n".join(missing()))
        return 0
    if args.preflight:
        problem = preflight(args.dry_run)
        if problem:
            print(f"gpu_check: {problem}", file=sys.stderr)
            return 2
        return 0
    if args.out is None or (args.stage and args.work is None):
        ap.error("--out (and --work with --stage) are required")
    if args.begin:
        save(args.out, {"name": "gpu_check", "date": _now(), "dry_run": args.dry_run,
                        "plan": asdict(plan_of(args.dry_run)), "budget_note": "see bench/gpu_check.sh", "stages": {}})
        return 0
    if args.mark:
        stage, status = args.mark
        if load(args.out).get("stages", {}).get(stage, {}).get("status") in (None, "running"):
            record(args.out, stage, status=status, seconds=args.seconds)
        return 0
    if args.summary:
        print("\n".join(summary(args.out)))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    return run_stage(args.stage, args.dry_run, args.work, args.out)


if __name__ == "__main__":
    sys.exit(main())
