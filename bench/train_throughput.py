"""Training throughput: dense-tile steps vs a per-patch loop (one forward per receptive-field patch), fp32 vs bf16.

A training "output" is one scored window that enters the loss. Per-patch (Topaz's way): a batch of 71x71 crops gives
one logit each. Dense tile (pupick): a crop of tile + receptive field gives a whole map of logits sharing almost all
computation — at the network's native stride (what `train` uses), and for reference in the dilated stride-1 mode.
Each step = forward + GE-binomial loss + backward + Adam. Reports median outputs per second and the ratios.

    python bench/train_throughput.py [--quick] [--threads 2]
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_args, write_result  # noqa: E402


def measure(mode: str, precision: str, units: int, repeats: int) -> dict:
    """Median seconds per step and outputs per second for one mode/precision."""
    import contextlib

    import torch

    from pupick.core.models import ModelConfig, build, receptive_field
    from pupick.core.objectives import ge_binomial

    cfg = ModelConfig(arch="resnet8", units=units)
    rf = receptive_field(cfg)
    torch.manual_seed(0)
    module = build(cfg).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    if mode == "patch":
        x = torch.randn(256, 1, rf, rf)  # Topaz's minibatch: 256 patches
    elif mode == "tile-native":
        x = torch.randn(8, 1, 128 - 4 + rf, 128 - 4 + rf)  # train's default: 8 tiles of 128 px
    else:
        module.set_dense(True)
        x = torch.randn(2, 1, 64 - 1 + rf, 64 - 1 + rf)
    x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    times, n_out = [], 0
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        with amp:
            s = module(x)[:, 0].float().flatten()
        n_out = s.numel()
        loss = ge_binomial(s[:4], s[4:4 + (n_out - 4) // 256 * 256].reshape(-1, 256) if n_out > 260 else s[4:], 0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step pays one-off kernel setup
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"mode": mode, "precision": precision, "units": units, "outputs_per_step": n_out,
            "seconds_per_step": sec, "outputs_per_second": n_out / sec, "input_shape": list(x.shape)}


def main(argv: list[str] | None = None) -> None:
    args = bench_args(__doc__.splitlines()[0], argv)
    import torch

    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    rows = [measure(mode, prec, 32, repeats) for prec in ("bf16", "fp32")
            for mode in ("patch", "tile-native", "tile-dense")]
    by = {(r["mode"], r["precision"]): r["outputs_per_second"] for r in rows}
    ratios = {
        "tile_native_vs_patch_bf16": by[("tile-native", "bf16")] / by[("patch", "bf16")],
        "tile_native_vs_patch_fp32": by[("tile-native", "fp32")] / by[("patch", "fp32")],
        "tile_dense_vs_patch_bf16": by[("tile-dense", "bf16")] / by[("patch", "bf16")],
        "bf16_vs_fp32_tile_native": by[("tile-native", "bf16")] / by[("tile-native", "fp32")],
        "bf16_vs_fp32_patch": by[("patch", "bf16")] / by[("patch", "fp32")],
    }
    for r in rows:
        print(f"{r['mode']:12s} {r['precision']}: {r['seconds_per_step']:.3f} s/step, "
              f"{r['outputs_per_second']:.0f} outputs/s ({r['outputs_per_step']} per step)")
    for k, v in ratios.items():
        print(f"{k}: {v:.1f}x")
    print(f"wrote {write_result('train_throughput', rows, ratios=ratios)}")


if __name__ == "__main__":
    main()
