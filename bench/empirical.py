"""Benchmarks of the empirical, nearest-neighbour, CFDM and GMM denoisers on Fashion-MNIST (60k × 784).

    python -m bench.empirical [--parts gemm,knn,mmap,gmm,samples] [--threads 1] [--out DIR] [--data-path DIR]

Parts (each writes the result record empirical_<part>.json, bench/results by default, and prints its table):
  gemm     exact Empirical, 1,024 queries × 60k train: effective GFLOP/s (4·B·N·d flops: two GEMMs) as a ratio
           to one plain f32 GEMM of the same size (2·B·N·d) timed in the same run, and to the naive
           cdist + softmax + matmul version.
  knn      KNN (faiss IVF) vs exact Empirical: time for 1,024 queries and r² per σ (median per-image r² and
           denoiser-space EV, both against the exact output).
  mmap     Empirical over a memory-mapped .npy 4× larger than a memory cap: peak resident memory of the process.
  gmm      GMM K=100 low-rank EM fit on the full train set: time, iterations, log-likelihood.
  samples  Heun samples from Empirical, CFDM and GMM: memorised fraction (d1/d2 < 1/3) and PNG grids beside the
           record (empirical_<model>_samples.png, empirical_<model>_nearest.png).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import record
from .common import add_output_arguments, best_time, fashion_mnist, show


def gmm_file(args) -> Path:
    """The GMM the gmm part fits and the samples part samples from (in the scorelab cache, not in git), named by
    its settings (K, rank, EM iterations)."""
    return record.cache_dir("bench") / f"gmm_fashion_k{args.gmm_k}_rank{args.gmm_rank}_iter{args.gmm_iter}.safetensors"


def fmnist(split="train"):
    return fashion_mnist(split, None, ARGS.data_path)


def write(part, rows, **fields):
    """The record empirical_<part>.json of this part's rows; prints the table."""
    record.write(f"empirical_{part}", rows, out=ARGS.out, **DESCRIPTIONS[part], **fields)
    print(show(rows, DESCRIPTIONS[part].get("columns"), keys=DESCRIPTIONS[part].get("keys", ())) + "\n")


ARGS = argparse.Namespace(data_path=None, out=None)   # the command line, set by main()
DESCRIPTIONS = {
    "gemm": dict(title="Exact Empirical denoiser: throughput against a plain GEMM (60k × 784 Fashion-MNIST)",
                 notes="1,024 noisy test images against the 60,000 training images. Effective GFLOP/s counts the "
                       "two GEMMs (4·B·N·d flops); ratios are to one plain float32 GEMM of the same size (2·B·N·d) "
                       "timed in the same run; naive: softmax(−cdist²/2σ²) @ y. Minimum over interleaved "
                       "repetitions.",
                 columns=["sigma", "empirical_seconds", "effective_gflops", "ratio_to_gemm", "naive_seconds",
                          "naive_ratio_to_gemm", "speedup_vs_naive", "max_abs_diff_vs_naive"], keys=["sigma"]),
    "knn": dict(title="KNN (faiss IVF) vs the exact Empirical denoiser: time and agreement per σ",
                notes="1,024 noisy test images, N = 60,000: median per-image r² and denoiser-space EV of the KNN "
                      "estimate against the exact output.", keys=["sigma"]),
    "mmap": dict(title="Empirical over a memory-mapped .npy four times a memory cap: peak resident memory",
                 columns=["data_bytes", "cap_bytes", "baseline_rss", "peak_rss", "growth_bytes", "under_cap",
                          "seconds", "chunk_size"]),
    "gmm": dict(title="GMM (K=100, low-rank) EM fit on Fashion-MNIST train: time and log-likelihood",
                columns=["K", "covariance", "rank", "n_iter", "seconds", "final_log_likelihood", "min_increase",
                         "converged"]),
    "samples": dict(title="Samples of Empirical, CFDM and GMM denoisers: memorisation",
                    notes="Memorised: fraction of samples with d1/d2 < 1/3 (distances to the two nearest training "
                          "images). Grids: 64 samples each, and 8 samples with their 3 nearest training images.",
                    columns=["model", "sampler", "n", "memorized_fraction", "median_ratio", "seconds"],
                    keys=["model"]),
}


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
    res = {"B": B, "N": N, "d": d, "chunk_size": args.chunk_size, "reps": args.reps, "load_average_1min": load,
           "gemm_seconds": gemm_t, "gemm_gflops": gemm_flops / 1e9}
    rows = []
    for s in args.sigmas_gemm:
        t_emp, t_naive = min(times[("emp", s)]), min(times[("naive", s)])
        eff, naive_eff = 4 * B * N * d / t_emp, 4 * B * N * d / t_naive
        r = {"sigma": s, "empirical_seconds": t_emp, "naive_seconds": t_naive, "effective_gflops": eff / 1e9,
             "ratio_to_gemm": eff / gemm_flops, "naive_ratio_to_gemm": naive_eff / gemm_flops,
             "speedup_vs_naive": t_naive / t_emp,
             "max_abs_diff_vs_naive": float((outs[("emp", s)] - outs[("naive", s)]).abs().max()),
             "all_times": {"empirical": times[("emp", s)], "naive": times[("naive", s)], "gemm": times["gemm"]}}
        rows.append(r)
    print(f"Exact Empirical, B={B} queries × N={N} × d={d}, {torch.get_num_threads()} thread(s), "
          f"chunk_size={args.chunk_size}, min of {args.reps} interleaved runs (1-min load average {load:.1f}); "
          f"plain f32 GEMM {gemm_t:.2f} s = {gemm_flops / 1e9:.1f} GFLOP/s\n")
    write("gemm", rows, **res)


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
                     "nprobe": args.nprobe, "build_seconds": build}
    for s in args.sigmas_knn:
        x = x0 + s * torch.randn(x0.shape, generator=g)
        t_e, ref = best_time(lambda: exact(x, s), reps=1)
        t_k, out = best_time(lambda: knn(x, s), reps=2)
        med, ev = r2_stats(out, ref)
        rows.append({"sigma": s, "empirical_seconds": t_e, "knn_seconds": t_k, "speedup": t_e / t_k,
                     "median_r2": med, "ev_d": ev})
    print(f"KNN (faiss IVF nlist={knn.nlist}, nprobe={args.nprobe}, k={args.k}, n_random={args.n_random}; "
          f"index build {build:.1f} s) vs exact Empirical, 1,024 noisy test images, N=60,000\n")
    write("knn", rows, **res)


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
    with tempfile.TemporaryDirectory() as tmp:
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
    write("mmap", [res])


def part_gmm(args):
    import scorelab as sl

    y = fmnist()
    t0 = time.perf_counter()
    g = sl.GMM.fit(y, args.gmm_k, "lowrank", args.gmm_rank, max_iter=args.gmm_iter, tol=1e-5, progress=True)
    sec = time.perf_counter() - t0
    g.save(gmm_file(args))
    ll = g.log_likelihood_
    res = {"K": args.gmm_k, "covariance": "lowrank", "rank": args.gmm_rank, "seconds": sec, "n_iter": g.n_iter_,
           "converged": g.converged_, "final_log_likelihood": ll[-1],
           "min_increase": min(b - a for a, b in zip(ll, ll[1:])) if len(ll) > 1 else None}
    print(f"GMM fit on Fashion-MNIST train (60,000 × 784), {torch.get_num_threads()} thread(s)\n")
    write("gmm", [res],
          tables=[dict(title="Mean log-likelihood per EM iteration",
                       rows=[dict(iteration=i, log_likelihood=v) for i, v in enumerate(ll)])])


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
    gmm_path = gmm_file(args)
    models = {"empirical": sl.Empirical(y)}
    for lam in args.smoothing:
        models[f"cfdm-{lam:g}"] = sl.CFDM(y, lam, args.n_draws, sigma_start=args.sigma_start)
    if gmm_path.exists():
        models["gmm"] = sl.GMM.load(gmm_path).to(dtype=torch.float32)
    res, plots = [], []
    folder = record.results_dir(args.out)
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
        for kind, save in (("samples", lambda p: save_grid(out[:64], p, nrow=8, scale=2)),
                           ("nearest", lambda p: save_nearest_grid(out[:8], y, p, k=3))):
            save(folder / f"empirical_{name}_{kind}.png")
            plots.append(f"empirical_{name}_{kind}.png")
        res.append({"model": name, "sampler": how, "n": n, "seconds": sec, "memorized_fraction": frac,
                    "median_ratio": float(ratios.median())})
    print("Samples on Fashion-MNIST (train as the training set); memorised = d1/d2 < 1/3\n")
    write("samples", res, smoothing=args.smoothing, n_draws=args.n_draws, plots=plots)


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
    add_output_arguments(p)
    args = p.parse_args()
    unknown = [q for q in args.parts.split(",") if f"part_{q}" not in globals()]
    if unknown:
        p.error(f"--parts must be among gemm,knn,mmap,gmm,samples; got {','.join(unknown)}")
    ARGS.data_path, ARGS.out = args.data_path, args.out
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    for part in args.parts.split(","):
        globals()[f"part_{part}"](args)


if __name__ == "__main__":
    main()
