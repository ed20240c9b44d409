"""`make demo`: fit a Gaussian to Fashion-MNIST, sample with Heun 18 steps with and without teleportation.

Writes under --out (default out/demo): gaussian.safetensors, PNG grids, summary.json and table.md, and prints
where. The denoiser sampled is the shipped reference U-Net (models/fashion-mnist-unet) when it is present and the
data is Fashion-MNIST, otherwise the Gaussian itself; the exact-vs-solver error is always measured on the Gaussian,
whose probability-flow ODE has a closed-form solution.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from . import data as data_mod
from . import schedules
from ._io import write_json, write_text
from .images import save_grid
from .models.gaussian import Gaussian
from .sample import initial_noise, sample

REFERENCE_NET = Path(__file__).resolve().parents[2] / "models" / "fashion-mnist-unet"


def _load_data(name: str = "fashion-mnist"):
    if name != "fashion-mnist":
        return name, data_mod.load(name, split="train")
    try:
        return name, data_mod.load(name, split="train")
    except FileNotFoundError as e:
        print(f"demo: Fashion-MNIST unavailable ({e}); falling back to scikit-learn digits", file=sys.stderr)
        return "digits", data_mod.load("digits", split="train")


def _rms(a, b) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def run(out: Path, n: int = 64, steps: int = 18, skips=(0.2, 0.4), seed: int = 0, data: str = "fashion-mnist") -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name, x = _load_data(data)
    t0 = time.perf_counter()
    g = Gaussian.fit(x)
    fit_seconds = time.perf_counter() - t0
    g.save(out / "gaussian.safetensors")
    sigmas = schedules.karras(steps)

    # 1. Exact vs solver on the Gaussian: same seeds, the closed-form PF-ODE endpoint as the reference.
    rows = []
    x_T = initial_noise(n, g.shape_, seed, dtype=torch.float64) * float(sigmas[0])   # the same noise sample() draws
    exact = g.trajectory(x_T, sigmas[[0, -1]])[-1]
    for skip in (0.0,) + tuple(skips):
        res = sample(g, n=n, shape=g.shape_, sigmas=sigmas, solver="heun", seed=seed,
                     teleport=g if skip else None, skip=skip or None, dtype=torch.float64)
        rows.append(dict(denoiser="gaussian", solver="heun", steps=steps, skip=skip, sigma_skip=res.sigma_skip,
                         nfe=res.nfe, rms_error_vs_exact=_rms(res.images, exact), seconds=round(res.seconds, 3)))
    grids = {"gaussian_exact": str(out / "gaussian_exact.png")}
    save_grid(exact.float(), grids["gaussian_exact"], scale=2,
              title=f"Gaussian: exact PF-ODE endpoints (closed form), {name}")

    # 2. Samples of the network (or the Gaussian) with and without teleportation.
    denoiser, label = g, "gaussian"
    if name == "fashion-mnist" and (REFERENCE_NET / "config.json").exists():
        from .nets import load_model

        denoiser, label = load_model(REFERENCE_NET), "fashion-mnist-unet"
    full = sample(denoiser, n=n, shape=g.shape_, sigmas=sigmas, solver="heun", seed=seed, progress=True)
    full.save_grid(out / "heun18.png", scale=2, title=f"{label}: Heun {steps}, NFE {full.nfe}")
    grids["heun18"] = str(out / "heun18.png")
    for skip in skips:
        tel = sample(denoiser, n=n, shape=g.shape_, sigmas=sigmas, solver="heun", seed=seed, teleport=g, skip=skip,
                     progress=True)
        path = out / f"heun18_teleport{int(skip * 100)}.png"
        tel.save_grid(path, scale=2, title=f"{label}: Heun {steps} + teleport {skip:.0%} "
                                           f"(sigma_skip {tel.sigma_skip:.3g}), NFE {tel.nfe}")
        grids[f"heun18_teleport{int(skip * 100)}"] = str(path)
        rows.append(dict(denoiser=label, solver="heun", steps=steps, skip=skip, sigma_skip=tel.sigma_skip,
                         nfe=tel.nfe, rms_diff_vs_unskipped=_rms(tel.images, full.images),
                         seconds=round(tel.seconds, 3)))
    rows.append(dict(denoiser=label, solver="heun", steps=steps, skip=0.0, sigma_skip=None, nfe=full.nfe,
                     rms_diff_vs_unskipped=0.0, seconds=round(full.seconds, 3)))

    summary = dict(data=name, n_train=len(x), gaussian_fit_seconds=round(fit_seconds, 3), n_samples=n, seed=seed,
                   sampled_denoiser=label, rows=rows, grids=grids, gaussian=str(out / "gaussian.safetensors"))
    write_json(out / "summary.json", summary)
    from .tables import markdown

    def table(rows, key, header):
        shown = [{"solver": f"{r['solver']} {r['steps']}", "skip": f"{r['skip']:.0%}", "σ_skip": r["sigma_skip"],
                  "NFE": r["nfe"], header: r[key], "seconds": r["seconds"]} for r in rows]
        return markdown(shown, digits=3)

    exact_rows = [r for r in rows if "rms_error_vs_exact" in r]
    net_rows = sorted((r for r in rows if "rms_diff_vs_unskipped" in r), key=lambda r: r["skip"])
    lines = ["Gaussian denoiser: RMS error against the exact PF-ODE endpoint (closed form), same noise",
             "", table(exact_rows, "rms_error_vs_exact", "RMS error vs exact"), "",
             f"{label}: RMS difference of teleported samples from the unskipped run, same seeds", "",
             table(net_rows, "rms_diff_vs_unskipped", "RMS diff vs unskipped"), "",
             "Grids: " + ", ".join(f"{Path(p).name}" for p in grids.values())
             + " (gaussian_exact: the exact endpoints of the same noise; the others: the sampled denoiser)"]
    write_text(out / "table.md", "\n".join(lines) + "\n")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m scorelab.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    p.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="fashion-mnist", help="image data set (default: fashion-mnist; digits if absent)")
    args = p.parse_args(argv)
    out = Path(args.out)
    summary = run(out, n=args.n, seed=args.seed, data=args.data)
    print((out / "table.md").read_text())
    print(f"data: {summary['data']} ({summary['n_train']} images), Gaussian fit in {summary['gaussian_fit_seconds']} s; "
          f"sampled denoiser: {summary['sampled_denoiser']}")
    print(f"wrote {out}/: gaussian.safetensors, {', '.join(Path(p).name for p in summary['grids'].values())}, "
          f"summary.json, table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
