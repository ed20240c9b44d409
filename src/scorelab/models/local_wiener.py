"""PCA locality: the Wiener filter of the data covariance and the masked empirical denoiser its locality
masks induce (Lukoianov et al., "Locality in image diffusion models emerges from data statistics", 2025)."""
from __future__ import annotations

import math

import torch

from .._checks import check_data, check_fraction, check_positive_int, check_tensor, sigma_view
from .._io import load_state, save_state
from .gaussian import gaussian_denoiser, shrinkage
from .empirical import random_subset
from .softmax import DEFAULT_CHUNK, SoftmaxSums

__all__ = ["Wiener"]



class Wiener:
    """Linear (Wiener) denoiser of the data covariance and the masked empirical denoiser it induces.

    Linear: D(x, σ) = μ + W_σ (x − μ),  W_σ = Σ (Σ + σ² I)⁻¹ = U diag(λ / (λ + σ²)) Uᵀ.
    Locality mask of pixel p at σ: the fewest pixels q (p always included) whose squared filter weights
    W_σ[p, q]² hold an `energy` fraction of row p's total (Lukoianov et al. 2025).
    Masked empirical ("masked", the default): D(x, σ)_p = Σ_n w_n^p x_n[p],
    w_n^p ∝ exp(−Σ_q M_σ[p, q] (x_q − x_n[q])² / 2σ²), streamed over the data with a running-max logsumexp.
    energy=1 gives masks that keep every pixel with a non-zero weight (the empirical denoiser when W_σ
    has no zero entries). `Wiener.fit(data, ...)` is the same as the constructor (which computes the covariance's
    eigenpairs and keeps the data).
    """

    kind = "wiener"
    MODES = ("masked", "linear")

    def __init__(self, data, *, mode: str = "masked", energy: float = 0.9, n_data: int | None = None,
                 seed: int = 0, chunk_size: int = DEFAULT_CHUNK, dtype=None, device=None):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}; got {mode!r}")
        self.mode = mode
        self.energy = check_fraction(energy, name="energy")
        if self.energy == 0:
            raise ValueError("energy must be in (0, 1]; got 0")
        self.chunk_size = check_positive_int(chunk_size, name="chunk_size")
        self.n_data, self.seed = n_data, seed
        full = check_data(data, name="data")
        dtype = dtype if dtype is not None else full.dtype
        flat = full.reshape(full.shape[0], -1).to(torch.float64)
        mean = flat.mean(0)
        cov = torch.cov(flat.T, correction=0) if flat.shape[0] > 1 else torch.zeros(flat.shape[1], flat.shape[1],
                                                                                     dtype=torch.float64)
        evals, evecs = torch.linalg.eigh(cov.reshape(flat.shape[1], flat.shape[1]))
        self.mean_ = mean.reshape(full.shape[1:]).to(device=device, dtype=dtype)
        self.eigvals_ = evals.clamp(min=0).to(device=device, dtype=dtype)
        self.eigvecs_ = evecs.to(device=device, dtype=dtype)
        self.data_ = random_subset(full, n_data, seed).to(device=device, dtype=dtype)

    @classmethod
    def fit(cls, data, **kwargs):
        """Same as the constructor."""
        return cls(data, **kwargs)

    @property
    def shape(self) -> tuple:
        return tuple(self.mean_.shape)

    shape_ = shape

    def filter(self, sigma: float) -> torch.Tensor:
        """W_σ = U diag(λ / (λ + σ²)) Uᵀ, [d, d] (the gains of `models.gaussian.shrinkage`)."""
        s2 = torch.full((1, 1), float(sigma) ** 2, dtype=self.eigvals_.dtype, device=self.eigvals_.device)
        return (self.eigvecs_ * shrinkage(self.eigvals_, s2)) @ self.eigvecs_.T

    def masks(self, sigma: float) -> torch.Tensor:
        """Boolean [d, d]: row p = the locality mask of pixel p at σ."""
        w2 = self.filter(sigma) ** 2
        d = w2.shape[0]
        eye = torch.eye(d, dtype=torch.bool, device=w2.device)
        w2 = torch.where(eye, torch.full_like(w2, math.inf), w2)       # p first, always kept
        vals, order = torch.sort(w2, dim=1, descending=True)
        vals[:, 0] = self.filter(sigma).diagonal() ** 2
        total = vals.sum(1, keepdim=True)
        before = torch.cumsum(vals, 1) - vals                            # energy of the entries ranked above
        keep = before < self.energy * total * (1 - 1e-12)
        keep[:, 0] = True
        if self.energy >= 1:
            keep |= vals > 0
        return torch.zeros_like(eye).scatter_(1, order, keep)

    def linear(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """μ + U diag(λ / (λ + σ²)) Uᵀ (x − μ), per-sample σ allowed (`models.gaussian.gaussian_denoiser`)."""
        check_tensor(x, name="x", min_ndim=2)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.shape))}]; got {tuple(x.shape)}")
        xf = x.to(self.mean_).reshape(x.shape[0], -1)
        s2 = sigma_view(sigma, xf).reshape(-1, 1) ** 2
        out = gaussian_denoiser(xf, s2, self.mean_.reshape(1, -1), self.eigvals_, self.eigvecs_)
        return out.reshape(x.shape).to(x.dtype)

    def masked(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The masked empirical denoiser with the locality masks at each sample's σ."""
        check_tensor(x, name="x", min_ndim=2)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.shape))}]; got {tuple(x.shape)}")
        s = sigma_view(sigma, x).reshape(-1).expand(x.shape[0])
        xd = x.to(self.data_).reshape(x.shape[0], -1)
        out = xd.clone()
        for v in torch.unique(s).tolist():
            if v == 0:
                continue
            sel = s == v
            out[sel] = self._masked(xd[sel], v)
        return out.reshape(x.shape).to(x.dtype)

    def _masked(self, x, sigma):
        m = self.masks(sigma).to(x.dtype)                                # [d, d]
        data = self.data_.reshape(self.data_.shape[0], -1)
        b, d = x.shape
        n_chunk = max(1, self.chunk_size // max(1, b * d))
        inv = 1.0 / (2 * sigma ** 2)
        sums = SoftmaxSums.empty((b, d), dtype=x.dtype, device=x.device)  # one softmax over n per output pixel
        for a in range(0, data.shape[0], n_chunk):
            xn = data[a:a + n_chunk]                                     # [n, d]
            diff2 = (x[:, None, :] - xn[None, :, :]) ** 2                # [B, n, d]
            logits = (diff2 @ m.T).mul_(-inv)                            # [B, n, d]: −Σ_q M[p,q](x_q − x_nq)²/2σ²
            w = sums.weights(logits, dim=1)
            sums.add(w.sum(1), (w * xn[None]).sum(1))
        return sums.mean()

    @torch.no_grad()
    def __call__(self, x, sigma):
        return self.linear(x, sigma) if self.mode == "linear" else self.masked(x, sigma)

    def score(self, x, sigma):
        return (self(x, sigma) - x) / sigma_view(sigma, x, allow_zero=False) ** 2

    def to(self, device=None, dtype=None):
        new = object.__new__(Wiener)
        new.__dict__.update(self.__dict__)
        for k in ("mean_", "eigvals_", "eigvecs_", "data_"):
            setattr(new, k, getattr(self, k).to(device=device, dtype=dtype))
        return new

    def save(self, path) -> None:
        save_state(path, {"mean": self.mean_, "eigvals": self.eigvals_, "eigvecs": self.eigvecs_,
                          "data": self.data_}, kind=self.kind,
                   config=dict(mode=self.mode, energy=self.energy, n_data=self.n_data, seed=self.seed,
                               chunk_size=self.chunk_size))

    @classmethod
    def load(cls, path, device=None):
        tensors, _, cfg = load_state(path, kind=cls.kind, device=device)
        new = object.__new__(cls)
        new.mode, new.energy, new.chunk_size = cfg["mode"], cfg["energy"], cfg["chunk_size"]
        new.n_data, new.seed = cfg.get("n_data"), cfg.get("seed", 0)
        new.mean_, new.eigvals_, new.eigvecs_ = tensors["mean"], tensors["eigvals"], tensors["eigvecs"]
        new.data_ = tensors["data"]
        return new

    def __repr__(self):
        return f"Wiener(mode={self.mode!r}, energy={self.energy}, n={self.data_.shape[0]}, shape={self.shape})"
