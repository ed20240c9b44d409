"""Guidance and posterior sampling measured against exact targets: the CFG tilt, the 25-component GMM posterior,
Fashion-MNIST restoration with the U-Net, samplers against exact Gaussian posteriors.

    python -m bench.guidance                              # all four parts (about 30 CPU-minutes on one thread)
    python -m bench.guidance --parts tilt --dims 2,64     # one part, a subset
    python -m bench.guidance --quick --out /tmp/g         # a small version (a minute)

Four result records, each written again after every finished row (an interrupted run resumes: rows measured
with the same settings are kept, not recomputed):

- guidance_tilt.json — **exact tilt targets.** Per-class Gaussians (d = 2: a constructed 4-class set; d = 64:
  scikit-learn's 8×8 digits; d = 784: Fashion-MNIST), fitted with `Gaussian.fit(x, labels=y, eps=...)`. The
  conditional model is class c's Gaussian N(μ_c, Σ_c); the unconditional model is the plain pooled fit where the
  tilt exists with it (d = 2), else the Gaussian N(μ_u, Σ_u) with the moments of the class mixture in which class c
  has prior mass π_c (the other classes share 1 − π_c in proportion to their counts): Σ_u = Σ_k π_k (Σ_k + (μ_k −
  μ_u)(μ_k − μ_u)ᵀ) ⪰ π_c Σ_c. The geometric tilt p(x|c)^γ p(x)^(1−γ) of two Gaussians is the Gaussian with
  precision Λ = γ Λ_c + (1 − γ) Λ_u and mean Λ⁻¹(γ Λ_c μ_c + (1 − γ) Λ_u μ_u) (`geometric_tilt`) when Λ is positive
  definite. Since Λ_u ⪯ Λ_c / π_c, Λ ⪰ (γ − (γ − 1)/π_c) Λ_c ≻ 0 whenever π_c > (γ − 1)/γ; π_c = 0.75 covers γ ≤ 4.
  (With the plain pooled fit, π_c ≈ 0.1, the generalised eigenvalues of Σ_c relative to Σ_u reach 3.6 to 8.9 on
  digits and Fashion-MNIST, so Λ is indefinite for every class at γ = 1.5 and 3: there the tilt is not a
  distribution; the record's second table lists them.) Measured: W₂ between Gaussians from sample moments (closed
  form, `frechet_distance`), and sliced W₂ to exact tilt samples as a second view, of plain CFG (Heun on D_u +
  γ(D_c − D_u); its output is an affine map of the initial noise, so its exact moments are computed by pushing d +
  1 vectors through the sampler: no sampling error) and of Feynman–Kac-corrected samples
  (`scorelab.smc.sample(smc.cfg(...))`, one population of K particles per sample, K ∈ {1, 2, 4, 8, 16}; K = 1 is
  the plain CFG SDE; DPM-Solver++(2M) SDE with --fkc-eta (30) on --fkc-steps (1024) Karras steps, leave-one-out
  selection (--selection); rows of other settings are kept beside them, keyed by eta, selection and sde steps;
  at d = 2 and 64 also one population of n·K particles; and the exact law of K = 1, the guided SDE alone, whose
  moments follow in closed form (`sde_moments`; --no-sde-moments skips it)). W₂ of n samples is biased upwards by
  the sampling noise of the moments; the floor row is W₂ of n exact samples (root mean square over replicates), and
  "W2 debiased" subtracts it in squares, sqrt(max(W₂² − floor², 0)). Goal: FKC at K = 8 ≤ 10% of plain CFG's W₂.
- guidance_gmm.json — **MCGdiff's 25-component GMM benchmark** (Cardoso et al. 2023; the construction of the
  authors' code, gabrielvc/mcg_diff): prior Σ_(i,j) w_ij N(μ_ij, I_d), μ_ij = (8i, 8j, 8i, 8j, …) for
  i, j ∈ {−2, …, 2}, w_ij ∝ ξ_ij², ξ ~ N(0, 1); A = U diag(s) V[:d_y] from the SVD of a Gaussian d_y × d matrix
  with its singular values replaced by sorted U(0, 1) draws; σ_y = u · max(s), u ~ U(0, 1); y = A x* + σ_y ε
  with x* from the prior. d ∈ {8, 80, 800}, d_y = 1, several seeds (problems). Exact posterior samples by
  `scorelab.inverse.exact_posterior`; sliced W₂ of DPS, ΠGDM, DMPS and SMC samples to them, at equal NFE
  (denoiser evaluations per returned sample; DPS and ΠGDM also take one vector-Jacobian product per evaluation).
  Goal: SMC ≤ 0.5 × DPS.
- guidance_images.json (+ guidance_images.png) — **Fashion-MNIST restoration with the shipped U-Net**: top-half
  and random-70% inpainting and 2× average-pooling super-resolution of n test images with σ_y = 0.05; PSNR and
  SSIM of one posterior sample per image (and of the exact posterior mean) to the ground truth, for DPS, ΠGDM,
  DMPS, SMC with the U-Net prior and the exact posterior of a Gaussian fitted on the 60,000 training images (the
  baseline a network prior must beat).
- guidance_prior.json — **approximate samplers against exact Gaussian posteriors**: sliced W₂ of DPS, ΠGDM (the
  isotropic r_σ² for several σ_d, and the exact Σ_σ, `r2=prior`), DMPS and SMC to exact posterior samples, (1) for
  a d = 16 Gaussian prior and a random 4 × 16 operator at NFE 25, 99, 399 (ancestral and Heun), (2) for a Gaussian
  fitted to 10,000 Fashion-MNIST images and one test image (top-half inpainting, 2× down-sampling; 50 steps; PSNR
  and SSIM per sample besides). A sampler that blows up is recorded as diverged (no numbers).

One CPU thread by default (--threads). The class-conditional U-Net's CFG table is bench.conditional's record.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import scorelab as sl
from scorelab import inverse, smc
from scorelab.metrics.frechet import frechet_distance
from scorelab.models.gaussian import one_row, shrinkage

from . import record
from .common import add_output_arguments, fashion_mnist, show

PARTS = ("tilt", "gmm", "images", "prior")
KS = (1, 2, 4, 8, 16)


# ============================================================================================== closed forms
def geometric_tilt(mu_c, cov_c, mu_u, cov_u, gamma: float):
    """(mean, covariance, λ_min(Λ)/λ_max(Λ)) of p_c^γ p_u^(1−γ) for Gaussians N(μ_c, Σ_c), N(μ_u, Σ_u), float64:
    precision Λ = γ Σ_c⁻¹ + (1 − γ) Σ_u⁻¹, mean Λ⁻¹ (γ Σ_c⁻¹ μ_c + (1 − γ) Σ_u⁻¹ μ_u). ValueError when Λ is not
    positive definite (then the tilt is not normalisable)."""
    f64 = dict(dtype=torch.float64)
    mu_c, mu_u = (torch.as_tensor(m).to(**f64).reshape(-1) for m in (mu_c, mu_u))
    cov_c, cov_u = (torch.as_tensor(s).to(**f64) for s in (cov_c, cov_u))
    lam_c, lam_u = torch.linalg.inv(cov_c), torch.linalg.inv(cov_u)
    prec = gamma * lam_c + (1 - gamma) * lam_u
    prec = (prec + prec.T) / 2
    ev = torch.linalg.eigvalsh(prec)
    if not float(ev.min()) > 0:
        raise ValueError(f"the tilt's precision γΛ_c + (1 − γ)Λ_u is not positive definite at gamma={gamma} "
                         f"(smallest eigenvalue {float(ev.min()):.3g}): p_c^γ p_u^(1−γ) is not normalisable")
    cov = torch.linalg.inv(prec)
    cov = (cov + cov.T) / 2
    mean = cov @ (gamma * lam_c @ mu_c + (1 - gamma) * lam_u @ mu_u)
    return mean, cov, float(ev.min() / ev.max())


def mixture_moments(means, covs, weights):
    """(μ, Σ) of the mixture Σ_k w_k N(μ_k, Σ_k): μ = Σ w_k μ_k, Σ = Σ w_k (Σ_k + (μ_k − μ)(μ_k − μ)ᵀ)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    means = torch.stack([torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in means])
    mu = w @ means
    cov = sum(wk * (torch.as_tensor(s, dtype=torch.float64) + torch.outer(m - mu, m - mu))
              for wk, m, s in zip(w.tolist(), means, covs))
    return mu, (cov + cov.T) / 2


def gaussian_from_moments(mu, cov, shape=None) -> sl.Gaussian:
    lam, u = torch.linalg.eigh((cov + cov.T) / 2)
    mean = mu.reshape(shape) if shape is not None else mu
    return sl.Gaussian(mean, lam.flip(0).clamp_min(0), u.flip(1))


def w2_gaussian(mu1, cov1, mu2, cov2) -> float:
    """W₂ between N(μ₁, Σ₁) and N(μ₂, Σ₂) (the square root of the Fréchet distance)."""
    return math.sqrt(max(frechet_distance(mu1, cov1, mu2, cov2), 0.0))


def moments(x: torch.Tensor):
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    mu = x.mean(0)
    c = x - mu
    return mu, c.T @ c / x.shape[0]


def draw(mu, cov, n: int, generator) -> torch.Tensor:
    lam, u = torch.linalg.eigh((cov + cov.T) / 2)
    z = torch.randn(n, mu.numel(), generator=generator, dtype=torch.float64)
    return mu + (z * lam.clamp_min(0).sqrt()) @ u.T


def generalised_max(cov_c, cov_u) -> float:
    """Largest generalised eigenvalue of Σ_c relative to Σ_u (the tilt is PD for γ > 1 iff it is < γ/(γ − 1))."""
    chol = torch.linalg.cholesky(cov_c)
    m = chol.T @ torch.linalg.solve(cov_u, chol)
    return float(torch.linalg.eigvalsh((m + m.T) / 2).max())


# ============================================================================================== bookkeeping
class Record:
    """Rows of one result record, rewritten after every row; rows of an earlier run with the same settings are
    kept (resume). `key(row)`: what identifies a row."""

    def __init__(self, name: str, out, settings: dict, key_fields, **fields):
        self.name, self.out, self.settings, self.key_fields, self.fields = name, out, settings, key_fields, fields
        self.rows, self.extra = [], {}
        command = fields["command"]
        self.commands = [command]
        path = record.results_dir(out) / f"{name}.json"
        if path.exists():
            old = record.read(path)
            if old.get("settings") == settings:
                self.rows = old["rows"]
                self.extra = {k: old[k] for k in ("tables", "plots", "grid_rows") if k in old}
                self.commands = [c for c in old.get("commands", [old["command"]]) if c != command] + [command]

    def key(self, row) -> tuple:
        return tuple(row.get(k) for k in self.key_fields)

    def get(self, **key):
        want = tuple(key.get(k) for k in self.key_fields)
        return next((r for r in self.rows if self.key(r) == want), None)

    def add(self, row: dict) -> dict:
        self.rows = [r for r in self.rows if self.key(r) != self.key(row)] + [row]
        self.write()
        return row

    def write(self, **extra):
        self.extra.update(extra)
        extra = dict(self.extra)
        if len(self.commands) > 1:
            extra["commands"] = self.commands
        return record.write(self.name, self.rows, out=self.out, settings=self.settings, **self.fields, **extra)


def r4(v):
    return None if v is None else round(float(v), 4)


# ============================================================================================== part (a): the tilt
def karras(steps: int, sigma_max: float = 80.0):
    return sl.schedules.karras(steps, sigma_min=0.002, sigma_max=sigma_max)


def two_d_set(n_per_class: int = 5000, seed: int = 0):
    """A labelled 2-D set: 4 classes, class k ~ N(2 (cos θ_k, sin θ_k), R_k diag(1, 0.05) R_kᵀ), θ_k = kπ/2 + π/8,
    R_k the rotation by kπ/4."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k in range(4):
        th, rot = k * math.pi / 2 + math.pi / 8, k * math.pi / 4
        r = torch.tensor([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]], dtype=torch.float64)
        z = torch.randn(n_per_class, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.05 ** 0.5])
        xs.append(2 * torch.tensor([math.cos(th), math.sin(th)], dtype=torch.float64) + z @ r.T)
        ys.append(torch.full((n_per_class,), k))
    return torch.cat(xs), torch.cat(ys)


def tilt_models(d: int, cls: int, pi_c: float, gammas, data_path=None):
    """(data name, eps, class Gaussian g_c, unconditional Gaussian g_u, its description, pooled-fit table rows) for
    dimension d: g_u is the plain pooled fit where the tilt is positive definite with it for every γ, else the
    moment-matched Gaussian of the mixture with class c's prior mass raised to pi_c."""
    if d == 2:
        name, (x, y), eps = "constructed 4-class 2-D set", two_d_set(), 0.0
    elif d == 64:
        x, y = sl.data.load("digits", split="train", labels=True)
        name, eps = "digits 8x8 (1,500 train)", 1e-2
    elif d == 784:
        x, y = fashion_mnist("train", labels=True, path=data_path)
        name, eps = "Fashion-MNIST (60,000 train)", 1e-2
    else:
        raise ValueError(f"--dims must be among 2, 64, 784; got {d}")
    x = x.reshape(len(x), -1)
    g = sl.Gaussian.fit(x, labels=y, eps=eps)
    classes = sorted(g.class_models_)
    counts = torch.tensor([g.class_models_[k].n_samples_ for k in classes], dtype=torch.float64)
    covs = [g.class_models_[k].cov_ for k in classes]
    means = [g.class_models_[k].mean_ for k in classes]
    pooled_rows = [{"d": d, "class": k, "max gen. eigenvalue vs pooled fit": r4(generalised_max(covs[i], g.cov_))}
                   for i, k in enumerate(classes)]
    g_c = g.class_models_[cls]
    bound = min(gamma / (gamma - 1) for gamma in gammas if gamma > 1) if any(gm > 1 for gm in gammas) else math.inf
    if generalised_max(g_c.cov_, g.cov_) < bound:
        return name, eps, g_c, g, "pooled fit", pooled_rows      # the tilt is positive definite as it is
    w = counts.clone()
    w[classes.index(cls)] = 0
    w = w / w.sum() * (1 - pi_c)
    w[classes.index(cls)] = pi_c
    mu_u, cov_u = mixture_moments(means, covs, w)
    return name, eps, g_c, gaussian_from_moments(mu_u, cov_u), f"mixture, pi_c = {pi_c:g}", pooled_rows


def cfg_heun_moments(g_c, g_u, gamma, sigmas):
    """Exact (mean, covariance) of plain CFG samples: Heun on D_u + γ(D_c − D_u) from x_T = σ_0 ε is affine in ε."""
    d = g_c.mean_.numel()
    guided = sl.guidance.cfg(g_c, gamma, uncond=g_u)
    x = torch.cat([torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)]) * float(sigmas[0])
    out = sl.samplers.heun(guided, x, sigmas).to(torch.float64)
    a = out[0]
    b = out[1:] - a
    return a, b.T @ b, guided.network_evals


def sde_moments(g_c, g_u, gamma, sigmas, eta: float):
    """Exact (mean, covariance) of what FKC with one particle returns (`smc.sample(smc.cfg(...), particles=1)`:
    DPM-Solver++(2M) SDE with noise `eta` on the CFG denoiser D = b_i + M_i x, from x_0 ~ N(0, σ_0² I)), float64.
    Each step is affine in (x, D_prev) plus Gaussian noise, so the moments of that pair follow exactly:
    x' = A x − c p + …, p' = M x + b, A = α I + (1 − e^(−(1+η)h) + c) M, with the solver's α, c and noise
    s² I."""
    f64 = dict(dtype=torch.float64)
    d = g_c.mean_.numel()
    guided = sl.guidance.cfg(g_c.to(**f64), gamma, uncond=g_u.to(**f64))
    grid = [float(v) for v in sigmas]
    eye = torch.eye(d, **f64)
    mx, sxx = torch.zeros(d, **f64), eye * grid[0] ** 2
    mp, sxp, spp = torch.zeros(d, **f64), torch.zeros(d, d, **f64), torch.zeros(d, d, **f64)
    h_prev = None
    for sigma, sigma_next in zip(grid[:-1], grid[1:]):
        out = guided(torch.cat([torch.zeros(1, d, **f64), eye]), torch.full((d + 1,), sigma, **f64))
        b, m = out[0], (out[1:] - out[0]).T                       # D(x) = b + M x
        md = b + m @ mx
        if sigma_next == 0:
            return md, m @ sxx @ m.T
        h = math.log(sigma / sigma_next)
        one_minus = -math.expm1(-h - eta * h)
        alpha = (sigma_next / sigma) * math.exp(-eta * h)
        c = 0.0 if h_prev is None else 0.5 * one_minus * h / h_prev
        a = alpha * eye + (one_minus + c) * m
        a_sxx, a_sxp = a @ sxx, a @ sxp
        mx, mp = alpha * mx + (one_minus + c) * md - c * mp, md
        sxx, sxp, spp = (a_sxx @ a.T - c * (a_sxp + a_sxp.T) + c * c * spp
                         + sigma_next ** 2 * -math.expm1(-2 * eta * h) * eye,
                         (a_sxx - c * sxp.T) @ m.T, m @ sxx @ m.T)
        sxx = (sxx + sxx.T) / 2
        h_prev = h
    return mx, sxx


class DiagonalGaussian:
    """The denoiser of N(m, diag(λ)): D(x, σ) = m + λ/(λ + σ²) ⊙ (x − m), elementwise. In the eigenbasis of the
    unconditional Gaussian it is that Gaussian's denoiser without the two d × d products (`rotated_pair`)."""

    def __init__(self, mean, eigvals, dtype=torch.float32, device=None):
        self.mean_ = torch.as_tensor(mean).reshape(-1).to(device=device, dtype=dtype)
        self.eigvals_ = torch.as_tensor(eigvals).reshape(-1).to(device=device, dtype=dtype)

    def __call__(self, x, sigma, **cond):
        s2 = one_row(torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1) ** 2)
        return self.mean_ + shrinkage(self.eigvals_, s2) * (x - self.mean_)


def rotated_pair(g_c, g_u, dtype=torch.float32, device=None):
    """(c-expert, u-expert, U): the two Gaussians' denoisers in the orthonormal eigenbasis U of g_u (x' = Uᵀx),
    where g_u's is diagonal (`DiagonalGaussian`) and g_c's is sl.Gaussian(Uᵀμ_c, λ_c, UᵀU_c). The isotropic noise
    and W₂ do not change under the rotation, so FKC run in these coordinates has the same law up to the rotation,
    at half the cost (two d × d products per step instead of four). U is None (no rotation) when g_u's eigenbasis
    is not complete. `device`: where the denoisers live (U stays on the CPU, float64)."""
    u = g_u.eigvecs_.to(device="cpu", dtype=torch.float64)
    if u.shape[0] != u.shape[1]:
        return g_c.to(device=device, dtype=dtype), g_u.to(device=device, dtype=dtype), None
    f64 = dict(device="cpu", dtype=torch.float64)
    c = sl.Gaussian(u.T @ g_c.mean_.reshape(-1).to(**f64), g_c.eigvals_.to(**f64), u.T @ g_c.eigvecs_.to(**f64),
                    g_c.residual_var_, dtype=dtype, device=device)
    return c, DiagonalGaussian(u.T @ g_u.mean_.reshape(-1).to(**f64), g_u.eigvals_.to(**f64), dtype=dtype,
                               device=device), u


def fkc_chunks(target, n: int, d: int, k: int, population: str, args, tag: str):
    """FKC samples of `target` as a list of parts {samples, seconds, nfe, ess_min, ess_mean}: one run of n samples
    with seed K, or (--chunk C < n, population "sample" only) runs of C samples with seeds K + 1000·i, each kept
    in scorelab's cache (guidance_tilt/) as it finishes, so an interrupted long cell resumes where it stopped."""
    def run(size, seed):
        t0 = time.perf_counter()
        res = smc.sample(target, size, shape=(d,), sigmas=karras(args.fkc_steps), particles=k, population=population,
                         ess_threshold=args.ess_threshold, seed=seed, eta=args.fkc_eta, selection=args.selection,
                         dtype=torch.float32, device=getattr(args, "device", None))
        return dict(samples=res.samples.cpu(), seconds=time.perf_counter() - t0, nfe=res.nfe,
                    ess_min=float(res.ess.min()), ess_mean=float(res.ess.mean()))

    if not args.chunk or args.chunk >= n or population != "sample":
        return [run(n, k)]
    folder = record.cache_dir("guidance_tilt")
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, lo in enumerate(range(0, n, args.chunk)):
        path = folder / f"{tag}_{i}.pt"
        if path.exists():
            parts.append(torch.load(path))
            continue
        part = run(min(args.chunk, n - lo), k + 1000 * i)
        tmp = path.with_suffix(".tmp")
        torch.save(part, tmp)
        tmp.replace(path)
        parts.append(part)
        print(f"  chunk {i + 1}/{math.ceil(n / args.chunk)} of {tag}: {part['seconds']:.0f} s", flush=True)
    return parts


def run_tilt(args, rec: Record):
    pooled_table = []
    for d in args.dims:
        name, eps, g_c, g_u, uncond, pooled_rows = tilt_models(d, args.tilt_class, args.pi_c, args.gammas,
                                                               args.data_path)
        pooled_table += pooled_rows
        n = {2: args.n_2, 64: args.n_64, 784: args.n_784}[d]
        steps = args.tilt_steps_784 if d == 784 else args.tilt_steps
        sig = karras(steps)
        rot_c, rot_u, rot = rotated_pair(g_c, g_u, device=args.device)
        for gamma in args.gammas:
            m, cov, cond = geometric_tilt(g_c.mean_, g_c.cov_, g_u.mean_, g_u.cov_, gamma)
            gen = torch.Generator().manual_seed(1000 + d)
            reference = draw(m, cov, max(n, 2000), gen)
            m_rot, cov_rot = (m, cov) if rot is None else (rot.T @ m, rot.T @ cov @ rot)
            base = dict(d=d, data=name, gamma=gamma, n=n, steps=steps, eta=None, selection=None)
            key = dict(d=d, gamma=gamma, n=n, steps=steps)

            def sliced(x):
                return sl.metrics.sliced_wasserstein(x, reference, n_projections=args.projections, seed=0)

            # the floor: exact samples, as many as each sampler returns
            floor_row = rec.get(**key, method="exact samples (floor)", K=None)
            if floor_row is None:
                t0 = time.perf_counter()
                w2s, sws = [], []
                for _ in range(args.floor_reps):
                    z = draw(m, cov, n, gen)
                    w2s.append(w2_gaussian(*moments(z), m, cov))
                    sws.append(sliced(z))
                rms = math.sqrt(sum(v * v for v in w2s) / len(w2s))
                floor_row = rec.add({**base, "method": "exact samples (floor)", "K": None, "W2": r4(rms),
                                     "W2 debiased": None, "ratio to CFG": None, "SW2": r4(sum(sws) / len(sws)),
                                     "NFE": 0, "seconds": round(time.perf_counter() - t0, 1),
                                     "tilt precision cond": cond, "eps": eps, "class": args.tilt_class,
                                     "unconditional": uncond})
            if floor_row.get("resolution") is None:
                # √(2 sd) of W₂² over 8 sets of n exact samples: a debiased W₂ below it cannot be told from 0
                sq = torch.tensor([w2_gaussian(*moments(draw(m, cov, n, gen)), m, cov) ** 2 for _ in range(8)],
                                  dtype=torch.float64)
                floor_row = rec.add({**floor_row, "resolution": r4(math.sqrt(2 * float(sq.std())))})
            cfg_row = rec.get(**key, method="CFG, Heun (exact moments)", K=None)
            if cfg_row is None:
                t0 = time.perf_counter()
                a, c_cfg, evals = cfg_heun_moments(g_c, g_u, gamma, sig)
                w2 = w2_gaussian(a, c_cfg, m, cov)
                cfg_row = rec.add({**base, "method": "CFG, Heun (exact moments)", "K": None, "W2": r4(w2),
                                   "W2 debiased": r4(w2), "ratio to CFG": 1.0,
                                   "SW2": r4(sliced(draw(a, c_cfg, n, gen))),
                                   "NFE": 2 * steps - 1, "seconds": round(time.perf_counter() - t0, 1)})
            fkc = dict(eta=args.fkc_eta, selection=args.selection, **{"sde steps": args.fkc_steps})
            exact = {**fkc, "method": "FKC, K = 1 (exact moments)", "K": 1, "selection": None}   # any selection
            if args.sde_moments and rec.get(**key, **exact) is None:
                # one particle is the guided SDE alone: affine in the noise, its law is known without sampling
                t0 = time.perf_counter()
                a, c_sde = sde_moments(g_c, g_u, gamma, karras(args.fkc_steps), args.fkc_eta)
                w2 = w2_gaussian(a, c_sde, m, cov)
                rec.add({**base, **exact, "W2": r4(w2), "W2 debiased": r4(w2), "ratio to CFG": r4(w2 / cfg_row["W2"]),
                         "SW2": r4(sliced(draw(a, c_sde, n, gen))), "NFE": 2 * args.fkc_steps,
                         "seconds": round(time.perf_counter() - t0, 1)})
                print(f"tilt d={d} γ={gamma} K=1 exact moments (eta {args.fkc_eta:g}, {args.fkc_steps} steps): "
                      f"W2 {w2:.4f} ({w2 / cfg_row['W2']:.1%} of CFG)", flush=True)
            runs = [("FKC", k, "sample") for k in args.ks]
            if d < 784:                     # at d = 64 one population's genealogy already collapses (see the notes)
                runs += [("FKC, one population", k, "batch") for k in args.batch_ks]
            for method, k, population in runs:
                if rec.get(**key, method=method, K=k, **fkc) is not None:
                    continue
                tag = (f"d{d}_c{args.tilt_class}_pi{args.pi_c:g}_g{gamma:g}_n{n}_"
                       f"{method.replace(' ', '').replace(',', '')}_k{k}_eta{args.fkc_eta:g}_{args.selection}_"
                       f"s{args.fkc_steps}_ess{args.ess_threshold:g}_c{args.chunk}")
                parts = fkc_chunks(smc.cfg(rot_c, gamma, uncond=rot_u), n, d, k, population, args, tag)
                samples = torch.cat([p["samples"] for p in parts])
                seconds = sum(p["seconds"] for p in parts)
                mu_s, cov_s = moments(samples)
                w2 = w2_gaussian(mu_s, cov_s, m_rot, cov_rot)
                deb = math.sqrt(max(w2 ** 2 - floor_row["W2"] ** 2, 0.0))
                out = samples if rot is None else samples.to(torch.float64) @ rot.T
                rec.add({**base, "method": method, "K": k, **fkc, "W2": r4(w2), "W2 debiased": r4(deb),
                         "ratio to CFG": r4(deb / cfg_row["W2"]), "SW2": r4(sliced(out)),
                         "NFE": parts[0]["nfe"] * k, "seconds": round(seconds, 1),
                         "min ESS": r4(min(p["ess_min"] for p in parts)),
                         "mean ESS": r4(sum(p["ess_mean"] * len(p["samples"]) for p in parts) / n),
                         **({"chunk": args.chunk} if args.chunk and args.chunk < n else {})})
                print(f"tilt d={d} γ={gamma} {method} K={k}: W2 {w2:.4f} (debiased {deb:.4f}, CFG {cfg_row['W2']:.4f}) "
                      f"{seconds:.0f} s", flush=True)
    rec.write(tables=[{"title": "Largest generalised eigenvalue of Σ_c relative to the plain pooled fit Σ (the "
                                "tilt is positive definite at γ > 1 iff it is below γ/(γ − 1): 3 at γ = 1.5, 1.5 at "
                                "γ = 3)", "rows": pooled_table}])


# ============================================================================================== part (b): 25-GMM
class IsoMixture:
    """The denoiser of Σ_k w_k N(μ_k, I) (unit covariances), batched with one GEMM: with v = 1 + σ²,
    D(x, σ) = Σ_k r_k(x) (μ_k + (x − μ_k)/v), r = softmax_k(log w_k − ‖x − μ_k‖²/(2v)). The same function as
    `sl.GMM(..., covariance="diag", variances=1)`'s denoiser (tests/test_bench_guidance.py), about 50× faster at
    d = 800 (no loop over components); differentiable, so DPS and ΠGDM can use it."""

    def __init__(self, weights, means, dtype=torch.float64):
        self.dtype, self.device = dtype, torch.device("cpu")
        self.log_w = torch.as_tensor(weights, dtype=dtype).log()
        self.means = torch.as_tensor(means, dtype=dtype)
        self.shape_ = (self.means.shape[1],)

    def __call__(self, x, sigma, **cond):
        xf = x.to(self.dtype)
        s = torch.as_tensor(sigma, dtype=self.dtype).reshape(-1, 1)
        v = 1 + s ** 2
        dist2 = (xf ** 2).sum(1, keepdim=True) - 2 * xf @ self.means.T + (self.means ** 2).sum(1)[None]
        r = torch.softmax(self.log_w[None] - dist2 / (2 * v), dim=1)            # [B, K]
        return (r @ self.means + (xf - r @ self.means) / v).to(x.dtype)


def mcg_problem(d: int, d_y: int, seed: int):
    """(prior GMM, its fast denoiser, operator, y, σ_y) of MCGdiff's mixture benchmark (module docstring), from
    `seed`."""
    g = torch.Generator().manual_seed(seed)
    means = torch.stack([torch.tensor([8.0 * i, 8.0 * j] * (d // 2), dtype=torch.float64)
                         for i in range(-2, 3) for j in range(-2, 3)])
    weights = torch.randn(25, generator=g, dtype=torch.float64) ** 2
    weights = weights / weights.sum()
    prior = sl.GMM(weights, means, covariance="diag", variances=torch.ones(25, d, dtype=torch.float64))
    a = torch.randn(d_y, d, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    s = torch.sort(torch.rand(s.shape, generator=g, dtype=torch.float64), descending=True).values
    a = u @ torch.diag(s) @ vh
    sigma_y = float(torch.rand(1, generator=g, dtype=torch.float64)) * float(s.max())
    comp = int(torch.multinomial(weights, 1, generator=g))
    x_star = means[comp] + torch.randn(d, generator=g, dtype=torch.float64)
    op = inverse.Linear(a)
    y = op.A(x_star[None]) + sigma_y * torch.randn(1, d_y, generator=g, dtype=torch.float64)
    return prior, IsoMixture(weights, means), op, y, sigma_y


def run_gmm(args, rec: Record):
    budget = args.gmm_nfe
    methods = [("DPS", dict(method="dps", zeta=args.zeta), budget),
               ("PiGDM", dict(method="pigdm"), budget),
               ("DMPS", dict(method="dmps"), budget)]
    methods += [(f"SMC, K = {k}", dict(method="smc", particles=k, population="batch", dtype=torch.float64),
                 budget // k)
                for k in args.smc_particles]
    for d in args.gmm_dims:
        for seed in range(args.gmm_seeds):
            prior, fast, op, y, sigma_y = mcg_problem(d, args.d_y, seed)
            post = inverse.exact_posterior(prior, op, y, sigma_y)
            gen = torch.Generator().manual_seed(seed)
            reference = post.sample(args.gmm_n, generator=gen)
            base = dict(d=d, d_y=args.d_y, seed=seed, n=args.gmm_n, sigma_y=r4(sigma_y))

            def sw(x):
                return sl.metrics.sliced_wasserstein(x, reference, n_projections=args.projections, seed=1)

            if rec.get(d=d, seed=seed, method="exact (floor)") is None:
                rec.add({**base, "method": "exact (floor)", "steps": 0, "NFE": 0,
                         "SW2": r4(sw(post.sample(args.gmm_n, generator=gen))), "seconds": 0.0})
            for label, opts, steps in methods:
                if rec.get(d=d, seed=seed, method=label) is not None:
                    continue
                t0 = time.perf_counter()
                sigmas = karras(steps, sigma_max=20 * math.sqrt(d))
                out = inverse.sample(fast, op, y, sigma_y, n=args.gmm_n, sigmas=sigmas, seed=seed, **opts)
                seconds = time.perf_counter() - t0
                x = out.samples.to(torch.float64)
                ok = bool(torch.isfinite(x).all())
                nfe = out.options.get("cost", out.nfe) if opts["method"] == "smc" else out.nfe
                rec.add({**base, "method": label, "steps": steps, "NFE": nfe,
                         "SW2": r4(sw(x)) if ok else None, "seconds": round(seconds, 1)})
                print(f"gmm d={d} seed={seed} {label}: SW2 {rec.rows[-1]['SW2']} ({seconds:.0f} s)", flush=True)
    summary = []
    for d in args.gmm_dims:
        rows = [r for r in rec.rows if r["d"] == d]
        by = {}
        for r in rows:
            if r["SW2"] is not None:
                by.setdefault(r["method"], []).append(r["SW2"])
        dps = sum(by.get("DPS", [math.nan])) / max(len(by.get("DPS", [])), 1)
        for label, vals in by.items():
            mean = sum(vals) / len(vals)
            summary.append({"d": d, "method": label, "seeds": len(vals), "mean SW2": r4(mean),
                            "ratio to DPS": r4(mean / dps) if dps == dps and dps > 0 else None})
    rec.write(tables=[{"title": "Mean over the problems (seeds)", "rows": summary}])


# ============================================================================================== part (c): images
def image_problems(seed: int = 0):
    half = torch.zeros(1, 28, 28, dtype=torch.bool)
    half[..., :14, :] = True
    g = torch.Generator().manual_seed(seed)
    rand = (torch.rand(1, 28, 28, generator=g) >= 0.7)
    return [("top-half inpainting", inverse.Inpaint(half)), ("random 70% inpainting", inverse.Inpaint(rand)),
            ("2x super-resolution", inverse.Downsample(2))]


def run_images(args, rec: Record):
    from scorelab.images import save_grid

    x_train = fashion_mnist("train", path=args.data_path)
    prior = sl.Gaussian.fit(x_train)
    del x_train
    x_test = fashion_mnist("test", args.image_n, path=args.data_path).to(torch.float64)
    net = sl.load_model(record.ROOT / "models" / "fashion-mnist-unet")
    sigmas = karras(args.image_steps)
    methods = [("DPS", dict(method="dps", zeta=args.zeta)), ("PiGDM", dict(method="pigdm")),
               ("DMPS", dict(method="dmps"))]
    if args.image_smc > 0:
        methods.append((f"SMC, K = {args.image_smc}", dict(method="smc", particles=args.image_smc)))
    cache = record.cache_dir("guidance_images")
    cache.mkdir(parents=True, exist_ok=True)
    panels = []
    for pname, op in image_problems():
        gen = torch.Generator().manual_seed(7)
        ys = [op.A(x[None]) + args.sigma_y * torch.randn(op.A(x[None]).shape, generator=gen, dtype=torch.float64)
              for x in x_test]
        shown = {"ground truth": x_test, "observation": torch.cat([op.AT(y) if isinstance(op, inverse.Inpaint)
                                                                   else op.pinv(y) for y in ys])}
        base = dict(problem=pname, n=args.image_n, sigma_y=args.sigma_y)
        posts = [inverse.exact_posterior(prior, op, y, args.sigma_y) for y in ys]
        means = torch.stack([p.mean_ for p in posts])
        samples = torch.cat([p.sample(1, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(posts)])
        shown["exact mean"], shown["exact sample"] = means, samples
        if rec.get(problem=pname, method="exact Gaussian posterior") is None:
            rec.add({**base, "method": "exact Gaussian posterior", "steps": 0, "NFE": 0,
                     "PSNR": r4(inverse.psnr(samples, x_test).mean()), "SSIM": r4(inverse.ssim(samples, x_test).mean()),
                     "PSNR of mean": r4(inverse.psnr(means, x_test).mean()),
                     "SSIM of mean": r4(inverse.ssim(means, x_test).mean()), "seconds": 0.0})
        for label, opts in methods:
            path = cache / f"{pname.replace(' ', '_').replace('%', '')}_{opts['method']}_n{args.image_n}_" \
                           f"s{args.image_steps}_k{opts.get('particles', 0)}_z{args.zeta:g}.pt"
            if path.exists():
                hit = torch.load(path)
            else:
                t0 = time.perf_counter()
                outs = [inverse.sample(net, op, y.to(torch.float32), args.sigma_y, n=1, sigmas=sigmas, seed=i, **opts)
                        for i, y in enumerate(ys)]
                hit = {"samples": torch.cat([o.samples for o in outs]).detach().to(torch.float64),
                       "nfe": outs[0].options.get("cost", outs[0].nfe), "grad": outs[0].nfe_grad,
                       "seconds": time.perf_counter() - t0}
                torch.save(hit, path)
            x = hit["samples"].clamp(-1, 1)
            shown[label] = x
            if rec.get(problem=pname, method=label) is None:
                rec.add({**base, "method": label, "steps": args.image_steps, "NFE": hit["nfe"],
                         "PSNR": r4(inverse.psnr(x, x_test).mean()), "SSIM": r4(inverse.ssim(x, x_test).mean()),
                         "PSNR of mean": None, "SSIM of mean": None, "seconds": round(hit["seconds"], 1)})
                print(f"images {pname} {label}: PSNR {rec.rows[-1]['PSNR']} ({hit['seconds']:.0f} s)", flush=True)
        k = min(8, args.image_n)
        panels.append(torch.cat([v[:k].to(torch.float32).clamp(-1, 1) for v in shown.values()]))
        order = list(shown)
    grid = "guidance_images.png"
    save_grid(torch.cat(panels), Path(args.out) / grid, nrow=min(8, args.image_n), scale=2)
    rec.write(plots=[grid], grid_rows=f"per problem (top half, random 70%, 2x SR), one row each: {', '.join(order)}")


# ============================================================================================== part (d): Gaussian priors
PRIOR_TABLES = ("d16", "fashion-mnist")
DIVERGED = 10           # a value beyond 10× the largest |x| of the exact samples, or a non-finite one: blown up


def d16_problem(seed: int = 0, d: int = 16, m: int = 4, sigma_y: float = 0.1):
    """(prior, operator, y, σ_y) of the small problem, float64, all from `seed`: a zero-mean Gaussian prior with
    variances log-spaced from 3.2 to 0.03 in a random orthonormal basis (QR of a Gaussian matrix), A a random
    m × d matrix with entries N(0, 1/d), y = A x* + σ_y ε with x* drawn from the prior."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.logspace(math.log10(3.2), math.log10(0.03), d, dtype=torch.float64)
    prior = sl.Gaussian(torch.zeros(d, dtype=torch.float64), lam, q)
    op = inverse.Linear(torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d))
    x_star = q @ (lam.sqrt() * torch.randn(d, generator=g, dtype=torch.float64))
    y = op.A(x_star[None]) + sigma_y * torch.randn(1, m, generator=g, dtype=torch.float64)
    return prior, op, y, sigma_y


def diverged(x: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether samples blew up: a non-finite value, or one beyond DIVERGED times the largest |x| of the exact
    posterior samples `reference`."""
    return not bool(torch.isfinite(x).all()) or float(x.abs().max()) > DIVERGED * float(reference.abs().max())


def prior_methods(prior, zeta: float, particles: int, sigma_datas, heun: bool):
    """(method, sampler, options, steps for an NFE budget) of the Gaussian-prior comparison. Ancestral samplers and
    SMC make one evaluation per step; Heun 2 per step but the last (the grid ends at σ = 0), so (NFE + 1)/2 steps."""
    anc, heun_steps = (lambda nfe: nfe), (lambda nfe: (nfe + 1) // 2)
    likelihoods = [(f"PiGDM, sigma_d = {s:g}", dict(method="pigdm", sigma_data=s)) for s in sigma_datas]
    likelihoods += [("PiGDM, exact Sigma_sigma", dict(method="pigdm", r2=prior)), ("DMPS", dict(method="dmps"))]
    out = [("DPS", "ancestral", dict(method="dps", zeta=zeta), anc)]
    for label, opts in likelihoods:
        out.append((label, "ancestral", opts, anc))
        if heun:
            out.append((label, "Heun", {**opts, "solver": "heun"}, heun_steps))
    out.append((f"SMC, K = {particles}", "DPM-Solver++(2M) SDE",
                dict(method="smc", particles=particles, dtype=torch.float64), anc))
    return out


def run_prior(args, rec: Record):
    """Both tables: (1) the d = 16 Gaussian at several NFE budgets, (2) a Gaussian fitted to Fashion-MNIST, one test
    image, top-half inpainting and 2x down-sampling, one NFE budget (with PSNR/SSIM per sample)."""
    problems = []
    if "d16" in args.prior_tables:
        prior, op, y, sigma_y = d16_problem(args.prior_seed)
        problems.append(("d16", "d = 16, A 4 x 16", prior, op, y, sigma_y, None, args.prior_n, args.prior_ref,
                         args.prior_nfe, True, (1.0,)))
    if "fashion-mnist" in args.prior_tables:
        prior = sl.Gaussian.fit(fashion_mnist("train", args.prior_fit, path=args.data_path))
        truth = fashion_mnist("test", args.prior_index + 1, path=args.data_path)[args.prior_index:].to(torch.float64)
        for pname, op in [p for p in image_problems() if p[0] != "random 70% inpainting"]:
            noise = torch.randn(op.A(truth).shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
            y = op.A(truth) + args.sigma_y * noise
            problems.append(("fashion-mnist", pname, prior, op, y, args.sigma_y, truth, args.prior_image_n,
                             args.prior_image_ref, [args.prior_steps], False, (0.5, 1.0, 2.0)))
    for table, pname, prior, op, y, sigma_y, truth, n, n_ref, budgets, heun, sigma_datas in problems:
        post = inverse.exact_posterior(prior, op, y, sigma_y)
        reference = post.sample(n_ref, generator=torch.Generator().manual_seed(1))
        base = dict(table=table, problem=pname, n=n, n_ref=n_ref, sigma_y=sigma_y)

        def measure(x):
            x = x.to(torch.float64)
            if diverged(x, reference):
                return {"SW2": None, "PSNR": None, "SSIM": None, "diverged": True}
            sw = sl.metrics.sliced_wasserstein(x, reference, n_projections=args.projections, seed=1)
            if truth is None:
                return {"SW2": r4(sw), "PSNR": None, "SSIM": None, "diverged": False}
            return {"SW2": r4(sw), "PSNR": r4(inverse.psnr(x, truth[0]).mean()),
                    "SSIM": r4(inverse.ssim(x, truth[0]).mean()), "diverged": False}

        fixed = [("exact (floor)", "exact", lambda: post.sample(n, generator=torch.Generator().manual_seed(2))),
                 ("prior (no observation)", "exact", lambda: prior.sample(n, generator=torch.Generator().manual_seed(3)))]
        for label, sampler, draw_fn in fixed:
            if rec.get(table=table, problem=pname, method=label, sampler=sampler, steps=0) is None:
                t0 = time.perf_counter()
                x = draw_fn()
                row = {**base, "method": label, "sampler": sampler, "steps": 0, "NFE": 0, **measure(x),
                       "seconds": round(time.perf_counter() - t0, 2)}
                if truth is not None and label.startswith("exact"):
                    mean = post.mean_.reshape(truth.shape)
                    row.update({"PSNR of mean": r4(inverse.psnr(mean, truth[0])),
                                "SSIM of mean": r4(inverse.ssim(mean, truth[0]))})
                rec.add(row)
        for label, sampler, opts, steps_of in prior_methods(prior, args.zeta, args.prior_particles, sigma_datas, heun):
            for budget in budgets:
                steps = steps_of(budget)
                if rec.get(table=table, problem=pname, method=label, sampler=sampler, steps=steps) is not None:
                    continue
                t0 = time.perf_counter()
                out = inverse.sample(prior, op, y, sigma_y, n=n, sigmas=karras(steps), seed=0, **opts)
                seconds = time.perf_counter() - t0
                row = rec.add({**base, "method": label, "sampler": sampler, "steps": steps, "NFE": out.nfe,
                               **measure(out.samples), "cost": out.options.get("cost", out.nfe),
                               "seconds": round(seconds, 2)})
                print(f"prior {table} {pname} {label} ({sampler}, NFE {out.nfe}): SW2 {row['SW2']}"
                      f"{' (diverged)' if row['diverged'] else ''} ({seconds:.1f} s)", flush=True)
    rec.write(tables=prior_tables(rec.rows))


def prior_tables(rows):
    """The two summary tables of the docs: SW2 by method and NFE (d16); SW2, PSNR, SSIM by method and problem
    (fashion-mnist). A diverged run shows as 'diverges'."""
    def cell(r, key):
        return None if r is None else ("diverges" if r["diverged"] else r[key])

    tables = []
    small = [r for r in rows if r["table"] == "d16"]
    if small:
        budgets = sorted({r["NFE"] for r in small if r["NFE"]})
        out = []
        for method, sampler in dict.fromkeys((r["method"], r["sampler"]) for r in small):
            by = {r["NFE"]: r for r in small if (r["method"], r["sampler"]) == (method, sampler)}
            out.append({"method": method, "sampler": sampler,
                        **{f"NFE {b}": cell(by.get(0, by.get(b)), "SW2") for b in budgets}})
        tables.append({"title": "d = 16 Gaussian prior: sliced W2 to exact posterior samples by NFE (exact and "
                                "prior rows: no sampler, the same value in every column)", "rows": out})
    images = [r for r in rows if r["table"] == "fashion-mnist"]
    if images:
        out = []
        for method in dict.fromkeys(r["method"] for r in images):
            row = {"method": method}
            for pname, short in (("top-half inpainting", "inpaint"), ("2x super-resolution", "2x down")):
                r = next((r for r in images if r["method"] == method and r["problem"] == pname), None)
                row.update({f"{short} SW2": cell(r, "SW2"), f"{short} PSNR": cell(r, "PSNR"),
                            f"{short} SSIM": cell(r, "SSIM")})
            out.append(row)
        tables.append({"title": "Fashion-MNIST Gaussian prior, one test image: sliced W2 to exact posterior samples,"
                                " PSNR and SSIM per sample (averaged)", "rows": out})
    return tables


# ============================================================================================== main
def parse_list(text: str, kind, name: str):
    try:
        out = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers; got {text!r}") from None
    if not out:
        raise ValueError(f"{name} must name at least one value")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Records: guidance_tilt.json, guidance_gmm.json, guidance_images.json, "
                                        "guidance_prior.json.")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: tilt, gmm, images, prior (default: all)")
    ap.add_argument("--quick", action="store_true", help="a small version of every part (smaller n, fewer steps)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    ap.add_argument("--device", default=None, help="tilt: where FKC runs, e.g. cuda (default: the CPU)")
    ap.add_argument("--dims", default="2,64,784", help="tilt: dimensions among 2, 64, 784 (default: all)")
    ap.add_argument("--gammas", default="1.5,3", help="tilt: CFG scales γ (default: 1.5,3)")
    ap.add_argument("--ks", default="1,2,4,8,16", help="tilt: particles per sample K (default: 1,2,4,8,16)")
    ap.add_argument("--tilt-class", type=int, default=0, help="tilt: the class c (default: 0)")
    ap.add_argument("--pi-c", type=float, default=0.75, help="tilt: class c's prior mass in the unconditional "
                    "model; the tilt is positive definite when pi_c > (γ − 1)/γ (default: 0.75)")
    ap.add_argument("--tilt-steps", type=int, default=64, help="tilt: Karras steps, σ 80 → 0.002, at d = 2 and 64 "
                    "(default: 64)")
    ap.add_argument("--tilt-steps-784", type=int, default=64, help="tilt: Karras steps at d = 784 (default: 64)")
    ap.add_argument("--batch-ks", default="8", help="tilt: K of the one-population variant (all n·K particles one "
                    "population), at d = 2 and 64 (default: 8; empty: none)")
    ap.add_argument("--n-2", type=int, default=20000, help="tilt: samples at d = 2 (default: 20000)")
    ap.add_argument("--n-64", type=int, default=16000, help="tilt: samples at d = 64 (default: 16000)")
    ap.add_argument("--n-784", type=int, default=4000, help="tilt: samples at d = 784 (default: 4000)")
    ap.add_argument("--fkc-eta", type=float, default=30.0, help="tilt: FKC's SDE noise eta (DPM-Solver++(2M) SDE; "
                    "default: 30)")
    ap.add_argument("--fkc-steps", type=int, default=1024,
                    help="tilt: FKC's Karras steps, σ 80 → 0.002 (default: 1024)")
    ap.add_argument("--selection", choices=("plain", "loo"), default="loo",
                    help="tilt: FKC's resampling probabilities, smc.sample(selection=) (default: loo)")
    ap.add_argument("--chunk", type=int, default=0, help="tilt: run FKC cells in parts of this many samples (seeds "
                    "K + 1000·i), each cached as it finishes so that a long cell resumes (default: 0, one run)")
    ap.add_argument("--sde-moments", action=argparse.BooleanOptionalAction, default=True,
                    help="tilt: a row with the exact moments of FKC with one particle (the guided SDE alone; d³ work "
                         "per step, minutes at d = 784) for each setting (default: on)")
    ap.add_argument("--ess-threshold", type=float, default=1.0, help="tilt: FKC resampling threshold (default: 1, "
                    "every step)")
    ap.add_argument("--floor-reps", type=int, default=3, help="tilt: replicates of the floor and the bias (default 3)")
    ap.add_argument("--projections", type=int, default=256, help="sliced W2 projections (default: 256)")
    ap.add_argument("--gmm-dims", default="8,80,800", help="gmm: dimensions (default: 8,80,800)")
    ap.add_argument("--d-y", type=int, default=1, help="gmm: observation dimension (default: 1)")
    ap.add_argument("--gmm-seeds", type=int, default=4, help="gmm: problems per dimension (default: 4)")
    ap.add_argument("--gmm-n", type=int, default=1000, help="gmm: samples per method and exact (default: 1000)")
    ap.add_argument("--gmm-nfe", type=int, default=256, help="gmm: denoiser evaluations per sample (default: 256)")
    ap.add_argument("--smc-particles", default="4,8", help="gmm: SMC particles K (steps = NFE / K; default: 4,8)")
    ap.add_argument("--zeta", type=float, default=1.0, help="DPS step size ζ (default: 1)")
    ap.add_argument("--image-n", type=int, default=32, help="images: test images (default: 32)")
    ap.add_argument("--image-steps", type=int, default=30, help="images: ancestral steps (default: 30)")
    ap.add_argument("--image-smc", type=int, default=0, help="images: SMC particles K, 0 to skip (default: 0)")
    ap.add_argument("--sigma-y", type=float, default=0.05, help="images, prior (Fashion-MNIST): observation noise "
                    "(default: 0.05)")
    ap.add_argument("--prior-tables", default=",".join(PRIOR_TABLES), help="prior: tables among d16, fashion-mnist "
                    "(default: both)")
    ap.add_argument("--prior-nfe", default="25,99,399", help="prior, d16: NFE budgets (ancestral and SMC steps; Heun "
                    "(NFE + 1)/2 steps; default: 25,99,399)")
    ap.add_argument("--prior-seed", type=int, default=0, help="prior, d16: the problem's seed (default: 0)")
    ap.add_argument("--prior-n", type=int, default=1000, help="prior, d16: samples per method (default: 1000)")
    ap.add_argument("--prior-ref", type=int, default=4000, help="prior, d16: exact posterior samples, the reference "
                    "(default: 4000)")
    ap.add_argument("--prior-fit", type=int, default=10000, help="prior, fashion-mnist: training images the Gaussian "
                    "is fitted to (default: 10000)")
    ap.add_argument("--prior-index", type=int, default=3, help="prior, fashion-mnist: the test image (default: 3, as "
                    "in docs/inverse.md's restore example)")
    ap.add_argument("--prior-image-n", type=int, default=200, help="prior, fashion-mnist: samples per method "
                    "(default: 200)")
    ap.add_argument("--prior-image-ref", type=int, default=1000, help="prior, fashion-mnist: exact posterior samples, "
                    "the reference (default: 1000)")
    ap.add_argument("--prior-steps", type=int, default=50, help="prior, fashion-mnist: ancestral steps (default: 50)")
    ap.add_argument("--prior-particles", type=int, default=8, help="prior: SMC particles K (default: 8)")
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    try:
        parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        bad = [p for p in parts if p not in PARTS]
        if bad or not parts:
            raise ValueError(f"--parts must be among {', '.join(PARTS)}; got {args.parts!r}")
        args.dims = parse_list(args.dims, int, "--dims")
        if any(d not in (2, 64, 784) for d in args.dims):
            raise ValueError(f"--dims must be among 2, 64, 784; got {args.dims}")
        args.gammas = parse_list(args.gammas, float, "--gammas")
        args.ks = parse_list(args.ks, int, "--ks") if args.ks.strip() else []
        args.batch_ks = parse_list(args.batch_ks, int, "--batch-ks") if args.batch_ks.strip() else []
        args.gmm_dims = parse_list(args.gmm_dims, int, "--gmm-dims")
        if any(d < 2 or d % 2 for d in args.gmm_dims):
            raise ValueError(f"--gmm-dims must be even numbers >= 2; got {args.gmm_dims}")
        args.smc_particles = parse_list(args.smc_particles, int, "--smc-particles")
        args.prior_tables = [t.strip() for t in args.prior_tables.split(",") if t.strip()]
        if not args.prior_tables or any(t not in PRIOR_TABLES for t in args.prior_tables):
            raise ValueError(f"--prior-tables must be among {', '.join(PRIOR_TABLES)}; got {args.prior_tables}")
        args.prior_nfe = parse_list(args.prior_nfe, int, "--prior-nfe")
        if any(b < 1 for b in args.prior_nfe):
            raise ValueError(f"--prior-nfe must be >= 1; got {args.prior_nfe}")
        if args.prior_index < 0 or args.prior_seed < 0:
            raise ValueError("--prior-index and --prior-seed must be >= 0")
        for name in ("threads", "n_2", "n_64", "n_784", "tilt_steps", "tilt_steps_784", "fkc_steps", "floor_reps",
                     "projections", "d_y",
                     "gmm_seeds", "gmm_n", "gmm_nfe", "image_n", "image_steps", "prior_n", "prior_ref", "prior_fit",
                     "prior_image_n", "prior_image_ref", "prior_steps", "prior_particles"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
        if any(k < 1 for k in args.ks + args.batch_ks + args.smc_particles):
            raise ValueError("--ks and --smc-particles must be >= 1")
        if args.chunk < 0:
            raise ValueError(f"--chunk must be >= 0; got {args.chunk}")
        if not args.fkc_eta >= 0:
            raise ValueError(f"--fkc-eta must be >= 0; got {args.fkc_eta}")
        if not 0 < args.pi_c < 1:
            raise ValueError(f"--pi-c must be in (0, 1); got {args.pi_c}")
        if args.sigma_y <= 0:
            raise ValueError(f"--sigma-y must be > 0; got {args.sigma_y}")
    except ValueError as err:
        print(f"bench.guidance: error: {err}", file=sys.stderr)
        return 2
    if args.quick:
        args.n_2, args.n_64, args.n_784 = min(args.n_2, 2000), min(args.n_64, 500), min(args.n_784, 200)
        args.tilt_steps, args.gmm_seeds, args.gmm_n = min(args.tilt_steps, 32), 1, min(args.gmm_n, 200)
        args.fkc_steps, args.fkc_eta = min(args.fkc_steps, 32), min(args.fkc_eta, 1.0)   # a large eta needs fine steps
        args.tilt_steps_784 = min(args.tilt_steps_784, 16)
        args.image_n, args.image_steps = min(args.image_n, 4), min(args.image_steps, 10)
        args.prior_nfe, args.prior_n, args.prior_ref = args.prior_nfe[:1], min(args.prior_n, 200), \
            min(args.prior_ref, 800)
        args.prior_image_n, args.prior_image_ref = min(args.prior_image_n, 50), min(args.prior_image_ref, 200)
        args.prior_steps, args.prior_fit = min(args.prior_steps, 10), min(args.prior_fit, 2000)
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    cmd = record.command_line(module="bench.guidance") if argv is None else \
        record.command_line(["bench/guidance.py", *argv], module="bench.guidance")
    if "tilt" in parts:
        settings = dict(cls=args.tilt_class, pi_c=args.pi_c, ess=args.ess_threshold, floor_reps=args.floor_reps,
                        projections=args.projections)
        rec = Record("guidance_tilt", args.out, settings,
                     ("d", "gamma", "method", "K", "n", "steps", "eta", "selection", "sde steps"), command=cmd,
                     title="CFG tilt p(x|c)^γ p(x)^(1−γ) of per-class Gaussians: W₂ of plain CFG and of "
                           "Feynman–Kac-corrected CFG (K particles per sample) to the exact tilt",
                     columns=["d", "gamma", "n", "method", "K", "eta", "selection", "ratio to CFG"],
                     keys=["d", "gamma", "n", "method", "K", "eta", "selection"], notes=TILT_NOTES)
        run_tilt(args, rec)
        print(show(rec.rows, columns=["d", "gamma", "method", "K", "n", "W2", "W2 debiased", "ratio to CFG", "SW2",
                                      "seconds"]))
    if "gmm" in parts:
        settings = dict(d_y=args.d_y, n=args.gmm_n, nfe=args.gmm_nfe, zeta=args.zeta, projections=args.projections)
        rec = Record("guidance_gmm", args.out, settings, ("d", "seed", "method"), command=cmd,
                     title="MCGdiff's 25-component GMM posterior: sliced W₂ of DPS, ΠGDM, DMPS and SMC to exact "
                           f"posterior samples at equal NFE ({args.gmm_nfe} per sample)",
                     columns=["d", "seed", "method", "steps", "NFE", "SW2", "sigma_y"],
                     keys=["d", "seed", "method"], notes=GMM_NOTES)
        run_gmm(args, rec)
        print(show(rec.extra["tables"][0]["rows"]))
    if "images" in parts:
        settings = dict(n=args.image_n, steps=args.image_steps, smc=args.image_smc, zeta=args.zeta,
                        sigma_y=args.sigma_y)
        rec = Record("guidance_images", args.out, settings, ("problem", "method"), command=cmd,
                     title=f"Fashion-MNIST restoration with the U-Net prior vs the exact Gaussian posterior "
                           f"({args.image_n} test images, σ_y = {args.sigma_y})",
                     columns=["problem", "method", "NFE", "PSNR", "SSIM", "PSNR of mean", "SSIM of mean"],
                     keys=["problem", "method"], notes=IMAGE_NOTES, network=record.network(
                         record.ROOT / "models" / "fashion-mnist-unet"))
        run_images(args, rec)
        print(show(rec.rows))
    if "prior" in parts:
        settings = dict(seed=args.prior_seed, n=args.prior_n, ref=args.prior_ref, fit=args.prior_fit,
                        index=args.prior_index, image_n=args.prior_image_n, image_ref=args.prior_image_ref,
                        particles=args.prior_particles, zeta=args.zeta, sigma_y=args.sigma_y,
                        projections=args.projections)
        rec = Record("guidance_prior", args.out, settings, ("table", "problem", "method", "sampler", "steps"),
                     command=cmd, title="Gaussian priors: sliced W₂ of DPS, ΠGDM (isotropic r_σ² and exact Σ_σ), "
                                        "DMPS and SMC to exact posterior samples (d = 16; Fashion-MNIST, d = 784)",
                     columns=["problem", "method", "sampler", "NFE", "SW2", "PSNR", "SSIM", "diverged"],
                     keys=["problem", "method", "sampler"], notes=PRIOR_NOTES)
        run_prior(args, rec)
        for t in rec.extra["tables"]:
            print(show(t["rows"]))
    return 0


TILT_NOTES = (
    "Conditional model: class c's Gaussian from Gaussian.fit(x, labels=y, eps) (eps added to every eigenvalue: 0 "
    "at d = 2, 0.01 at d = 64 and 784, where some pixels never vary within a class). Unconditional model (the "
    "floor rows' 'unconditional'): the plain pooled fit where the tilt's precision γΛ_c + (1 − γ)Λ_u is positive "
    "definite with it (d = 2), else the Gaussian with the moments of the class mixture in which class c has prior"
    " mass pi_c, so Σ_u ⪰ pi_c Σ_c and the precision ⪰ (γ − (γ − 1)/pi_c)Λ_c is positive definite (pi_c > (γ − "
    "1)/γ); 'tilt precision cond' is its λ_min/λ_max. With the plain pooled fit (second table) it is indefinite "
    "for every class at both γ at d = 64 and 784. 'FKC, one population': all n·K particles form one population "
    "(population='batch'), at d = 2 and 64 only. 'FKC, K = 1 (exact moments)': the law of FKC with one particle "
    "(the guided SDE alone, no weights) at the row's eta and sde steps, computed without sampling (sde_moments: "
    "each DPM-Solver++(2M) SDE step is affine in (x, previous D) plus Gaussian noise), so its W2 carries no "
    "sampling error (its SW2 is from n draws of that Gaussian). CFG: Heun on D_u + γ(D_c − D_u), exact moments "
    "(an affine map of the initial noise). FKC: scorelab.smc.sample(smc.cfg(g_c, γ, uncond=g_u)), "
    "DPM-Solver++(2M) SDE with the row's eta on a Karras grid of the row's 'sde steps' (σ 80 → 0.002), resampling "
    "and the final draw with the "
    "row's selection ('plain': w_k / Σ w; 'loo': leave-one-out w_k / Σ_(j≠k) w_j; in this record eta 1, 3, 10 "
    "and 30 ran on 64, 128, 512 and 1,024 steps), one "
    "population of K particles per sample, resampled at every step (ess_threshold 1), float32, run in the "
    "eigenbasis of g_u (rotated_pair: the same law up to the rotation, which W2 does not see); NFE counts both "
    "models' evaluations per returned sample; 'min ESS' / 'mean ESS': the smallest / mean effective sample size "
    "over all populations and steps, before resampling. W2: closed form between Gaussians from sample moments; "
    "the floor row is W2 of n exact tilt samples (rms of the replicates), its 'resolution' √(2 sd) with sd the "
    "standard deviation of W2² over 8 sets of n exact samples (a debiased W2 below it cannot be told from 0); "
    "'W2 debiased' = sqrt(max(W2² − floor², 0)) (the estimator's bias removed in squares); 'ratio to CFG' = W2 debiased / CFG's W2. SW2: sliced W2 (256 "
    "projections) to max(n, 2,000) exact tilt samples; its floor is the floor row's SW2.")
GMM_NOTES = (
    "Prior: 25 unit-covariance Gaussians, means (8i, 8j, 8i, 8j, …), i, j ∈ {−2..2}, weights ∝ N(0,1)²; A = U "
    "diag(s) V[:d_y] with s ~ sorted U(0,1); σ_y = u·max(s), u ~ U(0,1); y = A x* + σ_y ε (the construction of "
    "MCGdiff's code, one problem per seed). Karras grids σ_max = 20√d (the noised prior then differs from N(0, "
    "σ_max² I) by ≤ 0.32 nats) to 0.002. Equal NFE: every method uses the same number of denoiser evaluations per"
    " returned sample (DPS, ΠGDM, DMPS: that many ancestral steps; SMC with K particles: NFE/K steps of "
    "DPM-Solver++(2M) SDE, the n·K particles one population (the target is the same for every sample; "
    "population='batch'), resampled when ESS < half the particles); DPS and ΠGDM differentiate through every "
    "evaluation besides (a vector-Jacobian product each). DPS: ζ as recorded; ΠGDM: r_σ² for σ_d = 1 (the paper's"
    " unit-variance choice). SW2: sliced W2 (256 projections) between n samples and n exact posterior samples; "
    "'exact (floor)' is two exact sets.")
IMAGE_NOTES = (
    "Ground truth: the first n Fashion-MNIST test images; y = A x + σ_y ε. Prior for DPS/ΠGDM/DMPS/SMC: the "
    "shipped U-Net (σ_d = 0.706 for ΠGDM's r_σ²), ancestral steps on a Karras grid (SMC: K particles, "
    "DPM-Solver++(2M) SDE; NFE counts all K). Baseline: the exact posterior of a Gaussian fitted on the 60,000 "
    "training images (full rank): one exact draw per image ('PSNR', 'SSIM') and its posterior mean ('of mean'). "
    "PSNR/SSIM per image (range 2, [-1, 1] images), averaged over the n images; one posterior sample per image "
    "and method. FD in classifier features is not reported: n is far below the 128 feature dimensions.")

PRIOR_NOTES = (
    "Table d16: a zero-mean Gaussian prior in d = 16, variances log-spaced from 3.2 to 0.03 in a random orthonormal"
    " basis; A a random 4 × 16 matrix with entries N(0, 1/16); σ_y = 0.1; y = A x* + σ_y ε with x* from the prior "
    "(all from the seed). Table fashion-mnist: the Gaussian fitted (Gaussian.fit, full rank) to the first `fit` "
    "training images; the test image `index` observed with σ_y through the top-half mask (the top 14 rows, m = 392)"
    " or 2× average pooling (m = 196). Exact posterior: inverse.exact_posterior; reference: n_ref exact samples; "
    "'exact (floor)': n further exact samples (two exact sets); 'prior (no observation)': n prior samples. Methods "
    "via inverse.sample on the Gaussian's denoiser, float64, seed 0 for every sampler, Karras grids σ 80 → 0.002 (→ "
    "0): DPS (ζ as recorded, its ancestral algorithm); ΠGDM with the isotropic r_σ² = σ²σ_d²/(σ² + σ_d²) for the "
    "σ_d named, or with the exact Σ_σ of the prior (r2=prior); DMPS; ancestral (euler_ancestral) or Heun (2 "
    "evaluations per step but the last: (NFE + 1)/2 steps); SMC: scorelab.smc.posterior_sample, K particles per "
    "sample (population 'sample'), DPM-Solver++(2M) SDE, NFE steps ('cost' = K × NFE evaluations per sample). "
    "SW2: sliced W2 (256 projections) between a method's n samples and the reference. PSNR/SSIM: per sample "
    "against the ground-truth image (range 2, no clipping), averaged; 'of mean': the exact posterior mean's. "
    "'diverged': a sample non-finite or beyond 10× the largest |x| of the exact samples (no SW2/PSNR/SSIM then).")


if __name__ == "__main__":
    sys.exit(main())
