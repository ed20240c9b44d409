"""Patch-size calibration of local denoisers against a reference denoiser (Kamb & Ganguli 2024, §5).

For every σ the held-out images are noised once, x = x0 + σ·ε (fixed seed), and each candidate patch size
P is scored by the median per-image r² of the local model against the reference,
    r² = 1 − ‖D_P(x, σ) − D_ref(x, σ)‖² / ‖D_ref(x, σ) − mean(D_ref(x, σ))‖²   (per image, pixel mean),
and the size with the highest median wins. The result is a step schedule over σ that ELS / PSPC accept as
`patch_size` (thresholds at the geometric midpoints between the calibrated σ's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._checks import check_positive_int, check_tensor
from ._io import write_json
from .diagnostics import per_image_r2

__all__ = ["calibrate_patch_size", "PatchCalibration", "per_image_r2"]


@dataclass
class PatchCalibration:
    """Median per-image r² of every (σ, patch size) and the best size per σ.

    `schedule`: [(σ_threshold, size), ...] usable as `patch_size=` of ELS / PSPC."""
    sigmas: list
    patch_sizes: list
    r2: torch.Tensor                     # [len(sigmas), len(patch_sizes)], median per-image r²
    best: list = field(default_factory=list)

    @property
    def schedule(self) -> list:
        out = []
        for k, (s, p) in enumerate(zip(self.sigmas, self.best)):
            t = 0.0 if k == 0 else math.sqrt(self.sigmas[k - 1] * s)
            if out and out[-1][1] == p:
                continue
            out.append((t, p))
        return out

    def best_r2(self) -> list:
        return [float(self.r2[i, self.patch_sizes.index(p)]) for i, p in enumerate(self.best)]

    def to_dict(self) -> dict:
        return dict(metric="median per-image r2", sigmas=self.sigmas, patch_sizes=self.patch_sizes,
                    r2=[[float(v) for v in row] for row in self.r2], best=self.best, best_r2=self.best_r2(),
                    schedule=[list(p) for p in self.schedule])

    def save(self, path) -> None:
        """JSON; `--patch-size FILE.json` and PatchSchedule.parse read its "schedule"."""
        write_json(path, self.to_dict())

    def table(self) -> str:
        """Markdown table (`scorelab.tables.markdown`): σ, r² per patch size, best size."""
        from .tables import markdown

        rows = [{"σ": float(s), **{f"P={p}": float(v) for p, v in zip(self.patch_sizes, self.r2[i])},
                 "best": self.best[i]} for i, s in enumerate(self.sigmas)]
        return markdown(rows, digits=3, max_columns=None)


def _family(model_family):
    if hasattr(model_family, "with_patch_size"):
        return model_family.with_patch_size
    if callable(model_family):
        return model_family
    raise TypeError("model_family must be a local model (ELS, PSPC: anything with .with_patch_size) or a "
                    f"callable patch_size -> denoiser; got {type(model_family).__name__}")


@torch.no_grad()
def calibrate_patch_size(model_family, reference, data, sigmas, *, patch_sizes=(3, 5, 7, 9, 11, 13, 15),
                         n_images: int | None = None, seed: int = 0, path=None, batch_size: int = 64,
                         progress: bool = True) -> PatchCalibration:
    """Pick, for every σ, the patch size whose model best matches `reference` (median per-image r²).

    model_family: an ELS/PSPC instance (its `with_patch_size(P)` copies are scored) or a callable P → denoiser.
    reference: a denoiser D(x, σ) (e.g. a trained network). data: clean held-out images [N, C, H, W]
    (first `n_images` used). sigmas: positive noise levels. Returns a PatchCalibration (`.schedule`, `.r2`);
    with `path=` also writes it as JSON."""
    make = _family(model_family)
    if not callable(reference):
        raise TypeError(f"reference must be a denoiser callable D(x, sigma); got {type(reference).__name__}")
    check_tensor(data, name="data", min_ndim=2)
    if n_images is not None:
        data = data[:check_positive_int(n_images, name="n_images")]
    try:
        sig = sorted(float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1))
    except (TypeError, ValueError):
        raise TypeError(f"sigmas must be a sequence of positive floats; got {sigmas!r}") from None
    if not sig or not all(math.isfinite(s) and s > 0 for s in sig) or len(set(sig)) != len(sig):
        raise ValueError(f"sigmas must be distinct, finite and > 0; got {sig}")
    sizes = list(patch_sizes)
    if not sizes:
        raise ValueError("patch_sizes must name at least one size")
    for p in sizes:
        if check_positive_int(p, name="patch_sizes") % 2 == 0:
            raise ValueError(f"patch_sizes must be odd; got {p}")
    batch_size = check_positive_int(batch_size, name="batch_size")
    models = {p: make(p) for p in sizes}

    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(int(seed))
    r2 = torch.empty(len(sig), len(sizes), dtype=torch.float64)
    bar = tqdm(total=len(sig) * len(sizes), desc="calibrate patch size", disable=not progress)
    for i, s in enumerate(sig):
        x = data + s * torch.randn(data.shape, generator=gen, dtype=data.dtype)
        ref = torch.cat([reference(x[a:a + batch_size], s) for a in range(0, x.shape[0], batch_size)])
        for j, p in enumerate(sizes):
            out = torch.cat([models[p](x[a:a + batch_size], s) for a in range(0, x.shape[0], batch_size)])
            r2[i, j] = torch.quantile(per_image_r2(out, ref), 0.5)
            bar.update(1)
    bar.close()
    best = [sizes[int(torch.argmax(row))] for row in r2]
    result = PatchCalibration(sigmas=sig, patch_sizes=sizes, r2=r2, best=best)
    if path is not None:
        result.save(path)
    return result
