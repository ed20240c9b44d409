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

Patch-size calibration of local denoisers against a reference (Kamb & Ganguli 2024, §5), `calibrate_patch_size`:
for every σ the held-out images are noised once, x = x0 + σ·ε (fixed seed), each candidate patch size P is scored
by the median per-image r² of the local model against the reference, and the size with the highest median wins.
The result is a step schedule over σ that ELS / PSPC accept as `patch_size` (thresholds at the geometric
midpoints between the calibrated σ's). Also importable from `scorelab.calibration`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ._checks import check_data, check_fraction, check_positive_int, check_sigma, check_tensor
from ._io import write_json

__all__ = ["Table", "explained_variance", "per_image_r2", "trajectory_deviation", "suggest_skip", "SkipSuggestion",
           "calibrate_patch_size", "PatchCalibration"]


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
                       seed: int = 0, dtype=torch.float32, device=None, progress: bool = True,
                       shard: bool = False) -> Table:
    """Per-σ table of EV_s, EV_D, median per-image r² and the MSE ‖D_m − D_r‖²/dim of `model` against `reference`.

    `model`: a denoiser, or a dict name → denoiser (the reference is then evaluated once per batch for all).
    `data`: clean held-out samples [N, *shape] (the first `n` are used); `sigmas`: noise levels > 0 (a schedule's
    final 0 is dropped). Rows: {sigma, model, ev_score, ev_denoiser, r2_median, mse}. `shard=True` under an
    initialised process group (torchrun; every rank calling with the same arguments): the batches are dealt
    round-robin over the ranks and the sums combined, so every rank gets the single-process table (to rounding)
    with a 1/W share of the denoiser calls."""
    from . import _collectives as distributed
    from ._io import progress_bar

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
    bar = progress_bar(total=len(levels) * n_img, desc="explained variance", unit="img", enabled=progress, leave=False)
    shard = bool(shard) and distributed.is_distributed()
    starts = range(0, n_img, batch_size)
    mine = set(distributed.shard(starts) if shard else starts)   # this rank's batches
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
            if i not in mine:   # every rank draws every batch's noise, so a batch's noise never depends on W
                bar.update(x0.shape[0])
                continue
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
        if shard:
            err, score_den, total_var, r2 = _reduce_explained(err, score_den, shift, s1, s2, r2, sorted(mine),
                                                              batch_size, n_img, dim)
        else:
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


def _reduce_explained(err, score_den, shift, s1, s2, r2, mine, batch_size, n_img, dim):
    """explained_variance's sums over all ranks: errors and score denominators added, the variance of D_ref combined
    from each rank's count, mean and centred sum of squares (Chan et al.), per-image r² placed by image index."""
    from . import _collectives as distributed

    n_r = sum(min(n_img, i + batch_size) - i for i in mine)
    mean_r = shift + s1 / n_r if n_r else torch.zeros(dim, dtype=torch.float64)
    m2_r = s2 - s1.square().sum() / n_r if n_r else torch.zeros((), dtype=torch.float64)
    names = list(err)
    packed = torch.cat([torch.stack([torch.tensor(float(n_r), dtype=torch.float64), m2_r, score_den,
                                     *(err[k] for k in names)]), mean_r])
    every = distributed.all_gather(packed)   # [W, 3 + models + dim]
    counts, means = every[:, 0], every[:, 3 + len(names):]
    mean = (counts[:, None] * means).sum(0) / counts.sum()
    total_var = every[:, 1].sum() + (counts * (means - mean).square().sum(1)).sum()
    placed = torch.zeros(len(names), n_img, dtype=torch.float64)   # each image's r² from the rank that holds it
    for m, k in enumerate(names):
        if r2[k]:
            idx = torch.cat([torch.arange(i, min(n_img, i + batch_size)) for i in mine])
            placed[m, idx] = torch.cat(r2[k]).to(torch.float64).cpu()
    placed = distributed.all_reduce(placed, "sum")
    return ({k: every[:, 3 + m].sum() for m, k in enumerate(names)}, every[:, 2].sum(), total_var,
            {k: [placed[m]] for m, k in enumerate(names)})


def _noise_for(seeds, shape, dtype, device) -> torch.Tensor:
    """ε [B, *shape]: a tensor as given, an int n (the noise `sample(n=n, seed=0)` starts from) or a list of seeds
    (sample 0 of `sample(seed=s)` for each s)."""
    from .noise import initial_noise

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


# ----------------------------------------------------------------------------------------------------------
# patch-size calibration of the local models, scored by the median per-image r² above

@dataclass
class PatchCalibration:
    """Median per-image r² of every (σ, patch size) and the best size per σ.

    `schedule`: [(σ_threshold, size), ...] usable as `patch_size=` of ELS / PSPC."""
    sigmas: list
    patch_sizes: list
    r2: torch.Tensor                     # [len(sigmas), len(patch_sizes)], median per-image r²
    best: list = field(default_factory=list)

    @property
    def schedule(self) -> list:
        out = []
        for k, (s, p) in enumerate(zip(self.sigmas, self.best)):
            t = 0.0 if k == 0 else math.sqrt(self.sigmas[k - 1] * s)
            if out and out[-1][1] == p:
                continue
            out.append((t, p))
        return out

    def best_r2(self) -> list:
        return [float(self.r2[i, self.patch_sizes.index(p)]) for i, p in enumerate(self.best)]

    def to_dict(self) -> dict:
        return dict(metric="median per-image r2", sigmas=self.sigmas, patch_sizes=self.patch_sizes,
                    r2=[[float(v) for v in row] for row in self.r2], best=self.best, best_r2=self.best_r2(),
                    schedule=[list(p) for p in self.schedule])

    def save(self, path) -> None:
        """JSON; `--patch-size FILE.json` and PatchSchedule.parse read its "schedule"."""
        write_json(path, self.to_dict())

    def table(self) -> str:
        """Markdown table (`scorelab.tables.markdown`): σ, r² per patch size, best size."""
        from .tables import markdown

        rows = [{"σ": float(s), **{f"P={p}": float(v) for p, v in zip(self.patch_sizes, self.r2[i])},
                 "best": self.best[i]} for i, s in enumerate(self.sigmas)]
        return markdown(rows, digits=3, max_columns=None)


def _family(model_family):
    if hasattr(model_family, "with_patch_size"):
        return model_family.with_patch_size
    if callable(model_family):
        return model_family
    raise TypeError("model_family must be a local model (ELS, PSPC: anything with .with_patch_size) or a "
                    f"callable patch_size -> denoiser; got {type(model_family).__name__}")


@torch.no_grad()
def calibrate_patch_size(model_family, reference, data, sigmas, *, patch_sizes=(3, 5, 7, 9, 11, 13, 15),
                         n_images: int | None = None, seed: int = 0, path=None, batch_size: int = 64,
                         progress: bool = True) -> PatchCalibration:
    """Pick, for every σ, the patch size whose model best matches `reference` (median per-image r²).

    model_family: an ELS/PSPC instance (its `with_patch_size(P)` copies are scored) or a callable P → denoiser.
    reference: a denoiser D(x, σ) (e.g. a trained network). data: clean held-out images [N, C, H, W]
    (first `n_images` used). sigmas: positive noise levels. Returns a PatchCalibration (`.schedule`, `.r2`);
    with `path=` also writes it as JSON."""
    make = _family(model_family)
    if not callable(reference):
        raise TypeError(f"reference must be a denoiser callable D(x, sigma); got {type(reference).__name__}")
    check_tensor(data, name="data", min_ndim=2)
    if n_images is not None:
        data = data[:check_positive_int(n_images, name="n_images")]
    try:
        sig = sorted(float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1))
    except (TypeError, ValueError):
        raise TypeError(f"sigmas must be a sequence of positive floats; got {sigmas!r}") from None
    if not sig or not all(math.isfinite(s) and s > 0 for s in sig) or len(set(sig)) != len(sig):
        raise ValueError(f"sigmas must be distinct, finite and > 0; got {sig}")
    sizes = list(patch_sizes)
    if not sizes:
        raise ValueError("patch_sizes must name at least one size")
    for p in sizes:
        if check_positive_int(p, name="patch_sizes") % 2 == 0:
            raise ValueError(f"patch_sizes must be odd; got {p}")
    batch_size = check_positive_int(batch_size, name="batch_size")
    models = {p: make(p) for p in sizes}

    from ._io import progress_bar

    gen = torch.Generator().manual_seed(int(seed))
    r2 = torch.empty(len(sig), len(sizes), dtype=torch.float64)
    bar = progress_bar(total=len(sig) * len(sizes), desc="calibrate patch size", enabled=progress)
    for i, s in enumerate(sig):
        x = data + s * torch.randn(data.shape, generator=gen, dtype=data.dtype)
        ref = torch.cat([reference(x[a:a + batch_size], s) for a in range(0, x.shape[0], batch_size)])
        for j, p in enumerate(sizes):
            out = torch.cat([models[p](x[a:a + batch_size], s) for a in range(0, x.shape[0], batch_size)])
            r2[i, j] = torch.quantile(per_image_r2(out, ref), 0.5)
            bar.update(1)
    bar.close()
    best = [sizes[int(torch.argmax(row))] for row in r2]
    result = PatchCalibration(sigmas=sig, patch_sizes=sizes, r2=r2, best=best)
    if path is not None:
        result.save(path)
    return result
