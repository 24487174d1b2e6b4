"""Same-run training-time ratio of two code versions (A/B interleaved), for a loaded, noisy machine.

Each repeat trains once with version A and once with version B (each in a fresh subprocess with its own defaults,
`--test-split 0`, fresh cache) on one set under the standard protocol of bench/seed_spread.py; reports the median wall
and CPU seconds of `train()` per version and the ratio B/A. With `--process`, each repeat also runs the whole
`pupick train` command line of each version (start-up, imports, preprocessing into a fresh cache, training, writing the
model) on the same micrographs and labels, and reports its wall time and ratio too. A version is a folder holding a `pupick` package tree
(`pupick/core`, `pupick/adapters`), put first on PYTHONPATH; "installed" means this checkout.

    python bench/train_time_ab.py --a /tmp/base_pkg --b installed --sets empiar10028 --repeats 3
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_args, discover_sets, write_result  # noqa: E402


def child(set_dir: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from common import load_set
    from seed_spread import protocol_set, train_model
    import tempfile

    bset = protocol_set(load_set(set_dir), "standard")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bset.train_config(seed=0, test_split=0.0)
        t0, c0 = time.perf_counter(), time.process_time()
        train_model(bset.train, bset.train_labels, cfg, Path(tmp) / "m.pt")
        print("RESULT " + json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                                      "epochs": cfg.epochs, "load": os.getloadavg()[0]}))


def write_protocol(set_dir: str, folder: Path) -> list[str]:
    """The standard protocol's train micrographs and labels as files; the `pupick train` arguments that use them."""
    from common import load_set
    from seed_spread import protocol_set

    bset = protocol_set(load_set(set_dir), "standard")
    (folder / "mics.txt").write_text("".join(f"{p}\n" for p in bset.train))
    bset.train_labels.to_csv(folder / "labels.csv", index=False)
    pre = bset.preprocess_config()
    size = ["--scale", str(pre.factor)] if pre.factor else ["--diameter-px", str(pre.diameter_px)]
    return [f"@{folder / 'mics.txt'}", "--labels", str(folder / "labels.csv"), *size,
            "--expected-particles", str(bset.expected_particles), "--seed", "0", "--quiet"]


def time_process(cli_args: list[str], env: dict, folder: Path) -> dict:
    """Wall seconds of one whole `pupick train` process (fresh cache and output each time)."""
    import shutil

    out = folder / "run"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pupick.core.cli", "train", *cli_args, "-o", str(out / "m.pt")],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"pupick train failed:\n{done.stderr[-2000:]}")
    return {"wall": wall, "load": os.getloadavg()[0]}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
        return

    def extra(ap):
        ap.add_argument("--a", required=True)
        ap.add_argument("--b", required=True)
        ap.add_argument("--repeats", type=int, default=3)
        ap.add_argument("--process", action="store_true", help="also time the whole `pupick train` process")

    args = bench_args(__doc__.splitlines()[0], None, extra)
    sets, _ = discover_sets(args.data, args.sets)
    rows = []
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="train_ab_"))
    for bset in sets:
        got = {"a": [], "b": []}
        proc = {"a": [], "b": []}
        cli_args = write_protocol(str(bset.dir), scratch) if args.process else []
        for _ in range(args.repeats):
            for key in ("a", "b"):
                code = getattr(args, key)
                env = dict(os.environ)
                if code != "installed":
                    env["PYTHONPATH"] = code
                out = subprocess.run([sys.executable, __file__, "--child", str(bset.dir), str(args.threads)],
                                     env=env, capture_output=True, text=True)
                line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
                if not line:
                    print(out.stderr[-2000:])
                    continue
                r = json.loads(line[0][7:])
                got[key].append(r)
                print(f"{bset.name} {key}: train {r['wall']:.1f} s wall, {r['cpu']:.1f} s cpu, {r['epochs']} epochs, "
                      f"load {r['load']:.1f}", flush=True)
                if args.process:
                    p = time_process(cli_args, env, scratch)
                    proc[key].append(p)
                    print(f"{bset.name} {key}: whole `pupick train` {p['wall']:.1f} s, load {p['load']:.1f}",
                          flush=True)
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "cpu", "load")} for k, v in got.items() if v}
        row = {"set": bset.name, "a": args.a, "b": args.b, **{f"{k}_{m}": x for k, d in med.items() for m, x in d.items()},
               "runs": got}
        if "a" in med and "b" in med:
            row["ratio_wall"] = med["b"]["wall"] / med["a"]["wall"]
            row["ratio_cpu"] = med["b"]["cpu"] / med["a"]["cpu"]
            print(f"== {bset.name}: B/A wall {row['ratio_wall']:.2f}, cpu {row['ratio_cpu']:.2f}", flush=True)
        if proc["a"] and proc["b"]:
            pm = {k: statistics.median(r["wall"] for r in v) for k, v in proc.items()}
            row.update(process_a_wall=pm["a"], process_b_wall=pm["b"], process_ratio_wall=pm["b"] / pm["a"],
                       process_runs=proc)
            print(f"== {bset.name}: whole process A {pm['a']:.2f} s, B {pm['b']:.2f} s, B/A {pm['b'] / pm['a']:.2f}",
                  flush=True)
        rows.append(row)
    print(f"wrote {write_result('train_time_ab', rows)}")


if __name__ == "__main__":
    main()
