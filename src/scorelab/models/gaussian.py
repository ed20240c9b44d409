"""The Gaussian closed form: x0 ~ N(μ, Σ), Σ = U diag(λ) Uᵀ + ρ (I − U Uᵀ).

With x_σ = x0 + σ ε the noised marginal is N(μ, Σ + σ² I), and everything is exact in Σ's eigenbasis:

    D(x, σ)  = μ + U diag(λ / (λ + σ²)) Uᵀ (x − μ) + ρ / (ρ + σ²) · (I − U Uᵀ)(x − μ)
    x_σ      = μ + U diag(√((λ + σ²) / (λ + σ_T²))) Uᵀ (x_T − μ) + √((ρ + σ²) / (ρ + σ_T²)) · (I − U Uᵀ)(x_T − μ)

the second being the probability-flow ODE dx/dσ = (x − D(x, σ)) / σ solved from x_T at σ_T.
Wang & Vastola, "The Unreasonable Effectiveness of Gaussian Score Approximation for Diffusion Models and its
Applications" (TMLR 2024).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .._checks import check_data, check_positive_int, check_sigma, check_sigmas, check_tensor, sigma_view
from .._io import load_state, save_state
from .conditional import ByClass, class_indices

__all__ = ["Gaussian", "gaussian_denoiser", "shrinkage"]


def _as_float64(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a tensor or array of floats; got {type(value).__name__}") from None


class Gaussian(ByClass):
    """Gaussian closed form (mean + top-r covariance eigenpairs): exact denoiser, score, log-density, PF-ODE.

    x0 ~ N(mean_, U diag(eigvals_) Uᵀ + residual_var_ · (I − U Uᵀ)), U = eigvecs_ ([d, r], orthonormal columns).

    Build it with `Gaussian.fit(data, rank=...)` or directly from its parameters:
    `Gaussian(mean, eigvals, eigvecs, residual_var=0.0)` with `mean` of the sample shape (e.g. [1, 28, 28] or [d]),
    `eigvals` [r] ≥ 0 and `eigvecs` [d, r]. The residual variance ρ applies to the d − r directions orthogonal
    to U (ignored when r = d). Computation happens in `dtype` (float64 by default); inputs are cast to it and
    results returned in the input's dtype.

    Class-conditional: `Gaussian.fit(data, labels=y)` also fits one Gaussian per class (`class_models_`,
    `classes_`); every method then takes `class_labels` (None: the pooled Gaussian; an int or [B] ints: each
    row from its class's Gaussian), so the exact PF-ODE and teleportation hold per class
    (`scorelab.models.conditional`).
    """

    kind = "gaussian"

    def __init__(self, mean, eigvals, eigvecs, residual_var=0.0, *, dtype=None, device=None, n_samples=None):
        mean, eigvals, eigvecs = (_as_float64(v, n) for v, n in
                                  ((mean, "mean"), (eigvals, "eigvals"), (eigvecs, "eigvecs")))
        if mean.ndim < 1:
            raise ValueError("mean must have the sample shape (e.g. [d] or [C, H, W]); got a 0-d value")
        d = mean.numel()
        if eigvecs.ndim != 2 or eigvecs.shape[0] != d or eigvecs.shape[1] > d:
            raise ValueError(f"eigvecs must have shape [d, r] with d = mean.numel() = {d} and r <= d; "
                             f"got {tuple(eigvecs.shape)}")
        r = eigvecs.shape[1]
        if eigvals.ndim != 1 or eigvals.shape[0] != r:
            raise ValueError(f"eigvals must have shape [r] = [{r}] (one per column of eigvecs); got {tuple(eigvals.shape)}")
        for t, n in ((mean, "mean"), (eigvals, "eigvals"), (eigvecs, "eigvecs")):
            if not torch.isfinite(t).all():
                raise ValueError(f"{n} contains NaN or infinite values")
        if (eigvals < 0).any():
            raise ValueError(f"eigvals must be >= 0; got minimum {float(eigvals.min()):.4g}")
        residual_var = float(residual_var)
        if not (math.isfinite(residual_var) and residual_var >= 0):
            raise ValueError(f"residual_var must be a finite number >= 0; got {residual_var}")
        gram_err = float((eigvecs.T @ eigvecs - torch.eye(r, dtype=torch.float64, device=eigvecs.device)).abs().max()) \
            if r else 0.0
        if gram_err > 1e-4:
            raise ValueError(f"eigvecs must have orthonormal columns (UᵀU = I); max |UᵀU − I| = {gram_err:.3g}")
        dtype = torch.float64 if dtype is None else dtype
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
        device = torch.device(device) if device is not None else mean.device
        self.mean_ = mean.to(device=device, dtype=dtype)
        self.eigvals_ = eigvals.to(device=device, dtype=dtype)
        self.eigvecs_ = eigvecs.to(device=device, dtype=dtype)
        self.residual_var_ = residual_var if r < d else 0.0
        self.shape_ = tuple(mean.shape)
        self.rank_ = r
        self.n_samples_ = n_samples

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, data, *, rank=None, chunk_size: int = 4096, dtype=torch.float64, device=None, eps: float = 0.0,
            labels=None):
        """Fit mean and covariance of `data` [N, *shape] in one pass: a tensor, a numpy or memory-mapped array, or
        any lazily read array-like with `.shape`, `.ndim` and row slicing (scorelab.data.ArrayDataset).

        Streaming in float64 over chunks of `chunk_size` rows with Chan et al.'s pairwise update
        (n = n_a + n_b, δ = μ_b − μ_a, M = M_a + M_b + δδᵀ n_a n_b / n), so memory is O(chunk_size·d + d²).
        Covariance is the maximum-likelihood estimate Σ = M / N (divisor N, not N − 1), plus `eps`·I.
        `rank=None` keeps every eigenpair; `rank=r < d` keeps the top r and sets residual_var_ to the mean of
        the d − r dropped eigenvalues (an isotropic residual, so the trace of Σ is preserved).
        Eigenvalues are clamped at 0 and sorted descending; each eigenvector's sign is fixed so its
        largest-magnitude entry is positive.
        `labels` [N] (ints >= 0): also fit each class's rows alone (same options), a class-conditional model.
        """
        if labels is not None:
            groups = class_indices(labels, len(data))
            pooled = cls.fit(data, rank=rank, chunk_size=chunk_size, dtype=dtype, device=device, eps=eps)
            pooled._set_classes({c: cls.fit(_take(data, idx), rank=rank, chunk_size=chunk_size, dtype=dtype,
                                            device=device, eps=eps) for c, idx in groups.items()})
            return pooled
        chunk_size = check_positive_int(chunk_size, name="chunk_size")
        eps = float(eps)
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0; got {eps}")
        if not (isinstance(data, (torch.Tensor, np.ndarray)) or _array_like(data)):
            data = check_data(data, name="data")                        # lists etc.: converted whole
        if data.ndim < 2:
            raise ValueError(f"data must have shape [N, *shape] with at least 2 dims; got shape {tuple(data.shape)}")
        n_total, shape = data.shape[0], tuple(data.shape[1:])
        d = math.prod(shape)
        if rank is not None:
            rank = check_positive_int(rank, name="rank")
            if rank > d:
                raise ValueError(f"rank must be <= d = {d} (the number of features); got {rank}")
        device = torch.device(device) if device is not None else \
            (data.device if isinstance(data, torch.Tensor) else torch.device("cpu"))

        n, mean, m2 = 0, torch.zeros(d, dtype=torch.float64, device=device), \
            torch.zeros(d, d, dtype=torch.float64, device=device)
        for start in range(0, max(n_total, 1), chunk_size):
            chunk = data[start:start + chunk_size]
            if isinstance(chunk, np.ndarray):
                chunk = np.array(chunk)                                 # a writable copy of a (read-only) memmap
            chunk = check_data(chunk, name="data")                      # validated per chunk: memory bounded
            chunk = chunk.reshape(chunk.shape[0], d).to(device=device, dtype=torch.float64)
            n_b = chunk.shape[0]
            mean_b = chunk.mean(0)
            centred = chunk - mean_b
            m2_b = centred.T @ centred
            delta = mean_b - mean
            n_new = n + n_b
            m2 += m2_b + torch.outer(delta, delta) * (n * n_b / n_new)
            mean += delta * (n_b / n_new)
            n = n_new
        cov = m2 / n
        cov = (cov + cov.T) / 2
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        sign = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
        evecs = evecs * torch.where(sign == 0, 1.0, sign)
        r = d if rank is None else rank
        residual = float(evals[r:].mean()) + eps if r < d else 0.0
        return cls(mean.reshape(shape), evals[:r] + eps, evecs[:, :r], residual, dtype=dtype, device=device,
                   n_samples=n)

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.mean_.dtype

    @property
    def device(self) -> torch.device:
        return self.mean_.device

    @property
    def dim(self) -> int:
        return self.mean_.numel()

    @property
    def _has_residual(self) -> bool:
        return self.rank_ < self.dim

    @property
    def cov_(self) -> torch.Tensor:
        """Dense Σ = U diag(λ) Uᵀ + ρ (I − U Uᵀ), [d, d] (for small d)."""
        u = self.eigvecs_
        cov = (u * self.eigvals_) @ u.T
        if self._has_residual:
            cov = cov + self.residual_var_ * (torch.eye(self.dim, dtype=self.dtype, device=self.device) - u @ u.T)
        return cov

    def _flatten(self, x, name: str = "x") -> torch.Tensor:
        """x [B, *shape_] → [B, d] in the model's dtype and device."""
        x = check_tensor(x, name=name)
        if tuple(x.shape[1:]) != self.shape_:
            raise ValueError(f"{name} must have shape [B, {', '.join(map(str, self.shape_))}] (batch of the sample "
                             f"shape {self.shape_}); got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.dtype).reshape(x.shape[0], self.dim)

    def _sigma2(self, sigma, x: torch.Tensor, name: str = "sigma", allow_zero: bool = True) -> torch.Tensor:
        """σ² as a [B or 1, 1] column in the model's dtype."""
        return sigma_view(sigma, x, name=name, allow_zero=allow_zero).reshape(-1, 1) ** 2

    def _apply(self, z: torch.Tensor, coef_eig: torch.Tensor, coef_res) -> torch.Tensor:
        """U diag(coef_eig) Uᵀ z + coef_res · (I − U Uᵀ) z for z [..., B, d], coef_eig [..., B or 1, r]."""
        return eigen_apply(z, self.eigvecs_, coef_eig, coef_res if self._has_residual else None)

    def _singular(self) -> bool:
        return bool((self.eigvals_ == 0).any()) or (self._has_residual and self.residual_var_ == 0)

    # ------------------------------------------------------------------ the closed forms
    def __call__(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        """D(x, σ) = μ + U diag(λ/(λ+σ²)) Uᵀ(x−μ) + ρ/(ρ+σ²)·(I−UUᵀ)(x−μ), batched over [B, *shape].

        At σ = 0 the ratios take their σ → 0⁺ limit: 1 where the variance is > 0, 0 where it is 0. So D(x, 0)
        is the projection μ + P(x − μ) onto the support of the data Gaussian (x itself when Σ is full rank).
        `class_labels`: see the class docstring.
        """
        by_class = self._by_class("__call__", x, class_labels, sigma)
        if by_class is not None:
            return by_class
        xf = self._flatten(x)
        s2 = self._sigma2(sigma, xf)
        out = gaussian_denoiser(xf, s2, self.mean_.reshape(1, -1), self.eigvals_, self.eigvecs_,
                                self.residual_var_ if self._has_residual else None)
        if not self._singular() and bool((s2 == 0).any()):
            out = torch.where(s2 == 0, xf, out)                  # D(x, 0) = x exactly when Σ is full rank
        return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def score(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        """∇ log p_σ(x) = −(Σ + σ²I)⁻¹ (x − μ) = (D(x, σ) − x)/σ²; σ may be 0 only if Σ is positive definite."""
        by_class = self._by_class("score", x, class_labels, sigma)
        if by_class is not None:
            return by_class
        xf = self._flatten(x)
        s2 = self._sigma2(sigma, xf)
        self._check_invertible(s2, "score")
        z = xf - self.mean_.reshape(1, -1)
        out = -self._apply(z, 1 / (self.eigvals_ + s2), 1 / (self.residual_var_ + s2))
        return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def log_prob(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        """log N(x; μ, Σ + σ²I) per sample, [B]:
        −½ [d log 2π + Σ_i log(λ_i+σ²) + (d−r) log(ρ+σ²) + Σ_i c_i²/(λ_i+σ²) + ‖z⊥‖²/(ρ+σ²)], c = Uᵀz, z = x − μ."""
        by_class = self._by_class("log_prob", x, class_labels, sigma)
        if by_class is not None:
            return by_class
        xf = self._flatten(x)
        s2 = self._sigma2(sigma, xf)
        self._check_invertible(s2, "log_prob")
        z = xf - self.mean_.reshape(1, -1)
        c = z @ self.eigvecs_
        var = self.eigvals_ + s2
        quad = (c ** 2 / var).sum(-1)
        logdet = var.log().sum(-1)
        if self._has_residual:
            z_perp = z - c @ self.eigvecs_.T
            var_res = self.residual_var_ + s2.squeeze(-1)
            quad = quad + (z_perp ** 2).sum(-1) / var_res
            logdet = logdet + (self.dim - self.rank_) * var_res.log()
        out = -0.5 * (self.dim * math.log(2 * math.pi) + logdet + quad)
        return out.to(device=x.device, dtype=x.dtype)

    def _check_invertible(self, s2: torch.Tensor, what: str) -> None:
        if self._singular() and bool((s2 == 0).any()):
            raise ValueError(f"sigma must be > 0 for {what}: the covariance is singular (some eigvals_ or "
                             f"residual_var_ are 0), so the density at sigma = 0 does not exist")

    def sample(self, n: int, sigma=0.0, generator: torch.Generator | None = None,
               class_labels=None) -> torch.Tensor:
        """n exact draws from N(μ, Σ + σ²I): x = μ + (Σ + σ²I)^{1/2} ξ, ξ ~ N(0, I_d); shape [n, *shape_].
        `class_labels` (an int or [n] ints): draw row i from class class_labels[i]'s Gaussian."""
        n = check_positive_int(n, name="n")
        if class_labels is not None:
            return self._sample_by_class(n, class_labels, sigma, generator, self.mean_)
        s = check_sigma(sigma, name="sigma")
        if s.numel() != 1:
            raise ValueError(f"sigma must be a single noise level for sample; got shape {tuple(s.shape)}")
        s2 = s.reshape(1, 1).to(device=self.device, dtype=self.dtype) ** 2
        xi = torch.randn(n, self.dim, generator=generator, dtype=self.dtype, device=self.device)
        out = self.mean_.reshape(1, -1) + self._apply(xi, (self.eigvals_ + s2).sqrt(), (self.residual_var_ + s2).sqrt())
        return out.reshape(n, *self.shape_)

    def trajectory(self, x_T: torch.Tensor, sigmas, class_labels=None) -> torch.Tensor:
        """Exact PF-ODE solution dx/dσ = (x − D(x, σ))/σ from x_T at σ_T = sigmas[0], at every σ of the grid:
        x_σ = μ + U diag(√((λ+σ²)/(λ+σ_T²))) Uᵀ(x_T−μ) + √((ρ+σ²)/(ρ+σ_T²))·(I−UUᵀ)(x_T−μ).
        `sigmas`: strictly decreasing, non-negative (may end at a non-zero σ). Returns [len(sigmas), B, *shape].
        `class_labels`: each row follows its class's Gaussian (exact per class)."""
        by_class = self._by_class("trajectory", x_T, class_labels, sigmas, row_args=0, batch_dim=1)
        if by_class is not None:
            return by_class
        xf = self._flatten(x_T, "x_T")
        sig = check_sigmas(sigmas).to(device=self.device, dtype=self.dtype)
        s2 = (sig ** 2).reshape(-1, 1, 1)                     # [S, 1, 1]
        s2_T = s2[0]
        z = xf - self.mean_.reshape(1, -1)
        lam = self.eigvals_
        coef = ((lam + s2) / (lam + s2_T)).sqrt()             # [S, 1, r]
        coef_res = ((self.residual_var_ + s2) / (self.residual_var_ + s2_T)).sqrt()
        out = self.mean_.reshape(1, 1, -1) + self._apply(z.unsqueeze(0), coef, coef_res)
        return out.reshape(len(sig), *x_T.shape).to(device=x_T.device, dtype=x_T.dtype)

    # ------------------------------------------------------------------ plumbing
    def to(self, device=None, dtype=None) -> "Gaussian":
        """A copy on `device` with parameters in `dtype` (both default to the current ones)."""
        out = Gaussian(self.mean_, self.eigvals_, self.eigvecs_, self.residual_var_,
                       dtype=dtype or self.dtype, device=device or self.device, n_samples=self.n_samples_)
        if self.conditional:
            out._set_classes({c: m.to(device, dtype) for c, m in self.class_models_.items()})
        return out

    def _state(self, prefix: str = "") -> tuple[dict, dict]:
        tensors = {f"{prefix}mean": self.mean_, f"{prefix}eigvals": self.eigvals_, f"{prefix}eigvecs": self.eigvecs_}
        return tensors, dict(residual_var=self.residual_var_, n_samples=self.n_samples_)

    def save(self, path) -> None:
        """safetensors (mean, eigvals, eigvecs; per class `class{c}.mean` ...) + JSON header {shape, rank,
        residual_var, n_samples[, classes]}, atomic."""
        tensors, config = self._state()
        config.update(shape=list(self.shape_), rank=self.rank_, dtype=str(self.dtype).removeprefix("torch."))
        if self.conditional:
            config["classes"] = {}
            for c, m in self.class_models_.items():
                t, cfg = m._state(f"class{c}.")
                tensors.update(t)
                config["classes"][str(c)] = cfg
        save_state(path, tensors, kind=self.kind, config=config)

    @classmethod
    def load(cls, path, device=None) -> "Gaussian":
        t, _, config = load_state(path, kind=cls.kind, device=device)

        def build(prefix, cfg):
            return cls(t[f"{prefix}mean"], t[f"{prefix}eigvals"], t[f"{prefix}eigvecs"],
                       cfg.get("residual_var", 0.0), dtype=t[f"{prefix}mean"].dtype, device=t[f"{prefix}mean"].device,
                       n_samples=cfg.get("n_samples"))

        out = build("", config)
        if config.get("classes"):
            out._set_classes({int(c): build(f"class{c}.", cfg) for c, cfg in config["classes"].items()})
        return out

    def __repr__(self) -> str:
        res = f", residual_var={self.residual_var_:.4g}" if self._has_residual else ""
        cls = f", classes={list(self.classes_)}" if self.conditional else ""
        return f"Gaussian(shape={self.shape_}, rank={self.rank_}/{self.dim}{res}{cls}, dtype={self.dtype})"


def _take(data, idx: np.ndarray):
    """Rows `idx` of data (a tensor, an array or an array-like that takes index arrays)."""
    if isinstance(data, torch.Tensor):
        return data[torch.as_tensor(idx, device=data.device)]
    return data[idx]


def _array_like(data) -> bool:
    """Lazily read data sets (e.g. scorelab.data.ArrayDataset over a memory map): `.shape`, `.ndim`, row slicing."""
    return hasattr(data, "shape") and hasattr(data, "ndim") and hasattr(data, "__getitem__")


def gaussian_denoiser(x: torch.Tensor, sigma2: torch.Tensor, mean: torch.Tensor, eigvals: torch.Tensor,
                      eigvecs: torch.Tensor, residual_var=None) -> torch.Tensor:
    """The Gaussian denoiser in closed form, the one implementation every model that needs it calls:

        D_G(x, σ) = μ + U diag(λ / (λ + σ²)) Uᵀ (x − μ) [+ ρ / (ρ + σ²) · (I − U Uᵀ)(x − μ) if residual_var=ρ]

    for flattened x [B, d], σ² as a [B or 1, 1] column, μ [d] or [1, d], λ [r], U [d, r] (orthonormal columns);
    computed in the inputs' dtype. At σ = 0 each ratio takes its σ → 0⁺ limit (1 where the variance is > 0,
    0 where it is 0), so the result is the projection of x onto the Gaussian's support, never 0/0. Used by
    `Gaussian`, the Gaussian skip of `nets.precond.EDMPrecond` and `models.local_wiener.Wiener`'s linear mode."""
    sigma2 = one_row(sigma2)                      # one σ for the batch (samplers): gains [1, r], not [B, r]
    coef_res = None if residual_var is None else shrinkage(residual_var, sigma2)
    return mean + eigen_apply(x - mean, eigvecs, shrinkage(eigvals, sigma2), coef_res)


def eigen_apply(z: torch.Tensor, u: torch.Tensor, coef_eig: torch.Tensor, coef_res=None) -> torch.Tensor:
    """U diag(coef_eig) Uᵀ z (+ coef_res · (I − U Uᵀ) z) for z [..., B, d], U [d, r], coef_eig [..., B or 1, r].

    With one row of gains for a batch z [B, d] larger than U's shape makes worth it (d (r + B) < 2 B r: forming
    the d × d matrix, 2 d² r flops, plus one product, 2 B d², against two products, 4 B d r), it applies the
    matrix M = c I + U diag(coef_eig − c) Uᵀ (c = coef_res, or 0) instead: the same map, half the work at r = d."""
    d, r = u.shape[-2:]
    if z.ndim == 2 and u.ndim == 2 and coef_eig.numel() == r and d * (r + z.shape[0]) < 2 * z.shape[0] * r:
        gain = coef_eig.reshape(1, r)
        if coef_res is None:
            return z @ ((u * gain) @ u.T)
        c = torch.as_tensor(coef_res, dtype=z.dtype, device=z.device).reshape(1, 1)
        m = (u * (gain - c)) @ u.T
        m.diagonal().add_(c.reshape(()))
        return z @ m
    c = z @ u
    out = (c * coef_eig) @ u.T
    if coef_res is not None:
        out = out + coef_res * (z - c @ u.T)
    return out


def one_row(col: torch.Tensor) -> torch.Tensor:
    """A [B, 1] column of per-sample values (σ²) as its first row [1, 1] when all B rows are equal, else as it is:
    gains computed from it are then one row for the batch."""
    if col.ndim == 2 and col.shape[0] > 1 and bool((col == col[:1]).all()):
        return col[:1]
    return col


def shrinkage(var, s2: torch.Tensor) -> torch.Tensor:
    """var / (var + σ²), the Gaussian denoiser's gain along a direction of variance var, with the σ → 0⁺ limit at
    σ = 0 (1 if var > 0, 0 if var = 0): never 0/0."""
    var = torch.as_tensor(var, dtype=s2.dtype, device=s2.device)
    denom = var + s2
    return torch.where(denom > 0, var / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
