"""Fréchet distance between feature distributions: FID, FD∞ and paired bootstrap FID differences.

FD(N(μ₁, Σ₁), N(μ₂, Σ₂)) = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}   (Dowson & Landau 1982),
FID = FD of Inception pool3 features (Heusel et al. 2017). Everything is float64; the matrix square root goes
through symmetric eigendecompositions (negative round-off eigenvalues clipped to 0), so FD(a, a) = 0 to
round-off and no complex parts appear.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from .._checks import check_fraction, check_positive_int, check_tensor
from .stats import FeatureStats, check_features, feature_stats, inception_features

__all__ = ["FeatureStats", "feature_stats", "frechet_distance", "fid", "fd_inf", "fid_difference",
           "as_features", "FDInfinity", "FIDDifference", "FIDSampleSizeWarning", "check_fid_samples",
           "MIN_SAMPLES_PER_DIM"]


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root via eigh, eigenvalues clipped at 0."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def _trace_sqrt(sqrt_s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} = Σ √λᵢ (the eigenvalues of a symmetric PSD matrix)."""
    m = sqrt_s1 @ s2 @ sqrt_s1
    return torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """FD between N(μ₁, Σ₁) and N(μ₂, Σ₂), in float64 (see module docstring)."""
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must be 1-D of equal length; got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}); got {tuple(s.shape)}")
        if not torch.isfinite(s).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if not (torch.isfinite(mu1).all() and torch.isfinite(mu2).all()):
        raise ValueError("mu1 and mu2 must be finite")
    sigma2 = sigma2.to(sigma1.device)
    mean_term = (mu1 - mu2.to(mu1.device)).square().sum()
    return float(mean_term + sigma1.trace() + sigma2.trace() - 2 * _trace_sqrt(_sqrt_psd(sigma1), sigma2))


def as_features(x, *, name: str, min_samples: int = 2, batch_size: int = 16, device=None,
                progress: bool = True, cache: bool = True) -> torch.Tensor:
    """Features [N, D] from features (returned as is) or images [N, C, H, W] in [−1, 1] (→ Inception, cached)."""
    x = check_tensor(x, name=name, min_ndim=2)
    if x.ndim == 4:
        if x.shape[0] < min_samples:
            raise ValueError(f"{name} has {x.shape[0]} image(s); this statistic needs at least {min_samples}")
        return inception_features(x, batch_size=batch_size, device=device, progress=progress, cache=cache)
    return check_features(x, name=name, min_samples=min_samples)


def _check_pair(a, b) -> None:
    """Reject comparing images of different sizes, or features of different dimension."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.ndim == b.ndim and a.shape[1:] != b.shape[1:]:
        what = "image size" if a.ndim == 4 else "feature dimension"
        raise ValueError(f"a and b must have the same {what}; got {tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and {a.ndim, b.ndim} == {2, 4}:
        raise ValueError(f"a and b must both be images or both be features; got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def _as_stats(x, *, name: str, **kw) -> FeatureStats:
    if isinstance(x, FeatureStats):
        return x
    if isinstance(x, tuple) and len(x) in (2, 3):
        return FeatureStats(torch.as_tensor(x[0], dtype=torch.float64), torch.as_tensor(x[1], dtype=torch.float64),
                            int(x[2]) if len(x) == 3 else -1)
    return feature_stats(as_features(x, name=name, **kw))


class FIDSampleSizeWarning(UserWarning):
    """FID computed from fewer samples than `MIN_SAMPLES_PER_DIM`·D: strongly biased upwards and noisy."""


MIN_SAMPLES_PER_DIM = 2  # fid warns when a set has fewer than 2·D samples (4,096 for Inception's D = 2,048)


def check_fid_samples(n: int, dim: int, *, name: str) -> None:
    """Warn (FIDSampleSizeWarning) when n samples of D-dimensional features are too few for a meaningful FID.

    The covariance of D features estimated from n samples has rank < n; below about 2·D samples the FID is
    dominated by that estimation bias (it grows like D/n; Chong & Forsyth 2020) rather than by the difference
    between the distributions. Compare models at ≥ 5,000 samples (DESIGN.md), or extrapolate with `fd_inf`."""
    if 0 <= n < MIN_SAMPLES_PER_DIM * dim:
        warnings.warn(f"FID from {n} samples in {name} with {dim}-dimensional features: below the documented minimum "
                      f"of {MIN_SAMPLES_PER_DIM}·{dim} = {MIN_SAMPLES_PER_DIM * dim} samples the value is biased "
                      "upwards and noisy (use >= 5,000 samples, or fd_inf)", FIDSampleSizeWarning, stacklevel=3)


def fid(a, b, *, batch_size: int = 16, device=None, progress: bool = True, cache: bool = True) -> float:
    """Fréchet Inception distance between two sets.

    Each of `a`, `b`: images [N, C, H, W] in [−1, 1] (Inception features extracted, cached on disk),
    features [N, D], or a `FeatureStats` / (μ, Σ) pair (e.g. `metrics.stats.reference_stats(...)`).
    A set of fewer than 2·D samples (4,096 images for Inception; `MIN_SAMPLES_PER_DIM`) gives a
    FIDSampleSizeWarning: the value is then mostly estimation bias (see `check_fid_samples`)."""
    _check_pair(a, b)
    kw = dict(batch_size=batch_size, device=device, progress=progress, cache=cache)
    sa, sb = _as_stats(a, name="a", **kw), _as_stats(b, name="b", **kw)
    if sa.mu.shape != sb.mu.shape:
        raise ValueError(f"a and b must have the same feature dimension; got {sa.mu.shape[0]} and {sb.mu.shape[0]}")
    for name, st in (("a", sa), ("b", sb)):
        check_fid_samples(st.n, st.mu.shape[0], name=name)
    return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)


class FDInfinity(NamedTuple):
    """FD∞ = intercept of the fit FD_N = FD∞ + slope / N, with the measured points (ns, fds)."""
    value: float
    slope: float
    ns: list
    fds: list


def fd_inf(a, b, *, n_points: int = 15, min_n: int | None = None, seed: int = 0, batch_size: int = 16,
           device=None, progress: bool = True, cache: bool = True) -> FDInfinity:
    """Effectively unbiased FD (Chong & Forsyth 2020): FD_N between random size-N subsets of `a` and all of `b`,
    for `n_points` sizes N evenly spaced in [min_n, len(a)] (default min_n = len(a) // 10), then the
    least-squares line FD_N = FD∞ + k/N extrapolated to 1/N = 0.

    `a` (generated) must be features or images; `b` (reference) may also be FeatureStats."""
    _check_pair(a, b)
    n_points = check_positive_int(n_points, name="n_points", minimum=2)
    kw = dict(batch_size=batch_size, device=device, progress=progress, cache=cache)
    fa = as_features(a, name="a", min_samples=n_points + 1, **kw)
    sb = _as_stats(b, name="b", **kw)
    if fa.shape[1] != sb.mu.shape[0]:
        raise ValueError(f"a and b must have the same feature dimension; got {fa.shape[1]} and {sb.mu.shape[0]}")
    n = fa.shape[0]
    min_n = max(2, n // 10) if min_n is None else check_positive_int(min_n, name="min_n", minimum=2)
    if n - min_n + 1 < n_points:
        raise ValueError(f"a has {n} samples: fd_inf with min_n={min_n} and n_points={n_points} needs at least "
                         f"{min_n + n_points - 1}")
    ns = torch.linspace(min_n, n, n_points).round().long().tolist()
    gen = torch.Generator().manual_seed(seed)
    sqrt_b = _sqrt_psd(sb.sigma)
    const = sb.sigma.trace()
    fds = []
    for m in ns:
        idx = torch.randperm(n, generator=gen)[:m]
        s = feature_stats(fa[idx.to(fa.device)])
        fds.append(float((s.mu - sb.mu).square().sum() + s.sigma.trace() + const
                         - 2 * _trace_sqrt(sqrt_b, s.sigma)))
    x = 1.0 / torch.tensor(ns, dtype=torch.float64)
    y = torch.tensor(fds, dtype=torch.float64)
    design = torch.stack([torch.ones_like(x), x], 1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    return FDInfinity(float(coef[0]), float(coef[1]), ns, fds)


class FIDDifference(NamedTuple):
    """FD(a, ref) − FD(b, ref) with a bootstrap interval; `significant` iff the interval excludes 0."""
    difference: float
    low: float
    high: float
    fid_a: float
    fid_b: float
    n_boot: int
    level: float

    @property
    def significant(self) -> bool:
        return not (self.low <= 0.0 <= self.high)


def fid_difference(feats_a, feats_b, feats_ref, *, n_boot: int = 100, level: float = 0.95, seed: int = 0,
                   resample_ref: bool = False, progress: bool = True) -> FIDDifference:
    """Paired bootstrap interval of FD(a, ref) − FD(b, ref) ("Measuring FID differences honestly", DESIGN.md).

    Row i of `feats_a` and `feats_b` must come from the same seed (paired). Each bootstrap round draws one
    index set with replacement and uses it for both a and b (and, with `resample_ref=True`, an independent one
    for the reference); the interval is the percentile interval at `level`. Cost per round: two D×D
    eigendecompositions (≈ 2–3 s for D = 2048 on two cores)."""
    from .._io import progress_bar

    fa = check_features(feats_a, name="feats_a")
    fb = check_features(feats_b, name="feats_b")
    fr = check_features(feats_ref, name="feats_ref")
    if fa.shape != fb.shape:
        raise ValueError(f"feats_a and feats_b must be paired (same shape); got {tuple(fa.shape)} and {tuple(fb.shape)}")
    if fr.shape[1] != fa.shape[1]:
        raise ValueError(f"feats_ref must have {fa.shape[1]} features per row; got {fr.shape[1]}")
    n_boot = check_positive_int(n_boot, name="n_boot", minimum=10)
    level = check_fraction(level, name="level")
    gen = torch.Generator().manual_seed(seed)

    ref_stats = feature_stats(fr)
    ref_root = _sqrt_psd(ref_stats.sigma)

    def fd_pair(ia, ir):
        sr = ref_stats if ir is None else feature_stats(fr[ir])
        root = ref_root if ir is None else _sqrt_psd(sr.sigma)
        out = []
        for f in (fa, fb):
            s = feature_stats(f if ia is None else f[ia])
            out.append(float((s.mu - sr.mu).square().sum() + s.sigma.trace() + sr.sigma.trace()
                             - 2 * _trace_sqrt(root, s.sigma)))
        return out

    fid_a, fid_b = fd_pair(None, None)
    diffs = []
    for _ in progress_bar(range(n_boot), desc="bootstrap", enabled=progress, leave=False):
        ia = torch.randint(fa.shape[0], (fa.shape[0],), generator=gen)
        ir = torch.randint(fr.shape[0], (fr.shape[0],), generator=gen) if resample_ref else None
        da, db = fd_pair(ia, ir)
        diffs.append(da - db)
    d = torch.tensor(diffs, dtype=torch.float64)
    alpha = (1 - level) / 2
    low, high = torch.quantile(d, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return FIDDifference(fid_a - fid_b, low, high, fid_a, fid_b, n_boot, level)
