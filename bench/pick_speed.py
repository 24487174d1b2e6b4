"""Picking speed, memory and mode quality.

1. Trains a ResNet8-u32 quickly on the shared empiar10017 set (1024², 7.08 Å/px, factor 1; quality protocol split).
2. Mode quality: AP on the set's test micrographs for fast/dense x bf16/fp32 (deltas against dense fp32).
3. Speed: converts full4096/*.jpg to float32 MRC (1.77 Å/px) in a temp dir and picks them end to end in a child
   process (read -> x4 Fourier crop -> GMM -> score -> NMS -> write; the model's 7.08 Å/px gives factor 4): median
   seconds per micrograph (second pass, warm) and the child's peak RSS, per mode.
4. FLOPs per micrograph (conv layers, forward hooks) and the achieved rate of the scoring step against a measured
   matmul peak on the same threads.

`python bench/pick_speed.py [--quick]` writes bench/out/pick_speed.json.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import (bench_args, evaluate_test, load_set, run_measured, set_threads,  # noqa: E402
                    summarize, write_result)

# (stride, precision, views): the default fast mode averages 4 views; one view of it is shown for reference
MODES = [("fast", "bf16", 4), ("fast", "bf16", 1), ("fast", "fp32", 4), ("dense", "bf16", 1), ("dense", "fp32", 1)]
FULL_PIXEL_SIZE = 1.77


def train_model(bset, out: Path, quick: bool) -> tuple[Path, float]:
    from pupick.core.train import train

    cfg = bset.train_config(units=32, epochs=4 if quick else 8, steps_per_epoch=20, batch_size=4, tile_size=160,
                            learning_rate=1e-3, test_split=0.0, seed=0)
    t0 = time.perf_counter()
    train(bset.train, bset.train_labels, cfg, log=lambda m: None).save(out)
    return out, time.perf_counter() - t0


def mode_quality(bset, model_path: Path, quick: bool) -> list[dict]:
    from pupick.core.config import PickConfig
    from pupick.core.modelfile import load_model
    from pupick.core.pipeline import pick

    model = load_model(model_path)
    mics = bset.test[:3] if quick else bset.test
    rows = []
    for stride, precision, views in MODES:
        t0 = time.perf_counter()
        run = pick(mics, model, PickConfig(stride=stride, precision=precision, views=views, device="cpu"),
                   progress=False)
        seconds = (time.perf_counter() - t0) / len(mics)
        ev = evaluate_test(run.picks, bset, micrographs=bset.stems(mics))
        ev.pop("curve", None)
        rows.append({**ev, "stride": stride, "dtype": precision, "views": views, "s_per_micrograph_1024": seconds})
    ref = next(r["ap"] for r in rows if r["stride"] == "dense" and r["dtype"] == "fp32")
    for r in rows:
        r["ap_delta_vs_dense_fp32"] = r["ap"] - ref
    return rows


def convert_full(src: Path, dst: Path) -> list[Path]:
    """full4096 JPEGs -> float32 MRC with the full-size pixel size in the header."""
    from pupick.core.io import read_micrograph, write_mrc

    out = []
    for jpg in sorted(src.glob("*.jpg")):
        target = dst / f"{jpg.stem}.mrc"
        write_mrc(target, read_micrograph(jpg).image, FULL_PIXEL_SIZE)
        out.append(target)
    return out


def child(model: str, mrcs: list[str], stride: str, precision: str, views: int, threads: int) -> None:
    """Pick the micrographs twice (pass 1 warms up) into fresh directories; print per-micrograph seconds as JSON."""
    set_threads(threads)
    import torch

    torch.set_num_threads(threads)
    from pupick.core.cli.pick import _writer
    from pupick.core.config import PickConfig
    from pupick.core.pipeline import pick_to_dir

    passes = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(2):
            out = Path(tmp) / f"pass{k}"
            stamps = [time.perf_counter()]
            writer = _writer("csv", out, None)

            def write(df, path, writer=writer, stamps=stamps):
                writer(df, path)
                stamps.append(time.perf_counter())

            res = pick_to_dir([Path(m) for m in mrcs], model, PickConfig(stride=stride, precision=precision,
                                                                          views=views, device="cpu"), out, writer=write,
                              progress=False, log=lambda m: None)
            passes.append({"seconds": [b - a for a, b in zip(stamps, stamps[1:])], "n_picks": len(res.picks)})
    print(json.dumps({"passes": passes}))


def conv_flops(model_path: Path, shape: tuple[int, int], stride: str, views: int) -> float:
    """Multiply-adds x 2 of every convolution for one scored image of `shape` (downsampled pixels), all views."""
    import numpy as np
    import torch

    from pupick.core.config import PickConfig
    from pupick.core.modelfile import load_model
    from pupick.core.score import Scorer

    scorer = Scorer(load_model(model_path), PickConfig(stride=stride, precision="fp32", views=views, device="cpu"))
    total = [0.0]

    def hook(mod, inp, out):
        k = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
        total[0] += 2.0 * out.numel() * k

    handles = [m.register_forward_hook(hook) for m in scorer.module.modules() if isinstance(m, torch.nn.Conv2d)]
    scorer(np.zeros(shape, np.float32))
    for h in handles:
        h.remove()
    return total[0]


def score_seconds(model_path: Path, shape: tuple[int, int], stride: str, precision: str, views: int, n: int) -> float:
    import numpy as np

    from pupick.core.config import PickConfig
    from pupick.core.modelfile import load_model
    from pupick.core.score import Scorer

    scorer = Scorer(load_model(model_path), PickConfig(stride=stride, precision=precision, views=views, device="cpu"))
    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    scorer(img)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        scorer(img)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stage_cpu_seconds(model_path: Path, mrc: Path, stride: str, precision: str, views: int) -> dict:
    """Per-stage CPU seconds on ONE thread (process time: robust to a busy machine), warm second run."""
    import torch

    from pupick.core.config import PickConfig
    from pupick.core.extract import extract_picks
    from pupick.core.io import read_micrograph
    from pupick.core.modelfile import load_model
    from pupick.core.preprocess import downsample, normalize
    from pupick.core.score import Scorer, unview, upsample_map, view

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = load_model(model_path)
    scorer = Scorer(model, PickConfig(stride=stride, precision=precision, views=views, device="cpu"))
    clock = time.process_time
    for _ in range(2):
        t: dict[str, float] = {}
        a = clock(); mic = read_micrograph(mrc); t["read"] = clock() - a  # noqa: E702
        a = clock(); ds = downsample(mic.image, 4, workers=1); t["fourier_crop"] = clock() - a  # noqa: E702
        a = clock(); img = normalize(ds, "gmm"); t["gmm"] = clock() - a  # noqa: E702
        turned = [view(img, k, f) for k, f in scorer.views]
        a = clock(); cs = [scorer.coarse(v) for v in turned]; t["score"] = clock() - a  # noqa: E702
        a = clock()
        maps = [upsample_map(c, scorer.stride, v.shape) if scorer.stride > 1 else c for c, v in zip(cs, turned)]
        smap = sum(unview(m, k, f) for m, (k, f) in zip(maps, scorer.views))
        t["refine"] = clock() - a
        a = clock()
        extract_picks(smap, 4, model.config["diameter_px"] * 4 / 2, -6.0)
        t["nms"] = clock() - a
    torch.set_num_threads(before)
    t["total"] = sum(t.values())
    return t


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n matmul on this process's torch threads."""
    import torch

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, model, stride, precision, views, threads, *mrcs = sys.argv
        child(model, mrcs, stride, precision, int(views), int(threads))
        return
    args = bench_args(__doc__.splitlines()[0], extra=lambda ap: ap.add_argument(
        "--model", type=Path, default=None, help="reuse this model (trained on empiar10017) instead of training"))
    import torch

    set_threads(args.threads)
    bset = load_set(Path(args.data) / "empiar10017")
    load0 = os.getloadavg()[0]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pupick_pick_speed_") as tmp:
        tmp = Path(tmp)
        if args.model:
            model, t_train = args.model, None
        else:
            model, t_train = train_model(bset, tmp / "model.pt", args.quick)
            print(f"trained on {len(bset.train)} micrographs in {t_train:.0f} s", flush=True)
        quality = mode_quality(bset, model, args.quick)
        for r in quality:
            print(f"  {r['stride']:5s} {r['dtype']} {r['views']} view(s): AP {r['ap']:.3f} ({r['ap_delta_vs_dense_fp32']:+.3f} vs "
                  f"dense fp32), {r['s_per_micrograph_1024']:.2f} s per 1024² micrograph", flush=True)
        mrcs = convert_full(bset.dir / "full4096", tmp)
        peaks = {p: matmul_peak(p) for p in ("bf16", "fp32")}
        modes = [("fast", "bf16", 4), ("dense", "bf16", 1)] if args.quick else MODES
        for stride, precision, views in modes:
            m = run_measured([sys.executable, __file__, "--child", str(model), stride, precision, str(views),
                              str(args.threads),
                              *map(str, mrcs)], timeout=1200)
            if m.returncode != 0:
                print(f"  {stride} {precision}: child failed: {m.stderr[-500:]}", flush=True)
                results.append({"stride": stride, "dtype": precision, "views": views, "error": m.stderr[-500:]})
                continue
            passes = json.loads(m.stdout.strip().splitlines()[-1])["passes"]
            per_mic = summarize(passes[1]["seconds"])
            flops = conv_flops(model, (1024, 1024), stride, views)
            s_score = score_seconds(model, (1024, 1024), stride, precision, views, 1 if args.quick else 3)
            row = {
                "stride": stride, "dtype": precision, "views": views, "s_per_micrograph": per_mic["median"],
                "s_per_micrograph_runs": per_mic, "first_pass_seconds": passes[0]["seconds"],
                "peak_rss_mb": m.peak_rss_mb, "picks_per_micrograph": passes[1]["n_picks"] / len(mrcs),
                "gflop_per_micrograph": flops / 1e9, "score_seconds": s_score,
                "achieved_gflops": flops / 1e9 / s_score, "matmul_peak_gflops": peaks[precision],
                "fraction_of_peak": flops / 1e9 / s_score / peaks[precision],
            }
            row["stage_cpu_seconds_1thread"] = stage_cpu_seconds(model, mrcs[0], stride, precision, views)
            results.append(row)
            print(f"  4096² {stride:5s} {precision} {views} view(s): {row['s_per_micrograph']:.2f} s/micrograph, peak RSS "
                  f"{row['peak_rss_mb']:.0f} MiB; {row['gflop_per_micrograph']:.0f} GFLOP, scoring "
                  f"{s_score:.2f} s = {row['achieved_gflops']:.0f} GFLOP/s ({row['fraction_of_peak']:.0%} of "
                  f"{peaks[precision]:.0f} matmul peak)", flush=True)
            print("     CPU s on 1 thread: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                     row["stage_cpu_seconds_1thread"].items()), flush=True)
        gpu = None
        if torch.cuda.is_available():
            gpu = {"device": torch.cuda.get_device_name(0)}
    load1 = os.getloadavg()[0]
    path = write_result("pick_speed", results, quality=quality, train_seconds=t_train, set=bset.name,
                        micrographs_4096=len(mrcs), load_average=[load0, load1], gpu=gpu,
                        targets={"default_s": 1.5, "default_rss_mb": 1024, "dense_s": 3.0},
                        notes="s_per_micrograph: median over the warm second pass; RSS of the child process "
                              "(both passes). load_average: 1-min load at start/end (2 cores; >2 means a shared, "
                              "noisy machine).")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
