"""Kernel Inception distance (Bińkowski et al. 2018): unbiased MMD² with the polynomial kernel, over subsets.

k(x, y) = (xᵀy / D + coef0)^degree. On subsets X, Y of m rows each (drawn without replacement),

    MMD²_u = Σ_{i≠j} k(xᵢ, xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ, yⱼ) / (m(m−1)) − 2 Σ_{i,j} k(xᵢ, yⱼ) / m²,

whose expectation is the population MMD² (0 for identical distributions). KID = mean ± std over subsets.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import check_positive_int
from .frechet import _check_pair, as_features

__all__ = ["kid", "mmd2_unbiased", "polynomial_kernel", "KID"]


class KID(NamedTuple):
    mean: float
    std: float


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, coef0: float = 1.0) -> torch.Tensor:
    """K = (X Yᵀ / D + coef0)^degree, float64."""
    return (x.to(torch.float64) @ y.to(torch.float64).T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD² between two equal-size samples x, y [m, D] (formula in the module docstring)."""
    m = x.shape[0]
    kxx = polynomial_kernel(x, x, degree=degree, coef0=coef0)
    kyy = polynomial_kernel(y, y, degree=degree, coef0=coef0)
    kxy = polynomial_kernel(x, y, degree=degree, coef0=coef0)
    off = lambda k: (k.sum() - k.diagonal().sum()) / (m * (m - 1))  # noqa: E731
    return float(off(kxx) + off(kyy) - 2 * kxy.mean())


def kid(a, b, *, n_subsets: int = 100, subset_size: int | None = None, degree: int = 3, coef0: float = 1.0,
        seed: int = 0, batch_size: int = 16, device=None, progress: bool = True, cache: bool = True) -> KID:
    """KID between `a` and `b` (images [N, C, H, W] in [−1, 1] → Inception features, or features [N, D]).

    `subset_size` defaults to min(1000, len(a), len(b)); an explicit one larger than either set is an error."""
    _check_pair(a, b)
    n_subsets = check_positive_int(n_subsets, name="n_subsets")
    need = 2 if subset_size is None else check_positive_int(subset_size, name="subset_size", minimum=2)
    kw = dict(batch_size=batch_size, device=device, progress=progress, cache=cache)
    fa = as_features(a, name="a", min_samples=need, **kw)
    fb = as_features(b, name="b", min_samples=need, **kw)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"a and b must have the same feature dimension; got {fa.shape[1]} and {fb.shape[1]}")
    m = min(1000, fa.shape[0], fb.shape[0]) if subset_size is None else need
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(n_subsets):
        ia = torch.randperm(fa.shape[0], generator=gen)[:m].to(fa.device)
        ib = torch.randperm(fb.shape[0], generator=gen)[:m].to(fb.device)
        vals.append(mmd2_unbiased(fa[ia], fb[ib], degree=degree, coef0=coef0))
    v = torch.tensor(vals, dtype=torch.float64)
    return KID(float(v.mean()), float(v.std()) if len(vals) > 1 else 0.0)
