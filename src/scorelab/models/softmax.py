"""The streamed softmax posterior, written once: Σ_i e^{ℓ_i} v_i / Σ_i e^{ℓ_i} over logits that arrive in chunks.

Every data-driven closed form here is such a posterior mean under Gaussian noise, with ℓ_i = −‖x − y_i‖²/2σ²
(up to a per-row constant): the empirical denoiser over all training points (`Empirical`, and through it
`CFDM`), its nearest-neighbour and random-tail estimates (`KNN`), the patch posteriors of `ELS`/`PSPC`, the
masked empirical denoiser of `Wiener`, and the mixture weights of `GMM`. They differ in how the logits and the
weighted sums are computed (GEMMs, gathers, per-pixel masks); the log-sum-exp bookkeeping is this one class.

State (m, z, s): m the running maximum of the logits seen so far, z = Σ e^{ℓ_i − m}, s = Σ e^{ℓ_i − m} v_i.
When a chunk raises the maximum, z and s are rescaled by e^{m_old − m_new}, so nothing overflows as σ → 0 and
no row sums to zero. Two partial states (e.g. over disjoint sets of points) merge exactly (`merge`). With
`base2=True` the logits are in base 2 (e^ℓ = 2^{ℓ·log₂e}; torch's float64 exp2 is faster than exp).
"""
from __future__ import annotations

import math

import torch

__all__ = ["SoftmaxSums", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 2 ** 18  # elements of one block of logits (2 MB in float64): its passes stay in cache


def _column(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """scale [*rows] viewed so that it broadcasts against like [*rows, ...]."""
    return scale.reshape(*scale.shape, *([1] * (like.ndim - scale.ndim)))


class SoftmaxSums:
    """Running-max softmax statistics (m, z, s) of a stream of logits: the posterior mean is s / z.

    m, z: [*rows]; s: [*rows, *value_shape] (or [*rows] for a scalar value per row). Iterates as (m, z, s)."""

    def __init__(self, m: torch.Tensor, z: torch.Tensor, s: torch.Tensor, *, base2: bool = False):
        self.m, self.z, self.s, self.base2 = m, z, s, base2

    @classmethod
    def empty(cls, rows, value_shape=(), *, dtype=torch.float64, device=None, base2: bool = False) -> "SoftmaxSums":
        """No logits seen yet: m = −∞, z = 0, s = 0."""
        rows, value_shape = tuple(rows), tuple(value_shape)
        return cls(torch.full(rows, -math.inf, dtype=dtype, device=device), torch.zeros(rows, dtype=dtype, device=device),
                   torch.zeros(rows + value_shape, dtype=dtype, device=device), base2=base2)

    def __iter__(self):
        return iter((self.m, self.z, self.s))

    def _exp(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp2(t) if self.base2 else torch.exp(t)

    def shift_to(self, m_new: torch.Tensor) -> torch.Tensor:
        """Move to the new running maximum m_new ≥ m (z and s rescaled by e^{m − m_new}); returns the shift to
        subtract from this chunk's logits: m_new, or 0 in rows that have seen no finite logit yet."""
        shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        scale = self._exp(self.m - shift)
        self.z = self.z * scale
        self.s = self.s * _column(scale, self.s)
        self.m = m_new
        return shift

    def weights(self, logits: torch.Tensor, *, dim: int = -1, floor: float | None = None) -> torch.Tensor:
        """This chunk's weights e^{ℓ − m} (after moving m to include the chunk's maximum along `dim`), computed in
        place in `logits` and in its dtype. `floor` (a log-weight < 0) raises smaller weights to e^floor so that
        exp never produces slow subnormal numbers (a change of at most count·e^floor of a row's total)."""
        m_new = torch.maximum(self.m, logits.amax(dim).to(self.m.dtype))
        shift = self.shift_to(m_new).to(logits.dtype).unsqueeze(dim)
        if logits.requires_grad:   # differentiated through (DPS, ΠGDM): the same numbers, out of place
            w = logits - shift
            w = w.clamp(min=floor) if floor is not None else w
            return w.exp2() if self.base2 else w.exp()
        w = logits.sub_(shift)
        if floor is not None:
            w.clamp_(min=floor)
        return w.exp2_() if self.base2 else w.exp_()

    def add(self, z_part: torch.Tensor, s_part: torch.Tensor) -> None:
        """Accumulate a chunk's Σ w and Σ w v (weights relative to the current m)."""
        self.z = self.z + z_part.to(self.z.dtype)
        self.s = self.s + s_part.to(self.s.dtype)

    def merge(self, other: "SoftmaxSums") -> "SoftmaxSums":
        """The statistics of both streams together (exact: both are rescaled to the larger maximum)."""
        top = torch.maximum(self.m, other.m)
        safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        a, b = self._exp(self.m - safe), self._exp(other.m - safe)
        return SoftmaxSums(top, self.z * a + other.z * b, self.s * _column(a, self.s) + other.s * _column(b, other.s),
                           base2=self.base2)

    def mean(self) -> torch.Tensor:
        """The posterior mean s / z."""
        return self.s / _column(self.z, self.s)
