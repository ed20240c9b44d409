"""The empirical (optimal, memorising) denoiser: the exact posterior mean over the N training points.

    D(x, σ) = Σ_i w_i y_i,   w_i = softmax_i(−‖x − y_i‖² / 2σ²)

(the Bayes-optimal denoiser for the empirical distribution; Karras et al. 2022, App. B.3; Kadkhodaie et al.
2024). Computed exactly over all N points, streamed in chunks of `chunk_size` rows: one GEMM per chunk for
x·y_i − ‖y_i‖²/2 (the ‖x‖² term cancels in the softmax), a running-max log-sum-exp and float64 accumulation
of Σ w_i and Σ w_i y_i across chunks (the weighted sum of a chunk is a second GEMM). Memory is bounded by
`chunk_size` and `query_chunk`, never by N; the data may be a memory-mapped array larger than RAM.

Precision at small σ: with float32 data the GEMM's rounding error δ (≲ √d·ε·(‖x‖·max‖y‖ + max‖y‖²/2)) is
amplified to δ/σ² in the logits. Rows where that bound exceeds `refine_tol` are refined: every entry within
T + 2δ/σ² of the running maximum (T = 25 + log N) is recomputed in float64 as −‖x − y_i‖²/2σ²; the rest, which
together carry less than e^{-25} of the weight, are dropped. As σ → 0 the output is the nearest training point
(no NaN); as σ → ∞ the data mean.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .._checks import check_data, check_fraction, check_positive_int, check_tensor, sigma_view
from .._io import load_state, save_state
from .softmax import SoftmaxSums

__all__ = ["Empirical", "pack_data", "unpack_data", "as_rows"]


# ----------------------------------------------------------------------------------------------------------
# training data: an in-memory tensor or a memory-mapped array, read in row chunks


class Rows:
    """Row access to training data [N, *shape]: an in-memory tensor or a memory-mapped / lazily read array.

    `chunks(size, dtype, device)` yields (start, tensor [n, d]) with the rows flattened."""

    def __init__(self, data, *, name: str = "data"):
        self.source = data
        self.in_memory = isinstance(data, torch.Tensor) or (isinstance(data, np.ndarray)
                                                           and not isinstance(data, np.memmap))
        if self.in_memory:
            t = check_data(data, name=name)
            self.tensor = t.reshape(t.shape[0], -1)
            self.shape = tuple(t.shape[1:])
            self.n = t.shape[0]
            return
        shape = getattr(data, "shape", None)
        if shape is None or len(shape) < 2 or not hasattr(data, "__getitem__"):
            raise TypeError(f"{name} must be a tensor, an array or a memory-mapped array of shape [N, ...]; "
                            f"got {type(data).__name__}")
        self.tensor = None
        self.n, self.shape = int(shape[0]), tuple(int(s) for s in shape[1:])
        if self.n < 1:
            raise ValueError(f"{name} must contain at least 1 sample; got 0")

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    @property
    def dtype(self):
        if self.tensor is not None:
            return self.tensor.dtype
        dt = getattr(self.source, "dtype", np.float32)
        return torch.float64 if np.dtype(dt) == np.float64 else torch.float32

    def read(self, start: int, stop: int, dtype=None, device=None) -> torch.Tensor:
        if self.tensor is not None:
            out = self.tensor[start:stop]
        else:
            block = self.source[start:stop]
            out = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.array(block))
            out = out.reshape(out.shape[0], -1)
            if not out.is_floating_point():
                out = out.to(torch.float32)
            _drop_pages(self.source, start, stop)
        return out.to(device=device, dtype=dtype or out.dtype)

    def chunks(self, size: int, dtype=None, device=None):
        for start in range(0, self.n, size):
            yield start, self.read(start, min(start + size, self.n), dtype, device)


def _drop_pages(source, start, stop):
    """Tell the kernel a memory-mapped range is no longer needed, so resident memory stays ~ one chunk."""
    if getattr(source, "hflip", False):
        return
    arr = getattr(source, "array", source)  # scorelab.data.ArrayDataset wraps the np.memmap as .array
    while not hasattr(arr, "_mmap") and isinstance(getattr(arr, "base", None), np.ndarray):
        arr = arr.base
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise"):
        return
    import mmap

    try:
        row = arr.strides[0]
        lo = (arr.offset + start * row) // mmap.PAGESIZE * mmap.PAGESIZE
        hi = min(arr.offset + stop * row, len(mm))
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (AttributeError, ValueError, OSError):
        pass


def as_rows(data, name: str = "data") -> Rows:
    return data if isinstance(data, Rows) else Rows(data, name=name)


def random_subset(data, n_data, seed):
    """A random subset of n_data rows (in their original order), or all of data when n_data is None."""
    if n_data is None:
        return data
    n_data = check_positive_int(n_data, name="n_data")
    if n_data >= data.shape[0]:
        return data
    gen = torch.Generator().manual_seed(int(seed))
    return data[torch.randperm(data.shape[0], generator=gen)[:n_data].sort().values]


def scan_rows(rows: Rows, chunk_size: int, name: str = "data") -> float:
    """One pass over the data: checks finiteness (for streamed data) and returns max ‖y_i‖."""
    ymax = 0.0
    for _, y in rows.chunks(chunk_size):
        if rows.tensor is None and not torch.isfinite(y).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        ymax = max(ymax, float(torch.linalg.vector_norm(y, dim=1, dtype=torch.float64).max()))
    return ymax


# ----------------------------------------------------------------------------------------------------------
# storing training data in model files: uint8 codes + a 256-entry table when that is exact, else float16 if
# exact, else the data's own float dtype


def pack_data(t: torch.Tensor) -> tuple[dict, dict]:
    """Losslessly compress data for saving. Returns (tensors, config)."""
    t = t.detach().cpu()
    flat = t.reshape(-1)
    lo, hi = float(flat.min()), float(flat.max())
    if hi > lo:
        codes = ((flat.double() - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)
        table = torch.zeros(256, dtype=t.dtype)
        table[codes.long()] = flat  # any element with the code; exactness is checked next
        if torch.equal(table[codes.long()], flat):
            return {"data_codes": codes.reshape(t.shape), "data_table": table}, {"storage": "uint8-table"}
    half = t.to(torch.float16)
    if torch.equal(half.to(t.dtype), t):
        return {"data": half}, {"storage": "float16", "dtype": str(t.dtype).split(".")[-1]}
    return {"data": t}, {"storage": str(t.dtype).split(".")[-1]}


def unpack_data(tensors: dict, config: dict) -> torch.Tensor:
    if config.get("storage") == "uint8-table":
        return tensors["data_table"][tensors["data_codes"].long()]
    if config.get("storage") == "float16":
        return tensors["data"].to(getattr(torch, config.get("dtype", "float32")))
    return tensors["data"]


def save_rows(rows: Rows) -> tuple[dict, dict]:
    """Tensors and config that describe the training data: packed data, or a reference to a .npy memmap."""
    if rows.tensor is not None:
        tensors, cfg = pack_data(rows.tensor.reshape(rows.n, *rows.shape))
        return tensors, {"data": cfg}
    src = rows.source
    arr = getattr(src, "array", src)
    filename = getattr(arr, "filename", None) or getattr(getattr(arr, "base", None), "filename", None)
    if filename is None:
        raise ValueError("data is streamed from an object without a file name; cannot save a reference to it")
    if hasattr(src, "array"):  # an ArrayDataset from scorelab.data.load("npy", path=..., mmap=True)
        return {}, {"data": {"storage": "npy", "path": str(filename), "hflip": bool(getattr(src, "hflip", False))}}
    return {}, {"data": {"storage": "memmap", "path": str(filename), "shape": [rows.n, *rows.shape],
                         "dtype": str(np.dtype(arr.dtype)), "offset": int(getattr(arr, "offset", 0))}}


def load_rows(tensors: dict, config: dict):
    cfg = config["data"]
    if cfg.get("storage") == "npy":
        from .. import data

        return data.load("npy", path=cfg["path"], mmap=True, hflip=cfg["hflip"])
    if cfg.get("storage") == "memmap":
        return np.memmap(cfg["path"], dtype=cfg["dtype"], mode="r", offset=cfg["offset"], shape=tuple(cfg["shape"]))
    return unpack_data(tensors, cfg)


# ----------------------------------------------------------------------------------------------------------
# the streamed posterior mean


def check_query(x, dim: int, shape: tuple, name: str = "x") -> torch.Tensor:
    check_tensor(x, name=name, min_ndim=2)
    if int(np.prod(x.shape[1:])) != dim or tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} must have shape [B, {', '.join(map(str, shape))}] like the data; "
                         f"got {tuple(x.shape)}")
    return x


def posterior_mean(rows: Rows, x: torch.Tensor, inv_var: torch.Tensor, *, chunk_size: int, dtype, ymax: float,
                   refine_tol: float, labels=None, query_labels=None) -> SoftmaxSums:
    """Streamed softmax statistics for queries x [B, d] against all rows, with inv_var = 1/σ² [B] (float64).

    Returns float64 `SoftmaxSums` (m, z, s): the running maximum m of the logits ℓ_i, z = Σ e^{ℓ_i − m},
    s = Σ e^{ℓ_i − m} y_i. Plain rows use ℓ_i = (x·y_i − ‖y_i‖²/2)/σ² straight from the GEMM (the ‖x‖² term
    cancels). Refined rows (GEMM error bound δ/σ² > refine_tol) use ℓ_i = −‖x − y_i‖²/2σ² computed in float64 for
    every candidate within T + 2δ/σ² of the running maximum, T = 25 + log N; the others, each below e^{-T} of the
    maximum and together below e^{-25} of the total weight, are left out."""
    B, d = x.shape
    dev = x.device
    x64 = x.to(torch.float64)
    acc = SoftmaxSums.empty((B,), (d,), dtype=torch.float64, device=dev)
    eps = torch.finfo(dtype).eps
    xnorm = x64.norm(dim=1)
    # bound on the GEMM's error in x·y − ‖y‖²/2, incl. rounding the result and the ‖x‖²/2 shift to `dtype`
    delta = math.sqrt(d + 1) * eps * (xnorm * ymax + ymax ** 2 / 2 + xnorm ** 2 / 2) + 1e-300
    refine = (delta * inv_var) > refine_tol
    rows_r = refine.nonzero().flatten()
    rows_p = (~refine).nonzero().flatten()
    all_plain, all_refined = rows_r.numel() == 0, rows_p.numel() == 0
    margin = 25 + math.log(max(rows.n, 1)) + 2 * delta * inv_var
    offset = 0.5 * x64.pow(2).sum(1) * inv_var  # ‖x‖²/2σ²: (x·y − ‖y‖²/2)/σ² − ‖x‖²/2σ² = −‖x − y‖²/2σ²
    # weights below e^{log(tiny)+1} ≈ 1e-37 (float32) relative to the maximum are raised to it (a change of
    # < N·1e-37 of the total weight) so that exp never produces slow subnormals
    floor = math.log(torch.finfo(dtype).tiny) + 1
    x_scaled = x.to(dtype) * inv_var.to(dtype)[:, None]
    iv = inv_var.to(dtype)
    for start, y in rows.chunks(chunk_size, dtype=dtype, device=dev):
        logits = x_scaled @ y.T  # x·y/σ²  [B, n]
        logits.addr_(iv, torch.einsum("nd,nd->n", y, y), alpha=-0.5)  # − ‖y‖²/2σ² (rank-1, in place)
        other = None
        if query_labels is not None:  # other classes: −∞ logits and (after the clamp below) exactly zero weight
            other = labels[start:start + y.shape[0]][None, :] != query_labels[:, None]
            logits.masked_fill_(other, -math.inf)
        if all_plain:
            w = acc.weights(logits, floor=floor)
        else:  # exact logits for the candidates of refined rows, in float64
            m = acc.m
            m_new = torch.maximum(m, logits.max(1).values.to(torch.float64))
            lr = logits if all_refined else logits[rows_r]
            # candidates: within the margin of max(chunk max, running max) — in the GEMM's convention
            top = torch.maximum(lr.max(1).values.to(torch.float64), m[rows_r] + offset[rows_r])
            thr = (top - margin[rows_r]).to(dtype)
            rb, j = ((lr >= thr[:, None]) & (lr > -math.inf)).nonzero(as_tuple=True)
            b = rows_r[rb]
            exact = torch.empty(b.numel(), dtype=torch.float64, device=dev)
            for k in range(0, b.numel(), 8192):
                bb, jj = b[k:k + 8192], j[k:k + 8192]
                exact[k:k + 8192] = -0.5 * (x64[bb] - y[jj].to(torch.float64)).pow(2).sum(1) * inv_var[bb]
            m_new[rows_r] = m[rows_r]
            m_new.scatter_reduce_(0, b, exact, reduce="amax")
            shift = acc.shift_to(m_new)
            w = torch.zeros_like(logits) if all_refined else logits
            if not all_refined:
                w[rows_p] = (logits[rows_p] - shift[rows_p].to(dtype)[:, None]).clamp_(min=floor).exp_()
                w[rows_r] = 0
            w[b, j] = torch.exp(exact - shift[b]).to(dtype)
        if other is not None:
            w.masked_fill_(other, 0)
        acc.add(w.sum(1), w @ y)
    return acc


def default_refine_tol(dtype) -> float:
    """Largest tolerated bound on the logit error before float64 refinement: 1e-2 for 32/16-bit GEMMs (speed
    first; the observed error is ~10× below the bound), 1e-9 for float64 (the reference)."""
    return 1e-9 if dtype == torch.float64 else 1e-2


class Empirical:
    """Exact optimal (memorising) denoiser over the training set, streamed: D(x, σ) = Σ softmax(−‖x−y_i‖²/2σ²) y_i.

    data: [N, *shape] tensor/array, or a memory-mapped array (read `chunk_size` rows at a time).
    labels: optional [N] integer classes; then `model(x, σ, class_labels=y)` is the class-conditional mean.
    flip: add the horizontal mirror image of every training image (2N points, last axis reversed).
    dtype: compute dtype of the GEMMs (default: the data's, float32 for integer data); accumulation is float64.
    refine_tol: rows whose logit-error bound δ/σ² exceeds it are refined in float64 (default: 1e-2 for float32,
    1e-9 for float64). `Empirical.fit(data, ...)` is the same as the constructor.
    """

    kind = "empirical"

    def __init__(self, data, *, labels=None, flip: bool = False, chunk_size: int = 4096, query_chunk: int = 1024,
                 refine_tol: float | None = None, dtype=None, device=None):
        self.rows_ = as_rows(data)
        self.chunk_size = check_positive_int(chunk_size, name="chunk_size")
        self.query_chunk = check_positive_int(query_chunk, name="query_chunk")
        if not isinstance(flip, bool):
            raise TypeError(f"flip must be True or False; got {flip!r}")
        if flip and len(self.rows_.shape) < 2:
            raise ValueError(f"flip needs image data [N, C, H, W] or [N, H, W]; got shape [N, {self.rows_.shape}]")
        self.flip = flip
        self.dtype = dtype or self.rows_.dtype
        if self.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise TypeError(f"dtype must be a floating torch dtype; got {dtype}")
        self.refine_tol = default_refine_tol(self.dtype) if refine_tol is None else \
            check_fraction(refine_tol, name="refine_tol", low=0.0, high=math.inf)
        self.device = torch.device(device) if device is not None else (
            self.rows_.tensor.device if self.rows_.tensor is not None else torch.device("cpu"))
        if self.rows_.tensor is not None:
            self.rows_.tensor = self.rows_.tensor.to(device=self.device, dtype=self.dtype)
        self.labels_ = None
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.dtype.is_floating_point or labels.ndim != 1 or labels.shape[0] != self.rows_.n:
                raise ValueError(f"labels must be an integer tensor of shape [{self.rows_.n}]; "
                                 f"got {labels.dtype} {tuple(labels.shape)}")
            self.labels_ = labels.to(self.device, torch.long)
        self.ymax_ = scan_rows(self.rows_, self.chunk_size)

    @classmethod
    def fit(cls, data, *args, **kwargs) -> "Empirical":
        """Same as the constructor (a non-parametric model: fitting stores the data)."""
        return cls(data, *args, **kwargs)

    @property
    def data_(self) -> torch.Tensor:
        """The training data [N, *shape] (in-memory data only)."""
        if self.rows_.tensor is None:
            raise AttributeError("data_ is not available for streamed (memory-mapped) data; use rows_")
        return self.rows_.tensor.reshape(self.rows_.n, *self.rows_.shape)

    @property
    def n_samples_(self) -> int:
        return self.rows_.n * (2 if self.flip else 1)

    @property
    def classes_(self) -> tuple[int, ...]:
        """The class labels (a model built with labels=...), else ()."""
        return () if self.labels_ is None else tuple(int(c) for c in self.labels_.unique().tolist())

    @property
    def shape_(self) -> tuple:
        """The sample shape (C, H, W) or (d,)."""
        return self.rows_.shape

    def __call__(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        check_query(x, self.rows_.dim, self.rows_.shape)
        s = sigma_view(sigma, x).reshape(-1).to(torch.float64)
        # 1/σ², capped at 1e30 (σ < 1e-15 acts as 1e-15: the nearest training point, which is also the σ → 0 limit)
        inv_var = (1.0 / s.pow(2).clamp(min=1e-30)).expand(x.shape[0]).to(x.device)
        if class_labels is not None:
            if self.labels_ is None:
                raise ValueError("class_labels given but the model was built without labels")
            class_labels = torch.as_tensor(class_labels, device=self.device).long().reshape(-1)
            if class_labels.numel() == 1:
                class_labels = class_labels.expand(x.shape[0])
            if class_labels.shape[0] != x.shape[0]:
                raise ValueError(f"class_labels must have {x.shape[0]} entries (one per x); "
                                 f"got {class_labels.shape[0]}")
            if not torch.isin(class_labels, self._known_labels()).all():
                raise ValueError("class_labels contains a class absent from the training labels")
        out = []
        for i in range(0, x.shape[0], self.query_chunk):
            sl = slice(i, i + self.query_chunk)
            out.append(self._mean(x[sl].reshape(-1, self.rows_.dim).to(self.device), inv_var[sl].to(self.device),
                                  None if class_labels is None else class_labels[sl]))
        return torch.cat(out).reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def _known_labels(self) -> torch.Tensor:
        """The labels a query may ask for (ShardedEmpirical: those of all ranks' rows)."""
        return self.labels_

    def _flip(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1, *self.rows_.shape).flip(-1).reshape(v.shape[0], -1)

    def _mean(self, x, inv_var, query_labels):
        kw = dict(chunk_size=self.chunk_size, dtype=self.dtype, ymax=self.ymax_, refine_tol=self.refine_tol,
                  labels=self.labels_, query_labels=query_labels)
        if not self.flip:
            return posterior_mean(self.rows_, x, inv_var, **kw).mean()
        # ‖x − flip(y)‖ = ‖flip(x) − y‖ and Σ w flip(y) = flip(Σ w y): mirrored points via mirrored queries
        B = x.shape[0]
        if query_labels is not None:
            kw["query_labels"] = torch.cat([query_labels, query_labels])
        m, z, s = posterior_mean(self.rows_, torch.cat([x, self._flip(x)]), torch.cat([inv_var, inv_var]), **kw)
        # both halves must share one logit convention: refined rows use −‖x−y‖²/2σ², others drop ‖x‖²/2σ²,
        # which is the same for x and flip(x), so the halves are comparable either way
        return SoftmaxSums(m[:B], z[:B], s[:B]).merge(SoftmaxSums(m[B:], z[B:], self._flip(s[B:]))).mean()

    # -- protocol ---------------------------------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> "Empirical":
        src = self.rows_.tensor.reshape(self.rows_.n, *self.rows_.shape) if self.rows_.tensor is not None \
            else self.rows_.source
        return type(self)(src, labels=self.labels_, flip=self.flip, chunk_size=self.chunk_size,
                          query_chunk=self.query_chunk, refine_tol=self.refine_tol, dtype=dtype or self.dtype,
                          device=device or self.device)

    def _config(self) -> dict:
        return {"flip": self.flip, "chunk_size": self.chunk_size, "query_chunk": self.query_chunk,
                "refine_tol": self.refine_tol, "dtype": str(self.dtype).split(".")[-1]}

    def save(self, path) -> None:
        """Stores the training data losslessly (uint8 codes + table, float16, or float32), or for memory-mapped
        data a reference to its file."""
        tensors, cfg = save_rows(self.rows_)
        if self.labels_ is not None:
            tensors["labels"] = self.labels_
        save_state(path, tensors, kind=self.kind, config={**cfg, **self._config()})

    @classmethod
    def load(cls, path, device=None) -> "Empirical":
        tensors, _, cfg = load_state(path, kind=cls.kind)
        return cls(load_rows(tensors, cfg), labels=tensors.get("labels"), flip=cfg["flip"],
                   chunk_size=cfg["chunk_size"], query_chunk=cfg["query_chunk"], refine_tol=cfg["refine_tol"],
                   dtype=getattr(torch, cfg["dtype"]), device=device)

    def __repr__(self) -> str:
        return f"Empirical(n={self.n_samples_}, shape={self.rows_.shape}, flip={self.flip}, dtype={self.dtype})"
