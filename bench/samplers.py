"""Samplers vs the exact probability-flow ODE: error per NFE with the Fashion-MNIST Gaussian as the denoiser.

    python -m bench.samplers [--quick] [--n 256] [--out DIR] [--data-path DIR]

With the Gaussian fitted to Fashion-MNIST as both data model and denoiser, g.trajectory gives the exact endpoint of
every sample, so each ODE solver's error is measured exactly: RMSE (per pixel, images in [-1, 1]) at σ = 0 against
the exact x(0), Karras grids (σ 0.002 … 80, ρ = 7). Also: teleportation (plain restart vs warm_history) at the same
grids, and, for the stochastic samplers, the error of the sample variance along the top eigen-directions
(distributional: their endpoint is not a function of x_T). Writes bench/results/samplers.json and prints markdown
tables. One CPU thread.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scorelab._io import progress_bar as tqdm   # drawn only on a terminal

import scorelab as sl
from scorelab.sample import _per_sample_noise, sample_seed

from . import record
from .common import add_output_arguments, fashion_mnist, show

ODE = [("euler", {}), ("heun", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}),
       ("dpmpp_3m", dict(reference_coefficients=False)), ("unipc", dict(order=3, variant="bh1")),
       ("unipc", dict(order=3, variant="bh2")), ("unipc", dict(order=2, variant="bh1")),
       ("unipc", dict(order=2, variant="bh2"))]
STOCHASTIC = [("euler_ancestral", dict(eta=1.0)), ("dpmpp_2m_sde", dict(eta=1.0)),
              ("edm_stochastic", dict(S_churn=40.0, S_tmin=0.05, S_tmax=50.0))]


def label(name, opts):
    return name + ("" if not opts else "(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")")


def x_T_of(n, shape, seed=0, sigma_max=80.0):
    gens = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in range(n)]
    return _per_sample_noise(gens, shape, "cpu", torch.float64) * sigma_max


def rmse(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="samples per setting (default 256)")
    ap.add_argument("--quick", action="store_true", help="fewer step counts and samples")
    ap.add_argument("--limit", type=int, default=None, help="fit the Gaussian on the first N train images")
    add_output_arguments(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps_list = [5, 10, 20] if args.quick else [5, 10, 18, 35, 70]
    n = 64 if args.quick else args.n

    train = fashion_mnist("train", args.limit, args.data_path)
    g = sl.Gaussian.fit(train)
    shape = g.shape_
    x_T = x_T_of(n, shape)

    # 0. measured convergence orders on a random full-rank Gaussian (d = 24), as in tests/test_samplers.py
    order_rows = []
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=gen, dtype=torch.float64))
    g24 = sl.Gaussian(0.3 * torch.randn(24, generator=gen, dtype=torch.float64),
                      torch.logspace(-2.5, 0.5, 24, dtype=torch.float64), q)
    x24 = 80.0 * torch.randn(4, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name, opts in tqdm(ODE, desc="orders"):
        nfes, errs = [], []
        for steps in (24, 48, 96, 192):
            sigmas = sl.schedules.karras(steps)[:-1]             # stop at σ_min = 0.002: error there
            counted = sl.CountingDenoiser(g24)
            out = sl.samplers.get(name)(counted, x24.clone(), sigmas, **opts)
            exact = g24.trajectory(x24, sigmas)[-1]
            nfes.append(counted.nfe)
            errs.append(float((out - exact).norm() / exact.norm()))
        slope = -float(np.polyfit(np.log(nfes), np.log(errs), 1)[0])
        order_rows.append(dict(solver=label(name, opts), nfe=nfes, rel_err=errs, order=round(slope, 2)))

    # 1. ODE solvers: RMSE at σ = 0 vs the exact endpoint
    ode_rows = []
    for steps in tqdm(steps_list, desc="ode"):
        sigmas = sl.schedules.karras(steps)
        exact = g.trajectory(x_T, sigmas)[-1]
        for name, opts in ODE:
            t0 = time.perf_counter()
            r = sl.sample(g, n=n, shape=shape, sigmas=sigmas, solver=name, dtype=torch.float64, batch_size=n, **opts)
            ode_rows.append(dict(solver=label(name, opts), steps=steps, nfe=r.nfe, rmse=rmse(r.images, exact),
                                 seconds=round(time.perf_counter() - t0, 3)))

    # 2. teleportation: skip 30% / 50% of the steps, plain restart vs warm history (same NFE)
    tele_rows = []
    for steps in tqdm(steps_list[1:], desc="teleport"):
        sigmas = sl.schedules.karras(steps)
        exact = g.trajectory(x_T, sigmas)[-1]
        for name, opts in [("heun", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("unipc", {})]:
            full = sl.sample(g, n=n, shape=shape, sigmas=sigmas, solver=name, dtype=torch.float64, batch_size=n)
            row = dict(solver=name, steps=steps, full_nfe=full.nfe, full_rmse=rmse(full.images, exact))
            for skip in (0.3, 0.5):
                kw = dict(n=n, shape=shape, sigmas=sigmas, solver=name, dtype=torch.float64, batch_size=n,
                          teleport=g, skip=skip)
                plain = sl.sample(g, **kw)
                row[f"skip{skip}_nfe"] = plain.nfe
                row[f"skip{skip}_plain_rmse"] = rmse(plain.images, exact)
                if name != "heun":
                    row[f"skip{skip}_warm_rmse"] = rmse(sl.sample(g, warm_history=True, **kw).images, exact)
            tele_rows.append(row)

    # 3. stochastic samplers: variance along the top-16 eigen-directions vs λ (sampling floor ≈ √(2/N))
    n_sto = 512 if args.quick else 2048
    u, lam = g.eigvecs_[:, :16], g.eigvals_[:16]
    sto_rows = []
    for steps in tqdm(steps_list, desc="stochastic"):
        sigmas = sl.schedules.karras(steps)
        for name, opts in STOCHASTIC + [("heun", {})]:
            r = sl.sample(g, n=n_sto, shape=shape, sigmas=sigmas, solver=name, dtype=torch.float64,
                          batch_size=512, **opts)
            z = (r.images.reshape(n_sto, -1) - g.mean_.reshape(1, -1)) @ u
            rel = (z.var(0) / lam - 1).abs().mean()
            sto_rows.append(dict(solver=label(name, opts), steps=steps, nfe=r.nfe, var_rel_err=float(rel)))

    record.write("samplers", ode_rows, out=args.out, keys=["solver", "steps"], **tables_of(
        order_rows, tele_rows, sto_rows, n, n_sto), data="fashion-mnist", n=n, n_stochastic=n_sto, steps=steps_list,
        sampling_floor=math.sqrt(2 / n_sto))
    print(show(ode_rows, keys=["solver", "steps"]))
    for t in tables_of(order_rows, tele_rows, sto_rows, n, n_sto)["tables"]:
        print(f"\n### {t['title']}\n\n" + show(t["rows"], keys=t["keys"]))


def tables_of(order_rows, tele_rows, sto_rows, n, n_sto) -> dict:
    """The record's title, notes and further tables (shared with the conversion of older results)."""
    return dict(
        title="Samplers vs the exact probability-flow ODE (Fashion-MNIST Gaussian as the denoiser)",
        notes=f"Rows: RMSE per pixel at σ = 0 against the exact PF-ODE endpoint `g.trajectory`, {n} samples, Karras "
              "grids (σ 0.002 … 80, ρ = 7), float64. Teleportation: full run vs a jump over 30% / 50% of the steps, "
              f"plain restart or warm history. Stochastic samplers ({n_sto} samples): mean |var/λ − 1| over the "
              f"top-16 eigen-directions (sampling floor ≈ {math.sqrt(2 / n_sto):.3f}).",
        tables=[dict(title="Measured convergence order (random Gaussian, d = 24, error at σ_min, 24…192 steps)",
                     rows=order_rows, keys=["solver"]),
                dict(title="Teleportation: RMSE at σ = 0, full run vs skip 0.3 / 0.5 (plain | warm history)",
                     rows=tele_rows, keys=["solver", "steps"]),
                dict(title="Stochastic samplers: mean |var/λ − 1| over the top-16 eigen-directions",
                     rows=sto_rows, keys=["solver", "steps"])])


if __name__ == "__main__":
    main()
