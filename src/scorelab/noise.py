"""Per-sample noise: what makes an image depend only on (seed, i), never on the batch size or the world size.

Sample i of a run with seed s draws its initial noise ε_i (x_T = σ_0·ε_i) and, for stochastic samplers, its step
noise from one `torch.Generator` seeded by `sample_seed(s, i)`. Draws are made in float32 on the CPU and then
cast and moved, so the same seeds give the same images on every device and dtype.
"""
from __future__ import annotations

import numpy as np
import torch

from ._checks import check_positive_int

__all__ = ["sample_seed", "generators", "per_sample_noise", "initial_noise"]


def sample_seed(seed: int, i: int) -> int:
    """The 63-bit seed of sample i: numpy's SeedSequence([seed, i]) (no collisions between (seed, i) pairs)."""
    return int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generators(seed: int, indices) -> list[torch.Generator]:
    """One CPU generator per sample index, seeded by `sample_seed(seed, i)`."""
    return [torch.Generator().manual_seed(sample_seed(int(seed), int(i))) for i in indices]


def per_sample_noise(gens, shape, device, dtype) -> torch.Tensor:
    """Standard normal draws [len(gens), *shape], one from each sample's generator (float32 on the CPU, then cast)."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]).to(device=device, dtype=dtype)


def initial_noise(n: int, shape, seed: int = 0, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The standard-normal ε_i that `sample(..., seed=seed)` starts sample i from (x_T = σ_0·ε_i), i < n."""
    n = check_positive_int(n, name="n")
    return per_sample_noise(generators(seed, range(n)), shape, torch.device(device or "cpu"), dtype)
