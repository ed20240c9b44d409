"""Linear inverse problems y = A x0 + σ_y ε in σ-space: operators, exact posteriors, posterior samplers.

Operators (`Inpaint`, `Downsample`, `Blur`, `Linear`) act on batches x [B, *shape] and give y [B, *out_shape]:
`op.A(x)`, its adjoint `op.AT(y)` (⟨A x, y⟩ = ⟨x, Aᵀ y⟩), `op.pinv(y)`, `op.gram_solve(v, α, β)` = (α I + β A Aᵀ)⁻¹ v
and `op.matrix(shape)`, the dense [m, d] matrix on flattened samples (for small problems and tests).

Exact posteriors (`exact_posterior`) for a Gaussian prior x0 ~ N(μ, Σ):

    E[x0 | y]   = μ + Σ Aᵀ (A Σ Aᵀ + σ_y² I)⁻¹ (y − A μ)
    Cov[x0 | y] = Σ − Σ Aᵀ (A Σ Aᵀ + σ_y² I)⁻¹ A Σ

and for a Gaussian mixture Σ_k π_k N(μ_k, Σ_k): every component is updated the same way and reweighted by
π_k N(y; A μ_k, A Σ_k Aᵀ + σ_y² I) (log-sum-exp). Computed in float64, never with a d×d inverse.

Posterior samplers for any denoiser D(x, σ) (`sample(..., method="dps"|"pigdm"|"dmps")`) use Bayes' rule for the
noised posterior, ∇ log p(x_σ | y) = ∇ log p_σ(x_σ) + ∇ log p(y | x_σ), which in denoiser form is Tweedie's
formula for the posterior:

    D_y(x, σ) = E[x0 | x_σ = x, y] = D(x, σ) + σ² ∇_x log p(y | x_σ = x).

ΠGDM and DMPS approximate p(y | x_σ) by a Gaussian and hand D_y to any scorelab sampler; DPS follows its paper's
algorithm (a correction step after each sampler step).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import pairwise

import torch

from ._checks import check_positive_int, check_sigmas, check_tensor
from .protocol import check_denoiser, check_extra_args, device_of, dtype_of, sample_shape

__all__ = ["Operator", "Inpaint", "Downsample", "Blur", "Linear", "gaussian_kernel", "exact_posterior",
           "GaussianPosterior", "MixturePosterior", "sample", "InverseResult", "METHODS", "psnr", "ssim"]

METHODS = ("exact", "dps", "pigdm", "dmps", "smc")
LOG_2PI = math.log(2 * math.pi)


def _check_sigma_y(sigma_y) -> float:
    try:
        s = float(sigma_y)
    except (TypeError, ValueError):
        raise TypeError(f"sigma_y must be a number > 0; got {type(sigma_y).__name__}") from None
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"sigma_y must be a finite number > 0 (the observation noise std); got {sigma_y}")
    return s


def _shape_str(shape) -> str:
    return "[B, " + ", ".join(map(str, shape)) + "]"


# ============================================================================================== operators
class Operator:
    """A linear measurement operator on samples [B, *shape]. Subclasses define `A`, `AT`, `output_shape`,
    `input_shape`, `matrix`; `pinv` and `gram_solve` where they are cheap (a dense fallback otherwise)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    def A(self, x: torch.Tensor) -> torch.Tensor:            # pragma: no cover - interface
        raise NotImplementedError

    def AT(self, y: torch.Tensor) -> torch.Tensor:           # pragma: no cover - interface
        raise NotImplementedError

    def output_shape(self, shape) -> tuple[int, ...]:        # pragma: no cover - interface
        raise NotImplementedError

    def input_shape(self, out_shape) -> tuple[int, ...]:     # pragma: no cover - interface
        raise NotImplementedError

    def matrix(self, shape=None) -> torch.Tensor:            # pragma: no cover - interface
        raise NotImplementedError

    def gram_solve(self, v: torch.Tensor, alpha: float, beta) -> torch.Tensor:
        """(α I + β A Aᵀ)⁻¹ v for v [B, *out_shape]; β a float or a [B] tensor (one per sample). Dense fallback."""
        shape = self.input_shape(tuple(v.shape[1:]))
        a = self.matrix(shape).to(device=v.device, dtype=v.dtype)
        lam, q = torch.linalg.eigh(a @ a.T)
        c = v.reshape(v.shape[0], -1) @ q
        c = c / (alpha + _per_sample(beta, v, 2) * lam)
        return (c @ q.T).reshape(v.shape)

    def _check_x(self, x, shape=None, name="x") -> torch.Tensor:
        x = check_tensor(x, name=name, min_ndim=2, finite=False)
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"{name} must have shape {_shape_str(shape)}; got {tuple(x.shape)}")
        return x


def _per_sample(value, like: torch.Tensor, ndim: int):
    """A float, or a [B] tensor viewed as [B, 1, ..., 1] (ndim dims) in like's dtype/device."""
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (ndim - 1)))
    return float(value)


class Inpaint(Operator):
    """Keep the pixels where `mask` is 1: y = x[mask] ∈ ℝ^m (m = number of kept pixels), so A A ᵀ = I_m.

    `mask`: a bool (or 0/1) tensor of the sample shape, e.g. [1, 28, 28]. Aᵀ y puts y back and zeros the rest;
    pinv(y) = Aᵀ y (the Moore–Penrose pseudo-inverse of a row selection)."""

    def __init__(self, mask):
        mask = torch.as_tensor(mask)
        if mask.ndim < 1:
            raise ValueError("mask must have the sample shape (e.g. [1, 28, 28] or [d]); got a 0-d value")
        if mask.dtype != torch.bool:
            if not ((mask == 0) | (mask == 1)).all():
                raise ValueError("mask must hold only 0/1 (or bool) values")
            mask = mask != 0
        if not mask.any():
            raise ValueError("mask must keep at least one pixel; it is all zero")
        self.mask = mask
        self.shape = tuple(mask.shape)
        self.index = mask.flatten().nonzero().flatten()
        self.m = int(self.index.numel())

    def output_shape(self, shape=None) -> tuple[int, ...]:
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"mask has shape {list(self.shape)} but the samples have shape {list(shape)}: the mask "
                             f"must have the sample shape")
        return (self.m,)

    def input_shape(self, out_shape=None) -> tuple[int, ...]:
        if out_shape is not None and tuple(out_shape) != (self.m,):
            raise ValueError(f"y must have shape [B, {self.m}] (the {self.m} kept pixels); got sample shape "
                             f"{list(out_shape)}")
        return self.shape

    def _check_x(self, x, shape=None, name="x"):
        x = check_tensor(x, name=name, min_ndim=2, finite=False)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{name} has sample shape {list(x.shape[1:])} but the mask has shape {list(self.shape)}: "
                             f"the mask must have the sample shape")
        return x

    def A(self, x):
        x = self._check_x(x)
        return x.reshape(x.shape[0], -1)[:, self.index.to(x.device)]

    def AT(self, y):
        y = check_tensor(y, name="y", min_ndim=2, finite=False)
        self.input_shape(tuple(y.shape[1:]))
        out = y.new_zeros(y.shape[0], self.mask.numel())
        out[:, self.index.to(y.device)] = y
        return out.reshape(y.shape[0], *self.shape)

    def pinv(self, y):
        return self.AT(y)

    def gram_solve(self, v, alpha, beta):
        return v / (alpha + _per_sample(beta, v, v.ndim))

    def matrix(self, shape=None) -> torch.Tensor:
        self.output_shape(shape)
        return torch.eye(self.mask.numel(), dtype=torch.float64)[self.index]

    def __repr__(self):
        return f"Inpaint(shape={list(self.shape)}, kept={self.m})"


class Downsample(Operator):
    """Average pooling of the last two (H, W) dims by an integer `factor` f: y[.., i, j] = mean of the f×f block.

    Aᵀ y replicates each value over its block divided by f²; A Aᵀ = I / f², so pinv(y) = f² Aᵀ y (nearest-neighbour
    upsampling). H and W must be multiples of f."""

    def __init__(self, factor: int):
        self.factor = check_positive_int(factor, name="factor")

    def _hw(self, shape, name="x"):
        if len(shape) < 2:
            raise ValueError(f"{name} must be images [B, ..., H, W] for Downsample; got sample shape {list(shape)}")
        h, w = shape[-2:]
        f = self.factor
        if h % f or w % f:
            raise ValueError(f"factor {f} must divide the image size {h}×{w}")
        return h, w

    def output_shape(self, shape) -> tuple[int, ...]:
        h, w = self._hw(tuple(shape))
        return (*shape[:-2], h // self.factor, w // self.factor)

    def input_shape(self, out_shape) -> tuple[int, ...]:
        if len(out_shape) < 2:
            raise ValueError(f"y must be images [B, ..., h, w] for Downsample; got sample shape {list(out_shape)}")
        return (*out_shape[:-2], out_shape[-2] * self.factor, out_shape[-1] * self.factor)

    def A(self, x):
        x = self._check_x(x)
        h, w = self._hw(tuple(x.shape[1:]))
        f = self.factor
        return x.reshape(*x.shape[:-2], h // f, f, w // f, f).mean(dim=(-3, -1))

    def AT(self, y):
        y = check_tensor(y, name="y", min_ndim=3, finite=False)
        f = self.factor
        return y.repeat_interleave(f, -2).repeat_interleave(f, -1) / f ** 2

    def pinv(self, y):
        return self.AT(y) * self.factor ** 2

    def gram_solve(self, v, alpha, beta):
        return v / (alpha + _per_sample(beta, v, v.ndim) / self.factor ** 2)

    def matrix(self, shape) -> torch.Tensor:
        shape = tuple(shape)
        h, w = self._hw(shape)
        f = self.factor

        def pool(n):                                         # [n/f, n]: row i averages inputs f·i .. f·i + f − 1
            p = torch.zeros(n // f, n, dtype=torch.float64)
            for i in range(n // f):
                p[i, f * i:f * i + f] = 1.0 / f
            return p

        lead = math.prod(shape[:-2])
        return torch.kron(torch.eye(lead, dtype=torch.float64), torch.kron(pool(h), pool(w)))

    def __repr__(self):
        return f"Downsample(factor={self.factor})"


def gaussian_kernel(std: float, size: int | None = None) -> torch.Tensor:
    """A normalised 2-D Gaussian kernel [size, size] (float64), size = 2·⌈3·std⌉ + 1 by default."""
    std = float(std)
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"std must be a finite number > 0; got {std}")
    size = 2 * math.ceil(3 * std) + 1 if size is None else check_positive_int(size, name="size")
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t ** 2 / (2 * std ** 2))
    k = torch.outer(g, g)
    return k / k.sum()


class Blur(Operator):
    """Convolution of the last two (H, W) dims with a given 2-D `kernel` [kh, kw], with a **circular** (periodic)
    boundary, so A is diagonal in the 2-D DFT:

        y[i, j] = Σ_(a, b) k[a, b] · x[(i − a + kh//2) mod H, (j − b + kw//2) mod W],   ŷ = K̂ · x̂,

    K̂ the DFT of the kernel centred at (kh//2, kw//2) (= `torch.nn.functional.conv2d` of the circularly padded
    image with the flipped kernel). Aᵀ multiplies by conj(K̂), A Aᵀ by |K̂|².

    `pinv(y, eps=0)`: the Moore–Penrose pseudo-inverse conj(K̂)/|K̂|² on frequencies with
    |K̂|² > rcond·max|K̂|² (rcond = 1e-10) and 0 elsewhere; with eps > 0 the Tikhonov-regularised inverse
    conj(K̂)/(|K̂|² + eps) instead (a pseudo-inverse amplifies noise at frequencies the kernel nearly removes)."""

    rcond = 1e-10

    def __init__(self, kernel):
        kernel = torch.as_tensor(kernel, dtype=torch.float64) if not isinstance(kernel, torch.Tensor) else \
            kernel.detach().to(torch.float64)
        if kernel.ndim != 2 or kernel.numel() == 0:
            raise ValueError(f"kernel must be a 2-D tensor [kh, kw]; got shape {tuple(kernel.shape)}")
        if not torch.isfinite(kernel).all():
            raise ValueError("kernel contains NaN or infinite values")
        self.kernel = kernel
        self._cache = {}

    def _hw(self, shape, name="x"):
        if len(shape) < 2:
            raise ValueError(f"{name} must be images [B, ..., H, W] for Blur; got sample shape {list(shape)}")
        h, w = shape[-2:]
        kh, kw = self.kernel.shape
        if kh > h or kw > w:
            raise ValueError(f"kernel of size {kh}×{kw} is larger than the image size {h}×{w}")
        return h, w

    def output_shape(self, shape) -> tuple[int, ...]:
        self._hw(tuple(shape))
        return tuple(shape)

    def input_shape(self, out_shape) -> tuple[int, ...]:
        self._hw(tuple(out_shape), name="y")
        return tuple(out_shape)

    def spectrum(self, h: int, w: int, device=None, dtype=torch.float64) -> torch.Tensor:
        """K̂ [h, w] (complex): the DFT of the kernel placed with its centre (kh//2, kw//2) at pixel (0, 0)."""
        key = (h, w, str(device), dtype)
        if key not in self._cache:
            kh, kw = self.kernel.shape
            pad = torch.zeros(h, w, dtype=torch.float64)
            pad[:kh, :kw] = self.kernel
            pad = torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
            self._cache[key] = torch.fft.fft2(pad).to(device=device, dtype=_complex(dtype))
        return self._cache[key]

    def _apply(self, x, fn, name="x"):
        x = check_tensor(x, name=name, min_ndim=3, finite=False)
        h, w = self._hw(tuple(x.shape[1:]), name)
        k = self.spectrum(h, w, x.device, x.dtype)
        return torch.fft.ifft2(torch.fft.fft2(x) * fn(k)).real.to(x.dtype)

    def A(self, x):
        return self._apply(x, lambda k: k)

    def AT(self, y):
        return self._apply(y, torch.conj, "y")

    def pinv(self, y, eps: float = 0.0):
        eps = float(eps)
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0; got {eps}")

        def inverse(k):
            k2 = k.abs() ** 2
            if eps > 0:
                return k.conj() / (k2 + eps)
            keep = k2 > self.rcond * k2.max()
            return torch.where(keep, k.conj() / torch.where(keep, k2, torch.ones_like(k2)), torch.zeros_like(k))

        return self._apply(y, inverse, "y")

    def gram_solve(self, v, alpha, beta):
        h, w = self._hw(tuple(v.shape[1:]), "v")
        k2 = self.spectrum(h, w, v.device, v.dtype).abs() ** 2
        denom = alpha + _per_sample(beta, v, v.ndim) * k2
        return torch.fft.ifft2(torch.fft.fft2(v) / denom).real.to(v.dtype)

    def matrix(self, shape) -> torch.Tensor:
        shape = tuple(shape)
        h, w = self._hw(shape)
        kh, kw = self.kernel.shape
        m2 = torch.zeros(h * w, h * w, dtype=torch.float64)
        for i in range(h):
            for j in range(w):
                for a in range(kh):
                    for b in range(kw):
                        p, q = (i - a + kh // 2) % h, (j - b + kw // 2) % w
                        m2[i * w + j, p * w + q] += self.kernel[a, b]
        lead = math.prod(shape[:-2])
        return torch.kron(torch.eye(lead, dtype=torch.float64), m2)

    def __repr__(self):
        return f"Blur(kernel={list(self.kernel.shape)}, boundary='circular')"


def _complex(dtype):
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class Linear(Operator):
    """A dense matrix A [m, d] on flattened samples: y = A · vec(x). `shape`: the sample shape (default (d,)).
    pinv uses torch.linalg.pinv (computed once, float64); gram_solve the eigendecomposition of A Aᵀ."""

    def __init__(self, A, shape=None):
        a = torch.as_tensor(A) if not isinstance(A, torch.Tensor) else A.detach()
        if a.ndim != 2 or a.numel() == 0:
            raise ValueError(f"A must be a 2-D matrix [m, d]; got shape {tuple(a.shape)}")
        self.a = a.to(torch.float64)
        if not torch.isfinite(self.a).all():
            raise ValueError("A contains NaN or infinite values")
        m, d = self.a.shape
        self.shape = (d,) if shape is None else tuple(int(s) for s in shape)
        if math.prod(self.shape) != d:
            raise ValueError(f"shape {list(self.shape)} has {math.prod(self.shape)} entries but A has d = {d} columns")
        self.m = m
        self._pinv = self._eig = None

    def output_shape(self, shape=None) -> tuple[int, ...]:
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"A acts on samples of shape {list(self.shape)}; got sample shape {list(shape)}")
        return (self.m,)

    def input_shape(self, out_shape=None) -> tuple[int, ...]:
        if out_shape is not None and tuple(out_shape) != (self.m,):
            raise ValueError(f"y must have shape [B, {self.m}] (A has {self.m} rows); got sample shape "
                             f"{list(out_shape)}")
        return self.shape

    def _mat(self, like):
        return self.a.to(device=like.device, dtype=like.dtype)

    def A(self, x):
        x = self._check_x(x, self.shape)
        return x.reshape(x.shape[0], -1) @ self._mat(x).T

    def AT(self, y):
        y = self._check_x(y, (self.m,), name="y")
        return (y @ self._mat(y)).reshape(y.shape[0], *self.shape)

    def pinv(self, y):
        y = self._check_x(y, (self.m,), name="y")
        if self._pinv is None:
            self._pinv = torch.linalg.pinv(self.a)
        return (y @ self._pinv.to(device=y.device, dtype=y.dtype).T).reshape(y.shape[0], *self.shape)

    def gram_solve(self, v, alpha, beta):
        v = self._check_x(v, (self.m,), name="v")
        if self._eig is None:
            self._eig = torch.linalg.eigh(self.a @ self.a.T)
        lam, q = (t.to(device=v.device, dtype=v.dtype) for t in self._eig)
        return ((v @ q) / (alpha + _per_sample(beta, v, 2) * lam)) @ q.T

    def matrix(self, shape=None) -> torch.Tensor:
        self.output_shape(shape)
        return self.a.clone()

    def __repr__(self):
        return f"Linear(m={self.m}, shape={list(self.shape)})"


def _check_op(op) -> Operator:
    if not isinstance(op, Operator):
        raise TypeError(f"op must be a scorelab.inverse operator (Inpaint, Downsample, Blur, Linear); "
                        f"got {type(op).__name__}")
    return op


def _check_y(op: Operator, y, shape) -> torch.Tensor:
    """One observation y of shape out_shape or [1, *out_shape] → [1, *out_shape]; errors name y and the shape."""
    expected = op.output_shape(shape)
    y = check_tensor(y, name="y", min_ndim=1)
    if tuple(y.shape) == expected:
        y = y.unsqueeze(0)
    if tuple(y.shape) != (1, *expected):
        raise ValueError(f"y must have shape {list(expected)} (A applied to samples of shape {list(shape)}), or "
                         f"[1, {', '.join(map(str, expected))}]; got {tuple(y.shape)}")
    return y


# ============================================================================================== exact posteriors
class _Prior:
    """x0 ~ N(mean, U diag(lam) Uᵀ + rho (I − U Uᵀ)) in float64, flattened; rho a float, or a [d] vector when U is
    empty (a diagonal covariance)."""

    def __init__(self, mean, u, lam, rho):
        self.mean, self.u, self.lam, self.rho = mean, u, lam, rho
        self.d, self.r = u.shape
        self.has_residual = self.r < self.d and bool(torch.as_tensor(rho).ne(0).any())

    def apply(self, z):
        """Σ z for z [B, d]."""
        c = z @ self.u
        out = (c * self.lam) @ self.u.T
        if self.has_residual:
            out = out + self.rho * (z - c @ self.u.T)
        return out

    def sample(self, n, generator):
        xi = _randn((n, self.d), generator, self.mean)
        c = xi @ self.u
        out = self.mean + (c * self.lam.sqrt()) @ self.u.T
        if self.has_residual:
            out = out + torch.as_tensor(self.rho, dtype=xi.dtype, device=xi.device).sqrt() * (xi - c @ self.u.T)
        return out

    def dense(self):
        return self.apply(torch.eye(self.d, dtype=self.mean.dtype, device=self.mean.device))


def _randn(shape, generator, like):
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, dtype=torch.float64, device=device).to(like.device)


def _gaussian_prior(g) -> _Prior:
    f64 = dict(dtype=torch.float64)
    u = g.eigvecs_.to(**f64)
    rho = float(g.residual_var_) if u.shape[1] < u.shape[0] else 0.0
    return _Prior(g.mean_.to(**f64).reshape(-1), u, g.eigvals_.to(**f64), rho)


def _gmm_priors(g) -> list[_Prior]:
    f64 = dict(dtype=torch.float64)
    means = g.means_.to(**f64).reshape(g.n_components, -1)
    out = []
    for k in range(g.n_components):
        if g.covariance == "diag":
            d = means.shape[1]
            out.append(_Prior(means[k], means.new_zeros(d, 0), means.new_zeros(0), g.variances_[k].to(**f64)))
        else:
            u = g.eigvecs_[k].to(**f64)
            rho = float(g.residual_var_[k]) if u.shape[1] < u.shape[0] else 0.0
            out.append(_Prior(means[k], u, g.eigvals_[k].to(**f64), rho))
    return out


class GaussianPosterior:
    """The exact posterior N(mean_, cov_) of x0 given y = A x0 + σ_y ε under a Gaussian prior N(μ, Σ),
    Σ = U diag(λ) Uᵀ + ρ (I − U Uᵀ), in float64. Two exact routes, the smaller system chosen (`route_`):

    - "eigenbasis" (no residual variance, ρ = 0, and r ≤ m): x0 = μ + F z, F = U diag(√λ), z ~ N(0, I_r); with
      B = A F [m, r] the posterior of z has precision P = I_r + BᵀB/σ_y² and mean P⁻¹Bᵀ(y − Aμ)/σ_y² (an r×r
      Cholesky factor); log p(y) by the matrix-determinant lemma and Woodbury.
    - "observation" (otherwise): G = Σ Aᵀ [d, m], S = A G + σ_y² I_m (an m×m Cholesky factor); mean
      μ + G S⁻¹(y − Aμ); exact draws by Matheron's rule x + G S⁻¹(y − A x − σ_y ξ), x ~ N(μ, Σ), ξ ~ N(0, I_m).

    Attributes: mean_ [*shape], shape_, route_, log_evidence_ = log N(y; Aμ, AΣAᵀ + σ_y²I); cov_ (dense [d, d],
    formed on request). Methods: sample(n, generator=), log_prob(x) (dense; small d), to_gaussian()."""

    def __init__(self, prior: _Prior, op: Operator, y: torch.Tensor, sigma_y: float, shape):
        self.shape_, self.sigma_y = tuple(shape), sigma_y
        self._prior, self._op = prior, op
        dev, d = prior.mean.device, prior.d
        yf = y.to(device=dev, dtype=torch.float64).reshape(-1)
        m = yf.numel()
        self.m, self._y = m, yf
        resid = yf - op.A(prior.mean.reshape(1, *shape)).reshape(-1)
        s2 = sigma_y ** 2
        if not prior.has_residual and prior.r <= m:
            self.route_ = "eigenbasis"
            f = prior.u * prior.lam.sqrt()                                 # [d, r]
            b = op.A(f.T.reshape(prior.r, *shape)).reshape(prior.r, m).T   # [m, r]
            p = torch.eye(prior.r, dtype=torch.float64, device=dev) + b.T @ b / s2
            chol = torch.linalg.cholesky(p)
            bv = b.T @ resid
            mz = torch.cholesky_solve(bv[:, None], chol)[:, 0] / s2
            self._f, self._chol, self._mz = f, chol, mz
            self.mean_flat = prior.mean + f @ mz
            logdet = m * math.log(s2) + 2 * chol.diagonal().log().sum()
            quad = (resid @ resid - bv @ mz) / s2
        else:
            self.route_ = "observation"
            a_rows = op.AT(torch.eye(m, dtype=torch.float64, device=dev).reshape(m, *op.output_shape(shape)))
            gt = prior.apply(a_rows.reshape(m, d))                        # rows of (Σ Aᵀ)ᵀ = A Σ, [m, d]
            s = op.A(gt.reshape(m, *shape)).reshape(m, m)
            s = (s + s.T) / 2 + s2 * torch.eye(m, dtype=torch.float64, device=dev)
            chol = torch.linalg.cholesky(s)
            k = torch.cholesky_solve(resid[:, None], chol)[:, 0]
            self._gt, self._chol = gt, chol
            self.mean_flat = prior.mean + gt.T @ k
            logdet = 2 * chol.diagonal().log().sum()
            quad = resid @ k
        self.mean_ = self.mean_flat.reshape(self.shape_)
        self.log_evidence_ = float(-0.5 * (m * LOG_2PI + logdet + quad))

    @property
    def dim(self) -> int:
        return self._prior.d

    @property
    def cov_(self) -> torch.Tensor:
        """Dense posterior covariance [d, d] (float64): F P⁻¹ Fᵀ, or Σ − G S⁻¹ Gᵀ."""
        if self.route_ == "eigenbasis":
            w = torch.linalg.solve_triangular(self._chol, self._f.T, upper=False)   # L⁻¹ Fᵀ
            return w.T @ w
        w = torch.linalg.solve_triangular(self._chol, self._gt, upper=False)        # L⁻¹ G ᵀ
        cov = self._prior.dense() - w.T @ w
        return (cov + cov.T) / 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws [n, *shape] (float64) from the posterior."""
        n = check_positive_int(n, name="n")
        if self.route_ == "eigenbasis":
            xi = _randn((self._f.shape[1], n), generator, self.mean_flat)
            z = self._mz[:, None] + torch.linalg.solve_triangular(self._chol.T, xi, upper=True)   # cov P⁻¹
            return (self._prior.mean[:, None] + self._f @ z).T.reshape(n, *self.shape_)
        x = self._prior.sample(n, generator)
        y_sim = self._op.A(x.reshape(n, *self.shape_)).reshape(n, self.m) \
            + self.sigma_y * _randn((n, self.m), generator, x)
        y = self._y
        k = torch.cholesky_solve((y[None, :] - y_sim).T, self._chol)              # [m, n]
        return (x + (self._gt.T @ k).T).reshape(n, *self.shape_)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; mean_, cov_) per sample [B] via the dense covariance (small d; cov_ must be non-singular)."""
        xf = check_tensor(x, name="x", min_ndim=2).reshape(x.shape[0], -1).to(self.mean_flat)
        if xf.shape[1] != self.dim:
            raise ValueError(f"x must have shape {_shape_str(self.shape_)}; got {tuple(x.shape)}")
        chol, info = torch.linalg.cholesky_ex(self.cov_)
        if int(info) != 0:
            raise ValueError("the posterior covariance is singular (a low-rank prior): log_prob does not exist")
        z = torch.linalg.solve_triangular(chol, (xf - self.mean_flat).T, upper=False)
        return -0.5 * (self.dim * LOG_2PI + 2 * chol.diagonal().log().sum() + (z ** 2).sum(0))

    def to_gaussian(self):
        """The posterior as a `scorelab.Gaussian` (dense eigendecomposition of cov_, d×d): its denoiser, score and
        PF-ODE are those of the posterior p(x_σ | y)."""
        from .models.gaussian import Gaussian

        lam, u = torch.linalg.eigh(self.cov_)
        return Gaussian(self.mean_, lam.flip(0).clamp_min(0), u.flip(1), dtype=torch.float64)

    def __repr__(self):
        return f"GaussianPosterior(shape={self.shape_}, route={self.route_!r}, log_evidence={self.log_evidence_:.4g})"


class MixturePosterior:
    """The exact posterior of a Gaussian-mixture prior Σ_k π_k N(μ_k, Σ_k): Σ_k w_k N(mean_k, cov_k) with each
    component's `GaussianPosterior` and w_k ∝ π_k N(y; A μ_k, A Σ_k Aᵀ + σ_y² I) (normalised by log-sum-exp).

    Attributes: components_, weights_ [K], log_evidence_ = log p(y), mean_; cov_ (dense, small d); sample(n)."""

    def __init__(self, components: list[GaussianPosterior], log_prior_weights: torch.Tensor):
        self.components_ = components
        logw = log_prior_weights + torch.tensor([c.log_evidence_ for c in components], dtype=torch.float64,
                                                device=log_prior_weights.device)
        self.log_evidence_ = float(torch.logsumexp(logw, 0))
        self.weights_ = torch.softmax(logw, 0)
        self.shape_ = components[0].shape_
        means = torch.stack([c.mean_flat for c in components])
        self.mean_flat = self.weights_.to(means.device) @ means
        self.mean_ = self.mean_flat.reshape(self.shape_)

    @property
    def cov_(self) -> torch.Tensor:
        """Σ_k w_k (cov_k + m_k m_kᵀ) − m mᵀ, dense [d, d]."""
        out = -torch.outer(self.mean_flat, self.mean_flat)
        for w, c in zip(self.weights_.tolist(), self.components_):
            out = out + w * (c.cov_ + torch.outer(c.mean_flat, c.mean_flat))
        return (out + out.T) / 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws: a component by its posterior weight, then an exact draw from that component."""
        n = check_positive_int(n, name="n")
        which = torch.multinomial(self.weights_.cpu(), n, replacement=True, generator=_cpu(generator))
        out = torch.empty(n, *self.shape_, dtype=torch.float64, device=self.mean_flat.device)
        for k in which.unique().tolist():
            idx = (which == k).nonzero().flatten()
            out[idx.to(out.device)] = self.components_[k].sample(len(idx), generator=generator)
        return out

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log Σ_k w_k N(x; mean_k, cov_k) [B] (dense; small d)."""
        lp = torch.stack([c.log_prob(x) for c in self.components_], 1)
        return torch.logsumexp(lp + self.weights_.log().to(lp.device), 1)

    def __repr__(self):
        return f"MixturePosterior(components={len(self.components_)}, log_evidence={self.log_evidence_:.4g})"


def _cpu(generator):
    return generator if generator is None or generator.device.type == "cpu" else None


def exact_posterior(prior, op: Operator, y, sigma_y: float):
    """The exact posterior of x0 given y = A x0 + σ_y ε, for a `scorelab.Gaussian` or `scorelab.GMM` prior
    (see `GaussianPosterior` and `MixturePosterior`). `y`: one observation, shape op.output_shape(prior.shape_)
    (or with a leading batch dimension of 1). Float64 on the prior's device."""
    from .models.gaussian import Gaussian
    from .models.gmm import GMM

    op = _check_op(op)
    sigma_y = _check_sigma_y(sigma_y)
    if isinstance(prior, Gaussian):
        y1 = _check_y(op, y, prior.shape_)
        return GaussianPosterior(_gaussian_prior(prior), op, y1, sigma_y, prior.shape_)
    if isinstance(prior, GMM):
        y1 = _check_y(op, y, prior.shape_)
        comps = [GaussianPosterior(p, op, y1, sigma_y, prior.shape_) for p in _gmm_priors(prior)]
        return MixturePosterior(comps, prior.weights_.to(torch.float64).log())
    raise TypeError(f"prior must be a scorelab.Gaussian or scorelab.GMM for an exact posterior; "
                    f"got {type(prior).__name__}")


# ============================================================================================== posterior samplers
class PosteriorDenoiser:
    """The posterior denoiser D_y(x, σ) = D(x, σ) + σ² ∇_x log p̂(y | x_σ = x) for a Gaussian approximation p̂ of
    p(y | x_σ) (Tweedie's formula for the posterior: the score of p(x_σ | y) is (D_y − x)/σ²). A denoiser itself,
    so every scorelab sampler applies. `calls` counts evaluations of D, `grad_calls` those differentiated through
    (one vector-Jacobian product each).

    likelihood="pigdm" — ΠGDM (Song, Vahdat, Mardani & Kautz, ICLR 2023):
        p(y | x_σ) ≈ N(y; A D(x_σ, σ), r_σ² A Aᵀ + σ_y² I)   (x0 | x_σ ≈ N(D(x_σ, σ), r_σ² I))
        ∇ log p̂ = (∂D/∂x)ᵀ Aᵀ (r_σ² A Aᵀ + σ_y² I)⁻¹ (y − A D)   (the residual held fixed: one VJP through D).
      The paper's r_t² = σ_t²/(1 + σ_t²) is the posterior variance of x0 | x_σ for data ~ N(0, I); in σ-space for
      data of variance σ_d² it is r_σ² = σ² σ_d² / (σ² + σ_d²) (`sigma_data`, default the denoiser's
      `sigma_data` attribute, else 1 as in the paper). `r2` may instead be a callable σ [B] → r² [B], or a
      `scorelab.Gaussian` whose exact conditional covariance Σ_σ = Σ − Σ(Σ + σ²I)⁻¹Σ replaces r_σ² I:
        p(y | x_σ) ≈ N(y; A D, A Σ_σ Aᵀ + σ_y² I),
      which is exact when the prior is that Gaussian (then x0 | x_σ ~ N(D, Σ_σ) exactly, and D_y is the exact
      posterior denoiser).

    likelihood="dmps" — DMPS (Meng & Kabashima 2022, with an uninformative prior p(x0) ∝ 1, so that
    x0 | x_σ ≈ N(x_σ, σ² I)). Their VP form p(y | x_t) ≈ N(y; A x_t/√ᾱ_t, σ_y² I + (1 − ᾱ_t)/ᾱ_t · A Aᵀ) becomes
    in σ-space (x_σ = x_t/√ᾱ_t, σ² = (1 − ᾱ_t)/ᾱ_t)
        p(y | x_σ) ≈ N(y; A x_σ, σ_y² I + σ² A Aᵀ),   ∇ log p̂ = Aᵀ (σ_y² I + σ² A Aᵀ)⁻¹ (y − A x_σ):
      closed form, no gradient through D (one plain evaluation per call)."""

    def __init__(self, denoiser, op: Operator, y, sigma_y: float, *, likelihood: str = "pigdm", r2=None,
                 sigma_data=None, shape=None):
        from .models.gaussian import Gaussian

        self.denoiser = check_denoiser(denoiser)
        self.op = _check_op(op)
        self.sigma_y = _check_sigma_y(sigma_y)
        if likelihood not in ("pigdm", "dmps"):
            raise ValueError(f"likelihood must be 'pigdm' or 'dmps'; got {likelihood!r}")
        self.likelihood = likelihood
        self.shape_ = _infer_shape(denoiser, op, y, shape)
        self.y = _check_y(op, y, self.shape_)
        self.calls = self.grad_calls = 0
        self._gauss = None
        if r2 is not None and likelihood != "pigdm":
            raise ValueError("r2 applies to likelihood='pigdm' only")
        if isinstance(r2, Gaussian):
            if tuple(r2.shape_) != self.shape_:
                raise ValueError(f"r2 (a Gaussian) must have the sample shape {list(self.shape_)}; "
                                 f"got {list(r2.shape_)}")
            self._gauss, self._gauss_cache = _gaussian_prior(r2), {}
            m = math.prod(op.output_shape(self.shape_))
            eye = torch.eye(m, dtype=torch.float64, device=self._gauss.mean.device)
            self._a_rows = op.AT(eye.reshape(m, *op.output_shape(self.shape_))).reshape(m, -1)
        elif r2 is not None and not callable(r2):
            raise TypeError(f"r2 must be None, a callable sigma -> r², or a scorelab.Gaussian; got {type(r2).__name__}")
        self.r2 = r2
        if sigma_data is None:
            sigma_data = getattr(denoiser, "sigma_data", None)
            sigma_data = 1.0 if not isinstance(sigma_data, (int, float)) else sigma_data
        self.sigma_data = float(sigma_data)
        if not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise ValueError(f"sigma_data must be a finite number > 0; got {sigma_data}")

    @property
    def device(self):
        return device_of(self.denoiser)

    @property
    def dtype(self):
        return dtype_of(self.denoiser)

    def _sigma(self, sigma, x) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        return s.expand(x.shape[0]) if s.numel() == 1 else s

    def _solve_pigdm(self, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """(A C_σ Aᵀ + σ_y² I)⁻¹ v for v [B, *out]: C_σ = r_σ² I (isotropic) or the Gaussian's Σ_σ."""
        sy2 = self.sigma_y ** 2
        if self._gauss is None:
            if self.r2 is None:
                r2 = s ** 2 * self.sigma_data ** 2 / (s ** 2 + self.sigma_data ** 2)
            else:
                r2 = torch.as_tensor(self.r2(s), dtype=v.dtype, device=v.device).reshape(-1).expand(v.shape[0])
            return self.op.gram_solve(v, sy2, r2)
        out = torch.empty_like(v)
        for level in s.unique().tolist():
            idx = (s == level).nonzero().flatten()
            chol = self._gram_sigma(level)
            rhs = v[idx].reshape(len(idx), -1).to(device=chol.device, dtype=torch.float64)
            out[idx] = torch.cholesky_solve(rhs.T, chol).T.reshape(v[idx].shape).to(v)
        return out

    def _gram_sigma(self, level: float) -> torch.Tensor:
        """Cholesky factor of A Σ_σ Aᵀ + σ_y² I, Σ_σ = U diag(λσ²/(λ+σ²)) Uᵀ + ρσ²/(ρ+σ²)(I − UUᵀ)."""
        if level not in self._gauss_cache:
            g, s2 = self._gauss, level ** 2
            cond = _Prior(g.mean, g.u, g.lam * s2 / (g.lam + s2), g.rho * s2 / (g.rho + s2) if g.has_residual else 0.0)
            m = self._a_rows.shape[0]
            gt = cond.apply(self._a_rows)
            mat = self.op.A(gt.reshape(m, *self.shape_)).reshape(m, m)
            mat = (mat + mat.T) / 2 + self.sigma_y ** 2 * torch.eye(m, dtype=torch.float64, device=mat.device)
            self._gauss_cache[level] = torch.linalg.cholesky(mat)
        return self._gauss_cache[level]

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        s = self._sigma(sigma, x)
        s2 = s.reshape(-1, *([1] * (x.ndim - 1)))
        y = self.y.to(device=x.device, dtype=x.dtype)
        self.calls += 1
        if self.likelihood == "dmps":
            with torch.no_grad():
                den = self.denoiser(x, sigma, **cond)
                resid = y - self.op.A(x)
                g = self.op.AT(self.op.gram_solve(resid, self.sigma_y ** 2, s ** 2))
            return den + s2 ** 2 * g
        self.grad_calls += 1
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            den = self.denoiser(xg, sigma, **cond)
            with torch.no_grad():
                v = self.op.AT(self._solve_pigdm(y - self.op.A(den.detach()), s))
            g, = torch.autograd.grad(den, xg, grad_outputs=v, allow_unused=True)
        g = torch.zeros_like(x) if g is None else g
        return den.detach() + s2 ** 2 * g

    def __repr__(self):
        return f"PosteriorDenoiser({self.likelihood}, op={self.op!r}, sigma_y={self.sigma_y})"


def _infer_shape(denoiser, op: Operator, y, shape=None) -> tuple[int, ...]:
    """The sample shape: `shape` if given, else the denoiser's `shape_`, else the operator's input shape for y
    (y [*out_shape], or [1, *out_shape] with a batch dimension: [1, m] for Inpaint/Linear, 4-D for images)."""
    if shape is None:
        shape = sample_shape(denoiser)
    if shape is None:
        y_t = check_tensor(y, name="y", min_ndim=1)
        batched = y_t.ndim == 2 if isinstance(op, (Inpaint, Linear)) else y_t.ndim >= 4
        shape = op.input_shape(tuple(y_t.shape[1:]) if batched else tuple(y_t.shape))
    return tuple(int(s) for s in shape)


@dataclass
class InverseResult:
    """What `sample()` returns. `samples` [n, *shape]; `nfe`: denoiser evaluations per trajectory; `nfe_grad`: how
    many of them were differentiated through (each a vector-Jacobian product, about twice a plain evaluation)."""

    samples: torch.Tensor
    method: str
    nfe: int = 0
    nfe_grad: int = 0
    sigmas: torch.Tensor | None = None
    seconds: float = 0.0
    seed: int = 0
    solver: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def images(self) -> torch.Tensor:
        return self.samples

    def summary(self) -> dict:
        return dict(method=self.method, n=int(self.samples.shape[0]), nfe=self.nfe, nfe_grad=self.nfe_grad,
                    solver=self.solver, steps=None if self.sigmas is None else len(self.sigmas) - 1,
                    seconds=round(self.seconds, 4), seed=self.seed,
                    **{k: v for k, v in self.options.items() if isinstance(v, (int, float, str, bool))})


def _dps(denoiser, x, grid, op, y, zeta, eta, cond, generator, callback):
    """DPS (Chung, Kim, McCann, Klasky & Ye, ICLR 2023, Algorithm 1 with its approximation
    p(y | x_t) ≈ p(y | x̂0 = D(x_t))): after each unconditional step,

        x_(i+1) ← x_(i+1) − ζ_i ∇_(x_i) ‖y − A D(x_i, σ_i)‖²,   ζ_i = ζ / (2‖y − A D(x_i, σ_i)‖)

    i.e. a step of ζ along −∇‖y − A D‖ (the authors' code differentiates the norm itself). The paper works in VP
    coordinates x_VP = x_σ/√(1 + σ²); the same step in σ-space is
        x_(i+1) ← x_(i+1) − ζ √((1 + σ_i²)(1 + σ_(i+1)²)) ∇_(x_σ) ‖y − A D(x_σ, σ_i)‖.
    The unconditional step is ancestral (eta = 1: DDPM, as the paper) or Euler (eta = 0). ζ acts per step, so the
    total guidance grows with the number of steps (the paper uses 1000 steps and ζ ∈ [0.1, 1])."""
    from .samplers import ancestral_step

    n = x.shape[0]
    nfe = 0
    for i, (s, s_next) in enumerate(pairwise(grid)):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            den = denoiser(xg, xg.new_full((n,), s), **cond)
            norm = (y - op.A(den)).reshape(n, -1).norm(dim=1)          # ‖y − A D(x_i)‖ per sample
            grad, = torch.autograd.grad(norm.sum(), xg, allow_unused=True)
        grad = torch.zeros_like(x) if grad is None else grad
        den = den.detach()
        nfe += 1
        if callback is not None:
            callback(dict(i=i, x=x, sigma=s, sigma_next=s_next, denoised=den, nfe=nfe))
        s_down, s_up = ancestral_step(s, s_next, eta)
        x_next = x + (s_down - s) * (x - den) / s
        if s_up > 0:
            x_next = x_next + s_up * _randn_like(x, generator)
        x = x_next - zeta * math.sqrt((1 + s ** 2) * (1 + s_next ** 2)) * grad
    return x.detach(), nfe


def _randn_like(x, generator):
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def sample(prior_or_denoiser, op: Operator, y, sigma_y: float, method: str = "exact", *, n: int = 1, sigmas=None,
           seed: int = 0, extra_args=None, solver: str | None = None, shape=None, zeta: float = 1.0, r2=None,
           sigma_data=None, device=None, dtype=None, callback=None, **solver_opts) -> InverseResult:
    """n posterior samples of x0 given y = A x0 + σ_y ε.

    method="exact": exact draws from `exact_posterior` (prior: a `scorelab.Gaussian` or `scorelab.GMM`; nfe 0).
    method="pigdm" | "dmps": `PosteriorDenoiser` (ΠGDM / DMPS) handed to a scorelab sampler (`solver`, default
      "euler_ancestral", the DDPM-like sampler of the papers; `solver_opts` go to it), any denoiser D(x, σ, **cond).
    method="dps": DPS's algorithm (see `_dps`): `zeta`, `solver` "euler_ancestral" (default) or "euler".
    method="smc": Feynman–Kac correctors (`scorelab.smc.posterior_sample`; `solver_opts` such as particles= go
      to it; its default dtype is float32).

    `sigmas`: the σ grid (default `schedules.karras(50)`); the start is x = σ_0 · initial_noise(n, shape, seed).
    `shape`: the sample shape (default: the denoiser's `shape_`, else inferred from y through the operator).
    Deterministic given `seed`; computes on `device` (default: the denoiser's) in `dtype` (default: the
    denoiser's; float64 for the analytic models). NFE: `nfe` denoiser evaluations per trajectory, `nfe_grad` of
    them with a backward pass."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}; got {method!r}")
    op = _check_op(op)
    sigma_y = _check_sigma_y(sigma_y)
    n = check_positive_int(n, name="n")
    seed = int(seed)
    t0 = time.perf_counter()
    if method == "exact":
        post = exact_posterior(prior_or_denoiser, op, y, sigma_y)
        out = post.sample(n, generator=torch.Generator().manual_seed(seed))
        if device is not None or dtype is not None:
            out = out.to(device=device, dtype=dtype)
        return InverseResult(out, method, seconds=time.perf_counter() - t0, seed=seed)
    if method == "smc":
        return _smc(prior_or_denoiser, op, y, sigma_y, n=n, sigmas=sigmas, seed=seed, extra_args=extra_args,
                    shape=shape, device=device, dtype=dtype, t0=t0, **solver_opts)
    denoiser = check_denoiser(prior_or_denoiser, name="prior_or_denoiser")
    cond = check_extra_args(extra_args)
    device = torch.device(device) if device is not None else device_of(denoiser)
    dtype = dtype if dtype is not None else dtype_of(denoiser)
    shape = _infer_shape(denoiser, op, y, shape)
    y1 = _check_y(op, y, shape).to(device=device, dtype=dtype)
    if sigmas is None:
        from .schedules import karras

        sigmas = karras(50)
    grid = [float(s) for s in check_sigmas(sigmas)]
    if grid[0] == 0:
        raise ValueError("sigmas must start at a noise level > 0")
    from .noise import initial_noise

    x = grid[0] * initial_noise(n, shape, seed, device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    if method == "dps":
        solver = solver or "euler_ancestral"
        if solver not in ("euler_ancestral", "euler"):
            raise ValueError(f"solver for method='dps' must be 'euler_ancestral' or 'euler'; got {solver!r}")
        if solver_opts:
            raise TypeError(f"method='dps' takes no solver options; got {sorted(solver_opts)}")
        zeta = float(zeta)
        if not (math.isfinite(zeta) and zeta >= 0):
            raise ValueError(f"zeta must be a finite number >= 0; got {zeta}")
        out, nfe = _dps(denoiser, x, grid, op, y1, zeta, 1.0 if solver == "euler_ancestral" else 0.0, cond,
                        generator, callback)
        return InverseResult(out, method, nfe=nfe, nfe_grad=nfe, sigmas=torch.tensor(grid), seed=seed,
                             seconds=time.perf_counter() - t0, solver=solver, options=dict(zeta=zeta))
    from . import samplers

    solver = solver or "euler_ancestral"
    fn = samplers.get(solver)
    post = PosteriorDenoiser(denoiser, op, y1, sigma_y, likelihood=method, r2=r2, sigma_data=sigma_data, shape=shape)
    out = fn(post, x, torch.tensor(grid, dtype=torch.float64), extra_args=cond, callback=callback,
             generator=generator, **solver_opts)
    options = dict(solver_opts)
    if method == "pigdm":
        options["r2"] = "isotropic" if r2 is None else ("gaussian" if post._gauss is not None else "callable")
        options["sigma_data"] = post.sigma_data
    return InverseResult(out.detach(), method, nfe=post.calls, nfe_grad=post.grad_calls, sigmas=torch.tensor(grid),
                         seed=seed, seconds=time.perf_counter() - t0, solver=solver, options=options)


def _smc(prior_or_denoiser, op, y, sigma_y, *, n, sigmas, seed, extra_args, shape, device, dtype, t0, **opts):
    """method="smc": Feynman–Kac correctors, `scorelab.smc.posterior_sample` (K = `particles` per sample; options
    such as particles=, kappa=, eta=, resample_window=, ess_threshold= go to it). nfe: denoiser calls along one
    particle's path; the cost per returned sample is K times that (`options["cost"]`)."""
    try:
        from . import smc
    except ImportError:
        smc = None
    fn = getattr(smc, "posterior_sample", None)
    if fn is None:
        raise NotImplementedError("method='smc' needs scorelab.smc's posterior sampler (scorelab.smc."
                                  "posterior_sample), which this installation does not provide yet")
    kwargs = {k: v for k, v in dict(device=device, dtype=dtype).items() if v is not None}
    res = fn(prior_or_denoiser, op, y, sigma_y, n=n, shape=shape, sigmas=sigmas, seed=seed, extra_args=extra_args,
             **kwargs, **opts)
    options = {k: v for k, v in opts.items() if isinstance(v, (int, float, str, bool))}
    options.update(particles=res.n_particles, cost=res.cost,
                   min_ess=float(res.ess.min()) if res.ess.numel() else None)
    return InverseResult(res.samples, "smc", nfe=res.nfe, nfe_grad=0, sigmas=res.sigmas, seed=seed, solver="smc",
                         seconds=time.perf_counter() - t0, options=options)


# ============================================================================================== image quality
def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image [B]: 10 log10(R² / mean((x − ref)²)), R = data_range (2 for [-1, 1])."""
    x, ref = _pair_images(x, ref)
    mse = (x - ref).pow(2).reshape(x.shape[0], -1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0, std: float = 1.5) -> torch.Tensor:
    """Structural similarity per image [B] (Wang, Bovik, Sheikh & Simoncelli 2004, eq. 13), averaged over
    channels and window positions: local statistics under a normalised Gaussian window (std 1.5, size
    min(11, H, W) rounded down to odd; 'valid' positions only, as the authors' reference code), C1 = (0.01 R)²,
    C2 = (0.03 R)², R = data_range (2 for images in [-1, 1])."""
    import torch.nn.functional as F

    x, ref = _pair_images(x, ref)
    if x.ndim != 4:
        raise ValueError(f"ssim needs images [B, C, H, W]; got shape {tuple(x.shape)}")
    size = min(11, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2
    k = gaussian_kernel(std, size).to(x)
    c = x.shape[1]
    w = k.expand(c, 1, size, size)

    def filt(t):
        return F.conv2d(t, w, groups=c)

    mx, my = filt(x), filt(ref)
    vx, vy, cxy = filt(x * x) - mx ** 2, filt(ref * ref) - my ** 2, filt(x * ref) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.reshape(x.shape[0], -1).mean(1)


def _pair_images(x, ref):
    x = check_tensor(x, name="x", min_ndim=2).to(torch.float64)
    ref = check_tensor(ref, name="ref", min_ndim=1).to(device=x.device, dtype=torch.float64)
    if tuple(ref.shape) == tuple(x.shape[1:]):
        ref = ref.unsqueeze(0).expand_as(x)
    if ref.shape != x.shape:
        raise ValueError(f"ref must have x's shape {tuple(x.shape)} or its sample shape; got {tuple(ref.shape)}")
    return x, ref
