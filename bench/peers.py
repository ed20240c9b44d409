"""scorelab's ODE solvers against k-diffusion's samplers and diffusers' schedulers on the same denoiser and σ grid.

    python -m bench.peers [--quick] [--n 256] [--unet-n 16] [--unet DIR] [--no-unet] [--reps 3] [--out DIR]

Denoisers: the Gaussian fitted to Fashion-MNIST's train split (float64; `g.trajectory` gives the exact endpoint
of every sample), and the project's U-Net (float32; models/fashion-mnist-unet, else the training run's snapshot).
Grid: Karras (σ 0.002 … 80, ρ = 7) ending in 0, the same tensor for every library. Per solver and step count:
max |x_scorelab − x_peer| over all pixels of all samples from the same x_T, RMSE of each library's endpoint against
the exact one (Gaussian), and the wall-time ratio scorelab / peer (min over --reps interleaved runs, same
process, 1 thread). The network or the Gaussian dominates those times, so the solvers' own overhead is timed
separately with a free denoiser (the exact D = x/(1 + σ²) of N(0, I) data, 4 images, --overhead-reps runs).

Peers (bench-only extras): k-diffusion (`pip install k-diffusion --no-deps torchdiffeq torchsde trampoline`;
only its sampling.py is loaded) and diffusers (EulerDiscreteScheduler, DPMSolverMultistepScheduler,
UniPCMultistepScheduler with their σ and timestep arrays replaced by the shared grid; DPM-Solver 3M with
solver_type="heun", whose warm-up second-order step is k-diffusion's ("midpoint" differs there only); the
σ-space denoiser is given to them as an x0 ("sample") prediction, or as ε = (x − D)/σ for Euler). diffusers' Euler and DPM-Solver
steps cast the sample to float32 whatever its dtype, so they agree with float64 solvers only to ~1e-6.
Writes the result record peers.json (bench/results by default) and prints its tables.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

import scorelab as sl
from scorelab.sample import _per_sample_noise, sample_seed

from . import record
from .common import (add_output_arguments, best_time, fashion_mnist, k_diffusion_sampling, load_unet, show,
                     unet_network)


# ------------------------------------------------------------------------------------------------ peer runners
def kd_runner(kd, name, **opts):
    fn = getattr(kd, name)

    def run(den, x, sigmas):
        # k-diffusion computes in the grid's dtype (append_dims(σ) promotes x): give it the grid in x's dtype
        return fn(lambda x_, s_: den(x_, s_), x, sigmas.to(x.dtype), disable=True, **opts)
    return run


def diffusers_runner(cls_name, space, **config):
    """Run a diffusers scheduler on `sigmas` (VE σ, ending in 0). space "ve": the sample is x itself (Euler);
    "vp": the sample is x / sqrt(1 + σ²) (DPM-Solver, UniPC: α = 1/sqrt(1 + σ²), σ_t = σ α)."""
    import diffusers

    cls = getattr(diffusers, cls_name)

    def run(den, x, sigmas):
        sched = cls(**config)
        steps = len(sigmas) - 1
        sched.set_timesteps(steps)
        sched.sigmas = sigmas.clone()
        sched.timesteps = torch.arange(steps, dtype=torch.float32 if space == "ve" else torch.int64)
        if hasattr(sched, "is_scale_input_called"):
            sched.is_scale_input_called = True
        s = [float(v) for v in sigmas]
        sample = x if space == "ve" else x / math.sqrt(1 + s[0] ** 2)
        for i, t in enumerate(sched.timesteps):
            x_ve = sample if space == "ve" else sample * math.sqrt(1 + s[i] ** 2)
            denoised = den(x_ve, s[i])
            out = (x_ve - denoised) / s[i] if config.get("prediction_type") == "epsilon" else denoised
            sample = sched.step(out, t, sample, return_dict=False)[0]
        return sample if space == "ve" else sample * math.sqrt(1 + s[-1] ** 2)
    return run


def cases(kd, have_diffusers):
    """(label, scorelab solver, scorelab opts, {peer label: runner}, NFE(steps))."""
    two = lambda n: 2 * n - 1  # noqa: E731  (Heun: the last step to σ = 0 is an Euler step)
    one = lambda n: n  # noqa: E731
    out = []

    def peers(**kw):
        return {k: v for k, v in kw.items() if v is not None}

    D = have_diffusers
    out.append(("euler", "euler", {}, peers(
        k_diffusion=kd and kd_runner(kd, "sample_euler"),
        diffusers=D and diffusers_runner("EulerDiscreteScheduler", "ve", prediction_type="epsilon",
                                         final_sigmas_type="zero")), one))
    out.append(("heun", "heun", {}, peers(k_diffusion=kd and kd_runner(kd, "sample_heun")), two))
    out.append(("dpmpp_2m", "dpmpp_2m", {}, peers(
        k_diffusion=kd and kd_runner(kd, "sample_dpmpp_2m"),
        diffusers=D and diffusers_runner("DPMSolverMultistepScheduler", "vp", prediction_type="sample",
                                         algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                         lower_order_final=False, final_sigmas_type="zero")), one))
    out.append(("dpmpp_3m (reference coefficients)", "dpmpp_3m", dict(reference_coefficients=True), peers(
        k_diffusion=kd and kd_runner(kd, "sample_dpmpp_3m_sde", eta=0.0),
        diffusers=D and diffusers_runner("DPMSolverMultistepScheduler", "vp", prediction_type="sample",
                                         algorithm_type="dpmsolver++", solver_order=3, solver_type="heun",
                                         lower_order_final=False, final_sigmas_type="zero")), one))
    for order, variant in ((2, "bh2"), (3, "bh1")):
        out.append((f"unipc (order {order}, {variant})", "unipc", dict(order=order, variant=variant), peers(
            diffusers=D and diffusers_runner("UniPCMultistepScheduler", "vp", prediction_type="sample",
                                             solver_order=order, solver_type=variant, predict_x0=True,
                                             lower_order_final=True, final_sigmas_type="zero")), one))
    return out


def x_T_of(n, shape, dtype, seed=0, sigma_max=80.0):
    gens = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in range(n)]
    return _per_sample_noise(gens, shape, "cpu", dtype) * sigma_max


def rmse(a, b):
    return float((a.double() - b.double()).square().mean().sqrt())


def paired_times(run_a, run_b, reps):
    """(min seconds of a, min seconds of b, last a, last b), the runs interleaved a, b, a, b, … so that load from
    other jobs on the machine hits both alike."""
    ta = tb = float("inf")
    xa = xb = None
    for _ in range(max(1, reps)):
        t, xa = best_time(run_a, 1)
        ta = min(ta, t)
        t, xb = best_time(run_b, 1)
        tb = min(tb, t)
    return ta, tb, xa, xb


def compare(den, x_T, steps_list, case_list, reps, exact_of=None, desc=""):
    from scorelab._io import progress_bar as tqdm   # drawn only on a terminal

    rows = []
    for steps in steps_list:
        sigmas = sl.schedules.karras(steps, sigma_min=0.002, sigma_max=80.0, rho=7.0).to(torch.float64)
        exact = exact_of(sigmas) if exact_of else None
        for label, solver, opts, peers, nfe in tqdm(case_list, desc=f"{desc} steps={steps}", leave=False):
            fn = sl.samplers.get(solver)
            ours = lambda: fn(den, x_T.clone(), sigmas, **opts)  # noqa: E731
            for peer, run in peers.items():
                try:
                    t_sl, t_p, x_sl, x_p = paired_times(ours, lambda: run(den, x_T.clone(), sigmas), reps)
                except Exception as err:  # a peer failing is a result, not a crash
                    rows.append(dict(solver=label, steps=steps, nfe=nfe(steps), peer=peer,
                                     error=f"{type(err).__name__}: {err}"[:200]))
                    continue
                row = dict(solver=label, steps=steps, nfe=nfe(steps), peer=peer,
                           max_abs_diff=float((x_sl.double() - x_p.double()).abs().max()),
                           nan_in_peer=bool(torch.isnan(x_p).any()),
                           rmse_scorelab=rmse(x_sl, exact) if exact is not None else None,
                           rmse_peer=rmse(x_p, exact) if exact is not None else None,
                           seconds_scorelab=t_sl, seconds_peer=t_p, time_ratio=t_sl / t_p)
                if row["nan_in_peer"]:  # is it only the step to σ = 0? compare on the grid without it
                    a, b = fn(den, x_T.clone(), sigmas[:-1], **opts), run(den, x_T.clone(), sigmas[:-1])
                    row["max_abs_diff_to_sigma_min"] = float((a.double() - b.double()).abs().max())
                rows.append(row)
    return rows


def unit_gaussian(x, sigma):
    """Exact denoiser of x0 ~ N(0, I): D(x, σ) = x / (1 + σ²) — nearly free, so timing it times the solver."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
    return x / (1 + s * s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="step counts 10, 20 only; fewer U-Net samples")
    ap.add_argument("--n", type=int, default=256, help="samples for the Gaussian comparison")
    ap.add_argument("--unet-n", type=int, default=16, help="samples for the U-Net comparison")
    ap.add_argument("--unet", default=None, help="U-Net directory (default: models/fashion-mnist-unet or snapshot)")
    ap.add_argument("--no-unet", action="store_true")
    ap.add_argument("--limit", type=int, default=None, help="fit the Gaussian on the first N train images")
    ap.add_argument("--steps", type=int, nargs="+", default=None)
    ap.add_argument("--reps", type=int, default=3, help="interleaved timing repetitions (min taken)")
    ap.add_argument("--overhead-reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="peers", help="record name (default: peers)")
    add_output_arguments(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    kd = k_diffusion_sampling()
    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except ImportError:
        diffusers_version = None
    case_list = cases(kd, diffusers_version is not None)
    steps_list = args.steps or ([10, 20] if args.quick else [5, 10, 20, 40])

    train = fashion_mnist("train", args.limit, args.data_path)
    g = sl.Gaussian.fit(train, dtype=torch.float64)
    x_T = x_T_of(args.n, tuple(train.shape[1:]), torch.float64)
    gauss_rows = compare(g, x_T, steps_list, case_list, args.reps,
                         exact_of=lambda s: g.trajectory(x_T, s)[-1], desc="gaussian")

    # solver overhead: a free denoiser, 4 samples of 28×28 in float32; exact x(σ) = x_T·sqrt((1 + σ²)/(1 + σ_T²))
    x_small = x_T_of(4, (1, 28, 28), torch.float32)
    overhead_rows = compare(unit_gaussian, x_small, [20], case_list, args.overhead_reps,
                            exact_of=lambda s: x_small * math.sqrt((1 + float(s[-1]) ** 2) / (1 + float(s[0]) ** 2)),
                            desc="overhead")
    for r in overhead_rows:
        if "seconds_scorelab" in r:
            r["us_per_step_scorelab"] = 1e6 * r["seconds_scorelab"] / r["steps"]
            r["us_per_step_peer"] = 1e6 * r["seconds_peer"] / r["steps"]

    unet_rows, unet_label = [], None
    if not args.no_unet:
        try:
            net, unet_label = load_unet(args.unet)
        except FileNotFoundError as err:
            print(f"U-Net comparison skipped: {err}", file=sys.stderr)
        else:
            with torch.no_grad():
                x_T32 = x_T_of(args.unet_n, tuple(net.shape_), torch.float32)
                unet_rows = compare(net, x_T32, [10] if args.quick else [10, 20], case_list, args.reps, desc="unet")

    extra = describe(args.n, unet_label, args.unet_n, overhead_rows, unet_rows)
    print(f"## Gaussian (float64, n={args.n}): scorelab vs peers, RMSE vs the exact endpoint\n")
    print(show(gauss_rows, extra["columns"], keys=extra["keys"]))
    for t in extra["tables"]:
        print(f"\n## {t['title']}\n\n" + show(t["rows"], t["columns"], keys=extra["keys"]))
    record.write(args.name, gauss_rows, out=args.out, network=unet_network(args.unet) if unet_label else None,
                 quick=args.quick, n=args.n, unet_n=args.unet_n, reps=args.reps,
                 grid="karras(steps, sigma_min=0.002, sigma_max=80, rho=7)",
                 versions=dict(scorelab=sl.__version__, k_diffusion=kd.version if kd else None,
                               diffusers=diffusers_version), **extra)


def describe(n, unet_label, unet_n, overhead_rows, unet_rows) -> dict:
    """Title, notes, columns and the overhead / U-Net tables of the record (shared with the conversion of older
    results)."""
    keys = ["solver", "peer", "steps"]
    tables = [dict(title="Solver overhead: free denoiser D = x/(1 + σ²), 4 images 28×28, float32, 20 steps",
                   rows=overhead_rows, keys=keys,
                   columns=["solver", "peer", "max_abs_diff", "us_per_step_scorelab", "us_per_step_peer",
                            "time_ratio", "error"])]
    if unet_rows:
        tables.append(dict(title=f"U-Net ({unet_label}, float32, {unet_n} samples)", rows=unet_rows, keys=keys,
                           columns=["solver", "peer", "steps", "nfe", "max_abs_diff", "max_abs_diff_to_sigma_min",
                                    "time_ratio", "error"]))
    return dict(
        title="scorelab's ODE solvers vs k-diffusion and diffusers on the same denoiser and σ grid",
        notes=f"Rows: the exact Gaussian fitted to Fashion-MNIST (float64, {n} samples), same x_T and Karras grid "
              "for every library: max |scorelab − peer| over all pixels, RMSE of each endpoint against the exact "
              "PF-ODE solution (images in [−1, 1]), and the time ratio scorelab / peer (< 1: scorelab faster). "
              "`max_abs_diff_to_sigma_min` (in the JSON): where the peer returns NaN, the same comparison on the "
              "grid without its final step to σ = 0.",
        columns=["solver", "peer", "steps", "nfe", "max_abs_diff", "rmse_scorelab", "rmse_peer", "time_ratio"],
        keys=keys, tables=tables)


if __name__ == "__main__":
    main()
