"""One self-contained HTML report of a denoiser M (plots embedded as base64 PNGs, no external files).

Sections: explained variance vs σ of analytic models (Gaussian, GMM, Empirical, local ELS) against M (EV_s and
EV_D, DESIGN.md), the σ_skip suggested for teleportation, sample grids without and with teleportation, a table
of FID / KID / NFE / memorisation per sampling configuration, and the EV table itself.

    scorelab report --model models/fashion-mnist-unet --data fashion-mnist --out report.html
    build_report(model, "digits", "report.html", features="pixels")     # any denoiser, small data: seconds
"""
from __future__ import annotations

import base64
import html
import io
import math
import time
from pathlib import Path

import torch

from ._io import atomic_path, write_text
from .loading import load_denoiser

__all__ = ["build_report", "save_line_plot", "save_bar_plot", "png_bytes"]


# ------------------------------------------------------------------------------------------- plots (PNG)
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_figure(x, ys: dict, *, xlabel="", ylabel="", title="", logx=False, ylim=None, extrapolate_to_zero=None):
    """A matplotlib figure with one line per entry of `ys` (name → values over x)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    for name, y in ys.items():
        ax.plot(x, y, marker="o", ms=3, label=str(name))
    if extrapolate_to_zero is not None:  # (intercept, slope): the FD∞ line y = a + b x down to x = 0
        a, b = extrapolate_to_zero
        xs = [0.0, max(x)]
        ax.plot(xs, [a + b * v for v in xs], "k--", lw=1, label="fit")
    if logx:
        ax.set_xscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(ys) > 1 or extrapolate_to_zero is not None:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _plt().close(fig)
    return buf.getvalue()


def _save_png(data: bytes, path) -> None:
    with atomic_path(path, ".png") as tmp:
        Path(tmp).write_bytes(data)


def save_line_plot(x, ys: dict, path, **kw) -> None:
    """Line plot PNG (atomically): see `line_figure`."""
    _save_png(png_bytes(line_figure(x, ys, **kw)), path)


def save_bar_plot(values: dict, path, *, title: str = "") -> None:
    """Bar chart PNG of name → number (atomically)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.bar(list(values), [float(v) for v in values.values()], color="C0")
    for i, v in enumerate(values.values()):
        ax.text(i, float(v), f"{float(v):.4g}", ha="center", va="bottom", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save_png(png_bytes(fig), path)


def grid_png(images: torch.Tensor, nrow: int | None = None, scale: int | None = None) -> bytes:
    """PNG bytes of an image grid, pixels enlarged (nearest) so that each image is ≥ 64 px wide."""
    from PIL import Image

    from .images import make_grid

    scale = scale or max(1, math.ceil(64 / images.shape[-1]))
    grid = make_grid(images, nrow=nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- building blocks
def _fit_models(train, which, log):
    """name → fitted analytic model, for the kinds in `which` that are available; failures are logged."""
    import scorelab as sl

    builders = {"Gaussian": lambda: sl.Gaussian.fit(train),
                "GMM (K=10)": lambda: sl.GMM.fit(train, n_components=10, covariance="full"),
                "GMM (K=100)": lambda: sl.GMM.fit(train, n_components=100, covariance="full"),
                "Empirical": lambda: sl.Empirical(train),
                "Wiener (local)": lambda: sl.Wiener(train),
                "ELS (local)": lambda: sl.ELS(train, patch_size=5)}
    out = {}
    for name in which:
        if name not in builders:
            raise ValueError(f"models must be among {sorted(builders)}; got {name!r}")
        t0 = time.perf_counter()
        try:
            out[name] = builders[name]()
            log.append(f"fitted {name} in {time.perf_counter() - t0:.1f} s")
        except Exception as e:  # a missing or failing optional model is reported, not fatal
            log.append(f"skipped {name}: {type(e).__name__}: {e}")
    return out


def _features(x, features, progress):
    from .metrics.stats import cached_image_features

    if features == "pixels":
        return x.reshape(x.shape[0], -1).to(torch.float64)
    return cached_image_features(x, progress=progress)


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(rows, columns, digits=4) -> str:
    from .tables import html as html_table

    return html_table(rows, columns, digits=digits)


CSS = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:4px}.grids{display:flex;flex-wrap:wrap;gap:1em}
.note{color:#555;font-size:13px}"""


# ------------------------------------------------------------------------------------------- the report
# ELS / GMM (K=100) are available by name but slow (ELS: minutes for 64 8×8 images on two cores)
DEFAULT_MODELS = ("Gaussian", "GMM (K=10)", "Empirical", "Wiener (local)")
MODEL_NAMES = ("Gaussian", "GMM (K=10)", "GMM (K=100)", "Empirical", "Wiener (local)", "ELS (local)")

@torch.no_grad()
def build_report(model, data: str, out, *, n_fit: int | None = 10000, n_eval: int = 256, steps: int = 18,
                 solver: str = "heun", n_samples: int = 64, fid_samples: int = 500, features: str = "inception",
                 threshold: float = 0.99, models=DEFAULT_MODELS,
                 sigma_max: float = 80.0, sigma_min: float = 0.002, seed: int = 0, device=None,
                 progress: bool = True) -> dict:
    """Write the HTML report of denoiser `model` (callable or path) on data set `data` to `out`; return the numbers.

    Analytic models are fitted on the first `n_fit` training images; diagnostics use `n_eval` test images;
    FID/KID compare `fid_samples` samples per configuration with as many test images (`features`="inception",
    or "pixels" for fast smoke runs); memorisation is the fraction of samples with d1/d2 < 1/3 to training images."""
    import scorelab as sl

    from ._checks import check_positive_int
    from .diagnostics import explained_variance, suggest_skip
    from .metrics.frechet import feature_stats, frechet_distance
    from .metrics.kid import kid

    if features not in ("inception", "pixels"):
        raise ValueError(f"features must be 'inception' or 'pixels'; got {features!r}")
    n_eval = check_positive_int(n_eval, name="n_eval", minimum=2)
    n_samples = check_positive_int(n_samples, name="n_samples")
    fid_samples = check_positive_int(fid_samples, name="fid_samples", minimum=2)
    t_start = time.perf_counter()
    log = []
    den = load_denoiser(model, device=device)
    train = sl.data.resolve(data, split="train", limit=n_fit).float()
    try:
        test = sl.data.resolve(data, split="test", limit=max(n_eval, fid_samples)).float()
    except (ValueError, FileNotFoundError):
        test = train[-max(n_eval, fid_samples):]
        log.append("no test split: held-out images are the last training images")
    if train.ndim != 4:
        raise ValueError(f"data {data!r} must hold images [N, C, H, W]; got shape {tuple(train.shape)}")
    shape = tuple(train.shape[1:])
    den_shape = getattr(den, "shape_", None)
    if den_shape is not None and tuple(den_shape) != shape:
        named = lambda v: f" {str(v)!r}" if isinstance(v, (str, Path)) else ""   # noqa: E731
        raise ValueError(f"model{named(model)} has sample shape {tuple(den_shape)} but data{named(data)} has images "
                         f"of shape {shape}: fit or train the model on this data set")
    grid = sl.schedules.karras(steps, sigma_min=sigma_min, sigma_max=sigma_max)

    # 1. explained variance of analytic models against M
    fitted = _fit_models(train, models, log)
    held = test[:n_eval]
    ev = explained_variance(fitted, den, held, grid, progress=progress) if fitted else []
    sigmas = sorted({r["sigma"] for r in ev})
    plots = []
    for col, label in (("ev_score", "score-space EV_s"), ("ev_denoiser", "denoiser-space EV_D")):
        ys = {name: [next(r[col] for r in ev if r["model"] == name and r["sigma"] == s) for s in sigmas]
              for name in fitted}
        if ys:
            plots.append(png_bytes(line_figure(sigmas, ys, xlabel="σ", ylabel=label, logx=True, ylim=(-0.1, 1.02),
                                               title=f"{label} of analytic models against M (n={len(held)})")))

    # 2. teleportation: σ_skip suggested by the Gaussian's EV_s
    gauss = fitted.get("Gaussian")
    skip = suggest_skip(den, gauss, held, grid, threshold=threshold, progress=False) if gauss is not None else None
    configs = [("M", dict())]
    if skip is not None and skip.sigma_skip is not None:
        configs.append((f"M + teleport (σ_skip={skip.sigma_skip:.3g})", dict(teleport=gauss, sigma_skip=skip.sigma_skip)))
    elif gauss is not None:
        log.append(f"teleportation: no σ of the grid has Gaussian EV_s ≥ {threshold}")

    # 3. samples, FID / KID / NFE / memorisation per configuration
    from .metrics.nearest import memorization

    ref_feats = _features(test[:fid_samples], features, progress)
    ref_stats = feature_stats(ref_feats)
    rows, grids = [], []
    for name, kw in configs:
        res = sl.sample(den, n=max(n_samples, fid_samples), shape=shape, sigmas=grid, solver=solver, seed=seed,
                        progress=progress, **kw)
        imgs = res.images.float().cpu()
        grids.append((name, grid_png(imgs[:n_samples])))
        f = _features(imgs[:fid_samples], features, progress)
        s = feature_stats(f)
        k = kid(f, ref_feats, n_subsets=50, subset_size=min(1000, f.shape[0], ref_feats.shape[0]), progress=False)
        rows.append({"configuration": name, "solver": solver, "steps": len(grid) - 1 - res.skip_index, "NFE": res.nfe,
                     f"FID ({features})": frechet_distance(s.mu, s.sigma, ref_stats.mu, ref_stats.sigma),
                     f"KID ({features})": k.mean, "KID std": k.std,
                     "memorised": memorization(imgs[:fid_samples], train), "seconds": round(res.seconds, 2)})

    # 4. HTML
    ev_cols = ["sigma", "model", "ev_score", "ev_denoiser", "r2_median", "mse"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>scorelab report</title><style>{CSS}</style>"
             "</head><body>",
             f"<h1>scorelab report</h1><p>model <code>{html.escape(str(model if not callable(model) else type(model).__name__))}"
             f"</code>, data <code>{html.escape(str(data))}</code>: {len(train)} training images (analytic fits), "
             f"{len(held)} held-out images (diagnostics), image shape {shape}, Karras grid {steps} steps "
             f"σ∈[{sigma_min}, {sigma_max}], solver {html.escape(solver)}.</p>",
             "<h2>Explained variance vs σ</h2><p class='note'>EV_s = 1 − E‖s_m − s_M‖²/E‖s_M‖² (score space, the "
             "published definition); EV_D = 1 − E‖D_m − D_M‖²/E‖D_M − E D_M‖² (denoiser space, stricter).</p>",
             *[_img(p, "explained variance plot") for p in plots]]
    if skip is not None:
        parts.append(f"<h2>Teleportation</h2><p>Suggested σ_skip (Gaussian EV_s ≥ {threshold} at every grid σ ≥ "
                     f"σ_skip): <b>{'none' if skip.sigma_skip is None else f'{skip.sigma_skip:.4g}'}</b> "
                     f"(skips {skip.skip_index} of {len(grid) - 1} steps).</p>")
    parts.append("<h2>Samples</h2><div class='grids'>" + "".join(
        f"<figure>{_img(g, name)}<figcaption>{html.escape(name)}</figcaption></figure>" for name, g in grids) + "</div>")
    cols = list(rows[0]) if rows else []
    parts.append(f"<h2>FID / KID / NFE / memorisation</h2><p class='note'>{fid_samples} samples vs {fid_samples} "
                 f"test images, {features} features (paired seeds); memorised = fraction with d1/d2 &lt; 1/3 to the "
                 f"training set.</p>" + _table(rows, cols))
    parts.append("<h2>Explained variance table</h2>" + _table(ev, ev_cols))
    parts.append("<h2>Log</h2><pre>" + html.escape("\n".join(log)) + f"\ntotal {time.perf_counter() - t_start:.1f} s"
                 "</pre></body></html>")
    write_text(out, "\n".join(parts))
    return {"out": str(out), "explained_variance": list(ev), "metrics": rows, "log": log,
            "sigma_skip": None if skip is None else skip.sigma_skip}
