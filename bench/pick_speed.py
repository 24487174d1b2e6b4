"""Picking speed, memory and mode quality (issue 15).

1. Trains a ResNet8-u32 quickly on the shared empiar10017 set (1024², 7.08 Å/px, factor 1; quality protocol split).
2. Mode quality: AP on the set's test micrographs for the default (auto: int8 on CPUs with VNNI) and native/dense x
   bf16/fp32 (deltas against dense fp32).
3. AP of the default mode on every shared set, and by view count (1, 2, 4, 8), one model per set (seed 0, the
   protocol's training): the measurement behind the default view count.
4. Speed on four 4096² micrographs (full4096/*.jpg converted to float32 MRC, 1.77 Å/px; the model's 7.08 Å/px gives
   factor 4): the whole `pupick pick` process (start-up included) per micrograph, its peak RSS and the ratio to
   Topaz 0.3.20 (timed in the same run when env TOPAZ names a `topaz` executable, else its recorded 7.67 s); the warm
   in-process seconds per micrograph (median of the passes after the first, in a child process).
5. Stage times (CPU seconds on one thread, robust to a busy machine; wall seconds on a GPU) and the network's FLOPs
   per micrograph and achieved GFLOP/s against a measured matmul peak on the same threads.
6. Scorer ablation on one 1024² image: views per network call and tile size (what the scorer's defaults rest on).

    python bench/pick_speed.py [--quick] [--device cpu|cuda|auto] [--model MODEL.pt] [--threads N]

`--quick` (about two minutes on a quiet 2-core machine with --model; a few with the training): the default mode and
bf16 at the default views only, no per-set AP or ablation. Writes bench/out/pick_speed.json.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import (DATA_ROOT, bench_args, discover_sets, evaluate_test, load_set, run_measured, set_threads,  # noqa: E402
                    summarize, write_result)

# (stride, precision, views)
# None = the default view count (PickConfig.resolved_views); four views are kept as a row whatever the default
# "auto" is the default mode: int8 on CPUs with VNNI (core.quantized), else bf16 or fp32 as the hardware has them
MODES = [("native", "auto", None), ("native", "bf16", None), ("native", "bf16", 4), ("native", "bf16", 1),
         ("native", "fp32", None), ("dense", "bf16", None), ("dense", "fp32", None)]
FULL_PIXEL_SIZE = 1.77
TOPAZ_RECORDED_S = 7.67  # Topaz 0.3.20 preprocess + extract, s per 4096² micrograph, whole process (issue 15)
TOPAZ_RECORDED_RSS_MB = 2980
VIEW_COUNTS = (1, 2, 4, 8)


def default_views(stride: str) -> int:
    from pupick.core.config import ScoreConfig

    return ScoreConfig(stride=stride).resolved_views()


def train_model(bset, out: Path, quick: bool, device: str) -> tuple[Path, float]:
    from pupick.core.train import train

    cfg = bset.train_config(units=32, epochs=4 if quick else 8, steps_per_epoch=20, batch_size=4, tile_size=160,
                            learning_rate=1e-3, test_split=0.0, seed=0, device=device)
    t0 = time.perf_counter()
    train(bset.train, bset.train_labels, cfg, log=lambda m: None).save(out)
    return out, time.perf_counter() - t0


def _pick(mics, model, config):
    from pupick.core.picking import pick

    return pick(mics, model, config, progress=False, log=lambda m: None)


def mode_quality(bset, model_path: Path, modes, device: str, quick: bool) -> list[dict]:
    from pupick.core.config import PickConfig
    from pupick.core.modelfile import load_model

    model = load_model(model_path)
    mics = bset.test[:3] if quick else bset.test
    rows = []
    for stride, precision, views in modes:
        t0 = time.perf_counter()
        run = _pick(mics, model, PickConfig.from_settings(dict(stride=stride, precision=precision, views=views, device=device)))
        seconds = (time.perf_counter() - t0) / len(mics)
        ev = evaluate_test(run.picks, bset, micrographs=bset.stems(mics))
        ev.pop("curve", None)
        rows.append({**ev, "stride": stride, "dtype": precision, "views": views or default_views(stride),
                     "s_per_micrograph_1024": seconds})
    ref = next((r["ap"] for r in rows if r["stride"] == "dense" and r["dtype"] == "fp32"), None)
    for r in rows:
        r["ap_delta_vs_dense_fp32"] = None if ref is None else r["ap"] - ref
    return rows


def ap_by_views(data: Path, names: list[str] | None, device: str, tmp: Path, seeds: tuple[int, ...] = (0,)) -> list[dict]:
    """Per shared set and training seed: the protocol's training (defaults), then AP on the test micrographs with 1,
    2, 4 and 8 views (the same model for every view count)."""
    from pupick.core.modelfile import load_model
    from pupick.core.train import train

    sets, skipped = discover_sets(data, names)
    rows = []
    for bset, seed in ((b, s) for b in sets for s in seeds):
        out = tmp / f"{bset.name}_{seed}.pt"
        train(bset.train, bset.train_labels, bset.train_config(seed=seed, test_split=0.0, device=device),
              log=lambda m: None).save(out)
        model = load_model(out)
        row = {"set": bset.name, "seed": seed, "default_views": default_views("native")}
        for views in VIEW_COUNTS:
            t0 = time.perf_counter()
            run = _pick(bset.test, model, bset.pick_config(views=views, device=device))
            row[f"ap_{views}_views"] = evaluate_test(run.picks, bset)["ap"]
            row[f"s_per_micrograph_{views}_views"] = (time.perf_counter() - t0) / len(bset.test)
        row["ap_default"] = row[f"ap_{row['default_views']}_views"]
        # the default views in bf16: against the default precision (int8 where the CPU has VNNI), the same model
        run = _pick(bset.test, model, bset.pick_config(views=row["default_views"], device=device, precision="bf16"))
        row["ap_default_bf16"] = evaluate_test(run.picks, bset)["ap"]
        row["default_precision"] = resolved_precision(model, device)
        # the CPU tile before core.allocator (512 px; now up to 1024): the same model and views, tiles cut otherwise
        run = _pick(bset.test, model, bset.pick_config(views=row["default_views"], device=device, tile_size=512))
        row["ap_default_tile_512"] = evaluate_test(run.picks, bset)["ap"]
        rows.append(row)
        print(f"  {bset.name} seed {seed}: AP " + ", ".join(f"{v} view(s) {row[f'ap_{v}_views']:.4f}" for v in VIEW_COUNTS)
              + f"; default with 512-px tiles {row['ap_default_tile_512']:.4f}; default ({row['default_precision']}) "
              f"{row['ap_default']:.4f} vs bf16 {row['ap_default_bf16']:.4f}", flush=True)
    return rows + [{"set": n, "skipped": r} for n, r in skipped]


def convert_full(src: Path, dst: Path, n: int = 4) -> list[Path]:
    """full4096 JPEGs -> float32 MRC with the full-size pixel size in the header."""
    from pupick.core.io import read_micrograph, write_mrc

    out = []
    for jpg in sorted(src.glob("*.jpg"))[:n]:
        target = dst / f"{jpg.stem}.mrc"
        write_mrc(target, read_micrograph(jpg).image, FULL_PIXEL_SIZE)
        out.append(target)
    return out


def child(model: str, mrcs: list[str], stride: str, precision: str, views: int, threads: int, device: str,
          passes: int) -> None:
    """Pick the micrographs `passes` times in one process (the first warms up); print seconds per pass as JSON."""
    set_threads(threads)
    import torch

    torch.set_num_threads(threads)
    from pupick.core.config import PickConfig
    from pupick.core.modelfile import load_model

    m = load_model(model)
    config = PickConfig.from_settings(dict(stride=stride, precision=precision, views=views, device=device))
    seconds, n_picks = [], 0
    for _ in range(passes):
        t0 = time.perf_counter()
        run = _pick([Path(p) for p in mrcs], m, config)
        seconds.append((time.perf_counter() - t0) / len(mrcs))
        n_picks = len(run.picks)
    print(json.dumps({"seconds_per_micrograph": seconds, "n_picks": n_picks}))


def whole_process(model: Path, mrcs: list[Path], out: Path, stride: str, precision: str, views: int,
                  device: str) -> dict:
    """`pupick pick` on the micrographs in a fresh process: wall seconds per micrograph, start-up included."""
    cmd = [sys.executable, "-m", "pupick.core.cli", "pick", "--model", str(model), "-o", str(out), "--device", device,
           "--precision", precision, "--views", str(views), *(["--dense"] if stride == "dense" else []),
           *map(str, mrcs)]
    m = run_measured(cmd, timeout=900)
    if m.returncode != 0:
        return {"error": m.stderr[-500:]}
    return {"process_s_per_micrograph": m.seconds / len(mrcs), "peak_rss_mb": m.peak_rss_mb}


def startup_seconds(device: str) -> float:
    """Wall seconds of a process that imports what `pupick pick` imports and exits (median of three)."""
    code = ("import pupick.core.cli.pick, pupick.core.pipeline, pupick.core.score, pupick.core.modelfile, "
            "pupick.core.extract, pupick.core.preprocess, pupick.core.io")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def topaz_seconds(mrcs: list[Path], tmp: Path) -> dict | None:
    """Topaz preprocess + extract (its pretrained ResNet8-u32) on the micrographs, when env TOPAZ names topaz."""
    topaz = os.environ.get("TOPAZ")
    if not topaz:
        return None
    exe = shutil.which(topaz) or topaz
    pre = tmp / "topaz_pre"
    pre.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    a = run_measured([exe, "preprocess", "-s", "4", "-o", str(pre), *map(str, mrcs)], timeout=1800)
    b = run_measured([exe, "extract", "-m", "resnet8_u32", "-r", "7", "-x", "4", "-o", str(tmp / "topaz.txt"),
                      *map(str, sorted(pre.glob("*.mrc")))], timeout=1800) if a.returncode == 0 else a
    if a.returncode or b.returncode:
        return {"error": (a.stderr or b.stderr)[-500:]}
    return {"s_per_micrograph": (time.perf_counter() - t0) / len(mrcs), "peak_rss_mb": max(a.peak_rss_mb,
                                                                                             b.peak_rss_mb)}


def paired_rounds(model: Path, mrcs: list[Path], tmp: Path, stride: str, precision: str, views: int, device: str,
                  rounds: int) -> tuple[dict, dict | None]:
    """Whole `pupick pick` processes, alternating with Topaz runs when env TOPAZ is set (same-run ratio on a noisy
    machine): the medians, with every round listed."""
    wholes, topazes = [], []
    for r in range(rounds):
        if os.environ.get("TOPAZ"):
            pre = tmp / f"topaz_{r}"
            pre.mkdir(exist_ok=True)
            topazes.append(topaz_seconds(mrcs, pre))
        wholes.append(whole_process(model, mrcs, tmp / f"out_{stride}_{precision}_{views}_{r}", stride, precision,
                                    views, device))
    ok = [w for w in wholes if "error" not in w]
    if not ok:
        return wholes[0], None
    whole = {"process_s_per_micrograph": statistics.median(w["process_s_per_micrograph"] for w in ok),
             "peak_rss_mb": max(w["peak_rss_mb"] for w in ok), "rounds": ok}
    good = [t for t in topazes if t and "error" not in t]
    if not topazes:
        return whole, None
    if not good:
        return whole, topazes[0]
    topaz = {"s_per_micrograph": statistics.median(t["s_per_micrograph"] for t in good),
             "peak_rss_mb": max(t["peak_rss_mb"] for t in good), "rounds": good,
             "ratios_per_round": [t["s_per_micrograph"] / w["process_s_per_micrograph"] for t, w in zip(good, ok)]}
    return whole, topaz


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conv_flops(model_path: Path, shape: tuple[int, int], stride: str, views: int) -> float:
    """Multiply-adds x 2 of every convolution for one scored image of `shape` (downsampled pixels), all views."""
    import numpy as np
    import torch

    from pupick.core.config import ScoreConfig
    from pupick.core.modelfile import load_model
    from pupick.core.score import Scorer

    scorer = Scorer(load_model(model_path), ScoreConfig(stride=stride, precision="fp32", views=views, device="cpu"))
    scorer.net = scorer.module  # the module's own forward, so that the hooks see every convolution
    total = [0.0]

    def hook(mod, inp, out):
        k = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
        total[0] += 2.0 * out.numel() * k

    handles = [m.register_forward_hook(hook) for m in scorer.module.modules() if isinstance(m, torch.nn.Conv2d)]
    scorer(np.zeros(shape, np.float32))
    for h in handles:
        h.remove()
    return total[0]


def stage_seconds(model_path: Path, mrc: Path, stride: str, precision: str, views: int, device: str) -> dict:
    """Per-stage seconds of one micrograph (warm, second run): CPU seconds on ONE thread on a CPU (process time, robust
    to a busy machine), wall seconds on a GPU. score = the network on the stacked views; refine = interpolation,
    mapping back and averaging."""
    import torch

    from pupick.core.config import ScoreConfig
    from pupick.core.extract import extract_picks
    from pupick.core.io import read_micrograph
    from pupick.core.modelfile import load_model
    from pupick.core.preprocess import downsample, normalize
    from pupick.core.score import Scorer

    before = torch.get_num_threads()
    model = load_model(model_path)
    scorer = Scorer(model, ScoreConfig(stride=stride, precision=precision, views=views, device=device))
    gpu = scorer.device.type == "cuda"
    if not gpu:
        torch.set_num_threads(1)
    clock = time.perf_counter if gpu else time.process_time

    def lap(name, fn, t):
        _sync(scorer.device)
        a = clock()
        out = fn()
        _sync(scorer.device)
        t[name] = clock() - a
        return out

    for _ in range(2):
        t: dict[str, float] = {}
        mic = lap("read", lambda: read_micrograph(mrc), t)
        ds = lap("fourier_crop", lambda: downsample(mic.image, 4, workers=1), t)
        img = lap("gmm", lambda: normalize(ds, "gmm"), t)
        smap = lap("score_total", lambda: scorer(img), t)
        batch = scorer._padded(torch.from_numpy(img).to(scorer.device), scorer.views)
        lap("score", lambda: scorer._coarse_batch(batch, *img.shape), t)
        lap("nms", lambda: extract_picks(smap, 4, model.config["diameter_px"] * 4 / 2, -6.0), t)
    t["refine"] = max(0.0, t.pop("score_total") - t["score"])
    torch.set_num_threads(before)
    t["total"] = sum(t.values())
    return t


def score_seconds(model_path: Path, shape: tuple[int, int], stride: str, precision: str, views: int, n: int,
                  device: str, **attrs) -> float:
    """Median wall seconds of the scorer on one image (warm), with optional Scorer attributes overridden."""
    import numpy as np

    from pupick.core.config import ScoreConfig
    from pupick.core.modelfile import load_model
    from pupick.core.score import Scorer

    tile = attrs.pop("tile_size", None)
    scorer = Scorer(load_model(model_path), ScoreConfig(stride=stride, precision=precision, views=views,
                                                       device=device, tile_size=tile))
    for k, v in attrs.items():
        setattr(scorer, k, v)
    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    scorer(img)
    times = []
    for _ in range(n):
        _sync(scorer.device)
        t0 = time.perf_counter()
        scorer(img)
        _sync(scorer.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ablation(model_path: Path, device: str, n: int) -> list[dict]:
    """The scorer's batching and tile size on one 1024² image, 4 views, interleaved rounds (same-run ratios)."""
    variants = [{"view_batch": 1, "tile_size": 512}, {"view_batch": 4, "tile_size": 512},
                {"view_batch": 4, "tile_size": 256}, {"view_batch": 1, "tile_size": 1024},
                {"view_batch": 1, "tile_size": 384}]
    times = {i: [] for i in range(len(variants))}
    for _ in range(n):
        for i, v in enumerate(variants):
            times[i].append(score_seconds(model_path, (1024, 1024), "native", "bf16", 4, 1, device, **dict(v)))
    base = statistics.median(times[0])
    return [{**v, "views": 4, "score_seconds": statistics.median(times[i]),
             "relative_to_first": statistics.median(times[i]) / base} for i, v in enumerate(variants)]


def resolved_precision(model, device: str, precision: str = "auto", stride: str = "native") -> str:
    """What a precision setting scores in here: int8, bf16 or fp32 (fp16 on an old GPU)."""
    from pupick.core.config import ScoreConfig
    from pupick.core.modelfile import load_model
    from pupick.core.score import Scorer

    model = load_model(model) if isinstance(model, (str, Path)) else model
    scorer = Scorer(model, ScoreConfig(stride=stride, precision=precision, device=device))
    return "int8" if scorer.int8 is not None else str(scorer.dtype).replace("torch.", "").replace("bfloat16", "bf16"
                                                                                                    ).replace("float32", "fp32")


def int8_peak(channels: int = 256, side: int = 96, reps: int = 5) -> float:
    """Best GOP/s of a compute-bound int8 convolution (3x3, 256 -> 256 channels, 96² input) through core.quantized's
    kernel on this process's threads: the int8 counterpart of `matmul_peak` (a 1x1 convolution is memory-bound)."""
    import torch

    from pupick.core.quantized import _QConv

    conv = _QConv(torch.nn.Conv2d(channels, channels, 3))
    x = torch.randint(0, 255, (1, channels, side, side), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    conv(x, 0.01, 0.05)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        conv(x, 0.01, 0.05)
        best = min(best, time.perf_counter() - t0)
    out = side - 2
    return 2 * out * out * channels * channels * 9 / best / 1e9


def matmul_peak(dtype_name: str, device: str, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n matmul on this process's torch threads (or the GPU)."""
    import torch

    from pupick.core.score import choose_device

    dev = choose_device(device)
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    n = 8192 if dev.type == "cuda" else n
    a, b = torch.randn(n, n, dtype=dtype, device=dev), torch.randn(n, n, dtype=dtype, device=dev)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        a @ b
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--ap-only":  # --ap-only [SEEDS...]: AP by views only (any load)
        set_threads(2)
        seeds = tuple(int(a) for a in sys.argv[2:]) or (0,)
        with tempfile.TemporaryDirectory() as tmp:
            rows = ap_by_views(DATA_ROOT, None, "cpu", Path(tmp), seeds)
        print(f"wrote {write_result('pick_speed_ap', {'ap_per_set_by_views': rows})}")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, model, stride, precision, views, threads, device, passes, *mrcs = sys.argv
        child(model, mrcs, stride, precision, int(views), int(threads), device, int(passes))
        return

    def extra(ap):
        ap.add_argument("--model", type=Path, default=None,
                        help="reuse this model (trained on empiar10017) instead of training")
        ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")

    args = bench_args(__doc__.splitlines()[0], extra=extra)
    import torch

    set_threads(args.threads)
    from pupick.core.score import choose_device

    device = str(choose_device(args.device))
    bset = load_set(Path(args.data) / "empiar10017")
    load0 = os.getloadavg()[0]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pupick_pick_speed_") as tmp:
        tmp = Path(tmp)
        if args.model:
            model, t_train = args.model, None
        else:
            model, t_train = train_model(bset, tmp / "model.pt", args.quick, device)
            print(f"trained on {len(bset.train)} micrographs in {t_train:.0f} s", flush=True)
        # quick: the default and bf16 with the default views (the same-run comparison where the default is int8)
        modes = list(dict.fromkeys(  # the default and an explicit 4 may coincide
            (st, pr, v or default_views(st)) for st, pr, v in (MODES[:2] if args.quick else MODES)))
        quality = mode_quality(bset, model, modes, device, args.quick)
        for r in quality:
            delta = "" if r["ap_delta_vs_dense_fp32"] is None else f" ({r['ap_delta_vs_dense_fp32']:+.3f} vs dense fp32)"
            print(f"  {r['stride']:5s} {r['dtype']} {r['views']} view(s): AP {r['ap']:.3f}{delta}, "
                  f"{r['s_per_micrograph_1024']:.2f} s per 1024² micrograph", flush=True)
        per_set = [] if args.quick else ap_by_views(Path(args.data), args.sets, device, tmp)
        mrcs = convert_full(bset.dir / "full4096", tmp)
        peaks = {p: matmul_peak(p, device) for p in ("bf16", "fp32")}
        resolved = {pr: resolved_precision(model, device, pr, st) for st, pr, _ in modes}
        if "int8" in resolved.values():
            peaks["int8"] = int8_peak()
        startup = startup_seconds(device)
        topaz = None
        for i, (stride, precision, views) in enumerate(modes):
            views = views or default_views(stride)
            if i == 0:  # the default mode: `rounds` whole processes, each next to a Topaz run when TOPAZ is set
                whole, topaz = paired_rounds(model, mrcs, tmp, stride, precision, views, device, 2 if args.quick else 3)
                topaz_s = topaz["s_per_micrograph"] if topaz and "s_per_micrograph" in topaz else TOPAZ_RECORDED_S
                print(f"  start-up (imports of `pupick pick`): {startup:.2f} s; Topaz: {topaz_s:.2f} s/micrograph "
                      f"({'measured in this run' if topaz and 'error' not in topaz else 'recorded'})", flush=True)
            else:
                whole = whole_process(model, mrcs, tmp / f"out_{stride}_{precision}_{views}", stride, precision, views,
                                      device)
            m = run_measured([sys.executable, __file__, "--child", str(model), stride, precision, str(views),
                              str(args.threads), device, "2" if args.quick else "4", *map(str, mrcs)], timeout=1200)
            if m.returncode != 0 or "error" in whole:
                err = m.stderr[-500:] if m.returncode else whole["error"]
                print(f"  {stride} {precision}: failed: {err}", flush=True)
                results.append({"stride": stride, "dtype": precision, "views": views, "error": err})
                continue
            out = json.loads(m.stdout.strip().splitlines()[-1])
            warm = summarize(out["seconds_per_micrograph"][1:])
            flops = conv_flops(model, (1024, 1024), stride, views)
            s_score = score_seconds(model, (1024, 1024), stride, precision, views, 1 if args.quick else 3, device)
            stages = stage_seconds(model, mrcs[0], stride, precision, views, device)
            peak = peaks.get(resolved[precision], peaks["bf16"])
            row = {
                "stride": stride, "dtype": precision, "resolved_precision": resolved[precision], "views": views,
                "process_s_per_micrograph": whole["process_s_per_micrograph"],
                "x_faster_than_topaz": topaz_s / whole["process_s_per_micrograph"],
                "warm_s_per_micrograph": warm["median"], "warm_runs": warm,
                "first_pass_s_per_micrograph": out["seconds_per_micrograph"][0],
                "peak_rss_mb": whole["peak_rss_mb"], "picks_per_micrograph": out["n_picks"] / len(mrcs),
                "gflop_per_micrograph": flops / 1e9, "score_seconds": s_score,
                "achieved_gflops": flops / 1e9 / s_score, "matmul_peak_gflops": peak,
                "fraction_of_peak": flops / 1e9 / s_score / peak,
                ("stage_wall_seconds" if device.startswith("cuda") else "stage_cpu_seconds_1thread"): stages,
            }
            results.append(row)
            print(f"  4096² {stride:5s} {precision} ({resolved[precision]}) {views} view(s): whole process {row['process_s_per_micrograph']:.2f}"
                  f" s/micrograph ({row['x_faster_than_topaz']:.1f}x Topaz), warm {row['warm_s_per_micrograph']:.2f} s,"
                  f" peak RSS {row['peak_rss_mb']:.0f} MiB; {row['gflop_per_micrograph']:.0f} GFLOP, scoring "
                  f"{s_score:.2f} s = {row['achieved_gflops']:.0f} GFLOP/s ({row['fraction_of_peak']:.0%} of "
                  f"{peak:.0f} {resolved[precision]} peak)", flush=True)
            print("     stages: " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()), flush=True)
        abl = [] if args.quick else ablation(model, device, 3)
        for r in abl:
            print(f"  ablation: {r['view_batch']} view(s) per call, tile {r['tile_size']}: {r['score_seconds']:.2f} s "
                  f"({r['relative_to_first']:.2f}x)", flush=True)
        gpu = {"device": torch.cuda.get_device_name(0)} if torch.cuda.is_available() else None
    load1 = os.getloadavg()[0]
    default = next((r for r in results if r.get("stride") == "native" and r.get("dtype") == "auto"
                    and r.get("views") == default_views("native") and "error" not in r), None)
    targets = {"warm_s_max": 0.5, "process_s_max": TOPAZ_RECORDED_S / 8, "x_topaz_min": 8, "rss_mb_max": 1024}
    met = None if default is None else {
        "warm": default["warm_s_per_micrograph"] <= targets["warm_s_max"],
        "whole_process_8x_topaz": default["x_faster_than_topaz"] >= targets["x_topaz_min"],
        "rss": default["peak_rss_mb"] <= targets["rss_mb_max"]}
    summary = {"device": device, "threads": args.threads, "startup_seconds": startup, "topaz_s_per_micrograph": topaz_s,
               "topaz_timed_here": bool(topaz and "error" not in topaz), "load_average_start_end": [load0, load1]}
    if default is not None:
        summary.update({f"default_{k}": default[k] for k in ("views", "process_s_per_micrograph", "x_faster_than_topaz",
                                                              "warm_s_per_micrograph", "peak_rss_mb")})
        summary["targets_met"] = met
    doc = {"summary": summary, "speed_4096": results, "quality_empiar10017": quality, "ap_per_set_by_views": per_set,
           "scorer_ablation_1024": abl}
    path = write_result("pick_speed", doc, train_seconds=t_train, set=bset.name, micrographs_4096=len(mrcs), gpu=gpu,
                        targets=targets, topaz=topaz or {"recorded_s": TOPAZ_RECORDED_S,
                                                         "recorded_rss_mb": TOPAZ_RECORDED_RSS_MB},
                        notes="process_s: the whole `pupick pick` process on the 4 micrographs, start-up included, "
                              "over 4; warm_s: median over in-process passes after the first; RSS of the pick "
                              "process. load_average: 1-min load at start/end (2 cores; >2 means a shared, noisy "
                              "machine: wall times then inflate, CPU-second stage times much less).")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
