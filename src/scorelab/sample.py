"""`sample()`: draw images with any sampler, optionally teleporting the high-noise steps with a Gaussian.

Sample i starts from x_T = σ_0·ε_i with ε_i drawn from its own generator seeded by (seed, i); stochastic
samplers draw their step noise from the same per-sample generator, so an image depends only on (seed, i) and
never on the batch size. Teleportation (Wang & Vastola, TMLR 2024): the first k steps of the grid are replaced by
the Gaussian's exact probability-flow jump x_T → x(σ_k), and the solver runs on sigmas[k:].
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import samplers as _samplers
from . import schedules
from ._checks import check_positive_int, check_sigmas
from .denoisers import CountingDenoiser
from .diagnostics import suggest_skip
from .noise import generators, initial_noise, per_sample_noise, sample_seed
from .protocol import check_denoiser, check_extra_args, device_of, network_evals, sample_shape, slice_cond
from .teleport import plan

_per_sample_noise = per_sample_noise   # the name bench scripts used before noise.py

__all__ = ["sample", "SampleResult", "sample_seed", "initial_noise"]


@dataclass
class SampleResult:
    """What `sample()` returns. `nfe`: network (denoiser) evaluations per image trajectory, i.e. per batch;
    `teleport_nfe`: evaluations spent on the jump (0: it is a closed form, and warm_history's Gaussian denoiser
    values are closed forms too). `network_nfe`: evaluations of the networks inside a composite denoiser (e.g. 2
    per call for a guided one, `protocol.network_evals`), per trajectory; equal to `nfe` for a plain denoiser."""

    images: torch.Tensor
    nfe: int
    sigmas: torch.Tensor
    skip_index: int = 0
    sigma_skip: float | None = None
    seconds: float = 0.0
    solver: str = ""
    teleport_nfe: int = 0
    warm_history: bool = False
    seed: int = 0
    solver_opts: dict = field(default_factory=dict)
    network_nfe: int | None = None

    def save_grid(self, path, nrow: int | None = None, **kwargs) -> None:
        """PNG of the samples: an image grid for [n, C, H, W] (C = 1 or 3), a scatter plot for 2-D vectors."""
        from .images import save_grid, save_scatter

        x = self.images
        if x.ndim == 4:
            save_grid(x, path, nrow=nrow, **kwargs)
        elif x.ndim == 2 and x.shape[1] >= 2:
            save_scatter(x[:, :2], path, title=kwargs.get("title", f"{self.solver}, NFE {self.nfe}"),
                         reference=kwargs.get("reference"))
        else:
            raise ValueError(f"images must be [n, C, H, W] or [n, d >= 2] vectors to draw; got shape {tuple(x.shape)}")

    def summary(self) -> dict:
        """JSON-ready description (no images)."""
        return dict(solver=self.solver, solver_opts=self.solver_opts, n=int(self.images.shape[0]),
                    shape=list(self.images.shape[1:]), nfe=self.nfe, network_nfe=self.network_nfe,
                    teleport_nfe=self.teleport_nfe, steps=len(self.sigmas) - 1, skip_index=self.skip_index,
                    sigma_skip=self.sigma_skip, warm_history=self.warm_history, seed=self.seed, seconds=round(self.seconds, 4),
                    sigmas=[float(s) for s in self.sigmas])


def _resolve_grid(sigmas, steps):
    if sigmas is not None and steps is not None:
        raise ValueError(f"give either sigmas (a grid) or steps (Karras grid length), not both; got steps={steps}")
    if sigmas is None:
        return schedules.karras(check_positive_int(18 if steps is None else steps, name="steps"))
    return check_sigmas(sigmas)


def _auto_sigma_skip(denoiser, teleport, grid, skip_data, threshold, device, dtype, extra_args):
    """skip='auto': σ_k from `diagnostics.suggest_skip` (None when no step can be skipped)."""
    if extra_args:
        raise ValueError("skip='auto' measures the unconditional denoiser; with extra_args, call "
                         "scorelab.diagnostics.suggest_skip yourself and pass sigma_skip=")
    if skip_data is None:
        raise ValueError("skip='auto' needs skip_data= (held-out clean samples [N, *shape]) to measure where the "
                         "Gaussian explains the denoiser (diagnostics.suggest_skip)")
    k = suggest_skip(denoiser, teleport, skip_data, grid, threshold=threshold, dtype=dtype, device=device,
                     progress=False).skip_index
    return float(grid[k]) if k > 0 else None


def _check_solver_opts(fn, name: str, opts: dict) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    reserved = {"denoiser", "x", "sigmas", "callback", "generator", "noise_sampler", "history", "extra_args"}
    allowed = [p for p in params if p not in reserved]
    bad = sorted(set(opts) - set(allowed))
    if bad:
        raise TypeError(f"solver {name!r} has no option {', '.join(bad)}; its options are {allowed or 'none'}")


def _check_fits(n: int, shape, dtype, device) -> None:
    """The n samples are returned as one tensor: refuse at once (not after hours of sampling) when it cannot fit
    in this machine's memory (CPU: physical memory; CUDA: the device's)."""
    need = n * math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            import os

            have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return
    if need > have:
        raise ValueError(f"n={n} samples of shape {tuple(shape)} in {dtype} take {need / 2 ** 30:.1f} GiB, more than "
                         f"this machine's {have / 2 ** 30:.1f} GiB of {device.type} memory; draw them in several runs "
                         f"(seed and indices= keep them reproducible)")


def _check_indices(indices, n: int) -> list[int]:
    try:
        out = [int(i) for i in indices]
        ok = all(float(i) == j for i, j in zip(indices, out))
    except (TypeError, ValueError):
        ok = False
    if not ok or any(i < 0 for i in out) or len(set(out)) != len(out):
        raise ValueError(f"indices must be distinct integers >= 0; got {indices!r}"[:200])
    if len(out) != n:
        raise ValueError(f"indices has {len(out)} entries but n={n}; give n=len(indices)")
    return out


def sample(denoiser, n: int = 64, shape=None, sigmas=None, solver="heun", seed: int = 0, teleport=None, skip=None,
           sigma_skip=None, warm_history: bool = False, batch_size: int = 64, device=None, dtype=torch.float32,
           callback=None, progress: bool = False, *, steps: int | None = None, extra_args=None, teleport_args=None,
           skip_data=None, skip_threshold: float = 0.99, indices=None, **solver_opts) -> SampleResult:
    """Draw `n` samples x_0 from `denoiser` by solving from x_T = σ_0·ε on the grid `sigmas` with `solver`.

    - `denoiser`: any `scorelab.protocol.Denoiser`, D(x, σ, **cond).
    - `shape`: sample shape (default: the denoiser's `shape_` if it has one, else (1, 28, 28)).
    - `sigmas`: a σ grid (default `schedules.karras(steps or 18)`); `solver`: a name in `samplers.SAMPLERS` or a
      sampler function; `**solver_opts` go to it (e.g. eta=, S_churn=, order=).
    - `extra_args`: the conditioning channel, e.g. `{"class_labels": y}` with y of length n: every denoiser call
      gets `**extra_args`, per-sample tensors (first dimension n) sliced with the batch, the rest unchanged.
    - `seed`: sample i uses a torch.Generator seeded by `sample_seed(seed, i)` for its initial noise and its step
      noise, so results do not depend on `batch_size`.
    - `device`: where the noise is drawn and the solver runs (default: the denoiser's, `protocol.device_of`:
      a network's parameters' device).
    - `teleport=g` (a fitted `Gaussian`) with `skip` (fraction of steps) or `sigma_skip`: the first k steps are
      replaced by g's exact jump (`teleport.plan`/`teleport.Jump`), the solver runs on sigmas[k:].
      `warm_history=True` (multistep solvers) also hands the solver g's denoiser values on g's trajectory at the
      skipped grid points, so its first network step is already high order (no network NFE). `teleport_args`:
      conditioning for the Gaussian (e.g. a class-conditional Gaussian's `class_labels`; default none: the
      pooled jump), sliced per batch like `extra_args`. `skip="auto"`: k from
      `diagnostics.suggest_skip(denoiser, teleport, skip_data, sigmas, skip_threshold)` (score-space EV ≥ the
      threshold at every σ ≥ σ_k on the held-out `skip_data`; those reference calls are not counted in `nfe`).
    - `callback(info)`: the sampler's dict plus `batch` (batch index); `progress`: a tqdm bar over steps.
    - `indices`: draw only these samples of the run (n distinct ints >= 0; default range(n)): image j is sample
      indices[j], from the generator of (seed, indices[j]); per-sample `extra_args` then follow `indices`' order.
      One process's share of a sharded run (`scorelab.distributed.sample`).
    Returns a `SampleResult` (images [n, *shape] on `device` in `dtype`, nfe per trajectory, timings).
    """
    t0 = time.perf_counter()
    n = check_positive_int(n, name="n")
    batch_size = check_positive_int(batch_size, name="batch_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    check_denoiser(denoiser)
    extra_args = check_extra_args(extra_args)
    teleport_args = check_extra_args(teleport_args, name="teleport_args")
    if shape is None:
        shape = sample_shape(denoiser, (1, 28, 28))
    try:
        shape = tuple(check_positive_int(s, name="shape entries") for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of positive ints (e.g. (1, 28, 28)); got {shape!r}") from None
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
    device = device_of(denoiser) if device is None else torch.device(device)
    _check_fits(n, shape, dtype, device)
    order = range(n) if indices is None else _check_indices(indices, n)

    if callable(solver):
        solver_fn, solver_name = solver, getattr(solver, "__name__", "custom")
    else:
        solver_fn, solver_name = _samplers.get(solver), solver
    _check_solver_opts(solver_fn, solver_name, solver_opts)
    stochastic = _samplers.traits(solver_fn).stochastic
    grid = _resolve_grid(sigmas, steps)
    if teleport is None:
        if skip not in (None, 0, 0.0) or sigma_skip is not None or warm_history or teleport_args:
            raise ValueError("skip/sigma_skip/warm_history/teleport_args need teleport=a fitted scorelab.Gaussian to "
                             "jump with")
        jump = None
    else:
        if isinstance(skip, str):
            if skip != "auto":
                raise ValueError(f"skip must be a fraction in [0, 1) or 'auto'; got {skip!r}")
            if sigma_skip is not None:
                raise ValueError("give either skip='auto' or sigma_skip, not both")
            skip, sigma_skip = None, _auto_sigma_skip(denoiser, teleport, grid, skip_data, skip_threshold, device,
                                                      dtype, extra_args)
        jump = plan(teleport, grid, skip=skip, sigma_skip=sigma_skip, warm_history=warm_history, solver=solver_fn,
                    extra_args=teleport_args)
    k = jump.k if jump is not None else 0

    counted = CountingDenoiser(denoiser)
    n_batches = math.ceil(n / batch_size)
    bar = None
    if progress:
        from ._io import progress_bar

        bar = progress_bar(total=n_batches * (len(grid) - 1 - k), desc=f"sample {solver_name}", unit="step", leave=False)
    images, nfe_per_batch, inner_per_batch = [], [], []
    try:
        for b in range(n_batches):
            idx = slice(b * batch_size, min(n, (b + 1) * batch_size))
            gens = generators(seed, order[idx])
            x = per_sample_noise(gens, shape, device, dtype) * float(grid[0])
            run_grid, history = grid, None
            if jump is not None:
                x, run_grid, history = jump(x, grid, slice_cond(teleport_args, n, idx))
            opts = dict(solver_opts)
            if history is not None:
                opts["history"] = history
            if stochastic:
                opts["noise_sampler"] = lambda s, s_next, gens=gens: per_sample_noise(gens, shape, device, dtype)

            def step_cb(info, b=b):
                if bar is not None:
                    bar.update(1)
                if callback is not None:
                    callback(dict(info, batch=b))

            before, inner_before = counted.nfe, network_evals(denoiser)
            x = solver_fn(counted, x, run_grid, extra_args=slice_cond(extra_args, n, idx),
                          callback=step_cb, **opts)
            nfe_per_batch.append(counted.nfe - before)
            inner = network_evals(denoiser)
            inner_per_batch.append(nfe_per_batch[-1] if inner is None else inner - inner_before)
            images.append(x)
    finally:
        if bar is not None:
            bar.close()
    nfe = max(nfe_per_batch)   # the same for every batch, except for a sampler whose NFE depends on the data
    return SampleResult(images=torch.cat(images), nfe=nfe, sigmas=grid, skip_index=k,
                        sigma_skip=float(grid[k]) if k > 0 else None, seconds=time.perf_counter() - t0,
                        solver=solver_name, teleport_nfe=0, warm_history=bool(warm_history), seed=int(seed),
                        solver_opts={kk: v for kk, v in solver_opts.items() if isinstance(v, (int, float, str, bool))},
                        network_nfe=max(inner_per_batch))
