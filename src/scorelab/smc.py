"""Feynman–Kac correctors: weighted SDEs plus sequential Monte Carlo, in σ-space.

Skreta et al. 2025, "Feynman-Kac Correctors in Diffusion: Annealing, Guidance, and Product of Experts"
(arXiv:2503.02819; code martaskrt/fkc-diffusion). Written here from the Feynman–Kac PDE, in σ-space.

**The target path.** Each target is an unnormalised density path, at every noise level σ,

    p̃_σ(x) = Π_i q_i,σ(x)^(a_i) · exp(ℓ_σ(x)),        φ_σ = log p̃_σ,

where q_i,σ is the noised marginal of expert i (a denoiser D_i, score s_i = (D_i − x)/σ²) and ℓ_σ an optional
known log-likelihood term. At σ = 0 it is the distribution wanted: CFG's geometric tilt p(x|c)^γ p(x)^(1−γ)
(a = (γ, 1−γ)), the annealed p^β (a = β), a product of experts p₁ p₂ (a = (1, 1)), or a posterior
p(x) N(y; A x, σ_y² I) (a = 1, ℓ_0 the log-likelihood). Every noised marginal solves the heat equation of the
forward process x_σ = x0 + σ ε,

    ∂_σ q_σ = σ Δq_σ,    i.e.  ∂_σ log q_σ = σ (Δ log q_σ + ‖∇ log q_σ‖²),                          (H)

but the path p̃_σ does not, which is why guided samplers miss their targets.

**The weighted SDE** (the paper's Feynman–Kac weighted SDE). In the reverse time τ = −σ (σ
decreasing), simulate

    dx = (1 + η²) σ ∇φ_σ(x) dτ + η √(2σ) dW,        d log w = G_σ(x) dτ,                              (S)

a reverse SDE whose drift is the target path's own score (η = 0: the probability-flow ODE of p̃; η = 1: the
standard reverse SDE). A density ρ_τ carried by weighted particles solves the Feynman–Kac PDE

    ∂_τ ρ = −∇·(ρ u) + ησ Δρ + ρ (G − E_ρ[G]),      u = (1 + η²) σ ∇φ,                             (FK)

and ρ = p̃/Z solves it exactly when

    G = ∂_τ φ + σ (Δφ + ‖∇φ‖²) = (σ Δp̃ − ∂_σ p̃) / p̃,

independent of η (the η terms of the drift and the diffusion cancel). With (H) the Laplacians of log q_i
cancel — no divergence of a network is needed — and

    G = σ (‖∇φ‖² − Σ_i a_i ‖s_i‖²) + σ Δℓ − ∂_σ ℓ.                                                  (G)

Special cases (the paper's propositions for annealing, products and geometric averages, rewritten in
σ-space, where their σ_t²/2 is our σ and dt our |dσ|):

- CFG, a = (γ, 1 − γ):   G = γ (γ − 1) σ ‖s_c − s_u‖² = γ (γ − 1) ‖D_c − D_u‖² / σ³;
- annealing, a = β:      G = β (β − 1) σ ‖s‖²          = β (β − 1) ‖D − x‖² / σ³;
- product, a = (1, 1):   G = 2 σ ⟨s₁, s₂⟩              = 2 ⟨D₁ − x, D₂ − x⟩ / σ³;
- likelihood ℓ_σ(x) = −‖y − A x‖² / (2 v_σ), v_σ = σ_y² + κ σ² (a = 1):
  G = σ (2 ⟨s, ∇ℓ⟩ + ‖∇ℓ‖²) − ∂_σ ℓ (+ σ Δℓ = −σ tr(AᵀA)/v_σ, the same for every particle, dropped),
  ∇ℓ = Aᵀ(y − A x)/v_σ, ∂_σ ℓ = κ σ ‖y − A x‖² / v_σ². κ = 1 is the exact p(y | x_σ) under a flat prior for
  an operator with A Aᵀ = I (masks, subsampling); at σ = 0 it is the likelihood whatever κ.

Everything is computed from the denoiser values that the drift (S) needs anyway, D_φ = x + σ² ∇φ =
Σ_i a_i D_i + (1 − Σ_i a_i) x + σ² ∇ℓ (for CFG exactly the guided denoiser D_u + γ (D_c − D_u)): no extra
network evaluations.

**Discretisation.** A step σ → σ' applies a stochastic sampler of `scorelab.samplers` to D_φ: by default
DPM-Solver++(2M) SDE (`samplers.dpmpp_2m_sde`, second order in its drift, the previous step's D_φ carried along
with each particle through resampling), or the ancestral step of `samplers.euler_ancestral`; both are members
of (S) (with η² = `eta` resp. η = `eta`), and G does not depend on which. The weight increment is the
trapezoidal rule in σ, log w += ½ (G_σ(x_σ) + G_σ'(x_σ')) (σ − σ'), where G_σ'(x_σ') comes from the evaluation
the next step makes anyway (the left point alone on the last step). Particles start from N(0, σ_0² / Σ_i a_i)
(the noised target at large σ_0) with log w = ℓ_σ0(x).

**Resampling.** The particles form populations: K per sample (`population="sample"`), or all n·K together
(`population="batch"`, as the paper's image sampler). At a grid point inside `resample_window`, a population
whose effective sample size ESS = (Σ w)² / Σ w² ∈ [1, size] is below `ess_threshold`·size is resampled
systematically (`systematic_resample`: unbiased, each count ⌊M w_k⌋ or ⌈M w_k⌉) and its weights reset. At the
end the samples are drawn from each population with the final weights. ESS is reported at every grid point.
With `selection="loo"` both draws use the leave-one-out probabilities ∝ w_k / Σ_(j≠k) w_j instead of w_k / Σ w
(`leave_one_out`), which removes the first-order self-normalisation error (1/K of the correction).

**What sets the error at fixed K.** Each resampling leaves an error of order (the weights' spread)/K in the
particles' law; the dynamics after it forget part of that. DPM-Solver++(2M) SDE keeps a fraction
(σ'/σ)^(1 + eta) of a particle's position over a step σ → σ' (the rest is replaced by the denoiser's value and
fresh noise), so a large `eta` (with steps fine enough for it) forgets an early resampling's error before σ = 0;
its Langevin part also pulls the particles toward p̃_σ at every level, so that less is left for the weights.
On the exact-tilt benchmark (docs/smc.md) eta = 30 on 1,024 steps with `selection="loo"` brings K = 8 from
19–49 % of plain CFG's W₂ (eta = 1, 64 steps, plain selection) to the floor of the measurement at d = 2 and 64
and to 9.9 % at d = 784 (γ = 3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._checks import check_finite, check_positive_int, check_sigmas, check_tensor
from .protocol import check_denoiser, check_extra_args, device_of, network_evals, sample_shape
from .samplers import ancestral_step

__all__ = ["Tilt", "GaussianLikelihood", "cfg", "anneal", "product", "posterior", "sample", "posterior_sample",
           "SMCResult", "systematic_resample", "ess", "leave_one_out"]


def _sqnorm(v: torch.Tensor) -> torch.Tensor:
    """‖v‖² per sample: [B, *shape] → [B]."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1) ** 2


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ per sample: [B, *shape] × [B, *shape] → [B]."""
    return torch.einsum("bi,bi->b", a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))


# ---------------------------------------------------------------------------------------------- targets
class GaussianLikelihood:
    """ℓ_σ(x) = −‖y − A x‖² / (2 v_σ), v_σ = σ_y² + κ σ²: at σ = 0 the log-likelihood of y = A x + σ_y n.

    `op`: any object with `A(x)` ([B, *shape] → [B, *obs]) and `AT(r)` (its adjoint). `y`: [*obs] (one
    observation for every sample), [1, *obs] or [n, *obs] (one per sample; the particles of sample j see row j:
    a batch of n·K particles is laid out sample-major). `sigma_y` > 0; `kappa` ≥ 0 sets how fast the
    likelihood sharpens (module docstring). Constants in x are dropped (they cancel in normalised weights)."""

    def __init__(self, op, y, sigma_y, *, kappa: float = 1.0):
        for name in ("A", "AT"):
            if not callable(getattr(op, name, None)):
                raise TypeError(f"op must have callable methods A(x) and AT(y); {type(op).__name__} has no {name}")
        self.op = op
        self.y = check_tensor(y, name="y")
        self.sigma_y = check_finite(sigma_y, name="sigma_y")
        if self.sigma_y <= 0:
            raise ValueError(f"sigma_y must be > 0 (the observation noise's standard deviation); got {sigma_y}")
        self.kappa = check_finite(kappa, name="kappa")
        if self.kappa < 0:
            raise ValueError(f"kappa must be >= 0; got {kappa}")

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        ax = self.op.A(x)
        y = self.y.to(device=ax.device, dtype=ax.dtype)
        if y.shape == ax.shape[1:]:
            y = y.unsqueeze(0)
        if y.shape[1:] != ax.shape[1:] or x.shape[0] % y.shape[0]:
            raise ValueError(f"y must have the shape of A(x) for one sample {tuple(ax.shape[1:])}, or [1 or n, "
                             f"{', '.join(map(str, ax.shape[1:]))}]; got {tuple(self.y.shape)}")
        if y.shape[0] > 1:
            y = y.repeat_interleave(x.shape[0] // y.shape[0], dim=0)
        return y - ax

    def variance(self, sigma: float) -> float:
        """v_σ = σ_y² + κ σ²."""
        return self.sigma_y ** 2 + self.kappa * sigma ** 2

    def log(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """ℓ_σ(x) per sample, [B]."""
        return -_sqnorm(self._residual(x)) / (2 * self.variance(sigma))

    def terms(self, x: torch.Tensor, sigma: float):
        """(∇ℓ_σ(x) like x, ∂_σ ℓ_σ(x) [B], Δℓ_σ up to a constant in x: 0)."""
        r = self._residual(x)
        v = self.variance(sigma)
        grad = self.op.AT(r) / v
        return grad.reshape(x.shape).to(x.dtype), self.kappa * sigma * _sqnorm(r) / v ** 2


class Tilt:
    """The target path p̃_σ(x) = Π_i q_i,σ(x)^(a_i) · exp(ℓ_σ(x)) of the module docstring.

    - `experts`: denoisers D_i; `exponents`: the a_i (finite, Σ a_i > 0 so that the path is normalisable at
      large σ); `conds`: per expert, a function cond → the conditioning that expert gets (default: the same);
    - `likelihood`: None or an object with `log(x, σ) -> [B]` and `terms(x, σ) -> (∇ℓ, ∂_σℓ)`
      (`GaussianLikelihood`).

    `evaluate(x, σ, cond)` returns (D_φ, G): the drift's denoiser D_φ = x + σ²∇φ_σ and the weight rate G of (G),
    from one call of each expert. `network_evals`: the experts' evaluations so far (a composite expert's own count
    if it keeps one)."""

    def __init__(self, experts, exponents, *, conds=None, likelihood=None):
        experts = list(experts) if isinstance(experts, (list, tuple)) else [experts]
        if not experts:
            raise ValueError("experts must contain at least one denoiser")
        self.experts = [check_denoiser(e, name=f"experts[{i}]") for i, e in enumerate(experts)]
        exponents = list(exponents) if isinstance(exponents, (list, tuple)) else [exponents]
        if len(exponents) != len(self.experts):
            raise ValueError(f"exponents must have one entry per expert ({len(self.experts)}); got {len(exponents)}")
        self.exponents = [check_finite(a, name=f"exponents[{i}]") for i, a in enumerate(exponents)]
        if not sum(self.exponents) > 0:
            raise ValueError(f"the exponents must sum to > 0 (the target at large sigma is N(0, sigma^2 / sum)); "
                             f"got {self.exponents}")
        conds = [None] * len(self.experts) if conds is None else list(conds)
        if len(conds) != len(self.experts) or not all(c is None or callable(c) for c in conds):
            raise TypeError("conds must be one callable (or None) per expert")
        self.conds = [c or (lambda cond: cond) for c in conds]
        if likelihood is not None and not (callable(getattr(likelihood, "log", None))
                                           and callable(getattr(likelihood, "terms", None))):
            raise TypeError(f"likelihood must have methods log(x, sigma) and terms(x, sigma); "
                            f"got {type(likelihood).__name__}")
        self.likelihood = likelihood
        self.network_evals = 0

    @property
    def exponent_sum(self) -> float:
        return float(sum(self.exponents))

    @property
    def shape_(self):
        return sample_shape(self.experts[0])

    @property
    def device(self):
        return device_of(self.experts[0])

    def initial_log_weight(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """log w at σ_0 for particles drawn from N(0, σ_0²/Σa): ℓ_σ0(x) (0 without a likelihood)."""
        if self.likelihood is None:
            return x.new_zeros(x.shape[0])
        return self.likelihood.log(x, sigma)

    def evaluate(self, x: torch.Tensor, sigma: float, cond=None):
        """(D_φ [B, *shape], G [B]) at noise level σ > 0 (module docstring, eq. (G))."""
        cond = cond or {}
        s = x.new_full((x.shape[0],), sigma)
        v = []
        for expert, cond_fn in zip(self.experts, self.conds):
            before = network_evals(expert)
            v.append(expert(x, s, **cond_fn(cond)) - x)                       # σ² s_i
            after = network_evals(expert)
            self.network_evals += (after - before) if after is not None and before is not None else 1
        a = self.exponents
        total = self.exponent_sum
        drift = v[0] * a[0]                                                    # σ² Σ a_i s_i
        for ai, vi in zip(a[1:], v[1:]):
            drift.add_(vi, alpha=ai)
        # Σ a_i‖v_i‖² − ‖Σ a_i v_i‖² = Σ_{i<j} a_i a_j ‖v_i − v_j‖² + (1 − Σa) Σ a_i ‖v_i‖²  (no cancellation)
        spread = sum(a[i] * a[j] * _sqnorm(v[i] - v[j]) for i in range(len(v)) for j in range(i + 1, len(v)))
        if total != 1:
            spread = spread + (1 - total) * sum(ai * _sqnorm(vi) for ai, vi in zip(a, v))
        rate = -spread / sigma ** 3 if torch.is_tensor(spread) else x.new_zeros(x.shape[0])
        if self.likelihood is not None:
            grad, dsigma = self.likelihood.terms(x, sigma)
            rate = rate + 2 * _dot(drift, grad) / sigma + sigma * _sqnorm(grad) - dsigma
            drift = drift + sigma ** 2 * grad
        return x + drift, rate

    def __repr__(self) -> str:
        names = ", ".join(type(e).__name__ for e in self.experts)
        lik = f", likelihood={type(self.likelihood).__name__}" if self.likelihood is not None else ""
        return f"Tilt(experts=[{names}], exponents={self.exponents}{lik})"


def cfg(denoiser, scale, uncond=None, *, key: str = "class_labels", null=None) -> Tilt:
    """CFG's intended target p(x|c)^γ p(x)^(1−γ) as a path q_c,σ^γ q_u,σ^(1−γ): its drift is the CFG denoiser
    D_u + γ (D_c − D_u), its weight rate G = γ (γ − 1) ‖D_c − D_u‖² / σ³.

    The unconditional model is `denoiser` with `key=null` (default `class_labels=None`) or, given, `uncond`
    called without `key` — as `scorelab.guidance.cfg`. Pass the condition with `sample(..., extra_args=)`."""
    if not isinstance(key, str):
        raise TypeError(f"key must be the name of the conditioning argument (a str); got {type(key).__name__}")
    gamma = check_finite(scale, name="scale")
    if uncond is None:
        negative, neg_cond = denoiser, (lambda cond: {**cond, key: null})
    else:
        negative, neg_cond = uncond, (lambda cond: {k: v for k, v in cond.items() if k != key})
    return Tilt([denoiser, negative], [gamma, 1 - gamma], conds=[None, neg_cond])


def anneal(denoiser, beta) -> Tilt:
    """Temperature annealing p^β as the path q_σ^β: drift βD + (1 − β)x, rate G = β (β − 1) ‖D − x‖² / σ³."""
    beta = check_finite(beta, name="beta")
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (an inverse temperature); got {beta}")
    return Tilt([denoiser], [beta])


def product(*experts) -> Tilt:
    """A product of experts p₁ p₂ ⋯ as the path Π q_i,σ: drift Σ D_i − (m − 1) x, rate (two experts)
    G = 2 ⟨D₁ − x, D₂ − x⟩ / σ³."""
    if len(experts) == 1 and isinstance(experts[0], (list, tuple)):
        experts = tuple(experts[0])
    if len(experts) < 2:
        raise ValueError(f"product needs at least two experts; got {len(experts)}")
    return Tilt(list(experts), [1.0] * len(experts))


def posterior(denoiser, op, y, sigma_y, *, kappa: float = 1.0) -> Tilt:
    """Posterior p(x) N(y; A x, σ_y² I) as the path q_σ(x) exp(ℓ_σ(x)) (`GaussianLikelihood`)."""
    return Tilt([denoiser], [1.0], likelihood=GaussianLikelihood(op, y, sigma_y, kappa=kappa))


# ---------------------------------------------------------------------------------------------- SMC pieces
def ess(log_weights: torch.Tensor) -> torch.Tensor:
    """Effective sample size (Σ w)² / Σ w² of each row of log-weights [..., K]: in [1, K]."""
    lw = log_weights.to(torch.float64)
    return torch.exp(2 * torch.logsumexp(lw, -1) - torch.logsumexp(2 * lw, -1))


def systematic_resample(log_weights: torch.Tensor, *, generator: torch.Generator | None = None, u=None,
                        n_out: int | None = None) -> torch.Tensor:
    """Systematic resampling of each row of log-weights [n, K]: ancestor indices [n, M] (M = n_out or K).

    With normalised weights w and their cumulative sums C, draw one u ~ U[0, 1) per row (or pass `u` [n]) and
    take for m = 0 … M−1 the index k with C_(k−1) ≤ (u + m)/M < C_k. Then index k is drawn ⌊M w_k⌋ or
    ⌈M w_k⌉ times and E[count_k] = M w_k exactly (Douc & Cappé 2005)."""
    lw = check_tensor(log_weights, name="log_weights", min_ndim=2, finite=False)
    if lw.ndim != 2:
        raise ValueError(f"log_weights must have shape [n, K]; got {tuple(lw.shape)}")
    if torch.isnan(lw).any() or (lw == math.inf).any() or (lw == -math.inf).all(-1).any():
        raise ValueError("log_weights must be finite or -inf, with at least one finite entry per row")
    n, k = lw.shape
    m = k if n_out is None else check_positive_int(n_out, name="n_out")
    w = torch.softmax(lw.to(torch.float64), -1)
    cdf = torch.cumsum(w, -1)
    cdf[:, -1] = 1.0
    if u is None:
        u = torch.rand(n, generator=generator, dtype=torch.float64,
                       device=generator.device if generator is not None else "cpu")
    u = torch.as_tensor(u, dtype=torch.float64).to(lw.device).reshape(-1)
    if u.numel() != n or ((u < 0) | (u >= 1)).any():
        raise ValueError(f"u must hold {n} numbers in [0, 1) (one per row); got shape {tuple(u.shape)}")
    positions = (u[:, None] + torch.arange(m, dtype=torch.float64, device=lw.device)) / m
    return torch.searchsorted(cdf, positions, right=True).clamp_max(k - 1)


def leave_one_out(log_weights: torch.Tensor) -> torch.Tensor:
    """Leave-one-out selection log-weights of each row of log-weights [n, K]: log (w_k / Σ_(j≠k) w_j), float64.

    Drawing particle k with probability w_k / S (S = Σ_j w_j, plain self-normalised importance resampling) gives
    particles of law p (1 − (w − 1)/K + …) for weights w = p/q normalised to E_q[w] = 1: a first-order error of
    1/K times the whole correction q → p, whatever the sampler. With probabilities ∝ w_k / (S − w_k) the particle
    drawn has law p (1 + O(‖w − 1‖²)) for every K ≥ 2: with w_k = 1 + ε_k, w_k/(S − w_k) = (1 + ε_k)/(K − 1) ·
    (1 − Σ_(j≠k) ε_j/(K − 1) + …), whose expectation given particle k is (1 + ε_k)/(K − 1) to first order, the
    normaliser Σ_k w_k/(S − w_k) = K/(K − 1) + (second order). At K = 2 it draws ∝ w_k². Rows with a single finite
    weight select that particle. Rows of one particle are returned as zeros."""
    lw = check_tensor(log_weights, name="log_weights", min_ndim=2, finite=False).to(torch.float64)
    if lw.ndim != 2:
        raise ValueError(f"log_weights must have shape [n, K]; got {tuple(lw.shape)}")
    if lw.shape[1] == 1:
        return torch.zeros_like(lw)
    total = torch.logsumexp(lw, -1, keepdim=True)
    p = torch.exp(lw - total)
    others = total + torch.log1p(-p.clamp_max(0.5))               # log(S − w_k), accurate where w_k ≤ S/2
    top = lw.argmax(-1, keepdim=True)                             # the one entry per row that may exceed S/2
    masked = lw.scatter(-1, top, -math.inf)
    others = others.scatter(-1, top, torch.logsumexp(masked, -1, keepdim=True))
    out = lw - others
    out = torch.where(torch.isposinf(out), torch.zeros_like(out), out)      # the only finite weight of its row
    return torch.where(torch.isnan(out), torch.full_like(out, -math.inf), out)


@dataclass
class SMCResult:
    """What `sample` returns.

    - `samples` [n, *shape]: one particle per sample, drawn with the final weights;
    - `particles` [G, M, *shape] and `log_weights` [G, M]: the final particle system, G populations of M particles
      (population="sample": G = n, M = K; "batch": G = 1, M = n·K), log-weights since the last resampling;
    - `ess` [steps, G]: effective sample size of each population at σ_1, …, σ_steps (before resampling there),
      in [1, M]; `resampled` [steps, G]: whether the population was resampled there;
    - `nfe`: denoiser calls along one particle's path (steps × experts); `network_nfe`: the networks' evaluations
      along it (a composite expert, e.g. a guided one, may count 2 per call); `cost`: network evaluations per
      returned sample, K · network_nfe."""

    samples: torch.Tensor
    particles: torch.Tensor
    log_weights: torch.Tensor
    ess: torch.Tensor
    resampled: torch.Tensor
    sigmas: torch.Tensor
    nfe: int
    network_nfe: int
    n_particles: int
    info: dict = field(default_factory=dict)

    @property
    def cost(self) -> int:
        return self.n_particles * self.network_nfe


def _as_target(target) -> Tilt:
    if isinstance(target, Tilt):
        return target
    if callable(target):
        return Tilt([target], [1.0])
    raise TypeError(f"target must be a Tilt (smc.cfg, smc.anneal, smc.product, smc.posterior) or a denoiser; "
                    f"got {type(target).__name__}")


def _check_window(window):
    if window is None:
        return 0.0, math.inf
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise TypeError(f"resample_window must be a pair (sigma_lo, sigma_hi); got {window!r}") from None
    if not (0 <= lo <= hi) or math.isnan(hi):
        raise ValueError(f"resample_window must satisfy 0 <= sigma_lo <= sigma_hi; got ({lo}, {hi})")
    return lo, hi


def _repeat_cond(cond: dict, n: int, k: int) -> dict:
    """Per-sample tensors (first dimension n) repeated for each of the K particles (sample-major)."""
    out = {}
    for key, value in cond.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
            value = value.repeat_interleave(k, dim=0)
        out[key] = value
    return out


def _same_for_all(cond: dict, n: int) -> bool:
    """Whether every per-sample tensor of `cond` (first dimension n) holds the same value for all samples."""
    for value in cond.values():
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n and n > 1:
            if not bool((value == value[:1]).all()):
                return False
    return True


@torch.no_grad()
def sample(target, n: int, shape=None, sigmas=None, *, particles: int = 8, population: str = "sample",
           solver: str = "dpmpp_2m_sde", extra_args=None, eta: float = 1.0, resample_window=None,
           ess_threshold: float = 0.5, selection: str = "plain", seed: int = 0, generator=None, device=None,
           dtype=torch.float32, callback=None) -> SMCResult:
    """Feynman–Kac corrector sampling of `target` (module docstring): n samples, `particles` = K per sample.

    - `target`: a `Tilt` (`cfg`, `anneal`, `product`, `posterior`) or a plain denoiser (then the plain SDE, all
      weights equal); `shape`: the sample shape (default: the first expert's `shape_`);
    - `population`: "sample" — each sample has its own K particles, resampled among themselves, and one is drawn
      at the end (independent samples; error O(1/K)); "batch" — the n·K particles form one population and n are
      drawn from it at the end by systematic resampling (the paper's image sampler; error O(1/(nK)), samples
      correlated); only for a target that is the same for every sample (conditioning equal across the batch);
    - `sigmas`: a strictly decreasing grid (default `schedules.karras(64)`), ending in 0 or at a σ > 0;
    - `solver`: "dpmpp_2m_sde" (default) or "euler_ancestral", the step as in `scorelab.samplers`; `eta` ≥ 0 its
      noise (1: the reverse SDE; 0: no noise, and then resampled copies never separate);
    - `resample_window` (σ_lo, σ_hi): resample only at grid points σ_i (0 < i < steps) with
      σ_lo ≤ σ_i ≤ σ_hi (default: everywhere); `ess_threshold` in [0, 1]: resample a population when
      ESS < ess_threshold · (its size) (1: at every such point whenever the weights differ; 0: never);
    - `selection`: the probabilities with which resampling and the final draw pick particles: "plain" — the
      normalised weights w_k / Σ w (an error of 1/K of the whole correction, to first order); "loo" — leave-one-out
      w_k / Σ_(j≠k) w_j (`leave_one_out`: exact to first order in the weights' spread for any K ≥ 2). Reported ESS
      is that of the weights either way;
    - `extra_args`: conditioning for the experts (per-sample tensors of length n are repeated for the particles);
    - `seed` / `generator`: all randomness (initial noise, step noise, resampling) comes from one CPU generator,
      drawn in `dtype` and moved to `device` (default: the first expert's device), so results do not depend on it;
    - `callback(dict(i, x, sigma, sigma_next, denoised, nfe, ess, log_weights))` before each step's move.

    Weights use the trapezoidal rule over each step, G at σ_i taken from the evaluation that the next step's
    drift makes anyway (left-point on the last step), so the NFE is that of the plain SDE: steps × experts per
    particle. ESS entry i is measured at σ_(i+1), before any resampling there. With one particle the result is
    exactly the chosen sampler run on D_φ (for `cfg`: on the guided denoiser) with the same generator.
    """
    tilt = _as_target(target)
    n = check_positive_int(n, name="n")
    k = check_positive_int(particles, name="particles")
    if solver not in ("dpmpp_2m_sde", "euler_ancestral"):
        raise ValueError(f"solver must be 'dpmpp_2m_sde' or 'euler_ancestral'; got {solver!r}")
    if population not in ("sample", "batch"):
        raise ValueError(f"population must be 'sample' or 'batch'; got {population!r}")
    shape = tuple(shape) if shape is not None else tilt.shape_
    if shape is None:
        raise ValueError("shape must be given (the sample shape without the batch): the target's first expert has "
                         "no shape_")
    if not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"shape must be a tuple of positive ints; got {shape}")
    if sigmas is None:
        from .schedules import karras
        sigmas = karras(64)
    grid = [float(s) for s in check_sigmas(sigmas)]
    if grid[0] == 0:
        raise ValueError("sigmas must start at a noise level > 0")
    eta = check_finite(eta, name="eta")
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    lo, hi = _check_window(resample_window)
    threshold = check_finite(ess_threshold, name="ess_threshold")
    if not 0 <= threshold <= 1:
        raise ValueError(f"ess_threshold must be in [0, 1] (a fraction of the particles); got {ess_threshold}")
    if selection not in ("plain", "loo"):
        raise ValueError(f"selection must be 'plain' or 'loo'; got {selection!r}")
    select = leave_one_out if selection == "loo" else (lambda lw: lw)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
    device = torch.device(device) if device is not None else tilt.device
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    cond = check_extra_args(extra_args)
    if population == "batch":
        y = getattr(tilt.likelihood, "y", None)
        if not _same_for_all(cond, n) or (isinstance(y, torch.Tensor) and y.ndim >= 1 and y.shape[0] == n > 1
                                           and not bool((y == y[:1]).all())):
            raise ValueError("population='batch' needs the same target for every sample (equal conditioning and "
                             "observation across the batch); use population='sample'")
    cond = _repeat_cond(cond, n, k)
    groups, size, n_out = (n, k, 1) if population == "sample" else (1, n * k, n)

    def randn(*size_):
        return torch.randn(size_, generator=generator, dtype=dtype, device=generator.device).to(device)

    def uniform(m):
        return torch.rand(m, generator=generator, dtype=torch.float64, device=generator.device)

    x = randn(n * k, *shape) * (grid[0] / math.sqrt(tilt.exponent_sum))
    log_w = tilt.initial_log_weight(x, grid[0]).reshape(groups, size).to(torch.float64)
    evals0, calls = tilt.network_evals, 0
    ess_log, resampled_log = [], []
    steps = len(grid) - 1
    previous = None                               # (λ, D) of the last step, for the multistep solver
    for i in range(steps):
        sigma, sigma_next = grid[i], grid[i + 1]
        denoised, rate = tilt.evaluate(x, sigma, cond)
        calls += len(tilt.experts)
        rate = rate.reshape(groups, size).to(torch.float64)
        if i > 0:                                 # the right half of the trapezoid over [σ, σ_prev]
            log_w = log_w + 0.5 * (grid[i - 1] - sigma) * rate
            group_ess = ess(log_w)
            ess_log.append(group_ess)
            redo = torch.zeros(groups, dtype=torch.bool, device=log_w.device)
            if size > 1 and lo <= sigma <= hi:
                redo = group_ess < threshold * size * (1 - 1e-12)
                if redo.any():
                    rows = redo.nonzero().reshape(-1)
                    idx = systematic_resample(select(log_w[rows]), u=uniform(len(rows)).to(log_w.device))
                    src = torch.arange(n * k, device=log_w.device).reshape(groups, size)
                    src[rows] = rows[:, None] * size + idx
                    src = src.reshape(-1)
                    x, denoised = x[src.to(x.device)], denoised[src.to(x.device)]
                    if previous is not None:
                        previous = (previous[0], previous[1][src.to(x.device)])
                    rate = rate.reshape(-1)[src].reshape(groups, size)
                    log_w[rows] = 0.0
            resampled_log.append(redo)
        # the left half of the trapezoid over [σ_next, σ] (all of it, left-point, on the last step)
        log_w = log_w + (0.5 if i < steps - 1 else 1.0) * (sigma - sigma_next) * rate
        if callback is not None:
            callback(dict(i=i, x=x, sigma=sigma, sigma_next=sigma_next, denoised=denoised, nfe=calls,
                          ess=ess(log_w), log_weights=log_w))
        if solver == "euler_ancestral":
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
            x = x + (sigma_down - sigma) * (x - denoised) / sigma
            if sigma_up > 0:
                x = x + randn(*x.shape) * sigma_up
        elif sigma_next == 0:
            x = denoised
        else:                                     # DPM-Solver++(2M) SDE, as samplers.dpmpp_2m_sde ("midpoint")
            lam, h = -math.log(sigma), math.log(sigma / sigma_next)
            one_minus = -math.expm1(-h - eta * h)
            x_new = x * ((sigma_next / sigma) * math.exp(-eta * h))
            x_new.add_(denoised, alpha=one_minus)
            if previous is not None:
                x_new.add_(denoised - previous[1], alpha=0.5 * one_minus * h / (lam - previous[0]))
            if eta > 0:
                x_new.add_(randn(*x.shape), alpha=sigma_next * math.sqrt(-math.expm1(-2 * eta * h)))
            previous = (lam, denoised)
            x = x_new
    ess_log.append(ess(log_w))
    resampled_log.append(torch.zeros(groups, dtype=torch.bool, device=log_w.device))
    if size > 1:
        pick = systematic_resample(select(log_w), u=uniform(groups).to(log_w.device), n_out=n_out)
    else:
        pick = torch.zeros(groups, n_out, dtype=torch.long, device=log_w.device)
    flat = (torch.arange(groups, device=pick.device)[:, None] * size + pick).reshape(-1)
    samples = x[flat.to(x.device)]
    return SMCResult(samples=samples, particles=x.reshape(groups, size, *shape), log_weights=log_w,
                     ess=torch.stack(ess_log), resampled=torch.stack(resampled_log),
                     sigmas=torch.tensor(grid, dtype=torch.float64), nfe=calls,
                     network_nfe=tilt.network_evals - evals0, n_particles=k)


def posterior_sample(denoiser, op, y, sigma_y, *, n: int = 1, shape=None, sigmas=None, particles: int = 8,
                     kappa: float = 1.0, **kwargs) -> SMCResult:
    """Samples of p(x | y) ∝ p(x) N(y; A x, σ_y² I) for the prior `denoiser` (any σ-space denoiser) by Feynman–Kac
    correctors (`posterior` target, `sample`). `op`: any object with `A(x)` and `AT(y)` (e.g. scorelab.inverse's
    operators); `y`: the observation ([*obs], [1, *obs] or [n, *obs]); further keywords go to `sample`."""
    target = posterior(denoiser, op, y, sigma_y, kappa=kappa)
    return sample(target, n, shape, sigmas, particles=particles, **kwargs)
