"""Check a shipped reference model against DESIGN.md's bar and write the numbers of its model card.

    python -m bench.reference_check models/fashion-mnist-unet --data fashion-mnist [--n 1000] [--fid 5000]
    python -m bench.reference_check models/two-moons-mlp --data two-moons

1. Denoiser MSE E‖D(x0 + σε, σ) − x0‖² / dim on held-out (test-split) data at every σ of the Karras 18-step grid
   (0.002 … 80), against the Gaussian denoiser fitted to the train split (`sl.Gaussian.fit`): bar MSE_net ≤ MSE_gauss.
2. Heun 18-step samples (NFE 35), seed 0: a PNG grid (images) or scatter plot (2-D) in the model directory.
3. With --fid N (images, when `sl.metrics.fid` exists): FID of N Heun-18 samples vs N test images, and of N train
   vs N test images (bar: at most twice the latter). 2-D data: sliced Wasserstein distance of samples vs test.
Prints markdown tables; writes the result record reference_<model>.json (bench/results by default).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import scorelab as sl

from . import record
from .common import show

def sliced_table(sw: dict) -> dict:
    return dict(title="Sliced Wasserstein-2 distance to the test points", rows=[sw])


COLUMNS = ["sigma", "mse_net", "mse_gauss", "ratio", "ok", "diff", "diff_low", "diff_high"]


def describe(model: str, data: str, n: int) -> dict:
    return dict(title=f"Reference model {model}: denoiser MSE per σ against the fitted Gaussian ({data})",
                notes=f"MSE per dimension E‖D(x0 + σε, σ) − x0‖²/dim on {n} held-out {data} samples, same noise for "
                      "the network and the Gaussian fitted to the train split; DESIGN.md's bar: network ≤ Gaussian "
                      "at every σ of the Karras 18-step grid. diff: the paired mean difference network − Gaussian "
                      "and its normal 95% interval (diff_low, diff_high).",
                columns=COLUMNS, keys=["sigma"])


def errors_per_sigma(denoiser, x0, sigmas, *, chunk=250, seed=0):
    """[len(sigmas)] tensors [N]: each sample's squared error per dimension, same noise for every model (seeded)."""
    out = []
    for s in sigmas:
        g = torch.Generator().manual_seed(seed)
        errs = []
        for i in range(0, len(x0), chunk):
            xb = x0[i:i + chunk]
            noise = torch.randn(xb.shape, generator=g)
            with torch.no_grad():
                d = denoiser(xb + float(s) * noise, float(s))
            errs.append(((d.double() - xb.double()) ** 2).reshape(len(xb), -1).mean(1))
        out.append(torch.cat(errs))
    return out


def mse_per_sigma(denoiser, x0, sigmas, **kwargs):
    """[len(sigmas)] mean squared error per dimension, same noise for every model (seeded)."""
    return [float(e.mean()) for e in errors_per_sigma(denoiser, x0, sigmas, **kwargs)]


def paired_difference(e_net: torch.Tensor, e_ref: torch.Tensor) -> tuple[float, float, float]:
    """Mean of the per-sample differences e_net − e_ref (same x0 and noise) and its normal 95% interval."""
    d = e_net - e_ref
    half = 1.96 * float(d.std()) / len(d) ** 0.5
    return float(d.mean()), float(d.mean()) - half, float(d.mean()) + half


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="model directory (model.safetensors + config.json)")
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=1000, help="held-out samples for the MSE table")
    p.add_argument("--fid", type=int, default=0, metavar="N", help="FID with N samples (0: skip)")
    p.add_argument("--grid", type=int, default=64, help="samples in the PNG")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(record.RESULTS), metavar="DIR",
                   help="folder of the record reference_<model>.json (default: the package's bench/results)")
    p.add_argument("--data-path", default=None, metavar="DIR", help="the data set's files, when not found by name")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model_dir = Path(a.model)
    net = sl.load_model(model_dir)
    path = {"path": a.data_path} if a.data_path else {}
    train = sl.data.load(a.data, split="train", **path)
    test = sl.data.load(a.data, split="test", **path)
    gauss = sl.Gaussian.fit(train)
    sigmas = sl.schedules.karras(18, 0.002, 80.0, 7.0)[:-1]
    x0 = test[:a.n]
    rows = []
    for s, e_net, e_g in zip(sigmas, errors_per_sigma(net, x0, sigmas), errors_per_sigma(gauss, x0, sigmas)):
        m, g = float(e_net.mean()), float(e_g.mean())
        diff, low, high = paired_difference(e_net, e_g)
        rows.append({"sigma": round(float(s), 4), "mse_net": m, "mse_gauss": g, "ratio": m / g, "ok": m <= g,
                     "diff": diff, "diff_low": low, "diff_high": high})
    print(f"Denoiser MSE per dimension on {len(x0)} held-out {a.data} samples ({model_dir.name} vs Gaussian fitted "
          f"to the train split); bar: net ≤ Gaussian at every σ — {'met' if all(r['ok'] for r in rows) else 'NOT met'} "
          f"({sum(r['ok'] for r in rows)}/{len(rows)} σ)\n")
    print(show(rows, COLUMNS, keys=["sigma"]))
    worse = [r["sigma"] for r in rows if r["diff_low"] > 0]
    print(f"\nσ where the net is measurably worse (interval above 0): {worse or 'none'}")

    res = {"data": a.data, "n_heldout": len(x0), "bar_mse_met": all(r["ok"] for r in rows),
           "measurably_worse_sigmas": worse}
    grid = sl.schedules.karras(18)
    s = sl.sample(net, n=a.grid, sigmas=grid, solver="heun", seed=0, batch_size=64)
    if s.images.ndim == 4:
        s.save_grid(model_dir / "samples_heun18.png", nrow=8, scale=2)
    else:
        n_pts = 2000
        s = sl.sample(net, n=n_pts, sigmas=grid, solver="heun", seed=0, batch_size=2000)
        s.save_grid(model_dir / "samples_heun18.png", title=f"Heun 18 steps (NFE {s.nfe}), {n_pts} samples",
                    reference=test[:n_pts])
        gs = gauss.sample(n_pts, generator=torch.Generator().manual_seed(0)).float()
        sw = sl.metrics.sliced_wasserstein(s.images, test[:n_pts])
        sw_g = sl.metrics.sliced_wasserstein(gs, test[:n_pts])
        sw_tt = sl.metrics.sliced_wasserstein(train[:n_pts], test[:n_pts])
        res.update(sliced_wasserstein={"samples_vs_test": sw, "gaussian_vs_test": sw_g, "train_vs_test": sw_tt})
        res["tables"] = [sliced_table(res["sliced_wasserstein"])]
        print(f"\nSliced Wasserstein-2 vs {n_pts} test points: Heun-18 samples {sw:.4f}, Gaussian samples "
              f"{sw_g:.4f}, train points {sw_tt:.4f}")
    res["plots"] = [record.network(model_dir)["path"] + "/samples_heun18.png"]   # repository-relative
    res["sample_nfe"] = s.nfe
    if a.fid and s.images.ndim == 4:
        if not hasattr(sl.metrics, "fid"):
            print("\nsl.metrics.fid not available: FID skipped")
        else:
            n = a.fid
            samples = sl.sample(net, n=n, sigmas=grid, solver="heun", seed=1, batch_size=100, progress=True).images
            fid = sl.metrics.fid(samples, test[:n])
            fid_ref = sl.metrics.fid(train[:n], test[:n])
            res.update(fid={"n": n, "samples_vs_test": fid, "train_vs_test": fid_ref, "ratio": fid / fid_ref,
                            "bar_met": fid <= 2 * fid_ref})
            res.setdefault("tables", []).append(dict(title=f"FID, {n} Heun-18 samples vs {n} test images",
                                                     rows=[res["fid"]]))
            print("\n" + show([res["fid"]]))
    res["seconds"] = round(time.perf_counter() - t0, 1)
    record.write(f"reference_{model_dir.name}", rows, out=a.out, network=record.network(model_dir),
                 **describe(record.network(model_dir)["path"], a.data, len(x0)), **res)


if __name__ == "__main__":
    main()
