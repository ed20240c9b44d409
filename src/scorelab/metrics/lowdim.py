"""Distances for low-dimensional data (toy 2-D sets, small vectors) and exact ones between Gaussians.

- sliced_wasserstein: SW_p(a, b) = (E_θ W_p^p(θᵀa, θᵀb))^{1/p}, θ uniform on the sphere (Rabin et al. 2011);
  each 1-D W_p is exact between the two empirical measures (quantile functions merged on all breakpoints).
- energy_distance: (2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖)^{1/2} (Székely & Rizzo 2013), V-statistics as
  scipy.stats.energy_distance uses in 1-D. Its cost is quadratic in N (N·M distances of d numbers each), so
  sets larger than `max_samples` (default ENERGY_MAX_SAMPLES = 5,000) are subsampled without replacement
  (seeded); memory is bounded by `chunk`² distances whatever N.
- gaussian_frechet / gaussian_kl: closed forms between N(μ₁, Σ₁) and N(μ₂, Σ₂), float64.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_positive_int, check_tensor
from .frechet import frechet_distance

__all__ = ["sliced_wasserstein", "wasserstein_1d", "energy_distance", "gaussian_frechet", "gaussian_kl",
           "ENERGY_MAX_SAMPLES"]

ENERGY_MAX_SAMPLES = 5000  # energy_distance subsamples larger sets to this many points (max_samples=None: all)
EXACT_DIM = 32  # up to this dimension distances are summed coordinate by coordinate; above, through a GEMM


def _flat(x, name: str, min_samples: int = 1) -> torch.Tensor:
    x = check_tensor(x, name=name, min_ndim=2)
    if x.shape[0] < min_samples:
        raise ValueError(f"{name} has {x.shape[0]} sample(s); this statistic needs at least {min_samples}")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _pair(a, b, min_samples: int = 1):
    fa, fb = _flat(a, "a", min_samples), _flat(b, "b", min_samples)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"a and b must have the same dimension per sample; got a of shape {tuple(a.shape)} "
                         f"(d = {fa.shape[1]}) and b of shape {tuple(b.shape)} (d = {fb.shape[1]})")
    return fa, fb.to(fa.device)


def _bar(total: int, progress: bool, desc: str):
    from .._io import progress_bar

    return progress_bar(total=total, desc=desc, enabled=progress, leave=False)


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """W_p^p between the empirical measures of the columns: u [N, P], v [M, P] → [P].

    ∫₀¹ |F_u⁻¹(t) − F_v⁻¹(t)|^p dt, exact: both quantile functions are constant between the merged
    breakpoints {i/N} ∪ {j/M}."""
    n, m = u.shape[0], v.shape[0]
    su, sv = u.sort(0).values, v.sort(0).values
    if n == m:
        return (su - sv).abs().pow(p).mean(0)
    t = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n, torch.arange(1, m + 1, dtype=torch.float64) / m])
    t = t.unique()  # sorted
    widths = torch.diff(t, prepend=t.new_zeros(1))
    mids = t - widths / 2
    iu = (mids * n).floor().long().clamp(max=n - 1).to(u.device)
    iv = (mids * m).floor().long().clamp(max=m - 1).to(u.device)
    return ((su[iu] - sv[iv]).abs().pow(p) * widths.to(u.device)[:, None]).sum(0)


def sliced_wasserstein(a, b, *, n_projections: int = 256, p: float = 2.0, seed: int = 0, chunk: int = 64,
                       progress: bool = False) -> float:
    """Sliced p-Wasserstein distance between samples a [N, *shape] and b [M, *shape] (flattened; same d).
    Cost O(n_projections·(N + M)·(d + log(N + M))); `progress`: a progress bar over the projections."""
    fa, fb = _pair(a, b)
    n_projections = check_positive_int(n_projections, name="n_projections")
    if not p >= 1:
        raise ValueError(f"p must be >= 1; got {p}")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(n_projections, fa.shape[1], generator=gen, dtype=torch.float64)
    theta = (theta / theta.norm(dim=1, keepdim=True)).to(fa.device)
    total = 0.0
    chunk = check_positive_int(chunk, name="chunk")
    with _bar(n_projections, progress, "sliced Wasserstein") as bar:
        for i in range(0, n_projections, chunk):
            th = theta[i:i + chunk]
            total += float(wasserstein_1d(fa @ th.T, fb @ th.T, p).sum())
            bar.update(th.shape[0])
    return (total / n_projections) ** (1 / p)


def _mean_dist(x: torch.Tensor, y: torch.Tensor, chunk: int, bar) -> torch.Tensor:
    """E‖x_i − y_j‖ over all pairs, in blocks of chunk × chunk distances. Up to EXACT_DIM dimensions the squared
    differences are summed directly; above, ‖x‖² + ‖y‖² − 2x·y through a GEMM (≈10× faster at d = 784; its float64
    cancellation error, ~1e-8·‖x‖ for nearly equal points, is far below the statistic's sampling error), except in
    the diagonal blocks of a set against itself, where every point meets itself at distance 0."""
    gemm = "donot_use_mm_for_euclid_dist" if x.shape[1] <= EXACT_DIM else "use_mm_for_euclid_dist"
    s = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], chunk):
        for j in range(0, y.shape[0], chunk):
            mode = "donot_use_mm_for_euclid_dist" if x is y and i == j else gemm
            s += torch.cdist(x[i:i + chunk], y[j:j + chunk], compute_mode=mode).sum()
            bar.update(1)
    return s / (x.shape[0] * y.shape[0])


def _subsample(x: torch.Tensor, n: int | None, gen: torch.Generator) -> torch.Tensor:
    if n is None or x.shape[0] <= n:
        return x
    return x[torch.randperm(x.shape[0], generator=gen)[:n].sort().values.to(x.device)]


def energy_distance(a, b, *, chunk: int = 1024, max_samples: int | None = ENERGY_MAX_SAMPLES, seed: int = 0,
                    progress: bool = False) -> float:
    """Energy distance (2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖)^{1/2} between samples a [N, *shape] and b [M, *shape]
    (flattened; same d). The cost is quadratic: (N + M)² distances. A set larger than `max_samples` (default
    5,000; None: every point) is replaced by a random subset of that size drawn without replacement with `seed`;
    the V-statistic of the subsets estimates that of the full sets. Memory: `chunk`² distances at a time.
    `progress`: a progress bar over the blocks of distances."""
    fa, fb = _pair(a, b)
    chunk = check_positive_int(chunk, name="chunk")
    if max_samples is not None:
        max_samples = check_positive_int(max_samples, name="max_samples", minimum=2)
    gen = torch.Generator().manual_seed(int(seed))
    fa, fb = _subsample(fa, max_samples, gen), _subsample(fb, max_samples, gen)
    n_blocks = sum(math.ceil(len(x) / chunk) * math.ceil(len(y) / chunk) for x, y in ((fa, fb), (fa, fa), (fb, fb)))
    with _bar(n_blocks, progress, "energy distance") as bar:
        e = 2 * _mean_dist(fa, fb, chunk, bar) - _mean_dist(fa, fa, chunk, bar) - _mean_dist(fb, fb, chunk, bar)
    return float(e.clamp(min=0).sqrt())


def _mean_cov(g, name: str):
    """(μ [d], Σ [d, d]) float64 from a (mean, cov) pair or a fitted Gaussian (mean_, cov_)."""
    if isinstance(g, (tuple, list)) and len(g) == 2:
        mu, cov = (torch.as_tensor(t, dtype=torch.float64) for t in g)
    elif hasattr(g, "mean_") and hasattr(g, "cov_"):
        mu, cov = g.mean_.reshape(-1).to(torch.float64), g.cov_.to(torch.float64)
    else:
        raise TypeError(f"{name} must be a fitted Gaussian or a (mean, cov) pair; got {type(g).__name__}")
    mu = mu.reshape(-1)
    if cov.shape != (mu.numel(), mu.numel()):
        raise ValueError(f"{name}: covariance must have shape ({mu.numel()}, {mu.numel()}); got {tuple(cov.shape)}")
    if not (torch.isfinite(mu).all() and torch.isfinite(cov).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return mu, (cov + cov.T) / 2


def gaussian_frechet(p, q) -> float:
    """W₂² between Gaussians: ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}."""
    (m1, c1), (m2, c2) = _mean_cov(p, "p"), _mean_cov(q, "q")
    if m1.shape != m2.shape:
        raise ValueError(f"p and q must have the same dimension; got {m1.numel()} and {m2.numel()}")
    return frechet_distance(m1, c1, m2, c2.to(c1.device))


def gaussian_kl(p, q) -> float:
    """KL(p ‖ q) = ½ [tr(Σ_q⁻¹ Σ_p) + (μ_q − μ_p)ᵀ Σ_q⁻¹ (μ_q − μ_p) − d + log det Σ_q − log det Σ_p].

    Both covariances must be positive definite (checked by Cholesky)."""
    (mp, cp), (mq, cq) = _mean_cov(p, "p"), _mean_cov(q, "q")
    if mp.shape != mq.shape:
        raise ValueError(f"p and q must have the same dimension; got {mp.numel()} and {mq.numel()}")
    cq = cq.to(cp.device)
    lp, info_p = torch.linalg.cholesky_ex(cp)
    lq, info_q = torch.linalg.cholesky_ex(cq)
    if info_p or info_q:
        raise ValueError(f"{'p' if info_p else 'q'}: covariance must be positive definite for the KL divergence")
    d = mp.numel()
    a = torch.cholesky_solve(cp, lq)  # Σ_q⁻¹ Σ_p
    diff = (mq - mp.to(mq.device))[:, None]
    maha = (diff * torch.cholesky_solve(diff, lq)).sum()
    logdet = 2 * (lq.diagonal().log().sum() - lp.diagonal().log().sum())
    return float(0.5 * (a.trace() + maha - d + logdet))
