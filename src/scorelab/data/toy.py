"""2-D toy distributions, drawn with numpy's PCG64 from SeedSequence([seed, split]) — deterministic given
(seed, split), and the "test" split is an independent draw. Each returns (x float64 [n, 2], labels or None)."""
from __future__ import annotations

import math

import numpy as np

GMM_GRID_SPACING = 1.0      # component means: {−2, −1, 0, 1, 2}² · spacing
GMM_GRID_STD = 0.1          # isotropic std of every component (equal weights 1/25)


def rng_for(seed: int, split: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), {"train": 0, "test": 1}[split]])))


def two_moons(n: int, rng: np.random.Generator, *, noise: float = 0.05):
    """Two interleaved half circles (as scikit-learn's make_moons), centred at 0:
    moon 0: (cos t, sin t) − (0.5, 0.25);  moon 1: (1 − cos t, 0.5 − sin t) − (0.5, 0.25);  t ~ U[0, π];
    plus N(0, noise²·I). Labels: the moon, ⌈n/2⌉ zeros then ⌊n/2⌋ ones, shuffled."""
    y = rng.permutation(np.repeat([0, 1], [n - n // 2, n // 2]))
    t = rng.uniform(0.0, math.pi, n)
    x = np.where(y[:, None] == 0, np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], 1))
    x = x - np.array([0.5, 0.25]) + noise * rng.standard_normal((n, 2))
    return x, y.astype(np.int64)


def swiss_roll(n: int, rng: np.random.Generator, *, noise: float = 0.05):
    """2-D Swiss roll: t = 1.5π(1 + 2u), u ~ U[0, 1];  x = (t cos t, t sin t) / 10 + N(0, noise²·I).
    (scikit-learn's make_swiss_roll projected on its (x, z) plane, scaled by 1/10.) No labels."""
    t = 1.5 * math.pi * (1.0 + 2.0 * rng.uniform(0.0, 1.0, n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 10.0 + noise * rng.standard_normal((n, 2))
    return x, None


def gmm_grid_means(spacing: float = GMM_GRID_SPACING) -> np.ndarray:
    """The 25 component means [25, 2]: component k = 5·i + j at (spacing·(i − 2), spacing·(j − 2))."""
    g = spacing * (np.arange(5.0) - 2.0)
    return np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(25, 2)


def gmm_grid(n: int, rng: np.random.Generator, *, std: float = GMM_GRID_STD, spacing: float = GMM_GRID_SPACING):
    """Mixture of 25 isotropic Gaussians N(μ_k, std²·I), equal weights, μ_k on a 5×5 grid (see `gmm_grid_means`).
    Labels: the component k."""
    k = rng.integers(0, 25, n)
    x = gmm_grid_means(spacing)[k] + std * rng.standard_normal((n, 2))
    return x, k.astype(np.int64)


def checkerboard(n: int, rng: np.random.Generator):
    """Uniform on the 8 squares (i, j) ∈ {−2..1}² with i + j even of a 4×4 board on [−2, 2]². No labels."""
    cells = np.array([(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0], dtype=np.float64)
    x = cells[rng.integers(0, len(cells), n)] + rng.uniform(0.0, 1.0, (n, 2))
    return x, None


TOY = {"two-moons": two_moons, "swiss-roll": swiss_roll, "gmm-grid": gmm_grid, "checkerboard": checkerboard}
