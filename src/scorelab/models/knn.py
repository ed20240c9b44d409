"""Nearest-neighbour estimator of the empirical denoiser (Niedoba et al. 2024, "Nearest Neighbour Score
Estimators for Diffusion Generative Models", ICML).

With K the k nearest training points of x (independent of σ: the logits are −‖x − y_i‖²/2σ²) and R a uniform
draw of n_random indices (with replacement, shared by the queries of one call), the weights of points outside K
are estimated by importance sampling, self-normalised:

    D̂(x, σ) = [Σ_{i∈K} e^{ℓ_i} y_i + (N/n) Σ_{r∈R, r∉K} e^{ℓ_r} y_r] / [Σ_{i∈K} e^{ℓ_i} + (N/n) Σ_{r∈R, r∉K} e^{ℓ_r}]

The tail term is an unbiased estimate of the sum over all points outside K (not a truncation), whatever K is, so
an approximate index (IVF, HNSW) only changes the variance. k = N (or exact=True) gives `Empirical` exactly.
Neighbours come from faiss when installed (exact "flat", "ivf" or "hnsw"), else from an exact chunked torch
top-k.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .._checks import check_positive_int, sigma_view
from .._io import load_state, save_state
from .conditional import ByClass, class_indices
from .empirical import Empirical, as_rows, check_query, pack_data, unpack_data
from .softmax import SoftmaxSums

__all__ = ["KNN", "have_faiss"]

INDEXES = ("auto", "flat", "ivf", "hnsw", "torch")


def have_faiss() -> bool:
    try:
        import faiss  # noqa: F401
        return True
    except ImportError:
        return False


class KNN(ByClass):
    """Nearest-neighbour + random-tail estimator of the empirical denoiser (Niedoba et al. 2024).

    k: nearest neighbours per query; n_random: uniform tail draws with weight N/n_random (0: truncation).
    index: "flat" (faiss exact), "ivf" (faiss inverted lists, `nlist`, `nprobe`), "hnsw" (faiss graph, `hnsw_m`,
    `ef_search`), "torch" (exact chunked top-k, no faiss), "auto" (ivf for N ≥ 20,000 with faiss, else flat,
    torch without faiss). exact=True: the exact `Empirical` posterior mean (no search, no sampling).
    seed: seeds the tail draws (a fresh draw on every call, from the model's own generator).
    labels: optional [N] integer classes: also one KNN per class on its rows alone (same options), used when the
    call gives `class_labels` (None: the pooled model; see `scorelab.models.conditional`).
    `KNN.fit(data, ...)` is the same as the constructor (a non-parametric model: fitting stores the data).
    """

    kind = "knn"

    def __init__(self, data, k: int = 64, n_random: int = 256, *, index: str = "auto", exact: bool = False,
                 nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128,
                 chunk_size: int = 4096, seed: int = 0, dtype=None, device=None, labels=None, _index_bytes=None):
        rows = as_rows(data)
        if rows.tensor is None:  # neighbour search needs the data in memory
            rows = as_rows(torch.from_numpy(np.asarray(rows.source)).to(torch.float32))
        self.k = check_positive_int(k, name="k")
        if self.k > rows.n:
            raise ValueError(f"k must be <= the number of training points N={rows.n}; got {self.k}")
        self.n_random = check_positive_int(n_random, name="n_random", minimum=0)
        if index not in INDEXES:
            raise ValueError(f"index must be one of {INDEXES}; got {index!r}")
        if index in ("flat", "ivf", "hnsw") and not have_faiss():
            raise ValueError(f"index={index!r} needs faiss (pip install 'scorelab[faiss]'); use index='torch'")
        if index == "auto":
            index = ("ivf" if rows.n >= 20000 else "flat") if have_faiss() else "torch"
        self.index, self.exact = index, bool(exact)
        self.nprobe = check_positive_int(nprobe, name="nprobe")
        self.nlist = check_positive_int(nlist or max(1, min(4 * int(math.sqrt(rows.n)), rows.n // 39)), name="nlist")
        self.hnsw_m = check_positive_int(hnsw_m, name="hnsw_m")
        self.ef_search = check_positive_int(ef_search, name="ef_search")
        self.chunk_size = check_positive_int(chunk_size, name="chunk_size")
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.dtype = dtype or rows.dtype
        self.device = torch.device(device) if device is not None else rows.tensor.device
        self.shape_ = rows.shape
        self.empirical_ = Empirical(rows.tensor.reshape(rows.n, *rows.shape), chunk_size=chunk_size,
                                    dtype=self.dtype, device=self.device)
        self.data_flat_ = self.empirical_.rows_.tensor  # [N, d] in the compute dtype
        self.norms_ = self.data_flat_.pow(2).sum(1)
        self.ymax_ = float(self.norms_.max().sqrt())
        self.refine_tol = self.empirical_.refine_tol
        self.index_ = None
        if not self.exact and self.index != "torch":
            self.index_ = self._build_index(_index_bytes)
        self.labels_ = None
        if labels is not None:
            groups = class_indices(labels, rows.n)
            small = {c: len(idx) for c, idx in groups.items() if len(idx) < self.k}
            if small:
                raise ValueError(f"k must be <= the size of every class; got k={self.k} with classes of sizes "
                                 f"{small}")
            self.labels_ = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels),
                                           dtype=torch.long)
            self._set_classes({c: type(self)(self.data_[torch.from_numpy(idx).to(self.device)], **self._kwargs(),
                                             dtype=self.dtype, device=self.device) for c, idx in groups.items()})

    @classmethod
    def fit(cls, data, *args, **kwargs) -> "KNN":
        """Same as the constructor (a non-parametric model: fitting stores the data)."""
        return cls(data, *args, **kwargs)

    @property
    def n_samples_(self) -> int:
        return self.data_flat_.shape[0]

    @property
    def data_(self) -> torch.Tensor:
        return self.data_flat_.reshape(-1, *self.shape_)

    # -- neighbour search --------------------------------------------------------------------------------------
    def _build_index(self, index_bytes=None):
        import faiss

        if index_bytes is not None:
            index = faiss.deserialize_index(np.ascontiguousarray(index_bytes.numpy()))
        else:
            y = np.ascontiguousarray(self.data_flat_.detach().cpu().to(torch.float32).numpy())
            d = y.shape[1]
            if self.index == "flat":
                index = faiss.IndexFlatL2(d)
            elif self.index == "ivf":
                index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, self.nlist)
                index.cp.seed = self.seed
                index.train(y)
            else:
                index = faiss.IndexHNSWFlat(d, self.hnsw_m)
            index.add(y)
        if self.index == "ivf":
            index.nprobe = self.nprobe
        elif self.index == "hnsw":
            index.hnsw.efSearch = max(self.ef_search, self.k)
        return index

    def neighbours(self, x: torch.Tensor) -> torch.Tensor:
        """Indices [B, k] of the k nearest training points of each query (−1 where an approximate index found
        fewer)."""
        return self.search(x)[1]

    def search(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(squared distances [B, k] float64, as computed in float32 by the search; indices [B, k])."""
        q = x.reshape(x.shape[0], -1)
        if self.index_ is not None:
            dist, idx = self.index_.search(np.ascontiguousarray(q.detach().cpu().to(torch.float32).numpy()), self.k)
            idx = torch.from_numpy(idx).to(self.device)
            d2 = torch.from_numpy(dist).to(device=self.device, dtype=torch.float64)
            return d2.masked_fill(idx < 0, math.inf), idx
        best_d = torch.full((q.shape[0], 0), math.inf, dtype=self.dtype, device=self.device)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=self.device)
        qd = q.to(device=self.device, dtype=self.dtype)
        for start in range(0, self.n_samples_, self.chunk_size):
            y = self.data_flat_[start:start + self.chunk_size]
            d = self.norms_[start:start + y.shape[0]][None, :] - 2 * qd @ y.T  # ‖x−y‖² − ‖x‖²
            cat_d = torch.cat([best_d, d], 1)
            cat_i = torch.cat([best_i, torch.arange(start, start + y.shape[0], device=self.device).expand_as(d)], 1)
            best_d, pos = cat_d.topk(min(self.k, cat_d.shape[1]), dim=1, largest=False)
            best_i = cat_i.gather(1, pos)
        d2 = (best_d.to(torch.float64) + qd.to(torch.float64).pow(2).sum(1, keepdim=True)).clamp(min=0)
        return d2, best_i

    # -- the estimator -----------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        check_query(x, self.data_flat_.shape[1], self.shape_)
        by_class = self._by_class("__call__", x, class_labels, sigma)
        if by_class is not None:
            return by_class
        if self.exact:
            return self.empirical_(x, sigma)
        s = sigma_view(sigma, x).reshape(-1).to(torch.float64)
        inv_var = (1.0 / s.pow(2).clamp(min=1e-30)).expand(x.shape[0]).to(self.device)
        q = x.reshape(x.shape[0], -1).to(device=self.device, dtype=self.dtype)
        d2, nbrs = self.search(q)
        sums = self._neighbour_sums(q, inv_var, nbrs, d2)
        if self.n_random:
            tail = torch.randint(0, self.n_samples_, (self.n_random,), generator=self.generator).to(self.device)
            sums = sums.merge(self._tail_sums(q, inv_var, nbrs, tail))
        return sums.mean().reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def _neighbour_sums(self, q, inv_var, nbrs, d2):
        """Softmax statistics (`SoftmaxSums`: max, Σ e^{ℓ−m}, Σ e^{ℓ−m} y) over each query's neighbours, ℓ = −‖x − y‖²/2σ².

        ℓ comes from the search's float32 distances; rows where their error bound δ/σ² exceeds `refine_tol`
        recompute, in float64, every neighbour within 25 + log N + 2δ/σ² of the best (the rest carry < e^{-25} of
        the weight and are dropped). The weighted sum is one `embedding_bag` (no [B, k, d] gather)."""
        eps = torch.finfo(torch.float32).eps
        x64 = q.to(torch.float64)
        T = 25 + math.log(self.n_samples_)
        if self.index in ("ivf", "hnsw"):  # faiss measures Σ(x − y)² directly: error ~ √d·ε·d² (relative)
            d_min = d2.min(1).values.clamp(max=1e300)
            delta = math.sqrt(q.shape[1]) * eps * (d_min + 2 * T / inv_var)
        else:  # ‖x‖² − 2x·y + ‖y‖² (flat index, torch top-k): error ~ √d·ε·(‖x‖² + ‖y‖²)
            delta = math.sqrt(q.shape[1]) * eps * (x64.pow(2).sum(1) + self.ymax_ ** 2)
        logits = (-0.5 * d2 * inv_var[:, None]).masked_fill(nbrs < 0, -math.inf)
        refine = (delta * inv_var) > self.refine_tol
        if bool(refine.any()):
            margin = T + 2 * delta * inv_var
            top = logits.max(1).values
            cand = refine[:, None] & (logits >= (top - margin)[:, None]) & (nbrs >= 0)
            logits[refine[:, None] & ~cand] = -math.inf
            b, j = cand.nonzero(as_tuple=True)
            for k in range(0, b.numel(), 8192):
                bb, jj = b[k:k + 8192], j[k:k + 8192]
                y = self.data_flat_[nbrs[bb, jj]].to(torch.float64)
                logits[bb, jj] = -0.5 * (x64[bb] - y).pow(2).sum(1) * inv_var[bb]
        sums = SoftmaxSums.empty((q.shape[0],), (q.shape[1],), dtype=torch.float64, device=q.device)
        w = sums.weights(logits)  # a row with no neighbour found keeps m = −∞ and zero weight
        sums.add(w.sum(1), torch.nn.functional.embedding_bag(nbrs.clamp(min=0), self.data_flat_, mode="sum",
                                                             per_sample_weights=w.to(self.dtype)))
        return sums

    def _tail_sums(self, q, inv_var, nbrs, tail):
        """Softmax statistics (`SoftmaxSums`) over the uniform tail draws, each weighted N/n_random, draws inside a query's
        neighbour set left out. As in `Empirical`: one GEMM for x·y/σ² with an in-place rank-1 −‖y‖²/2σ², the
        ‖x‖²/2σ² and log(N/n) terms carried in the (float64) maximum, and one GEMM for Σ w y."""
        tail = tail.sort().values  # the order of the draws is irrelevant; sorted, membership is a binary search
        y_r = self.data_flat_[tail]  # [n, d]
        iv = inv_var.to(self.dtype)
        logits = (q * iv[:, None]) @ y_r.T
        logits.addr_(iv, torch.einsum("nd,nd->n", y_r, y_r), alpha=-0.5)  # (x·y − ‖y‖²/2)/σ²
        valid = nbrs >= 0  # tail draws already counted among the neighbours: weight 0
        lo = torch.searchsorted(tail, nbrs.clamp(min=0))
        hi = torch.searchsorted(tail, nbrs.clamp(min=0), right=True)
        rows = torch.arange(q.shape[0], device=q.device)[:, None].expand_as(nbrs)
        for r in range(int((hi - lo).max()) if hi.numel() else 0):  # repeated draws: one pass per multiplicity
            hit = valid & (lo + r < hi)
            logits[rows[hit], (lo + r)[hit]] = -math.inf
        excluded = logits == -math.inf
        sums = SoftmaxSums.empty((q.shape[0],), (q.shape[1],), dtype=torch.float64, device=q.device)
        floor = math.log(torch.finfo(self.dtype).tiny) + 1  # no subnormal exps (see Empirical)
        w = sums.weights(logits, floor=floor).masked_fill(excluded, 0)
        sums.add(w.sum(1), w @ y_r)
        # back to the neighbours' convention −‖x − y‖²/2σ², with the tail weight N/n: ℓ + log(N/n) − ‖x‖²/2σ²
        offset = 0.5 * q.to(torch.float64).pow(2).sum(1) * inv_var - math.log(self.n_samples_ / self.n_random)
        return SoftmaxSums(sums.m - offset, sums.z, sums.s)

    # -- protocol ----------------------------------------------------------------------------------------------
    def _kwargs(self) -> dict:
        return dict(k=self.k, n_random=self.n_random, index=self.index, exact=self.exact, nlist=self.nlist,
                    nprobe=self.nprobe, hnsw_m=self.hnsw_m, ef_search=self.ef_search, chunk_size=self.chunk_size,
                    seed=self.seed)

    def to(self, device=None, dtype=None) -> "KNN":
        return type(self)(self.data_, **self._kwargs(), dtype=dtype or self.dtype, device=device or self.device,
                          labels=self.labels_, _index_bytes=self._index_bytes())

    def _index_bytes(self):
        if self.index_ is None:
            return None
        import faiss

        return torch.from_numpy(faiss.serialize_index(self.index_))

    def save(self, path) -> None:
        """Stores the training data losslessly (see `Empirical.save`) and the serialised faiss index."""
        tensors, data_cfg = pack_data(self.data_)
        if self.index_ is not None:
            tensors["faiss_index"] = self._index_bytes()
        if self.labels_ is not None:
            tensors["labels"] = self.labels_
        save_state(path, tensors, kind=self.kind,
                   config={"data": data_cfg, **self._kwargs(), "dtype": str(self.dtype).split(".")[-1]})

    @classmethod
    def load(cls, path, device=None) -> "KNN":
        tensors, _, cfg = load_state(path, kind=cls.kind)
        data = unpack_data(tensors, cfg.pop("data"))
        dtype = getattr(torch, cfg.pop("dtype"))
        index_bytes = tensors.get("faiss_index")
        if index_bytes is not None and not have_faiss():
            raise ValueError(f"{path} holds a faiss index; install faiss (pip install 'scorelab[faiss]') to load it")
        return cls(data, **cfg, dtype=dtype, device=device, labels=tensors.get("labels"), _index_bytes=index_bytes)

    def __repr__(self) -> str:
        return f"KNN(n={self.n_samples_}, k={self.k}, n_random={self.n_random}, index={self.index!r})"
