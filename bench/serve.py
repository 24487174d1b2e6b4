"""`pupick serve` latency, throughput and memory on 4096² micrographs.

1. Trains a quick ResNet8 on the shared empiar10017 set and converts its full4096 JPEGs to float32 MRC (1.77 Å/px;
   the model's 7.08 Å/px gives factor 4), as bench/pick_speed.py does.
2. Warm latency per micrograph, medians over the micrographs (same run, same threads):
   - in-process: `pick_to_dir` on one micrograph with the model already loaded (the floor),
   - service job: POST /v1/pick of one micrograph -> poll -> GET picks (end to end, through HTTP and the store),
   - service upload: POST /v1/pick/upload with the MRC bytes (synchronous fast path),
   - cold CLI: a fresh `pupick pick` process on one micrograph (start-up, torch import, model load, pick).
3. Throughput with 1, 4 and 16 concurrent clients, each submitting one-micrograph jobs: micrographs/s and the
   p50/p95/p99 of a job's submit-to-picks latency; the server's peak RSS (VmHWM).
4. /health latency (p50/p95 of 200 probes) idle and with 100 requests in flight whose bodies stall (slowloris),
   while a job runs. `--health-only` measures just this, on a scratch server with no data (seconds, no training).

`python bench/serve.py [--quick] [--threads 2]` writes bench/out/serve.json. `--demo` needs no shared data: the
bundled 1024² micrographs, upsampled 4x to 4096² (1.34 Å/px), and a model trained on them at 5.36 Å/px (so picking
also downsamples by 4); `--device cuda` measures on a GPU (writes bench/out/serve_<device>.json).
"""
from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_args, load_set, run_measured, set_threads, summarize, write_result  # noqa: E402
from pick_speed import convert_full, train_model  # noqa: E402

from pupick.core.client import Client, ServerError  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_data(root: Path, models: Path, device: str, quick: bool) -> tuple[Path, list[Path]]:
    """4096² micrographs made from the bundled ones (Fourier-upsampled 4x) and a model trained on the originals."""
    import numpy as np
    import pandas as pd

    from pupick.core.config import PreprocessConfig, TrainConfig
    from pupick.core.io import read_micrograph, write_mrc
    from pupick.core.train import train

    demo = Path(__file__).resolve().parents[1] / "data" / "demo"
    originals = sorted((demo / "micrographs").glob("*.mrc"))
    model = models / "bench.pt"
    config = TrainConfig(preprocess=PreprocessConfig(diameter_px=56, factor=1, pixel_size=5.36), units=32,
                         epochs=2 if quick else 4, steps_per_epoch=20, batch_size=4, tile_size=160,
                         expected_particles=150, test_split=0.0, seed=0, device=device)
    train(originals, pd.read_csv(demo / "particles.csv"), config, log=lambda m: None).save(model)
    mics = []
    for p in originals:
        image = read_micrograph(p).image
        f = np.fft.fftshift(np.fft.fft2(image))
        big = np.zeros((4096, 4096), complex)
        big[1536:2560, 1536:2560] = f
        up = np.fft.ifft2(np.fft.ifftshift(big)).real.astype(np.float32) * 16
        target = root / f"{p.stem}_4096.mrc"
        write_mrc(target, up, 5.36 / 4)
        mics.append(target)
    return model, mics


def start_server(state: Path, root: Path, models: Path, threads: int,
                 device: str = "cpu") -> tuple[subprocess.Popen, Client]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "pupick.core.cli", "serve", "--port", str(port), "--state",
                             str(state), "--data-root", str(root), "--models", str(models), "--device", device,
                             "--max-queue", "100000"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(state.parent / "serve.log", "wb"))
    client = Client(f"http://127.0.0.1:{port}", retries=0, timeout=600)
    for _ in range(600):
        try:
            client.health()
            return proc, client
        except ServerError:
            if proc.poll() is not None:
                raise SystemExit(f"pupick serve exited: {(state.parent / 'serve.log').read_text()}")
            time.sleep(0.1)
    raise SystemExit("pupick serve did not start")


def server_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def job_latency(client: Client, mic: Path) -> float:
    t0 = time.perf_counter()
    job = client.submit_pick([str(mic)], "bench")
    state = client.wait(job, poll=0.02)
    assert state["state"] == "done", state
    client.picks(job, "csv")
    return time.perf_counter() - t0


def percentiles(values: list[float]) -> dict:
    qs = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"p50": qs[49], "p95": qs[94], "p99": qs[98], "n": len(values)}


def in_process(model_path: Path, mics: list[Path], tmp: Path, device: str = "cpu") -> list[float]:
    from pupick.core.config import PickConfig
    from pupick.core.modelfile import load_model
    from pupick.core.outputs import pick_to_dir

    model = load_model(model_path, device=device)
    config = PickConfig.from_settings({"device": device})
    pick_to_dir([mics[0]], model, config, tmp / "warmup", progress=False, log=lambda m: None)
    times = []
    for i, mic in enumerate(mics):
        t0 = time.perf_counter()
        pick_to_dir([mic], model, config, tmp / f"inproc{i}", progress=False, log=lambda m: None)
        times.append(time.perf_counter() - t0)
    return times


def health_latency(url: str, port: int, stalled: int = 100, probes: int = 200) -> dict:
    """p50/p95 of GET /health, idle and with `stalled` requests holding connections with unfinished bodies."""
    probe = Client(url, retries=0, timeout=30)

    def sample() -> list[float]:
        out = []
        for _ in range(probes):
            t0 = time.perf_counter()
            probe.health()
            out.append(time.perf_counter() - t0)
        return out

    idle = sample()
    held = []
    try:
        for _ in range(stalled):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /v1/pick HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"micrographs\": [")
            held.append(s)
        time.sleep(0.5)
        loaded = sample()
    finally:
        for s in held:
            s.close()
    row = {"stalled_requests": stalled, "probes": probes, "idle": percentiles(idle), "stalled": percentiles(loaded)}
    print(f"/health p50/p95: idle {row['idle']['p50'] * 1e3:.1f}/{row['idle']['p95'] * 1e3:.1f} ms; "
          f"{stalled} stalled requests {row['stalled']['p50'] * 1e3:.1f}/{row['stalled']['p95'] * 1e3:.1f} ms",
          flush=True)
    return row


def health_only(args) -> None:
    """Section 4 alone: a scratch server, no data, no model."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for d in ("data", "models", "state"):
            (tmp / d).mkdir()
        proc, client = start_server(tmp / "state", tmp / "data", tmp / "models", args.threads)
        try:
            row = health_latency(client.url, int(client.url.rsplit(":", 1)[1]))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    write_result("serve_health", {"threads": args.threads, "health_latency_s": row})


def main() -> None:
    def extra(ap) -> None:
        ap.add_argument("--demo", action="store_true", help="bundled micrographs upsampled to 4096² (no shared data)")
        ap.add_argument("--device", default="cpu", help="cpu or cuda")
        ap.add_argument("--health-only", action="store_true", help="only /health latency under stalled requests")

    args = bench_args(__doc__.splitlines()[0], extra=extra)
    set_threads(args.threads)
    if args.health_only:
        return health_only(args)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root, models, state = tmp / "data", tmp / "models", tmp / "state"
        root.mkdir()
        models.mkdir()
        if args.demo:
            model_path, mics = demo_data(root, models, args.device, args.quick)
        else:
            bset = load_set(Path(args.data) / "empiar10017")
            model_path, _ = train_model(bset, models / "bench.pt", quick=True)
            mics = convert_full(bset.dir / "full4096", root)
        if args.quick:
            mics = mics[:3]
        print(f"{len(mics)} micrographs of 4096², model {model_path.name}", flush=True)

        warm_inproc = in_process(model_path, mics, tmp, args.device)
        print(f"in-process warm: {statistics.median(warm_inproc):.2f} s", flush=True)
        cold = []
        for i, mic in enumerate(mics[: 2 if args.quick else 3]):
            m = run_measured([sys.executable, "-m", "pupick.core.cli", "pick", str(mic), "--model", str(model_path),
                              "-o", str(tmp / f"cold{i}"), "--device", args.device],
                             env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            assert m.returncode == 0, m.stderr
            cold.append(m.seconds)
        print(f"cold CLI: {statistics.median(cold):.2f} s", flush=True)

        proc, client = start_server(state, root, models, args.threads, args.device)
        try:
            job_latency(client, mics[0])  # warms the model into the LRU
            service_job = [job_latency(client, mic) for mic in mics]
            print(f"service job warm: {statistics.median(service_job):.2f} s", flush=True)
            service_upload = []
            for mic in mics:
                t0 = time.perf_counter()
                client.pick_upload(mic, "bench")
                service_upload.append(time.perf_counter() - t0)
            print(f"service upload warm: {statistics.median(service_upload):.2f} s", flush=True)

            throughput = []
            per_client = 2 if args.quick else 3
            for n_clients in (1, 4, 16):
                jobs = max(n_clients * per_client, 6)
                latencies: list[float] = []
                lock = threading.Lock()

                def worker(k: int) -> None:
                    c = Client(client.url, retries=50, timeout=600)
                    for j in range(k, jobs, n_clients):
                        lat = job_latency(c, mics[j % len(mics)])
                        with lock:
                            latencies.append(lat)

                t0 = time.perf_counter()
                with ThreadPoolExecutor(n_clients) as pool:
                    list(pool.map(worker, range(n_clients)))
                wall = time.perf_counter() - t0
                row = {"clients": n_clients, "jobs": jobs, "micrographs_per_s": jobs / wall, "wall_s": wall,
                       **percentiles(latencies)}
                throughput.append(row)
                print(f"{n_clients} clients: {row['micrographs_per_s']:.3f} mic/s, p50 {row['p50']:.2f} s, "
                      f"p95 {row['p95']:.2f} s, p99 {row['p99']:.2f} s", flush=True)
            busy = client.submit_pick([str(m) for m in mics], "bench")  # /health is measured while this runs
            health = health_latency(client.url, int(client.url.rsplit(":", 1)[1]))
            client.cancel(busy)
            peak = server_peak_rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    med_in, med_job, med_up = (statistics.median(v) for v in (warm_inproc, service_job, service_upload))
    result = {
        "micrograph": ("4096x4096 float32 MRC (" + ("bundled demo, upsampled 4x" if args.demo else
                       "empiar10017 full4096") + "), ResNet8-u32, factor 4, fast mode, 4 views"),
        "device": args.device, "threads": args.threads,
        "latency_s": {"in_process_warm": summarize(warm_inproc), "service_job_warm": summarize(service_job),
                      "service_upload_warm": summarize(service_upload), "cold_cli": summarize(cold)},
        "ratios": {"service_job_over_in_process": med_job / med_in, "service_upload_over_in_process": med_up / med_in,
                   "cold_cli_over_service_job": statistics.median(cold) / med_job},
        "throughput": throughput,
        "server_peak_rss_mb": peak,
        "health_latency_s": health,
    }
    print(f"service job / in-process: {med_job / med_in:.3f}; upload / in-process: {med_up / med_in:.3f}; "
          f"server peak RSS {peak:.0f} MiB")
    write_result("serve" if args.device == "cpu" and not args.demo else
                 f"serve_{'demo_' if args.demo else ''}{args.device.replace(':', '')}", result)


if __name__ == "__main__":
    main()
