"""Benchmarks of the metrics: Inception throughput against this machine's GEMM limit, FID wall time, and the
explained-variance table of analytic models against a trained network. Prints markdown tables and writes one
result record per part: metrics_speed.json, metrics_ev.json (+ plots), metrics_unet_fid.json (bench/results by
default, --out DIR).

    python -m bench.metrics speed                  # images/s vs FLOPs / GEMM rate, FID math time
    python -m bench.metrics ev --model models/fashion-mnist-unet [--n 512]
    python -m bench.metrics unet-fid --model models/fashion-mnist-unet --n 5000 --steps 18 35
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from . import record
from .common import add_output_arguments, show

SPEED = dict(title="Inception feature extraction: throughput vs this machine's GEMM limit, and FID's cost",
             notes="Images per second of the Inception network (best and mean of interleaved batches) against the "
                   "limit the float32 GEMM rate allows (FLOPs per image counted by torch's FlopCounterMode); FID "
                   "math: statistics and matrix square root of 10k × 2048 features.",
             columns=["threads", "images_per_s_best", "images_per_s_mean", "limit_images_per_s", "fraction_of_limit",
                      "gemm_gflops_best", "fid_math_seconds_10k", "fid_10k_vs_10k_seconds_estimate"])
UNET_FID = dict(title="FID and KID of the U-Net's Heun samples (5,000 vs 5,000 test images, Inception)",
                notes="Samples from seed 0, Karras grid (σ 0.002 … 80, ρ = 7); Inception features cached on disk; "
                      "KID as mean ± std over subsets.")


def gemm_rate(n: int = 2048, repeats: int = 10) -> float:
    """Best-of float32 GEMM rate (FLOP/s) for n×n @ n×n at the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def inception_flops() -> float:
    """FLOPs (2 × multiply-adds) of one 299×299 forward pass, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from scorelab.metrics.inception import default_extractor

    net = default_extractor().net_
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, 299, 299))
    return float(fc.get_total_flops())


def speed(args) -> None:
    from scorelab.metrics.frechet import feature_stats, frechet_distance
    from scorelab.metrics.inception import default_extractor, quantize

    torch.set_num_threads(args.threads)
    flops = inception_flops()
    net = default_extractor(batch_size=args.batch_size)
    px = quantize(torch.rand(args.batch_size, 1, 28, 28) * 2 - 1)
    net.from_pixels(px, progress=False)  # warm-up
    # Interleave GEMM-rate and Inception-batch timings so both see the same machine load; report best and mean.
    rates, batch_s = [], []
    for _ in range(max(1, args.images // args.batch_size)):
        rates.append(gemm_rate(repeats=3))
        t = time.perf_counter()
        net.from_pixels(px, progress=False)
        batch_s.append(time.perf_counter() - t)
    rate, rate_mean = max(rates), sum(rates) / len(rates)
    ips, ips_mean = args.batch_size / min(batch_s), args.batch_size * len(batch_s) / sum(batch_s)
    limit = rate / flops
    # FID math on 10k × 2048 features: stats (two covariances) + the matrix square root
    feats = torch.rand(10000, 2048)
    t = time.perf_counter()
    sa, sb = feature_stats(feats), feature_stats(feats.flip(0) + 0.01)
    frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    fid_math = time.perf_counter() - t
    res = {"threads": args.threads, "cpus": os.cpu_count(), "batch_size": args.batch_size,
           "inception_gflop_per_image": flops / 1e9, "gemm_gflops_best": rate / 1e9, "gemm_gflops_mean": rate_mean / 1e9,
           "images_per_s_best": ips, "images_per_s_mean": ips_mean, "limit_images_per_s": limit,
           "fraction_of_limit": ips / limit, "fraction_of_limit_means": ips_mean / (rate_mean / flops),
           "fid_math_seconds_10k": fid_math, "fid_10k_vs_10k_seconds_estimate": 20000 / ips_mean + fid_math,
           "load_average_at_end": os.getloadavg()[0]}
    record.write("metrics_speed", [res], out=args.out, **SPEED)
    print(show([res], SPEED["columns"]))


def explained(args) -> None:
    import scorelab as sl
    from scorelab.diagnostics import explained_variance
    from scorelab.loading import load_denoiser
    from scorelab.report import save_line_plot

    torch.set_num_threads(args.threads)
    net = load_denoiser(args.model)
    path = {"path": args.data_path} if args.data_path else {}
    train = sl.data.load(args.data, split="train", limit=args.n_fit, **path)
    held = sl.data.load(args.data, split="test", limit=args.n, **path)
    models, fit_s = {}, {}
    for name, make in [("Gaussian", lambda: sl.Gaussian.fit(train)),
                       ("GMM (K=10)", lambda: sl.GMM.fit(train, n_components=10, covariance="full", progress=True)),
                       ("GMM (K=100)", lambda: sl.GMM.fit(train, n_components=100, covariance="full", progress=True)),
                       ("Empirical", lambda: sl.Empirical(train))]:
        if name in args.skip:
            continue
        t = time.perf_counter()
        models[name] = make()
        fit_s[name] = time.perf_counter() - t
    grid = sl.schedules.karras(18)
    t = time.perf_counter()
    table = explained_variance(models, net, held, grid, batch_size=64)
    seconds = time.perf_counter() - t
    sig = sorted({r["sigma"] for r in table})
    plots = []
    for col in ("ev_score", "ev_denoiser"):
        ys = {m: [next(r[col] for r in table if r["model"] == m and r["sigma"] == s) for s in sig] for m in models}
        path = record.results_dir(args.out) / f"metrics_ev_{col}.png"
        save_line_plot(sig, ys, path, xlabel="σ", ylabel=col, logx=True,
                       ylim=(-0.1, 1.02), title=f"{col} against {args.model} ({args.data} test, n={len(held)})")
        plots.append(path.name)
    record.write("metrics_ev", list(table), out=args.out, network=record.network(args.model), plots=plots,
                 title=f"Explained variance of analytic models vs {args.model} ({args.data})",
                 columns=["model", "sigma", "ev_score", "ev_denoiser", "r2_median", "mse"], keys=["model", "sigma"],
                 data=args.data, n_eval=len(held), n_fit=len(train), fit_seconds=fit_s, seconds=seconds)
    wide = []
    for s in sorted(sig, reverse=True):
        row = {"sigma": s}
        for m in models:
            r = next(r for r in table if r["model"] == m and r["sigma"] == s)
            row[f"{m} EV_s"], row[f"{m} EV_D"] = r["ev_score"], r["ev_denoiser"]
        wide.append(row)
    print(show(wide, keys=["sigma"]))


def unet_fid(args) -> None:
    import scorelab as sl
    from scorelab.metrics.frechet import fid
    from scorelab.metrics.kid import kid
    from scorelab.metrics.stats import cached_image_features, reference_features
    from scorelab.loading import load_denoiser

    torch.set_num_threads(args.threads)
    net = load_denoiser(args.model)
    ref = reference_features(args.data, "test", args.n)
    out = {}
    for steps in args.steps:
        res = sl.sample(net, n=args.n, sigmas=sl.schedules.karras(steps), solver="heun", seed=0, batch_size=250,
                        progress=True)
        f = cached_image_features(res.images, desc=f"inception heun-{steps}")
        k = kid(f, ref)
        out[f"heun{steps}"] = {"nfe": res.nfe, "fid": fid(f, ref), "kid": k.mean, "kid_std": k.std,
                               "sample_seconds": res.seconds}
        print(steps, out[f"heun{steps}"], flush=True)
    rows = [dict(solver="heun", steps=steps, **out[f"heun{steps}"]) for steps in args.steps]
    record.write("metrics_unet_fid", rows, out=args.out, network=record.network(args.model), data=args.data,
                 n=args.n, keys=["solver", "steps"], **UNET_FID)
    print(show(rows, keys=["solver", "steps"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--images", type=int, default=64)
    s.add_argument("--batch-size", type=int, default=16)
    add_output_arguments(s, data=False)
    s.set_defaults(func=speed)
    e = sub.add_parser("ev")
    e.add_argument("--model", required=True)
    e.add_argument("--data", default="fashion-mnist")
    e.add_argument("--n", type=int, default=512)
    e.add_argument("--n-fit", type=int, default=60000)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--skip", nargs="*", default=[], help="model names to leave out")
    add_output_arguments(e)
    e.set_defaults(func=explained)
    u = sub.add_parser("unet-fid")
    u.add_argument("--model", required=True)
    u.add_argument("--data", default="fashion-mnist")
    u.add_argument("--n", type=int, default=5000)
    u.add_argument("--steps", type=int, nargs="+", default=[18, 35])
    u.add_argument("--threads", type=int, default=1)
    add_output_arguments(u, data=False)
    u.set_defaults(func=unet_fid)
    args = p.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
