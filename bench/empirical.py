"""Benchmarks of the empirical, nearest-neighbour, CFDM and GMM denoisers on Fashion-MNIST (60k × 784).

    python bench/empirical.py [--parts gemm,knn,mmap,gmm,samples] [--threads 1]

Parts (each writes bench/results/empirical_<part>.json and prints a markdown table):
  gemm     exact Empirical, 1,024 queries × 60k train: effective GFLOP/s (4·B·N·d flops: two GEMMs) as a ratio
           to one plain f32 GEMM of the same size (2·B·N·d) timed in the same run, and to the naive
           cdist + softmax + matmul version.
  knn      KNN (faiss IVF) vs exact Empirical: time for 1,024 queries and r² per σ (median per-image r² and
           denoiser-space EV, both against the exact output).
  mmap     Empirical over a memory-mapped .npy 4× larger than a memory cap: peak resident memory of the process.
  gmm      GMM K=100 low-rank EM fit on the full train set: time, iterations, log-likelihood.
  samples  Heun samples from Empirical, CFDM and GMM: memorised fraction (d1/d2 < 1/3) and PNG grids in docs/img.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
from common import RESULTS  # noqa: E402  (bench/ is on sys.path when a script runs)
IMG = ROOT / "docs" / "img"
GMM_FILE = ROOT / "out" / "gmm_fashion_k100.safetensors"  # written by the gmm part, read by samples (not in git)


def fmnist(split="train"):
    import scorelab as sl

    return sl.data.load("fashion-mnist", split=split)


def best_time(fn, reps=2):
    out, best = None, math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def write(name, obj):
    from scorelab._io import write_json

    write_json(RESULTS / f"empirical_{name}.json", obj)


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(v) for v in r) + " |")
    print()


# ----------------------------------------------------------------------------------------------------------
def part_gemm(args):
    """Timings are interleaved (GEMM, Empirical, naive, GEMM, ...) and the minimum of `--reps` is kept, so a
    shared machine's load hits all three alike."""
    import scorelab as sl

    y = fmnist().reshape(60000, -1)
    x0 = fmnist("test")[:1024].reshape(1024, -1)
    B, N, d = 1024, y.shape[0], y.shape[1]
    g = torch.Generator().manual_seed(0)
    model = sl.Empirical(y, chunk_size=args.chunk_size)

    def naive(x, s):
        logits = -torch.cdist(x, y).pow(2) / (2 * s * s)
        return torch.softmax(logits, 1) @ y

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    times = {"gemm": []}
    outs = {}
    xs = {s: x0 + s * torch.randn(x0.shape, generator=g) for s in args.sigmas_gemm}
    for _ in range(args.reps):
        times["gemm"].append(timed(lambda: x0 @ y.T)[0])
        for s, x in xs.items():
            t, outs[("emp", s)] = timed(lambda: model(x, s))
            times.setdefault(("emp", s), []).append(t)
            t, outs[("naive", s)] = timed(lambda: naive(x, s))
            times.setdefault(("naive", s), []).append(t)
    gemm_t = min(times["gemm"])
    gemm_flops = 2 * B * N * d / gemm_t
    load = os.getloadavg()[0]
    res = {"B": B, "N": N, "d": d, "threads": torch.get_num_threads(), "chunk_size": args.chunk_size,
           "reps": args.reps, "load_average_1min": load, "gemm_seconds": gemm_t, "gemm_gflops": gemm_flops / 1e9,
           "by_sigma": []}
    rows = []
    for s in args.sigmas_gemm:
        t_emp, t_naive = min(times[("emp", s)]), min(times[("naive", s)])
        eff, naive_eff = 4 * B * N * d / t_emp, 4 * B * N * d / t_naive
        r = {"sigma": s, "empirical_seconds": t_emp, "naive_seconds": t_naive, "effective_gflops": eff / 1e9,
             "ratio_to_gemm": eff / gemm_flops, "naive_ratio_to_gemm": naive_eff / gemm_flops,
             "speedup_vs_naive": t_naive / t_emp,
             "max_abs_diff_vs_naive": float((outs[("emp", s)] - outs[("naive", s)]).abs().max()),
             "all_times": {"empirical": times[("emp", s)], "naive": times[("naive", s)], "gemm": times["gemm"]}}
        res["by_sigma"].append(r)
        rows.append([s, f"{t_emp:.2f}", f"{eff / 1e9:.1f}", f"{r['ratio_to_gemm']:.2f}", f"{t_naive:.2f}",
                     f"{r['naive_ratio_to_gemm']:.2f}", f"{r['speedup_vs_naive']:.2f}×"])
    print(f"Exact Empirical, B={B} queries × N={N} × d={d}, {torch.get_num_threads()} thread(s), "
          f"chunk_size={args.chunk_size}, min of {args.reps} interleaved runs (1-min load average {load:.1f}); "
          f"plain f32 GEMM {gemm_t:.2f} s = {gemm_flops / 1e9:.1f} GFLOP/s\n")
    table(["σ", "Empirical s", "effective GFLOP/s", "ratio to GEMM", "naive s", "naive ratio", "speed-up vs naive"],
          rows)
    write("gemm", res)


def r2_stats(out, ref):
    o, r = out.reshape(out.shape[0], -1).double(), ref.reshape(ref.shape[0], -1).double()
    per = 1 - (o - r).pow(2).sum(1) / (r - r.mean(1, keepdim=True)).pow(2).sum(1)
    ev = 1 - (o - r).pow(2).sum() / (r - r.mean(0)).pow(2).sum()
    return float(per.median()), float(ev)


def part_knn(args):
    import scorelab as sl

    y = fmnist()
    x0 = fmnist("test")[:1024]
    g = torch.Generator().manual_seed(1)
    exact = sl.Empirical(y)
    t0 = time.perf_counter()
    knn = sl.KNN(y, k=args.k, n_random=args.n_random, index="ivf", nprobe=args.nprobe)
    build = time.perf_counter() - t0
    rows, res = [], {"k": args.k, "n_random": args.n_random, "index": "ivf", "nlist": knn.nlist,
                     "nprobe": args.nprobe, "build_seconds": build, "threads": torch.get_num_threads(),
                     "by_sigma": []}
    for s in args.sigmas_knn:
        x = x0 + s * torch.randn(x0.shape, generator=g)
        t_e, ref = best_time(lambda: exact(x, s), reps=1)
        t_k, out = best_time(lambda: knn(x, s), reps=2)
        med, ev = r2_stats(out, ref)
        res["by_sigma"].append({"sigma": s, "empirical_seconds": t_e, "knn_seconds": t_k, "speedup": t_e / t_k,
                                "median_r2": med, "ev_d": ev})
        rows.append([s, f"{t_e:.2f}", f"{t_k:.3f}", f"{t_e / t_k:.1f}×", f"{med:.4f}", f"{ev:.4f}"])
    print(f"KNN (faiss IVF nlist={knn.nlist}, nprobe={args.nprobe}, k={args.k}, n_random={args.n_random}; "
          f"index build {build:.1f} s) vs exact Empirical, 1,024 noisy test images, N=60,000\n")
    table(["σ", "Empirical s", "KNN s", "speed-up", "median per-image r²", "EV_D"], rows)
    write("knn", res)


MMAP_CHILD = r"""
import sys, time, json, threading, numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
import scorelab as sl
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) * 1024
peak = [0]; stop = [False]
def watch():
    while not stop[0]:
        peak[0] = max(peak[0], rss()); time.sleep(0.002)
data = np.load(sys.argv[1], mmap_mode="r")
x = torch.from_numpy(np.array(data[:64])).reshape(64, 1, 28, 28) + 0.5 * torch.randn(64, 1, 28, 28)
base = rss()
th = threading.Thread(target=watch, daemon=True); th.start()
t0 = time.perf_counter()
model = sl.Empirical(data, chunk_size=int(sys.argv[2]))
out = model(x, 0.5)
sec = time.perf_counter() - t0
stop[0] = True; th.join()
hwm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"baseline_rss": base, "peak_rss": max(peak[0], rss()), "vm_hwm": hwm, "seconds": sec,
                  "finite": bool(torch.isfinite(out).all())}))
"""


def part_mmap(args):
    y = fmnist().reshape(60000, -1).numpy()
    reps = 4
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        path = Path(tmp) / "big.npy"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(reps * 60000, 784))
        for i in range(reps):  # 4 copies, each slightly shifted so no two rows coincide
            arr[i * 60000:(i + 1) * 60000] = y + np.float32(0.01 * i)
        arr.flush()
        del arr
        size = reps * 60000 * 784 * 4
        cap = size // 4
        out = subprocess.run([sys.executable, "-c", MMAP_CHILD, str(path), str(args.chunk_size),
                              str(torch.get_num_threads())], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    growth = r["peak_rss"] - r["baseline_rss"]
    res = {"data_bytes": size, "cap_bytes": cap, "chunk_size": args.chunk_size, **r, "growth_bytes": growth,
           "under_cap": growth < cap}
    mb = 2 ** 20
    print(f"Empirical over a memory-mapped .npy of {size / mb:.0f} MiB ({reps * 60000} × 784 float32), "
          f"chunk_size={args.chunk_size}, 64 queries, cap = data/4 = {cap / mb:.0f} MiB\n")
    table(["baseline RSS MiB", "peak RSS MiB", "growth MiB", "cap MiB", "under cap", "seconds"],
          [[f"{r['baseline_rss'] / mb:.0f}", f"{r['peak_rss'] / mb:.0f}", f"{growth / mb:.0f}", f"{cap / mb:.0f}",
            res["under_cap"], f"{r['seconds']:.1f}"]])
    write("mmap", res)


def part_gmm(args):
    import scorelab as sl

    y = fmnist()
    t0 = time.perf_counter()
    g = sl.GMM.fit(y, args.gmm_k, "lowrank", args.gmm_rank, max_iter=args.gmm_iter, tol=1e-5, progress=True)
    sec = time.perf_counter() - t0
    g.save(GMM_FILE)
    ll = g.log_likelihood_
    res = {"K": args.gmm_k, "covariance": "lowrank", "rank": args.gmm_rank, "seconds": sec, "n_iter": g.n_iter_,
           "converged": g.converged_, "log_likelihood": ll, "threads": torch.get_num_threads(),
           "min_increase": min(b - a for a, b in zip(ll, ll[1:])) if len(ll) > 1 else None}
    print(f"GMM fit on Fashion-MNIST train (60,000 × 784), {torch.get_num_threads()} thread(s)\n")
    table(["K", "covariance", "rank", "EM iterations", "seconds", "final mean log-lik", "min Δ log-lik"],
          [[args.gmm_k, "lowrank", args.gmm_rank, g.n_iter_, f"{sec:.0f}", f"{ll[-1]:.2f}",
            f"{res['min_increase']:.3g}"]])
    write("gmm", res)


def part_samples(args):
    import scorelab as sl
    from scorelab import samplers, schedules
    from scorelab.images import save_grid
    from scorelab.metrics.nearest import memorization, save_nearest_grid

    y = fmnist()
    n = args.n_samples
    sigmas = schedules.karras(18, sigma_min=0.002, sigma_max=80.0)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 1, 28, 28, generator=g) * 80.0
    gmm_path = GMM_FILE
    models = {"empirical": sl.Empirical(y)}
    for lam in args.smoothing:
        models[f"cfdm-{lam:g}"] = sl.CFDM(y, lam, args.n_draws, sigma_start=args.sigma_start)
    if gmm_path.exists():
        models["gmm"] = sl.GMM.load(gmm_path).to(dtype=torch.float32)
    rows, res = [], []
    IMG.mkdir(parents=True, exist_ok=True)
    for name, m in models.items():
        t0 = time.perf_counter()
        if name.startswith("cfdm"):
            out = m.sample(n, steps=args.cfdm_steps, generator=torch.Generator().manual_seed(0))
            how = (f"λ={m.smoothing:g}, {m.n_draws} draws; exact mixture draw at σ={args.sigma_start}, "
                   f"Heun {args.cfdm_steps} steps")
        else:
            out = samplers.heun(m, noise.clone(), sigmas)
            how = "Heun 18 steps, σ 80 → 0"
        sec = time.perf_counter() - t0
        frac, ratios, _ = memorization(out, y, return_ratios=True)
        save_grid(out[:64], IMG / f"{name}_samples.png", nrow=8, scale=2)
        save_nearest_grid(out[:8], y, IMG / f"{name}_nearest.png", k=3)
        res.append({"model": name, "sampler": how, "n": n, "seconds": sec, "memorized_fraction": frac,
                    "median_ratio": float(ratios.median())})
        rows.append([name, how, n, f"{frac:.2f}", f"{float(ratios.median()):.2f}", f"{sec:.0f}"])
    print("Samples on Fashion-MNIST (train as the training set); memorised = d1/d2 < 1/3\n")
    table(["model", "sampler", "n", "memorised fraction", "median d1/d2", "seconds"], rows)
    write("samples", {"results": res, "smoothing": args.smoothing, "n_draws": args.n_draws})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="gemm,knn,mmap,gmm,samples")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: other jobs share the CPU)")
    p.add_argument("--sigmas-gemm", type=float, nargs="+", default=[0.05, 1.0])
    p.add_argument("--sigmas-knn", type=float, nargs="+", default=[0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0])
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--n-random", type=int, default=2048)
    p.add_argument("--nprobe", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--gmm-k", type=int, default=100)
    p.add_argument("--gmm-rank", type=int, default=16)
    p.add_argument("--gmm-iter", type=int, default=20)
    p.add_argument("--n-samples", type=int, default=64)
    p.add_argument("--smoothing", type=float, nargs="+", default=[1.5, 2.0])
    p.add_argument("--n-draws", type=int, default=8)
    p.add_argument("--sigma-start", type=float, default=2.0)
    p.add_argument("--cfdm-steps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    RESULTS.mkdir(parents=True, exist_ok=True)
    for part in args.parts.split(","):
        globals()[f"part_{part}"](args)


if __name__ == "__main__":
    main()
