"""Improved precision and recall (Kynkäänniemi et al. 2019): k-NN manifolds in feature space.

Each set Φ is a union of balls B(φ, r_k(φ)), r_k = distance from φ to its k-th nearest neighbour in Φ (itself
excluded). precision = fraction of generated features inside the real manifold; recall = fraction of real
features inside the generated manifold. Distances in float64, streamed in row chunks (memory ∝ chunk·N).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import check_positive_int
from .frechet import _check_pair, as_features

__all__ = ["precision_recall", "knn_radii", "in_manifold", "PrecisionRecall"]


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _sq_dist(x: torch.Tensor, y: torch.Tensor, y_sq: torch.Tensor) -> torch.Tensor:
    """‖xᵢ − yⱼ‖² in float64, clamped at 0."""
    return ((x * x).sum(1, keepdim=True) - 2 * x @ y.T + y_sq[None]).clamp(min=0)


def knn_radii(feats: torch.Tensor, k: int = 3, *, chunk: int = 1024) -> torch.Tensor:
    """r_k(φᵢ): distance to the k-th nearest other point of the set, [N] float64."""
    f = feats.to(torch.float64)
    f_sq = (f * f).sum(1)
    out = torch.empty(f.shape[0], dtype=torch.float64, device=f.device)
    for i in range(0, f.shape[0], chunk):
        d2 = _sq_dist(f[i:i + chunk], f, f_sq)
        rows = torch.arange(d2.shape[0], device=f.device)
        d2[rows, rows + i] = 0.0  # the point itself, exactly (round-off may leave a tiny positive)
        out[i:i + chunk] = d2.topk(k + 1, dim=1, largest=False).values[:, k].sqrt()
    return out


def in_manifold(query: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
    """Boolean [M]: is query j within radii[i] of some support point i."""
    q, s = query.to(torch.float64), support.to(torch.float64)
    s_sq, r2 = (s * s).sum(1), radii.to(torch.float64) ** 2
    out = torch.empty(q.shape[0], dtype=torch.bool, device=q.device)
    for j in range(0, q.shape[0], chunk):
        out[j:j + chunk] = (_sq_dist(q[j:j + chunk], s, s_sq) <= r2[None]).any(1)
    return out


def precision_recall(real, fake, *, k: int = 3, chunk: int = 1024, batch_size: int = 16, device=None,
                     progress: bool = True, cache: bool = True) -> PrecisionRecall:
    """(precision, recall) of `fake` against `real`: images [N, C, H, W] in [−1, 1] (→ Inception) or features [N, D]."""
    _check_pair(real, fake)
    k = check_positive_int(k, name="k")
    kw = dict(batch_size=batch_size, device=device, progress=progress, cache=cache)
    fr = as_features(real, name="real", min_samples=k + 1, **kw)
    fg = as_features(fake, name="fake", min_samples=k + 1, **kw)
    if fr.shape[1] != fg.shape[1]:
        raise ValueError(f"real and fake must have the same feature dimension; got {fr.shape[1]} and {fg.shape[1]}")
    precision = in_manifold(fg, fr, knn_radii(fr, k, chunk=chunk), chunk=chunk).double().mean()
    recall = in_manifold(fr, fg, knn_radii(fg, k, chunk=chunk), chunk=chunk).double().mean()
    return PrecisionRecall(float(precision), float(recall))
