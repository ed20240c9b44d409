"""The exact empirical denoiser over training data sharded across the ranks of a `torch.distributed` group.

Rank r of W holds the contiguous block of rows [N·r/W, N·(r+1)/W) (memory-mapped when the data is a .npy path,
so no rank reads more than its block) and computes the streamed softmax statistics (m_r, z_r, s_r) of a query
batch against it (`empirical.posterior_mean`). One all_reduce of the maxima m = max_r m_r, then one of the
rescaled sums Σ_r e^{m_r − m} z_r and Σ_r e^{m_r − m} s_r (`distributed.reduce_softmax`) give the statistics over
all N points, so D(x, σ) = s / z is the exact `Empirical` denoiser on every rank. Every rank must call the model
with the same queries (as in a data-parallel loop over the same batch). In a single process it is `Empirical`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import distributed
from .empirical import Empirical, posterior_mean
from .softmax import SoftmaxSums

__all__ = ["ShardedEmpirical"]


def _open(data):
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.suffix != ".npy" or not path.is_file():
            raise FileNotFoundError(f"data {str(path)!r} is not an existing .npy file")
        return np.load(path, mmap_mode="r")
    return data


class ShardedEmpirical(Empirical):
    """`Empirical(data)` with the rows split across ranks: data is a tensor/array [N, *shape] or the path of a
    .npy file (memory-mapped; each rank reads only its block). Options as `Empirical` (flip, chunk_size,
    query_chunk, refine_tol, dtype, device); class labels are not supported. `shard_` is this rank's row range."""

    kind = "sharded-empirical"

    def __init__(self, data, *, flip: bool = False, chunk_size: int = 4096, query_chunk: int = 1024,
                 refine_tol: float | None = None, dtype=None, device=None):
        source = _open(data)
        shape = getattr(source, "shape", None)
        if shape is None or len(shape) < 2:
            raise TypeError(f"data must be a tensor, an array [N, ...] or a .npy path; got {type(data).__name__}")
        n, w = int(shape[0]), distributed.world_size()
        if n < w:
            raise ValueError(f"data has {n} rows, fewer than the {w} ranks that share it")
        self.source_, self.n_total_ = source, n
        self.shard_ = distributed.block(n)
        part = source[self.shard_.start:self.shard_.stop]
        super().__init__(part, flip=flip, chunk_size=chunk_size, query_chunk=query_chunk, refine_tol=refine_tol,
                         dtype=dtype, device=device)
        # one bound on ‖y‖ for all ranks: every rank then makes the same float64-refinement decision per query
        # row, so all partial logits share one convention and merge exactly
        self.ymax_ = float(distributed.all_reduce(torch.tensor([self.ymax_], dtype=torch.float64), "max")[0])

    @property
    def n_samples_(self) -> int:
        return self.n_total_ * (2 if self.flip else 1)

    def _mean(self, x, inv_var, query_labels):
        kw = dict(chunk_size=self.chunk_size, dtype=self.dtype, ymax=self.ymax_, refine_tol=self.refine_tol)
        if not self.flip:
            sums = posterior_mean(self.rows_, x, inv_var, **kw)
        else:   # mirrored points via mirrored queries, as in Empirical
            B = x.shape[0]
            m, z, s = posterior_mean(self.rows_, torch.cat([x, self._flip(x)]), torch.cat([inv_var, inv_var]), **kw)
            sums = SoftmaxSums(m[:B], z[:B], s[:B]).merge(SoftmaxSums(m[B:], z[B:], self._flip(s[B:])))
        return SoftmaxSums(*distributed.reduce_softmax(sums.m, sums.z, sums.s, base2=sums.base2)).mean()

    def to(self, device=None, dtype=None) -> "ShardedEmpirical":
        return type(self)(self.source_, flip=self.flip, chunk_size=self.chunk_size, query_chunk=self.query_chunk,
                          refine_tol=self.refine_tol, dtype=dtype or self.dtype, device=device or self.device)

    def save(self, path) -> None:
        raise TypeError("a ShardedEmpirical holds one rank's rows; save the data as .npy and build "
                        "ShardedEmpirical(path) on every rank")

