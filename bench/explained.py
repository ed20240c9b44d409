"""How much of the trained U-Net's denoiser each closed-form model explains, per noise level σ.

    python -m bench.explained          # Gaussian, GMM K=10/100, Empirical, KNN, CFDM, ELS; 1,000 images
    python -m bench.explained --quick  # Gaussian, GMM K=10, Empirical, KNN fitted on 10k train; 256 images

`sl.diagnostics.explained_variance(models, net, test_images, sigmas)` on held-out test images x = x0 + σε at
the σ of the Karras 18-step grid (0.002 … 80): score-space EV_s = 1 − E‖s_m − s_ref‖²/E‖s_ref‖²,
denoiser-space EV_D = 1 − E‖D_m − D_ref‖²/E‖D_ref − E D_ref‖² and the median per-image r² (DESIGN.md
"Diagnostics"). For each
model and definition: the crossing σ for 0.99 and 0.9 = the smallest grid σ such that EV ≥ the threshold at every
grid σ above it too (None: already below at σ_max), i.e. how far down from pure noise the model explains the
network — the σ at which teleportation could hand over. Writes the result record explained.json (+ EV plots;
bench/results by default) and prints its tables.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import scorelab as sl

from . import record
from .common import add_output_arguments, fashion_mnist, load_unet, show, unet_network

FULL = "gaussian,gmm10,gmm100,empirical,knn,cfdm,els"
QUICK = "gaussian,gmm10,empirical,knn"


def builders(args):
    """name → (label, function(train) → fitted denoiser)."""
    return {
        "gaussian": ("Gaussian", lambda x: sl.Gaussian.fit(x)),
        "gmm10": ("GMM (K=10)", lambda x: sl.GMM.fit(x, n_components=10, covariance="full", max_iter=args.gmm_iter)),
        "gmm100": ("GMM (K=100)", lambda x: sl.GMM.fit(x, n_components=100, covariance="full",
                                                      max_iter=args.gmm_iter)),
        "empirical": ("Empirical", lambda x: sl.Empirical(x)),
        "knn": ("KNN (k=64)", lambda x: sl.KNN(x, k=64, n_random=256)),
        "cfdm": (f"CFDM (smoothing={args.cfdm_smoothing})",
                 lambda x: sl.CFDM(x, smoothing=args.cfdm_smoothing, n_draws=8)),
        "els": (f"ELS (patch {args.els_patch})",
                lambda x: sl.ELS(x, patch_size=args.els_patch, n_data=args.els_data, border="zero")),
    }


def fit_or_load(name, make, train, args):
    """(model, fit seconds): GMMs are cached under --fit-cache (their EM is the slow part of this script)."""
    import json

    from scorelab._io import write_json

    cache = Path(args.fit_cache) / f"{name}_fit{train.shape[0]}_iter{args.gmm_iter}" \
        if args.fit_cache and name.startswith("gmm") else None
    if cache is not None and cache.with_suffix(".safetensors").is_file():
        meta = json.loads(cache.with_suffix(".json").read_text())
        return sl.GMM.load(cache.with_suffix(".safetensors")), meta["fit_seconds"]
    t = time.perf_counter()
    model = make(train)
    seconds = round(time.perf_counter() - t, 2)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        model.save(cache.with_suffix(".safetensors"))
        write_json(cache.with_suffix(".json"), {"fit_seconds": seconds})
    return model, seconds


def plot_ev(rows: list[dict], labels: list[str], sigmas: list[float], folder: Path, name: str) -> list[str]:
    """EV_s and EV_D vs σ, one line per model: <folder>/<name>_ev_s.png, <name>_ev_d.png (the file names)."""
    from scorelab.report import save_line_plot

    paths = []
    for column, kind, ylabel, ylim in [("ev_score", "ev_s", "EV_s (score space)", None),
                                       ("ev_denoiser", "ev_d", "EV_D (denoiser space)", (-0.2, 1.02))]:
        ys = {m: [next(r[column] for r in rows if r["model"] == m and r["sigma"] == s) for s in sigmas]
              for m in labels}
        path = folder / f"{name}_{kind}.png"
        save_line_plot(sigmas, ys, path, xlabel="σ", ylabel=ylabel, logx=True, ylim=ylim,
                       title=f"{ylabel} of closed-form models against the U-Net")
        paths.append(path.name)
    return paths


def crossing(rows: list[dict], column: str, threshold: float):
    """Smallest σ with EV ≥ threshold at it and at every larger σ of the table (None: fails at the largest σ)."""
    best = None
    for r in sorted(rows, key=lambda r: -r["sigma"]):
        if not r[column] >= threshold:
            break
        best = r["sigma"]
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default=None, help=f"comma list (default {FULL}; --quick {QUICK})")
    ap.add_argument("--n", type=int, default=None, help="held-out test images (default 1000; --quick 256)")
    ap.add_argument("--n-fit", type=int, default=None, help="train images to fit on (default 60000; --quick 10000)")
    ap.add_argument("--steps", type=int, default=18, help="Karras grid whose σ are evaluated")
    ap.add_argument("--gmm-iter", type=int, default=None, help="EM iterations (default 100; --quick 20)")
    ap.add_argument("--cfdm-smoothing", type=float, default=2.0)
    ap.add_argument("--els-patch", type=int, default=5)
    ap.add_argument("--els-data", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--unet", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="explained", help="record name (default %(default)s)")
    add_output_arguments(ap)
    ap.add_argument("--fit-cache", default=str(record.cache_dir("fits")),
                    help="folder where fitted GMMs are kept and reused (keyed by K, n_fit, EM iterations; "
                         "default: the scorelab cache's fits/); '' to refit")
    ap.add_argument("--fit-only", action="store_true", help="fit (and cache) the models, then stop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n or (256 if args.quick else 1000)
    n_fit = args.n_fit or (10000 if args.quick else 60000)
    args.gmm_iter = args.gmm_iter or (20 if args.quick else 100)
    names = (args.models or (QUICK if args.quick else FULL)).split(",")
    table_of = builders(args)
    unknown = [m for m in names if m not in table_of]
    if unknown:
        raise ValueError(f"--models must be among {','.join(table_of)}; got {','.join(unknown)}")

    net, unet_label = load_unet(args.unet)
    train, held = fashion_mnist("train", n_fit, args.data_path), fashion_mnist("test", n, args.data_path)
    models, fit_seconds = {}, {}
    for name in names:
        label, make = table_of[name]
        models[label], fit_seconds[label] = fit_or_load(name, make, train, args)
        print(f"fitted {label} in {fit_seconds[label]:.1f}s", file=sys.stderr, flush=True)
    if args.fit_only:
        return
    sigmas = [s for s in sl.schedules.karras(args.steps, sigma_min=0.002, sigma_max=80.0, rho=7.0).tolist() if s > 0]
    t = time.perf_counter()
    with torch.no_grad():
        table = sl.diagnostics.explained_variance(models, net, held, sigmas, batch_size=args.batch_size)
    ev_seconds = time.perf_counter() - t
    rows = [dict(r) for r in table]

    crossings = []
    for label in models:
        mine = [r for r in rows if r["model"] == label]
        crossings.append(dict(model=label, fit_seconds=fit_seconds[label],
                              ev_s_099=crossing(mine, "ev_score", 0.99), ev_s_09=crossing(mine, "ev_score", 0.9),
                              ev_d_099=crossing(mine, "ev_denoiser", 0.99),
                              ev_d_09=crossing(mine, "ev_denoiser", 0.9)))

    print(f"## Explained variance vs the U-Net ({unet_label}); {n} test images, fit on {n_fit} train images\n")
    plots = plot_ev(rows, list(models), sigmas, record.results_dir(args.out), args.name)
    extra = describe(n, n_fit, sigmas, list(models), rows, crossings, quick=args.quick)
    print(show(rows, keys=extra["keys"]))
    for t in extra["tables"]:
        print(f"\n{t['title']}\n\n" + show(t["rows"], keys=t.get("keys", ())))
    record.write(args.name, rows, out=args.out, network=unet_network(args.unet), plots=plots, quick=args.quick,
                 n=n, n_fit=n_fit, models=list(models), fit_seconds=fit_seconds,
                 ev_seconds=round(ev_seconds, 1), **extra)


def describe(n, n_fit, sigmas, models, rows, crossings, quick=False) -> dict:
    """Title, notes, columns and tables of the record (shared with the conversion of older results): the long
    table (one row per model and σ), EV_s and EV_D per σ with a column per model, and the crossing σ."""
    def wide(column):
        return [dict(sigma=s, **{m: next(r[column] for r in rows if r["model"] == m and r["sigma"] == s)
                                 for m in models}) for s in sigmas]

    return dict(
        title="Explained variance of closed-form models vs the U-Net, per σ",
        notes=f"Held-out test images ({n}), models fitted on {n_fit} train images" +
              (" (quick run)" if quick else "") + ". EV_s: score-space explained variance; EV_D: denoiser-space "
              "(stricter); r2_median: median per-image r² (DESIGN.md, Diagnostics). Crossing σ: the smallest grid "
              "σ at and above which EV ≥ the threshold (empty: below it already at σ = 80).",
        columns=["model", "sigma", "ev_score", "ev_denoiser", "r2_median", "mse"], keys=["model", "sigma"],
        tables=[dict(title="EV_s per σ (score space)", rows=wide("ev_score"), keys=["sigma"]),
                dict(title="EV_D per σ (denoiser space)", rows=wide("ev_denoiser"), keys=["sigma"]),
                dict(title="Crossing σ per model", rows=crossings, keys=["model"])])


if __name__ == "__main__":
    main()
