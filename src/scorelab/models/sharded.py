"""The exact empirical denoiser (and its nearest-neighbour estimator) over training data sharded across the ranks
of a `torch.distributed` group.

Rank r of W holds the contiguous block of rows [N·r/W, N·(r+1)/W) (memory-mapped when the data is a .npy path,
so no rank reads more than its block) and computes the streamed softmax statistics (m_r, z_r, s_r) of a query
batch against it (`empirical.posterior_mean`). One all_reduce of the maxima m = max_r m_r, then one of the
rescaled sums Σ_r e^{m_r − m} z_r and Σ_r e^{m_r − m} s_r (`distributed.reduce_softmax`) give the statistics over
all N points, so D(x, σ) = s / z is the exact `Empirical` denoiser on every rank. Every rank must call the model
with the same queries (as in a data-parallel loop over the same batch). In a single process it is `Empirical`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from .._checks import sigma_view
from .empirical import Empirical, check_query, posterior_mean
from .knn import KNN
from .softmax import SoftmaxSums

__all__ = ["ShardedEmpirical", "ShardedKNN"]


def _open(data):
    """(rows, N): data as given, or a .npy path memory-mapped; checked to be [N, ...] with N >= the world size."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.suffix != ".npy" or not path.is_file():
            raise FileNotFoundError(f"data {str(path)!r} is not an existing .npy file")
        data = np.load(path, mmap_mode="r")
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) < 2:
        raise TypeError(f"data must be a tensor, an array [N, ...] or a .npy path; got {type(data).__name__}")
    n, w = int(shape[0]), distributed.world_size()
    if n < w:
        raise ValueError(f"data has {n} rows, fewer than the {w} ranks that share it")
    return data, n


class ShardedEmpirical(Empirical):
    """`Empirical(data)` with the rows split across ranks: data is a tensor/array [N, *shape] or the path of a
    .npy file (memory-mapped; each rank reads only its block). Options as `Empirical` (flip, chunk_size,
    query_chunk, refine_tol, dtype, device) and `labels` (all N of them, on every rank: the class-conditional
    mean, `model(x, σ, class_labels=y)`). `shard_` is this rank's row range."""

    kind = "sharded-empirical"

    def __init__(self, data, *, labels=None, flip: bool = False, chunk_size: int = 4096, query_chunk: int = 1024,
                 refine_tol: float | None = None, dtype=None, device=None):
        source, n = _open(data)
        self.source_, self.n_total_ = source, n
        self.shard_ = distributed.block(n)
        part = source[self.shard_.start:self.shard_.stop]
        self.all_labels_, self.labels_all_source_ = None, labels
        if labels is not None:   # every rank gets all N labels (small); it keeps its block's rows
            labels = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels))
            if labels.dtype.is_floating_point or labels.ndim != 1 or labels.shape[0] != n:
                raise ValueError(f"labels must be an integer tensor of shape [{n}]; "
                                 f"got {labels.dtype} {tuple(labels.shape)}")
            self.all_labels_ = labels.long().unique()
            labels = labels[self.shard_.start:self.shard_.stop]
        super().__init__(part, labels=labels, flip=flip, chunk_size=chunk_size, query_chunk=query_chunk,
                         refine_tol=refine_tol, dtype=dtype, device=device)
        # one bound on ‖y‖ for all ranks: every rank then makes the same float64-refinement decision per query
        # row, so all partial logits share one convention and merge exactly
        self.ymax_ = float(distributed.all_reduce(torch.tensor([self.ymax_], dtype=torch.float64), "max")[0])

    @property
    def n_samples_(self) -> int:
        return self.n_total_ * (2 if self.flip else 1)

    @property
    def classes_(self) -> tuple[int, ...]:
        """The class labels of all ranks' rows (a model built with labels=...), else ()."""
        return () if self.all_labels_ is None else tuple(int(c) for c in self.all_labels_.tolist())

    def _known_labels(self) -> torch.Tensor:
        return self.all_labels_.to(self.device)

    def _mean(self, x, inv_var, query_labels):
        kw = dict(chunk_size=self.chunk_size, dtype=self.dtype, ymax=self.ymax_, refine_tol=self.refine_tol,
                  labels=self.labels_, query_labels=query_labels)
        if not self.flip:
            sums = posterior_mean(self.rows_, x, inv_var, **kw)
        else:   # mirrored points via mirrored queries, as in Empirical
            B = x.shape[0]
            if query_labels is not None:
                kw["query_labels"] = torch.cat([query_labels, query_labels])
            m, z, s = posterior_mean(self.rows_, torch.cat([x, self._flip(x)]), torch.cat([inv_var, inv_var]), **kw)
            sums = SoftmaxSums(m[:B], z[:B], s[:B]).merge(SoftmaxSums(m[B:], z[B:], self._flip(s[B:])))
        return SoftmaxSums(*distributed.reduce_softmax(sums.m, sums.z, sums.s, base2=sums.base2)).mean()

    def to(self, device=None, dtype=None) -> "ShardedEmpirical":
        return type(self)(self.source_, labels=self.labels_all_source_, flip=self.flip, chunk_size=self.chunk_size, query_chunk=self.query_chunk,
                          refine_tol=self.refine_tol, dtype=dtype or self.dtype, device=device or self.device)

    def save(self, path) -> None:
        raise TypeError("a ShardedEmpirical holds one rank's rows; save the data as .npy and build "
                        "ShardedEmpirical(path) on every rank")



class ShardedKNN:
    """`KNN(data, k, n_random, index="torch")` with the rows split across ranks as in `ShardedEmpirical`.

    Each rank finds the k nearest points of its block (exact torch search); one all_gather of the [B, k]
    distances and indices gives the global k nearest. All ranks draw the same uniform tail (one generator seeded
    by `seed`, global indices, as `KNN`), each evaluates the draws that fall in its block, and the neighbour and tail
    statistics (weight N/n_random) of all ranks are merged as in `ShardedEmpirical`: the result is the unsharded
    KNN's, call for call. Every rank must call it with the same queries."""

    kind = "sharded-knn"

    def __init__(self, data, k: int = 64, n_random: int = 256, *, chunk_size: int = 4096, seed: int = 0,
                 dtype=None, device=None):
        source, n = _open(data)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"k must be an integer in [1, N={n}]; got {k!r}")
        self.k, self.n_total_, self.seed = k, n, int(seed)
        self.shard_ = distributed.block(n)
        part = source[self.shard_.start:self.shard_.stop]
        part = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))
        self.local_ = KNN(part, k=min(k, part.shape[0]), n_random=n_random, index="torch", chunk_size=chunk_size,
                          seed=seed, dtype=dtype, device=device)
        self.n_random, self.shape_, self.device = self.local_.n_random, self.local_.shape_, self.local_.device
        self.generator = torch.Generator().manual_seed(self.seed)
        # one bound on ‖y‖ for all ranks: the same float64-refinement decision per query row everywhere
        self.local_.ymax_ = float(distributed.all_reduce(torch.tensor([self.local_.ymax_], dtype=torch.float64),
                                                         "max")[0])

    @property
    def n_samples_(self) -> int:
        return self.n_total_

    def search(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(squared distances [B, k] float64, global indices [B, k]) of the k nearest points over all ranks."""
        d2, idx = self.local_.search(x)
        idx = idx + self.shard_.start
        if not distributed.is_distributed():
            return d2, idx
        B, k = x.shape[0], self.k
        pad = k - d2.shape[1]   # a block smaller than k: pad with no-neighbour entries
        d2 = torch.cat([d2, torch.full((B, pad), torch.inf, dtype=d2.dtype, device=d2.device)], 1)
        idx = torch.cat([idx, torch.full((B, pad), -1, dtype=idx.dtype, device=idx.device)], 1)
        both = distributed.all_gather(torch.stack([d2, idx.to(d2.dtype)]))   # [W, 2, B, k] in rank order
        all_d2 = both[:, 0].permute(1, 0, 2).reshape(B, -1)
        all_idx = both[:, 1].permute(1, 0, 2).reshape(B, -1).to(torch.long)
        best, pos = all_d2.topk(k, dim=1, largest=False)
        return best, all_idx.gather(1, pos)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        check_query(x, int(np.prod(self.shape_)), self.shape_)
        s = sigma_view(sigma, x).reshape(-1).to(torch.float64)
        inv_var = (1.0 / s.pow(2).clamp(min=1e-30)).expand(x.shape[0]).to(self.device)
        q = x.reshape(x.shape[0], -1).to(device=self.device, dtype=self.local_.dtype)
        d2, nbrs = self.search(q)
        a, b = self.shard_.start, self.shard_.stop
        mine = (nbrs >= a) & (nbrs < b)
        local = torch.where(mine, nbrs - a, torch.full_like(nbrs, -1))   # the neighbours this rank holds
        sums = self.local_._neighbour_sums(q, inv_var, local, d2)
        if self.n_random:
            tail = torch.randint(0, self.n_total_, (self.n_random,), generator=self.generator).to(self.device)
            tail = tail[(tail >= a) & (tail < b)] - a
            if tail.numel():
                t = self.local_._tail_sums(q, inv_var, local, tail)
                # _tail_sums weighs its draws by (block size)/n_random; each draw stands for N/n_random points
                sums = sums.merge(SoftmaxSums(t.m + math.log(self.n_total_ / (b - a)), t.z, t.s))
        sums = SoftmaxSums(*distributed.reduce_softmax(sums.m, sums.z, sums.s))
        return sums.mean().reshape(x.shape).to(device=x.device, dtype=x.dtype)
