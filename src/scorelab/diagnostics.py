"""How well one denoiser explains another, per noise level (definitions in DESIGN.md, "Diagnostics").

Inputs x = x0 + σ·ε with x0 from (held-out) `data`, the same ε for every model. With D_m the model, D_r the
reference, s = (D − x)/σ² and E over images and pixels:

- score-space EV    EV_s(σ) = 1 − E‖s_m − s_r‖² / E‖s_r‖² = 1 − E‖D_m − D_r‖² / E‖D_r − x‖²
  (the definition behind the Gaussian-approximation tables of Wang & Vastola 2024; → 1 as σ → ∞ for any
  sensible model because −x/σ² dominates both scores),
- denoiser-space EV EV_D(σ) = 1 − E‖D_m − D_r‖² / E‖D_r − E[D_r]‖²  (stricter),
- median per-image r² = median_i 1 − ‖D_m,i − D_r,i‖² / ‖D_r,i − mean_pixels(D_r,i)‖²  (Kamb & Ganguli 2024).

Sums are float64; E‖D_r − E[D_r]‖² is accumulated around a shift (the first batch's mean) so it keeps its
digits at large σ where D_r barely varies.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._checks import check_data, check_fraction, check_positive_int, check_sigma

__all__ = ["Table", "explained_variance", "per_image_r2", "trajectory_deviation", "suggest_skip", "SkipSuggestion", "calibrate_patch_size"]


class Table(list):
    """Rows (dicts) of a per-σ table, with `column(name)` and `to_markdown()`."""

    def column(self, name: str) -> list:
        return [row[name] for row in self]

    def to_markdown(self, columns=None, digits: int = 4) -> str:
        """The rows as a Markdown table (`scorelab.tables.markdown`), over `columns` (default: all)."""
        from .tables import markdown

        return markdown(self, columns, digits=digits, max_columns=None)


def _positive_sigmas(sigmas) -> list[float]:
    """Noise levels > 0 from a list or a schedule (its final 0 is dropped)."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1) if not isinstance(sigmas, torch.Tensor) \
        else sigmas.detach().to(torch.float64).reshape(-1)
    if s.numel() and s[-1] == 0:
        s = s[:-1]
    if s.numel() == 0:
        raise ValueError("sigmas must contain at least one noise level > 0")
    return [float(v) for v in check_sigma(s, name="sigmas", allow_zero=False)]


def _as_models(model) -> dict:
    models = model if isinstance(model, dict) else {"model": model}
    if not models:
        raise ValueError("model must be a denoiser or a non-empty dict name → denoiser")
    for name, m in models.items():
        if not callable(m):
            raise TypeError(f"model {name!r} must be callable as D(x, sigma); got {type(m).__name__}")
    return models


def per_image_r2(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """r²_i = 1 − ‖pred_i − ref_i‖² / ‖ref_i − mean(ref_i)‖² for every image i (float64, [B])."""
    p = pred.detach().reshape(pred.shape[0], -1).to(torch.float64)
    r = ref.detach().reshape(ref.shape[0], -1).to(torch.float64)
    err = ((p - r) ** 2).sum(1)
    var = ((r - r.mean(1, keepdim=True)) ** 2).sum(1)
    return 1 - err / var.clamp(min=torch.finfo(torch.float64).tiny)


@torch.no_grad()
def explained_variance(model, reference, data, sigmas, *, n: int | None = None, batch_size: int = 256,
                       seed: int = 0, dtype=torch.float32, device=None, progress: bool = True) -> Table:
    """Per-σ table of EV_s, EV_D, median per-image r² and the MSE ‖D_m − D_r‖²/dim of `model` against `reference`.

    `model`: a denoiser, or a dict name → denoiser (the reference is then evaluated once per batch for all).
    `data`: clean held-out samples [N, *shape] (the first `n` are used); `sigmas`: noise levels > 0 (a schedule's
    final 0 is dropped). Rows: {sigma, model, ev_score, ev_denoiser, r2_median, mse}."""
    from tqdm.auto import tqdm

    models = _as_models(model)
    if not callable(reference):
        raise TypeError(f"reference must be callable as D(x, sigma); got {type(reference).__name__}")
    data = check_data(data, name="data", min_samples=2)
    if n is not None:
        data = data[:check_positive_int(n, name="n", minimum=2)]
    batch_size = check_positive_int(batch_size, name="batch_size")
    levels = _positive_sigmas(sigmas)
    device = torch.device(device) if device is not None else data.device
    n_img, dim = data.shape[0], data[0].numel()
    rows = Table()
    bar = tqdm(total=len(levels) * n_img, desc="explained variance", unit="img", disable=not progress, leave=False)
    for j, sigma in enumerate(levels):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + j)
        err = {name: torch.zeros((), dtype=torch.float64) for name in models}
        r2 = {name: [] for name in models}
        score_den = torch.zeros((), dtype=torch.float64)
        shift = s1 = None
        s2 = torch.zeros((), dtype=torch.float64)
        for i in range(0, n_img, batch_size):
            x0 = data[i:i + batch_size].to(device=device, dtype=dtype)
            eps = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
            x = x0 + sigma * eps
            d_ref = reference(x, sigma).to(torch.float64).reshape(x.shape[0], -1).cpu()
            x64 = x.to(torch.float64).reshape(x.shape[0], -1).cpu()
            score_den += (d_ref - x64).square().sum()
            if shift is None:
                shift, s1 = d_ref.mean(0), torch.zeros(dim, dtype=torch.float64)
            c = d_ref - shift
            s1 += c.sum(0)
            s2 += c.square().sum()
            for name, m in models.items():
                d_m = m(x, sigma).to(torch.float64).reshape(x.shape[0], -1).cpu()
                err[name] += (d_m - d_ref).square().sum()
                r2[name].append(per_image_r2(d_m, d_ref))
            bar.update(x.shape[0])
        total_var = s2 - s1.square().sum() / n_img
        for name in models:
            e = float(err[name])
            rows.append(dict(sigma=sigma, model=name,
                             ev_score=1 - e / float(score_den) if score_den > 0 else math.nan,
                             ev_denoiser=1 - e / float(total_var) if total_var > 0 else math.nan,
                             r2_median=float(torch.cat(r2[name]).nanmedian()),
                             mse=e / (n_img * dim)))
    bar.close()
    return rows


def _noise_for(seeds, shape, dtype, device) -> torch.Tensor:
    """ε [B, *shape]: a tensor as given, an int n (the noise `sample(n=n, seed=0)` starts from) or a list of seeds
    (sample 0 of `sample(seed=s)` for each s)."""
    from .sample import initial_noise

    if isinstance(seeds, torch.Tensor):
        return seeds.to(device=device, dtype=dtype)
    if shape is None:
        raise ValueError("shape is needed when seeds are integers, e.g. shape=(1, 28, 28)")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return initial_noise(check_positive_int(seeds, name="seeds"), shape, 0, device=device, dtype=dtype)
    try:
        seeds = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise TypeError(f"seeds must be an int, a list of ints or a noise tensor; got {type(seeds).__name__}") from None
    if not seeds:
        raise ValueError("seeds must not be empty")
    return torch.cat([initial_noise(1, shape, s, device=device, dtype=dtype) for s in seeds])


@torch.no_grad()
def trajectory_deviation(model, reference, seeds, sigmas, solver="heun", *, shape=None, dtype=torch.float32,
                         device=None, **solver_opts) -> Table:
    """Distance between the sampling paths of `model` and `reference` started from the same noise.

    Both are solved with `solver` on the grid `sigmas` from x_T = σ_0·ε; at every grid point σ_i the row gives
    rms = mean_b ‖x_m − x_r‖/√dim, rms_max = max_b, and rel = mean_b ‖x_m − x_r‖/‖x_r‖ (the last row is σ = the
    grid's end, i.e. the samples)."""
    from . import samplers
    from ._checks import check_sigmas

    grid = check_sigmas(sigmas)
    solve = solver if callable(solver) else samplers.get(solver)
    device = torch.device(device or "cpu")
    eps = _noise_for(seeds, shape, dtype, device)
    x_T = eps * float(grid[0])

    def path(den):
        xs = []
        out = solve(den, x_T.clone(), grid, callback=lambda info: xs.append(info["x"].detach().clone()), **solver_opts)
        return xs + [out.detach()]

    pm, pr = path(model), path(reference)
    rows = Table()
    for sigma, a, b in zip(grid.tolist(), pm, pr):
        a64, b64 = a.to(torch.float64).reshape(a.shape[0], -1), b.to(torch.float64).reshape(b.shape[0], -1)
        dist = (a64 - b64).norm(dim=1)
        rows.append(dict(sigma=float(sigma), rms=float(dist.mean() / math.sqrt(a64.shape[1])),
                         rms_max=float(dist.max() / math.sqrt(a64.shape[1])),
                         rel=float((dist / b64.norm(dim=1).clamp(min=1e-300)).mean())))
    return rows


class SkipSuggestion(NamedTuple):
    """`sigma_skip` (None: no step can be skipped) and its index k in the grid: sample(..., sigma_skip=...)."""
    sigma_skip: float | None
    skip_index: int
    table: Table


def suggest_skip(reference, gaussian, data, sigmas, threshold: float = 0.99, *, space: str = "score",
                 n: int | None = 512, batch_size: int = 256, seed: int = 0, dtype=torch.float32, device=None,
                 progress: bool = True) -> SkipSuggestion:
    """The smallest grid σ_k such that the Gaussian explains ≥ `threshold` of the reference at every grid σ ≥ σ_k.

    EV is `space`="score" (EV_s, as in Wang & Vastola 2024) or "denoiser" (EV_D, stricter), measured on the first
    `n` images of held-out `data`. σ levels are checked from the largest down, stopping at the first failure.
    Teleporting to σ_k (`sample(..., teleport=gaussian, sigma_skip=σ_k)`) replaces the first k steps."""
    from ._checks import check_sigmas

    grid = check_sigmas(sigmas)
    threshold = check_fraction(threshold, name="threshold")
    if space not in ("score", "denoiser"):
        raise ValueError(f"space must be 'score' or 'denoiser'; got {space!r}")
    column = "ev_score" if space == "score" else "ev_denoiser"
    table, k = Table(), 0
    for i, sigma in enumerate(grid.tolist()):
        if sigma == 0:
            break
        row = explained_variance(gaussian, reference, data, [sigma], n=n, batch_size=batch_size, seed=seed,
                                 dtype=dtype, device=device, progress=progress)[0]
        table.append(row)
        if not row[column] >= threshold:
            break
        k = i
    if k == 0:  # not even σ_1 qualifies: nothing to skip
        return SkipSuggestion(None, 0, table)
    return SkipSuggestion(float(grid[k]), k, table)


def __getattr__(name):
    # the patch-size calibration of the local models (issue 5) lives beside them; reachable from here as DESIGN.md names it
    if name == "calibrate_patch_size":
        from .calibration import calibrate_patch_size

        return calibrate_patch_size
    raise AttributeError(f"module 'scorelab.diagnostics' has no attribute {name!r}")
