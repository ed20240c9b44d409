"""Memorisation: how many samples are near-copies of a training image.

A sample is memorised when its nearest training image is much closer than the second nearest,
d1/d2 < 1/3 in Euclidean distance (Yoon et al. 2023, "Diffusion probabilistic models generalize when they
fail to memorize"; Gu et al. 2023, "On memorization in diffusion models"). Neighbours are exact: streamed over
the data in chunks (one GEMM per chunk), the k best candidates re-measured in float64.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_fraction, check_positive_int, check_tensor

__all__ = ["memorization", "nearest_neighbours", "save_nearest_grid"]


def _chunks(data, chunk_size):
    if hasattr(data, "chunks") and not isinstance(data, torch.Tensor):  # scorelab.data.ArrayDataset
        start = 0
        for c in data.chunks(chunk_size):
            yield start, c
            start += c.shape[0]
    else:
        for start in range(0, data.shape[0], chunk_size):
            yield start, data[start:start + chunk_size]


def nearest_neighbours(queries: torch.Tensor, data, k: int = 2, *, chunk_size: int = 4096,
                       candidates: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest training points of each query (Euclidean): (distances [B, k] float64, indices [B, k]).

    Candidates come from ‖y‖² − 2x·y (one GEMM per chunk); the `candidates` best (default k + 8) are re-measured
    as ‖x − y‖ in float64, so rounding in the GEMM cannot reorder near-ties among them."""
    check_tensor(queries, name="queries", min_ndim=2)
    k = check_positive_int(k, name="k")
    n = data.shape[0]
    if k > n:
        raise ValueError(f"k must be <= the number of training points N={n}; got {k}")
    d = math.prod(queries.shape[1:])
    if math.prod(data.shape[1:]) != d:
        raise ValueError(f"queries and data must have the same sample shape; got {tuple(queries.shape[1:])} "
                         f"and {tuple(data.shape[1:])}")
    m = min(n, candidates or k + 8)
    q = queries.reshape(queries.shape[0], -1)
    q32 = q.to(torch.float32)
    best_s = torch.full((q.shape[0], 0), math.inf, device=q.device)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=q.device)
    for start, y in _chunks(data, chunk_size):
        y = y.reshape(y.shape[0], -1).to(device=q.device, dtype=torch.float32)
        if not torch.isfinite(y).all():
            raise ValueError("data contains NaN or infinite values")
        score = y.pow(2).sum(1)[None, :] - 2 * q32 @ y.T  # ‖x − y‖² − ‖x‖²
        s = torch.cat([best_s, score], 1)
        i = torch.cat([best_i, torch.arange(start, start + y.shape[0], device=q.device).expand_as(score)], 1)
        best_s, pos = s.topk(min(m, s.shape[1]), dim=1, largest=False)
        best_i = i.gather(1, pos)
    cand = _gather(data, best_i).reshape(*best_i.shape, -1).to(torch.float64)
    dist = (cand - q.to(torch.float64)[:, None, :]).pow(2).sum(-1).sqrt()
    dist, pos = dist.sort(1)
    return dist[:, :k], best_i.gather(1, pos)[:, :k]


def _gather(data, idx):
    flat = idx.reshape(-1)
    if isinstance(data, torch.Tensor):
        return data.reshape(data.shape[0], -1)[flat.to(data.device)].to(idx.device)
    uniq, inv = torch.unique(flat.cpu(), return_inverse=True)
    rows = torch.as_tensor(data[uniq.numpy()] if not hasattr(data, "chunks") else data[uniq])
    return rows.reshape(uniq.shape[0], -1)[inv].to(idx.device)


def memorization(samples: torch.Tensor, data, *, threshold: float = 1 / 3, chunk_size: int = 4096,
                 return_ratios: bool = False):
    """Fraction of samples with d1/d2 < threshold (nearest over second-nearest training distance).

    A sample at distance 0 from a training image counts as memorised (also when that image is duplicated).
    With return_ratios=True returns (fraction, ratios [B], nearest indices [B])."""
    check_tensor(samples, name="samples", min_ndim=2)
    threshold = check_fraction(threshold, name="threshold")
    if data.shape[0] < 2:
        raise ValueError(f"data must contain at least 2 training points; got {data.shape[0]}")
    dist, idx = nearest_neighbours(samples, data, k=2, chunk_size=chunk_size)
    d1, d2 = dist[:, 0], dist[:, 1]
    ratios = torch.where(d1 == 0, torch.zeros_like(d1), d1 / d2.clamp(min=1e-300))
    frac = float((ratios < threshold).double().mean())
    return (frac, ratios, idx[:, 0]) if return_ratios else frac


def save_nearest_grid(samples: torch.Tensor, data, path, *, k: int = 3, chunk_size: int = 4096,
                      scale: int = 2) -> dict:
    """PNG: one row per sample, the sample then its k nearest training images. Returns the distances/indices."""
    from ..images import save_grid

    if samples.ndim != 4:
        raise ValueError(f"samples must be images [B, C, H, W]; got shape {tuple(samples.shape)}")
    dist, idx = nearest_neighbours(samples, data, k=k, chunk_size=chunk_size)
    near = _gather(data, idx).reshape(samples.shape[0], k, *samples.shape[1:]).to(samples.dtype)
    rows = torch.cat([samples[:, None].cpu(), near.cpu()], 1).reshape(-1, *samples.shape[1:])
    save_grid(rows, path, nrow=k + 1, scale=scale)
    return {"distances": dist.tolist(), "indices": idx.tolist()}

