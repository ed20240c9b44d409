"""Gaussian mixture denoiser (Wang & Vastola 2024, "The unreasonable effectiveness of Gaussian score
approximation"; mixtures coarse-grain the empirical distribution between one Gaussian and N Dirac points).

x0 ~ Σ_c π_c N(μ_c, Σ_c). Then x_σ ~ Σ_c π_c N(μ_c, Σ_c + σ²I) and the exact denoiser is

    D(x, σ) = Σ_c w_c(x, σ) [μ_c + Σ_c (Σ_c + σ²I)⁻¹ (x − μ_c)],   w_c ∝ π_c N(x; μ_c, Σ_c + σ²I).

Covariances are kept in eigen form Σ_c = U_c diag(λ_c) U_cᵀ + ρ_c (I − U_c U_cᵀ) (U_c: [d, r]):
"full" (r = d), "lowrank" (r < d, probabilistic PCA: ρ_c = mean of the discarded eigenvalues; Tipping & Bishop
1999) or "diag" (variances v_c). With p = U_cᵀ(x − μ_c) the Woodbury/eigen forms are
    log|Σ_c + σ²I| = Σ log(λ + σ²) + (d − r) log(ρ + σ²)
    (x−μ)ᵀ(Σ_c+σ²I)⁻¹(x−μ) = Σ p²/(λ + σ²) + (‖x − μ‖² − ‖p‖²)/(ρ + σ²)
    Σ_c(Σ_c+σ²I)⁻¹(x−μ) = U diag(λ/(λ+σ²)) p + ρ/(ρ+σ²) (x − μ − U p)
so a call costs O(B·K·d·r) and memory O(B·d) (components are streamed through `softmax.SoftmaxSums`).

Fitting: k-means++ seeding (Arthur & Vassilvitskii 2007), a few Lloyd steps, then EM (Dempster et al. 1977) in
float64. `reg_covar` is added to every eigenvalue/variance. In the M-step, points whose responsibility for a
component is below `resp_floor` (default 1e-12) are left out of that component's scatter matrix (a bounded
relative change < N·resp_floor/N_c; 0 makes it exact).
"""
from __future__ import annotations

import math

import torch

from .._checks import check_data, check_positive_int, check_tensor, sigma_view
from .._io import load_state, save_state
from .conditional import ByClass, class_indices
from .softmax import SoftmaxSums

__all__ = ["GMM"]

COVARIANCES = ("full", "diag", "lowrank")
LOG_2PI = math.log(2 * math.pi)


class GMM(ByClass):
    """Gaussian mixture with a closed-form denoiser at every σ. Fit with `GMM.fit(data, n_components, covariance)`.

    Learned attributes: weights_ [K], means_ [K, *shape]; "full"/"lowrank": eigvals_ [K, r], eigvecs_ [K, d, r],
    residual_var_ [K]; "diag": variances_ [K, d]; log_likelihood_ (mean per sample, per EM iteration), n_iter_,
    converged_."""

    kind = "gmm"

    def __init__(self, weights, means, *, covariance: str, eigvals=None, eigvecs=None, residual_var=None,
                 variances=None, dtype=torch.float64, device=None):
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}; got {covariance!r}")
        self.covariance = covariance
        device = torch.device(device) if device is not None else means.device
        cast = (lambda t: None if t is None else torch.as_tensor(t).to(device=device, dtype=dtype))
        self.weights_, self.means_ = cast(weights), cast(means)
        K = self.means_.shape[0]
        self.shape_ = tuple(self.means_.shape[1:])
        self.dim = math.prod(self.shape_)
        if self.weights_.shape != (K,) or (self.weights_ < 0).any():
            raise ValueError(f"weights must be a non-negative [K={K}] tensor; got shape {tuple(self.weights_.shape)}")
        if covariance == "diag":
            self.variances_ = cast(variances)
            if self.variances_ is None or self.variances_.shape != (K, self.dim) or not (self.variances_ > 0).all():
                raise ValueError(f"variances must be a positive [K, d] = [{K}, {self.dim}] tensor")
        else:
            self.eigvals_, self.eigvecs_ = cast(eigvals), cast(eigvecs)
            self.residual_var_ = cast(residual_var if residual_var is not None else torch.zeros(K))
            if self.eigvecs_ is None or self.eigvecs_.ndim != 3 or self.eigvecs_.shape[:2] != (K, self.dim):
                raise ValueError(f"eigvecs must have shape [K, d, r] = [{K}, {self.dim}, r]")
            self.rank_ = self.eigvecs_.shape[2]
            if self.eigvals_ is None or self.eigvals_.shape != (K, self.rank_) or not (self.eigvals_ > 0).all():
                raise ValueError(f"eigvals must be a positive [K, r] = [{K}, {self.rank_}] tensor")
            if self.rank_ < self.dim and not (self.residual_var_ > 0).all():
                raise ValueError("residual_var must be > 0 for every component when r < d")
        self.dtype, self.device = dtype, device
        self.log_likelihood_, self.n_iter_, self.converged_ = [], 0, None

    @property
    def n_components(self) -> int:
        return self.means_.shape[0]

    # -- fitting -----------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, data, n_components: int = 10, covariance: str = "full", rank: int | None = None, *,
            max_iter: int = 100, tol: float = 1e-6, reg_covar: float = 1e-6, kmeans_iter: int = 10,
            resp_floor: float = 1e-12, chunk_size: int = 8192, seed: int = 0, dtype=torch.float64, device=None,
            progress: bool = False, labels=None) -> "GMM":
        """EM fit. data [N, *shape]; rank: columns of U for covariance="lowrank" (1 ≤ rank < d).
        `labels` [N] (ints >= 0): also fit one mixture per class on its rows alone (same options), used when the
        call gives `class_labels` (None: the pooled mixture; see `scorelab.models.conditional`)."""
        data = check_data(data)
        if labels is not None:
            groups = class_indices(labels, data.shape[0])
            opts = dict(n_components=n_components, covariance=covariance, rank=rank, max_iter=max_iter, tol=tol,
                        reg_covar=reg_covar, kmeans_iter=kmeans_iter, resp_floor=resp_floor, chunk_size=chunk_size,
                        seed=seed, dtype=dtype, device=device, progress=progress)
            pooled = cls.fit(data, **opts)
            pooled._set_classes({c: cls.fit(data[torch.from_numpy(idx).to(data.device)], **opts)
                                 for c, idx in groups.items()})
            return pooled
        N = data.shape[0]
        K = check_positive_int(n_components, name="n_components")
        if K > N:
            raise ValueError(f"n_components must be <= the number of samples N={N}; got {K}")
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}; got {covariance!r}")
        x = data.reshape(N, -1).to(device=device, dtype=torch.float64)
        d = x.shape[1]
        if covariance == "lowrank":
            if rank is None:
                raise ValueError("covariance='lowrank' needs rank= (1 <= rank < d)")
            rank = check_positive_int(rank, name="rank")
            if rank >= d:
                raise ValueError(f"rank must be < d={d} for covariance='lowrank' (use 'full'); got {rank}")
        elif rank is not None:
            raise ValueError(f"rank applies to covariance='lowrank' only; got rank={rank} with {covariance!r}")
        if not (reg_covar >= 0 and math.isfinite(reg_covar)):
            raise ValueError(f"reg_covar must be a finite number >= 0; got {reg_covar}")
        max_iter = check_positive_int(max_iter, name="max_iter", minimum=0)
        g = torch.Generator().manual_seed(int(seed))
        centers = _kmeans(x, K, check_positive_int(kmeans_iter, name="kmeans_iter", minimum=0), g, chunk_size)
        labels = _nearest(x, centers, chunk_size)
        for c in torch.nonzero(torch.bincount(labels, minlength=K) == 0).flatten().tolist():
            labels[(x - centers[c]).pow(2).sum(1).argmin()] = c  # an empty cluster takes its closest point
        resp = torch.zeros(N, K, dtype=torch.float64, device=x.device)
        resp[torch.arange(N), labels] = 1.0
        params = _m_step(x, resp, covariance, rank, reg_covar, resp_floor, None)
        history, converged = [], False
        try:
            from .._io import progress_bar
            bar = progress_bar(total=max_iter, desc=f"EM K={K} {covariance}", enabled=progress)
        except ImportError:
            bar = None
        for it in range(max_iter):
            model = cls(**params, covariance=covariance, device=x.device)
            log_joint = model._log_joint(x, 0.0, chunk_size)  # [N, K]: log π_c + log N(x; μ_c, Σ_c)
            log_norm = torch.logsumexp(log_joint, 1)
            history.append(float(log_norm.mean()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loglik=f"{history[-1]:.4f}")
            if it > 0 and abs(history[-1] - history[-2]) <= tol * max(1.0, abs(history[-1])):
                converged = True
                break
            resp = torch.exp(log_joint - log_norm[:, None])
            params = _m_step(x, resp, covariance, rank, reg_covar, resp_floor, params)
        if bar is not None:
            bar.close()
        if not converged:  # evaluate the last M-step's parameters too
            model = cls(**params, covariance=covariance, device=x.device)
            history.append(float(torch.logsumexp(model._log_joint(x, 0.0, chunk_size), 1).mean()))
        model = cls(**params, covariance=covariance, device=device, dtype=dtype)
        model.means_ = model.means_.reshape(K, *data.shape[1:])
        model.shape_ = tuple(data.shape[1:])
        model.log_likelihood_, model.n_iter_, model.converged_ = history, len(history) - 1, converged
        return model

    # -- closed forms ------------------------------------------------------------------------------------------
    def _component(self, c: int, x: torch.Tensor, var: torch.Tensor, need_mean: bool):
        """log N(x; μ_c, Σ_c + σ²I) [B] and (optionally) μ_c + Σ_c(Σ_c + σ²I)⁻¹(x − μ_c) [B, d]; var = σ² [B]."""
        diff = x - self.means_[c].reshape(1, -1)
        d = self.dim
        if self.covariance == "diag":
            v = self.variances_[c][None, :] + var[:, None]
            logp = -0.5 * ((diff ** 2 / v).sum(1) + torch.log(v).sum(1) + d * LOG_2PI)
            mean = self.means_[c].reshape(1, -1) + self.variances_[c][None, :] / v * diff if need_mean else None
            return logp, mean
        U, lam, rho = self.eigvecs_[c], self.eigvals_[c], self.residual_var_[c]
        p = diff @ U  # [B, r]
        lv = lam[None, :] + var[:, None]
        maha = (p ** 2 / lv).sum(1)
        logdet = torch.log(lv).sum(1)
        r = U.shape[1]
        if r < d:
            rv = rho + var
            res = (diff ** 2).sum(1) - (p ** 2).sum(1)
            maha = maha + res.clamp(min=0) / rv
            logdet = logdet + (d - r) * torch.log(rv)
        logp = -0.5 * (maha + logdet + d * LOG_2PI)
        if not need_mean:
            return logp, None
        shrunk = (p * (lam[None, :] / lv)) @ U.T
        if r < d:
            shrunk = shrunk + (rho / rv)[:, None] * (diff - p @ U.T)
        return logp, self.means_[c].reshape(1, -1) + shrunk

    def _log_joint(self, x: torch.Tensor, sigma, chunk_size: int = 8192) -> torch.Tensor:
        """log π_c + log N(x; μ_c, Σ_c + σ²I) for flattened x [B, d]: [B, K].

        "diag" and "lowrank" use GEMMs over all components at once: ‖x − μ‖² = ‖x‖² − 2x·μ + ‖μ‖² and
        p = Uᵀx − Uᵀμ (float64 keeps the cancellation harmless); "full" loops over components."""
        var = torch.as_tensor(sigma, dtype=self.dtype, device=self.device).reshape(-1) ** 2
        K, d = self.n_components, self.dim
        out = torch.empty(x.shape[0], K, dtype=self.dtype, device=self.device)
        logw = torch.log(self.weights_)
        mu = self.means_.reshape(K, d)
        low = self.covariance == "lowrank"
        if low:
            r = self.rank_
            u_cat = self.eigvecs_.permute(1, 0, 2).reshape(d, K * r)  # [d, K·r]
            u_mu = torch.einsum("kdr,kd->kr", self.eigvecs_, mu)  # [K, r]
        for i in range(0, x.shape[0], chunk_size):
            xb = x[i:i + chunk_size].to(device=self.device, dtype=self.dtype)
            vb = var.expand(x.shape[0])[i:i + chunk_size][:, None]  # [b, 1]
            if self.covariance == "full":
                for c in range(K):
                    out[i:i + chunk_size, c] = logw[c] + self._component(c, xb, vb[:, 0], False)[0]
                continue
            if self.covariance == "diag":
                v = self.variances_[None, :, :] + vb[:, :, None]  # [b, K, d]
                maha = torch.einsum("bd,bkd->bk", xb ** 2, 1 / v) - 2 * torch.einsum("bd,bkd->bk", xb, mu / v) \
                    + torch.einsum("kd,bkd->bk", mu ** 2, 1 / v)
                logdet = torch.log(v).sum(-1)
            else:
                dist2 = ((xb ** 2).sum(1, keepdim=True) - 2 * xb @ mu.T + (mu ** 2).sum(1)[None, :]).clamp(min=0)
                p = (xb @ u_cat).reshape(-1, K, r) - u_mu[None]  # [b, K, r]
                lv = self.eigvals_[None] + vb[:, :, None]  # [b, K, r]
                rv = self.residual_var_[None, :] + vb  # [b, K]
                p2 = p ** 2
                maha = (p2 / lv).sum(-1) + (dist2 - p2.sum(-1)).clamp(min=0) / rv
                logdet = torch.log(lv).sum(-1) + (d - r) * torch.log(rv)
            out[i:i + chunk_size] = logw[None, :] - 0.5 * (maha + logdet + d * LOG_2PI)
        return out

    def __call__(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        check_tensor(x, name="x", min_ndim=2)
        if tuple(x.shape[1:]) != tuple(self.shape_):
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.shape_))}]; got {tuple(x.shape)}")
        by_class = self._by_class("__call__", x, class_labels, sigma)
        if by_class is not None:
            return by_class
        var = sigma_view(sigma, x).reshape(-1).to(device=self.device, dtype=self.dtype).pow(2).expand(x.shape[0])
        xf = x.reshape(x.shape[0], -1).to(device=self.device, dtype=self.dtype)
        sums = SoftmaxSums.empty(xf.shape[:1], xf.shape[1:], dtype=self.dtype, device=self.device)
        logw = torch.log(self.weights_)
        for c in range(self.n_components):  # the streamed softmax over components, one at a time
            logp, mean_c = self._component(c, xf, var, True)
            w = sums.weights((logp + logw[c])[:, None])  # [B, 1]
            sums.add(w[:, 0], w * mean_c)
        return sums.mean().reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def log_prob(self, x: torch.Tensor, sigma=0.0, class_labels=None) -> torch.Tensor:
        """log p_σ(x) = log Σ_c π_c N(x; μ_c, Σ_c + σ²I)  [B]."""
        check_tensor(x, name="x", min_ndim=2)
        by_class = self._by_class("log_prob", x, class_labels, sigma)
        if by_class is not None:
            return by_class
        sv = sigma_view(sigma, x).reshape(-1)
        return torch.logsumexp(self._log_joint(x.reshape(x.shape[0], -1), sv), 1)

    def responsibilities(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """w_c(x, σ) [B, K]."""
        return torch.softmax(self._log_joint(x.reshape(x.shape[0], -1), sigma_view(sigma, x).reshape(-1)), 1)

    def sample(self, n: int, sigma: float = 0.0, generator=None, class_labels=None) -> torch.Tensor:
        """Exact draws from the noised mixture p_σ (row i from class class_labels[i]'s mixture if given)."""
        n = check_positive_int(n, name="n")
        if class_labels is not None:
            return self._sample_by_class(n, class_labels, sigma, generator, self.means_)
        c = torch.multinomial(self.weights_.cpu().double(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64).to(self.device, self.dtype)
        out = self.means_.reshape(self.n_components, -1)[c.to(self.device)].clone()
        if self.covariance == "diag":
            out += eps * (self.variances_[c] + sigma ** 2).sqrt()
        else:
            U, lam, rho = self.eigvecs_[c], self.eigvals_[c], self.residual_var_[c]
            p = torch.einsum("ndr,nd->nr", U, eps)
            out += torch.einsum("ndr,nr->nd", U, p * (lam + sigma ** 2).sqrt())
            if self.rank_ < self.dim:
                out += (eps - torch.einsum("ndr,nr->nd", U, p)) * (rho + sigma ** 2).sqrt()[:, None]
        return out.reshape(n, *self.shape_)

    # -- protocol ----------------------------------------------------------------------------------------------
    def _tensors(self) -> dict:
        t = {"weights": self.weights_, "means": self.means_}
        if self.covariance == "diag":
            t["variances"] = self.variances_
        else:
            t.update(eigvals=self.eigvals_, eigvecs=self.eigvecs_, residual_var=self.residual_var_)
        return t

    def to(self, device=None, dtype=None) -> "GMM":
        out = type(self)(**self._tensors(), covariance=self.covariance, dtype=dtype or self.dtype,
                         device=device or self.device)
        out.log_likelihood_, out.n_iter_, out.converged_ = list(self.log_likelihood_), self.n_iter_, self.converged_
        if self.conditional:
            out._set_classes({c: m.to(device, dtype) for c, m in self.class_models_.items()})
        return out

    def _config(self) -> dict:
        return {"covariance": self.covariance, "log_likelihood": self.log_likelihood_, "n_iter": self.n_iter_,
                "converged": self.converged_, "dtype": str(self.dtype).split(".")[-1]}

    def save(self, path) -> None:
        """safetensors (per class `class{c}.<name>` besides the pooled tensors) + JSON header, atomic."""
        tensors, config = self._tensors(), self._config()
        if self.conditional:
            config["classes"] = {}
            for c, m in self.class_models_.items():
                tensors.update({f"class{c}.{k}": v for k, v in m._tensors().items()})
                config["classes"][str(c)] = m._config()
        save_state(path, tensors, kind=self.kind, config=config)

    @classmethod
    def load(cls, path, device=None) -> "GMM":
        t, _, cfg = load_state(path, kind=cls.kind)

        def build(prefix, c):
            tensors = {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix) and
                       (prefix or not k.startswith("class"))}
            out = cls(**tensors, covariance=c["covariance"], dtype=getattr(torch, c["dtype"]), device=device)
            out.log_likelihood_, out.n_iter_, out.converged_ = c["log_likelihood"], c["n_iter"], c["converged"]
            return out

        pooled = build("", cfg)
        if cfg.get("classes"):
            pooled._set_classes({int(c): build(f"class{c}.", ccfg) for c, ccfg in cfg["classes"].items()})
        return pooled

    def __repr__(self) -> str:
        return f"GMM(n_components={self.n_components}, covariance={self.covariance!r}, shape={self.shape_})"


# --------------------------------------------------------------------------------------------------------------
def _nearest(x, centers, chunk_size):
    c2 = centers.pow(2).sum(1)
    return torch.cat([(c2[None, :] - 2 * x[i:i + chunk_size] @ centers.T).argmin(1)
                      for i in range(0, x.shape[0], chunk_size)])


def _kmeans(x, K, iters, g, chunk_size):
    """k-means++ seeding (D² sampling), then `iters` Lloyd steps."""
    N = x.shape[0]
    x2 = x.pow(2).sum(1)
    idx = [int(torch.randint(0, N, (1,), generator=g))]
    d2 = (x2 - 2 * x @ x[idx[0]] + x2[idx[0]]).clamp(min=0)
    for _ in range(1, K):
        p = d2.cpu()
        j = int(torch.multinomial(p / p.sum(), 1, generator=g)) if p.sum() > 0 else \
            int(torch.randint(0, N, (1,), generator=g))
        idx.append(j)
        d2 = torch.minimum(d2, (x2 - 2 * x @ x[j] + x2[j]).clamp(min=0))
    centers = x[idx].clone()
    for _ in range(iters):
        lab = _nearest(x, centers, chunk_size)
        sums = torch.zeros_like(centers).index_add_(0, lab, x)
        counts = torch.bincount(lab, minlength=K).to(x.dtype)
        keep = counts > 0
        centers[keep] = sums[keep] / counts[keep, None]
    return centers


def _m_step(x, resp, covariance, rank, reg, resp_floor, old):
    """Maximise the expected complete log-likelihood given responsibilities [N, K] (float64)."""
    N, d = x.shape
    K = resp.shape[1]
    nk = resp.sum(0)
    weights = nk / N
    means = torch.empty(K, d, dtype=x.dtype, device=x.device)
    out = {"weights": weights, "means": means}
    if covariance == "diag":
        out["variances"] = torch.empty(K, d, dtype=x.dtype, device=x.device)
    else:
        r = d if covariance == "full" else rank
        out["eigvals"] = torch.empty(K, r, dtype=x.dtype, device=x.device)
        out["eigvecs"] = torch.empty(K, d, r, dtype=x.dtype, device=x.device)
        out["residual_var"] = torch.zeros(K, dtype=x.dtype, device=x.device)
    for c in range(K):
        if nk[c] <= 1e-10 * N and old is not None:  # an empty component keeps its shape (its weight is ~0)
            for key in out:
                if key != "weights":
                    out[key][c] = old[key][c]
            weights[c] = max(float(nk[c]), 1e-300) / N
            continue
        keep = resp[:, c] > resp_floor
        r_c = resp[keep, c]
        xc = x[keep]
        mu = (r_c[:, None] * xc).sum(0) / r_c.sum()
        means[c] = mu
        diff = xc - mu
        if covariance == "diag":
            out["variances"][c] = (r_c[:, None] * diff ** 2).sum(0) / r_c.sum() + reg
            continue
        a = diff * r_c.sqrt()[:, None]
        scatter = a.T @ a / r_c.sum()
        lam, U = torch.linalg.eigh(scatter)  # ascending
        lam, U = lam.flip(0).clamp(min=0), U.flip(1)
        if covariance == "full":
            out["eigvals"][c], out["eigvecs"][c] = lam + reg, U
        else:
            rho = lam[rank:].mean()  # ML residual variance of probabilistic PCA
            out["eigvals"][c] = torch.maximum(lam[:rank], rho) + reg
            out["eigvecs"][c] = U[:, :rank]
            out["residual_var"][c] = rho + reg
    return out
