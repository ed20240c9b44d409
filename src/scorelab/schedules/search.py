"""Schedules tuned by the closed form: `optimize(teacher, solver=..., nfe=..., method="ays"|"dp")`.

Two objectives, each minimised exactly over a fine candidate grid by dynamic programming, then polished:

- **"ays"** — Align Your Steps (Sabour et al. 2024): the KL upper bound between the reverse SDE and its solver's
  piecewise-linearised version, in σ-space (σ(t) = t, EDM):

      KLUB(σ_0 > … > σ_(n−1)) = Σ_i ∫_(σ_(i+1))^(σ_i) E‖D(x_t, t) − D(x_(σ_i), σ_i)‖² / t³ dt,

  with (x_t, x_(σ_i)) two points of one forward (Brownian) path: x_(σ_i) = x_t + √(σ_i² − t²)·z. For a fitted
  Gaussian the expectation is closed form per eigenvalue λ (a = λ/(λ + t²), a_i at σ_i):
  (a − a_i)²(λ + t²) + a_i²(σ_i² − t²); the integral is taken by Gauss–Legendre in log t and the grid is polished
  by coordinate descent in continuous σ, as in the paper. For any other denoiser (a GMM, Empirical, a network) the
  expectation is sampled: `data` rows are noised along one Brownian path each over a fine log-σ grid, D is
  evaluated once on that grid, and the integral is the trapezoid rule on it; the grid's points are then on that
  fine grid, where the dynamic programme's minimum is exact. The bound does not depend on the solver: the solver
  only sets how many steps `nfe` buys. The end points σ_max (or σ_skip) and σ_min are fixed; the bound of the
  last step, σ_min → 0, is infinite for every grid and is left out.
- **"dp"** — teacher-trajectory search (the GITS / OSS family): a teacher's probability-flow trajectory from a
  batch of noise is tabulated on `candidates` log-spaced levels (exact for a Gaussian teacher via its
  `trajectory`; otherwise a fine solve with `teacher_solver`); the cost of a step i → k is the squared distance
  of *the solver that will run* (its multistep history taken from the teacher points the path visited) from the
  teacher at σ_k, weighted by c²/(c² + σ_k²) — how much an error at σ_k still moves the endpoint, c² the
  teacher's endpoint variance — and the last step is measured at σ = 0. A dynamic programme over (previous,
  current) level pairs finds the cheapest path of exactly the steps the NFE budget buys (exact for solvers that
  remember at most one earlier point; longer histories are taken along the best path). `refine` sweeps of
  coordinate descent then minimise the true endpoint error of full solves (what the dynamic programme only
  approximates: errors compound, UniPC's corrector), starting from the best of the DP path and the `baselines`
  grids on that error, so the result is never worse than those on the search's batch.

With `teleport=` (a fitted Gaussian) the search starts at `sigma_skip`: the returned grid keeps `history_points`
levels above it (log-spaced from σ_max), which the Gaussian's exact jump replaces (`scorelab.sample(...,
teleport=g, sigma_skip=σ_skip, warm_history=True)`) and whose values warm a multistep solver's history; `nfe` then counts network
evaluations only. A hybrid teacher (analytic above σ_skip, the network below) is this with `teacher=` the network.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .._checks import check_positive_int, check_sigma, check_sigmas, check_tensor
from .._io import progress_bar
from ..protocol import check_denoiser, check_extra_args, device_of, dtype_of, sample_shape
from ..samplers import get as get_solver
from ..samplers import traits
from ..teleport import plan

__all__ = ["optimize", "fit_coefficients", "kl_bound", "steps_for_nfe", "Search"]

METHODS = ("ays", "dp")


# ---------------------------------------------------------------------------------------------- budget
def steps_for_nfe(solver, nfe: int, solver_args: dict | None = None) -> int:
    """The number of steps of a grid ending in 0 on which `solver` makes exactly `nfe` denoiser calls (counted by
    running it on a zero denoiser: Heun's last step to 0 is one call, so its budgets are odd)."""
    nfe = check_positive_int(nfe, name="nfe")
    fn = get_solver(solver) if isinstance(solver, str) else solver
    if traits(fn).stochastic:
        raise ValueError("optimize tunes deterministic solvers; got a stochastic one")
    counts = []
    for steps in range(1, nfe + 1):
        calls = [0]

        def zero(x, sigma, **_):
            calls[0] += 1
            return torch.zeros_like(x)

        grid = torch.cat([torch.logspace(math.log10(80.0), math.log10(0.002), steps, dtype=torch.float64)
                          if steps > 1 else torch.tensor([80.0], dtype=torch.float64), torch.zeros(1,
                                                                                                  dtype=torch.float64)])
        fn(zero, torch.zeros(1, 1, dtype=torch.float64), grid, **(solver_args or {}))
        counts.append(calls[0])
        if calls[0] == nfe:
            return steps
        if calls[0] > nfe:
            break
    raise ValueError(f"nfe={nfe} is not a budget the solver can spend exactly: its grids ending at 0 take "
                     f"{', '.join(map(str, counts))}… evaluations")


def _memory(fn, solver_args: dict) -> int:
    """How many earlier points a multistep solver uses (0 for single-step ones): `order` − 1 where it has an
    order option, DPM-Solver++(2M)/(3M)'s 1/2."""
    if not traits(fn).multistep:
        return 0
    order = solver_args.get("order")
    if order is None:
        param = inspect.signature(fn).parameters.get("order")
        order = param.default if param is not None and param.default is not inspect.Parameter.empty else None
    if order is None:
        order = {"dpmpp_2m": 2, "dpmpp_3m": 3}.get(getattr(fn, "__name__", ""), 4)
    return max(0, int(order) - 1)


# ---------------------------------------------------------------------------------------------- the KL bound
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def _is_gaussian(model) -> bool:
    """A fitted `scorelab.Gaussian` (read by its attributes: one mean, one spectrum, an exact trajectory) — not a
    mixture, whose per-component attributes have an extra dimension."""
    mean, lam = getattr(model, "mean_", None), getattr(model, "eigvals_", None)
    return (isinstance(mean, torch.Tensor) and isinstance(lam, torch.Tensor) and lam.ndim == 1
            and hasattr(model, "residual_var_") and callable(getattr(model, "trajectory", None)))


def _spectrum(gaussian) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues, multiplicities) of a fitted Gaussian's covariance: its top-r eigenvalues and the residual
    variance ρ on the d − r remaining directions."""
    lam = gaussian.eigvals_.detach().double().cpu().numpy()
    d = int(gaussian.mean_.numel())
    rest = d - lam.size
    if rest > 0:
        return np.append(lam, float(gaussian.residual_var_)), np.append(np.ones(lam.size), rest)
    return lam, np.ones(lam.size)


def _interval_gauss(spec, hi: float, lo: float) -> float:
    """∫_lo^hi E‖D(x_t, t) − D(x_hi, hi)‖² / t³ dt for the Gaussian with spectrum `spec` (closed-form integrand,
    24-point Gauss–Legendre in u = log t, where dt/t³ = du/t²)."""
    lam, mult = spec
    if not hi > lo > 0:
        return 0.0
    u = 0.5 * (math.log(hi) + math.log(lo)) + 0.5 * (math.log(hi) - math.log(lo)) * _GL_NODES
    t2 = np.exp(2 * u)[:, None]
    a = lam / (lam + t2)
    a_hi = lam / (lam + hi * hi)
    integrand = ((a - a_hi) ** 2 * (lam + t2) + a_hi ** 2 * (hi * hi - t2)) @ mult / t2[:, 0]
    return float(0.5 * (math.log(hi) - math.log(lo)) * (_GL_WEIGHTS @ integrand))


def kl_bound(gaussian, sigmas) -> float:
    """Align Your Steps' KL upper bound of a grid (see the module docstring) for a fitted `scorelab.Gaussian`, in
    closed form: the sum over the steps between sigmas[0] and the last non-zero σ (the step to 0 is left out)."""
    spec = _spectrum(gaussian)
    grid = [float(s) for s in sigmas if float(s) > 0]
    return sum(_interval_gauss(spec, hi, lo) for hi, lo in zip(grid[:-1], grid[1:]))


# ---------------------------------------------------------------------------------------------- dynamic programmes
def _dp_additive(cost: np.ndarray, steps: int) -> list[int]:
    """The cheapest path 0 → M−1 through exactly `steps` edges i → k (i < k) of the [M, M] cost matrix."""
    m = cost.shape[0]
    if steps > m - 1:
        raise ValueError(f"the candidate grid has {m} levels: too few for {steps} steps; raise candidates")
    best = np.full(m, np.inf)
    best[0] = 0.0
    back = []
    for _ in range(steps):
        total = best[:, None] + np.where(np.triu(np.ones((m, m), bool), 1), cost, np.inf)   # [from, to]
        arg = total.argmin(axis=0)
        best = total[arg, np.arange(m)]
        back.append(arg)
    path = [m - 1]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1]


@dataclass
class Search:
    """What `optimize(..., return_info=True)` returns beside the grid: how it was found and what it costs."""

    method: str
    solver: str
    nfe: int
    steps: int
    sigmas: list
    skip: int = 0
    sigma_skip: float | None = None
    objective: float = float("nan")           # KLUB ("ays") or weighted endpoint error of the path ("dp")
    rms: float | None = None                  # per-sample RMS distance of the solve to the teacher's endpoint
    baseline_rms: dict = field(default_factory=dict)   # the same for reference grids, same batch
    seconds: float = 0.0
    evaluations: int = 0                      # denoiser calls the search made (teacher and model)
    details: dict = field(default_factory=dict)

    def provenance(self) -> dict:
        """The fields `schedules.save` stores beside the grid."""
        out = {k: v for k, v in self.__dict__.items() if k != "sigmas"}
        return out


class _Counted:
    """D(x, σ, **extra_args) with σ broadcast to [B] and the calls counted (batch rows, i.e. samples)."""

    def __init__(self, denoiser, extra_args):
        self.denoiser, self.extra_args, self.rows = denoiser, extra_args, 0

    def __call__(self, x, sigma, **_):
        sigma = sigma if isinstance(sigma, torch.Tensor) and sigma.ndim == 1 else x.new_full((x.shape[0],),
                                                                                             float(sigma))
        self.rows += x.shape[0]
        return self.denoiser(x, sigma, **self.extra_args)


class _OffTable(Exception):
    """A solver evaluated the model away from the tabulated teacher points."""


def _off_table(x, sigma, **_):
    raise _OffTable


class _Cached:
    """The model, with its value at the tabulated teacher points looked up (the same tensor object, the same σ)
    instead of recomputed: a transition's only new evaluations are a single-step solver's inner stages."""

    def __init__(self, model, points, values):
        self.model = model
        self.table = {id(p): v for p, v in zip(points, values)}

    def __call__(self, x, sigma, **kw):
        hit = self.table.get(id(x))
        return hit if hit is not None else self.model(x, sigma)


def _rms(x, ref) -> float:
    """Mean over the batch of each sample's RMS distance (per coordinate) to `ref`, in float64."""
    return float((x - ref).reshape(x.shape[0], -1).to(torch.float64).pow(2).mean(1).sqrt().mean())


def _geometric(hi: float, lo: float, m: int) -> list[float]:
    return [hi * (lo / hi) ** (j / (m - 1)) for j in range(m)] if m > 1 else [hi]


# ---------------------------------------------------------------------------------------------- the search
@torch.no_grad()
def optimize(teacher, *, solver="dpmpp_2m", nfe: int = 6, method: str = "dp", data=None, model=None,
             sigma_min: float = 0.002, sigma_max: float = 80.0, shape=None, n_samples: int = 128,
             candidates: int | None = None, refine: int = 2, teacher_solver: str = "heun", substeps: int = 4,
             teleport=None, sigma_skip: float | None = None, warm_history: bool = True, history_points: int = 3,
             solver_args: dict | None = None, extra_args: dict | None = None, seed: int = 0,
             baselines: tuple = ("karras", "logsnr_uniform"), cache: dict | None = None, return_info: bool = False,
             progress: bool = False):
    """A grid of σ (ending in 0) on which `solver` spends `nfe` denoiser evaluations, tuned to `teacher`.

    `teacher`: any denoiser; a fitted `scorelab.Gaussian` gives the closed forms (exact trajectory, exact KL
    bound). `model`: the denoiser the solver will run (default: the teacher) — e.g. the network, searched against
    a Gaussian or a many-step network teacher. `method`: "ays" (KL bound; needs `data`, held-out clean samples,
    unless the teacher is a Gaussian) or "dp" (teacher trajectories from `n_samples` noise draws, `seed`).
    `candidates`: levels of the fine grid (default 129 for "ays"; for "dp" 48, or 32 for solvers that remember
    two or more points); `refine`: coordinate-descent sweeps
    on full solves ("dp"; 0 to skip). `teleport`, `sigma_skip`, `warm_history`, `history_points`: search the grid
    that runs after a Gaussian's exact jump (see the module docstring). `baselines`: schedule names whose RMS on the
    same batch is reported in the info ("dp"). `extra_args`: conditioning for every call (batch of n_samples).
    `cache`: a dict the caller owns, in which "dp" keeps the teacher's trajectories and "ays" its table of sampled
    bounds (keyed by everything that determines them), so that searches for several solvers and budgets pay for
    the teacher once.
    Returns the float64 grid, or (grid, `Search`) with `return_info=True`."""
    start_time = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}; got {method!r}")
    teacher = check_denoiser(teacher, name="teacher")
    model = teacher if model is None else check_denoiser(model, name="model")
    solver_args = dict(solver_args or {})
    fn = get_solver(solver) if isinstance(solver, str) else solver
    solver_name = solver if isinstance(solver, str) else getattr(solver, "__name__", "solver")
    steps = steps_for_nfe(fn, nfe, solver_args)
    n_samples = check_positive_int(n_samples, name="n_samples")
    refine = int(refine)
    if refine < 0:
        raise ValueError(f"refine must be >= 0 (coordinate-descent sweeps); got {refine}")
    sigma_min = float(check_sigma(sigma_min, name="sigma_min", allow_zero=False))
    sigma_max = float(check_sigma(sigma_max, name="sigma_max", allow_zero=False))
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_max must be > sigma_min={sigma_min}; got {sigma_max}")
    extra_args = check_extra_args(extra_args)
    device, dtype = device_of(model), dtype_of(model)

    # ---- where the search starts: σ_max, or σ_skip after a Gaussian's jump over `history_points` levels
    pre = []
    if teleport is not None:
        if sigma_skip is None:
            raise ValueError("teleport needs sigma_skip (the noise level the Gaussian's jump lands on)")
        sigma_skip = float(check_sigma(sigma_skip, name="sigma_skip", allow_zero=False))
        if not sigma_min < sigma_skip < sigma_max:
            raise ValueError(f"sigma_skip must lie in (sigma_min, sigma_max) = ({sigma_min}, {sigma_max}); got "
                             f"{sigma_skip}")
        history_points = check_positive_int(history_points, name="history_points")
        pre = _geometric(sigma_max, sigma_skip, history_points + 1)[:-1]
        warm_history = bool(warm_history) and traits(fn).multistep
    elif sigma_skip is not None:
        raise ValueError("sigma_skip needs teleport= (a fitted Gaussian)")
    top = sigma_skip if teleport is not None else sigma_max
    if steps == 1:
        grid = torch.tensor(pre + [top, 0.0], dtype=torch.float64)
        info = Search(method, solver_name, nfe, steps, grid.tolist(), len(pre), sigma_skip,
                      seconds=time.perf_counter() - start_time)
        return (grid, info) if return_info else grid

    if method == "ays":
        gaussian_teacher = _is_gaussian(teacher)
        m = 129 if candidates is None else check_positive_int(candidates, name="candidates")
        if gaussian_teacher:
            path, objective, evaluations, details = _ays_gaussian(teacher, top, sigma_min, steps, m, progress)
        else:
            if data is None:
                raise ValueError("method='ays' needs data= (held-out clean samples) unless the teacher is a fitted "
                                 "Gaussian, whose bound is closed form")
            path, objective, evaluations, details = _ays_sampled(teacher, data, top, sigma_min, steps, m,
                                                                 n_samples, seed, extra_args, device, dtype,
                                                                 cache, progress)
        grid = torch.tensor(pre + path + [0.0], dtype=torch.float64)
        info = Search(method, solver_name, nfe, steps, grid.tolist(), len(pre), sigma_skip, objective=objective,
                      evaluations=evaluations, details=details)
    else:
        shape = _shape(teacher, model, data, shape)
        # solvers that remember 2-3 points make the search's state space larger: fewer levels by default
        m = (48 if _memory(fn, solver_args) <= 1 else 32) if candidates is None else check_positive_int(
            candidates, name="candidates")
        grid, info = _dp(teacher, model, fn, solver_name, solver_args, steps, nfe, shape, top, sigma_min,
                         sigma_max, pre, m, n_samples, seed, refine, teacher_solver, substeps, teleport,
                         sigma_skip, warm_history, extra_args, device, dtype, baselines, cache, progress)
    info.seconds = round(time.perf_counter() - start_time, 3)
    grid = grid.to(torch.float64)
    return (grid, info) if return_info else grid


def _shape(teacher, model, data, shape):
    if shape is not None:
        return tuple(int(s) for s in shape)
    found = sample_shape(model) or sample_shape(teacher)
    if found is None and data is not None:
        found = tuple(torch.as_tensor(data).shape[1:])
    if found is None:
        raise ValueError("shape= is needed: neither the model nor the teacher records a sample shape")
    return found


# ---------------------------------------------------------------------------------------------- "ays"
def _ays_gaussian(gaussian, top, sigma_min, steps, m, progress):
    """Exact DP of the closed-form bound over m log-spaced levels, then coordinate descent in continuous log σ."""
    from scipy.optimize import minimize_scalar

    spec = _spectrum(gaussian)
    levels = _geometric(top, sigma_min, m)
    cost = np.full((m, m), np.inf)
    for i in range(m):
        for k in range(i + 1, m):
            cost[i, k] = _interval_gauss(spec, levels[i], levels[k])
    idx = _dp_additive(cost, steps - 1)
    path = [levels[i] for i in idx]
    before = sum(cost[i, k] for i, k in zip(idx[:-1], idx[1:]))
    for _ in progress_bar(range(20), enabled=progress, desc="ays: coordinate descent"):
        moved = 0.0
        for p in range(1, len(path) - 1):
            hi, lo = path[p - 1], path[p + 1]

            def local(u, hi=hi, lo=lo):
                s = math.exp(u)
                return _interval_gauss(spec, hi, s) + _interval_gauss(spec, s, lo)

            res = minimize_scalar(local, bounds=(math.log(lo), math.log(hi)), method="bounded",
                                  options={"xatol": 1e-9})
            if res.fun < local(math.log(path[p])):
                moved = max(moved, abs(res.x - math.log(path[p])))
                path[p] = math.exp(res.x)
        if moved < 1e-7:
            break
    objective = sum(_interval_gauss(spec, a, b) for a, b in zip(path[:-1], path[1:]))
    return path, objective, 0, {"levels": m, "dp_objective": float(before), "closed_form": True}


def _ays_sampled(denoiser, data, top, sigma_min, steps, m, n_samples, seed, extra_args, device, dtype, cache,
                 progress):
    """The bound sampled on one Brownian path per data row over m log-spaced levels (trapezoid rule in log σ);
    exact DP over those levels. The [m, m] table of interval bounds is kept in `cache` (when given) for searches
    at other budgets."""
    key = ("ays-table", id(denoiser), id(data), seed, n_samples, top, sigma_min, m, str(device), str(dtype))
    if cache is not None and key in cache and not extra_args:
        cost, levels, rows, b = cache[key]
        idx = _dp_additive(cost, steps - 1)
        objective = float(sum(cost[i, k] for i, k in zip(idx[:-1], idx[1:])))
        return [levels[i] for i in idx], objective, 0, {"levels": m, "samples": b, "closed_form": False,
                                                        "cached_evaluations": rows}
    x0 = check_tensor(torch.as_tensor(data), name="data", min_ndim=2)
    gen = torch.Generator().manual_seed(int(seed))
    if x0.shape[0] > n_samples:
        x0 = x0[torch.randperm(x0.shape[0], generator=gen)[:n_samples]]
    x0 = x0.to(device=device, dtype=dtype)
    levels = _geometric(top, sigma_min, m)                       # decreasing
    b = x0.shape[0]
    call = _Counted(denoiser, {k: v for k, v in extra_args.items()})
    # one forward (Brownian) path per row: x(σ_min) = x0 + σ_min z, then x(σ_j) = x(σ_(j+1)) + √(σ_j² − σ_(j+1)²) z_j
    x = x0 + levels[-1] * torch.randn(x0.shape, generator=gen).to(device=device, dtype=dtype)
    values = [None] * m
    for j in progress_bar(range(m - 1, -1, -1), enabled=progress, desc="ays: denoiser on the Brownian paths"):
        if j < m - 1:
            x = x + math.sqrt(levels[j] ** 2 - levels[j + 1] ** 2) * torch.randn(x0.shape, generator=gen).to(
                device=device, dtype=dtype)
        values[j] = call(x, levels[j]).reshape(b, -1).to(torch.float64)
    logs = np.log(levels)
    cost = np.full((m, m), np.inf)
    for i in range(m):
        # g_j = E‖D_j − D_i‖² / σ_j² at the levels below i; the bound of i → k is the trapezoid sum over [k, i]
        diffs = torch.stack([((values[j] - values[i]) ** 2).sum(1).mean() for j in range(i, m)]).cpu().numpy()
        g = diffs / np.array(levels[i:]) ** 2
        du = logs[i:-1] - logs[i + 1:]
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (g[:-1] + g[1:]) * du)])
        cost[i, i + 1:] = cum[1:]
    if cache is not None and not extra_args:
        cache[key] = (cost, levels, call.rows, b)
    idx = _dp_additive(cost, steps - 1)
    objective = float(sum(cost[i, k] for i, k in zip(idx[:-1], idx[1:])))
    return [levels[i] for i in idx], objective, call.rows, {"levels": m, "samples": b, "closed_form": False}


def _teacher_points(teacher, call_teacher, x_top, levels, teacher_solver, substeps, extra_args, progress):
    """The teacher's probability-flow trajectory from x_top at every one of `levels` (decreasing, starting at
    x_top's level), and its endpoint at σ = 0: exact for a teacher with `trajectory` (a Gaussian), else a solve with
    `teacher_solver` taking `substeps` log-spaced steps per interval. Returns (points, x_end, description)."""
    m = len(levels)
    if hasattr(teacher, "trajectory"):
        traj = teacher.trajectory(x_top, torch.tensor(levels + [0.0], dtype=torch.float64), **extra_args)
        return [traj[j] for j in range(m)], traj[m], "exact trajectory"
    substeps = check_positive_int(substeps, name="substeps")
    fine = [levels[0]]
    for hi, lo in zip(levels[:-1], levels[1:]):
        fine += _geometric(hi, lo, substeps + 1)[1:]
    recorded = {}
    bar = progress_bar(total=len(fine), enabled=progress, desc=f"teacher ({teacher_solver})")

    def keep(info):
        if info["i"] % substeps == 0:
            recorded[info["i"] // substeps] = info["x"]
        bar.update(1)

    x_end = get_solver(teacher_solver)(call_teacher, x_top, torch.tensor(fine + [0.0], dtype=torch.float64),
                                       callback=keep)
    bar.close()
    return [recorded[j] for j in range(m)], x_end, f"{teacher_solver}, {len(fine)} steps"


# ---------------------------------------------------------------------------------------------- "dp"
def _dp(teacher, model, fn, solver_name, solver_args, steps, nfe, shape, top, sigma_min, sigma_max, pre, m,
        n_samples, seed, refine, teacher_solver, substeps, teleport, sigma_skip, warm_history, extra_args, device,
        dtype, baselines, cache, progress):
    gen = torch.Generator().manual_seed(int(seed))
    x_T = (sigma_max * torch.randn((n_samples, *shape), generator=gen)).to(device=device, dtype=dtype)
    levels = _geometric(top, sigma_min, m)
    call_teacher = _Counted(teacher, extra_args)
    call_model = call_teacher if model is teacher else _Counted(model, extra_args)

    # the start point and the warm history: the Gaussian's exact jump over the levels above σ_skip
    history0 = []
    x_top = x_T
    if teleport is not None:
        template = torch.tensor(pre + [top, 0.0], dtype=torch.float64)
        jump = plan(teleport, template, sigma_skip=top, warm_history=warm_history, solver=fn, extra_args=extra_args)
        x_top, _, hist = jump(x_T, template)
        history0 = list(hist or [])

    # the teacher's trajectory at every level, and its endpoint at σ = 0
    key = ("dp-teacher", id(teacher), id(teleport), seed, n_samples, tuple(shape), sigma_max, tuple(pre),
           tuple(levels), teacher_solver, substeps, bool(history0), str(device), str(dtype))
    if cache is not None and key in cache and not extra_args:
        points, x_end, teacher_how = cache[key]
    else:
        points, x_end, teacher_how = _teacher_points(teacher, call_teacher, x_top, levels, teacher_solver, substeps,
                                                     extra_args, progress)
    points = [p.contiguous() for p in points]
    if cache is not None and not extra_args:
        cache[key] = (points, x_end, teacher_how)
    vkey = key + ("values", id(model))
    if cache is not None and vkey in cache and not extra_args:
        values = cache[vkey]
    else:
        values = [call_model(p, lev) for p, lev in zip(points, levels)]
        if cache is not None and not extra_args:
            cache[vkey] = values
    cached = _Cached(call_model, points, values)
    c2 = float(x_end.reshape(n_samples, -1).to(torch.float64).var(0).mean())
    memory = _memory(fn, solver_args)
    hist_kw = {"history": None} if traits(fn).multistep else {}

    def history(path_idx):
        if not traits(fn).multistep:
            return {}
        recent = [(levels[i], values[i], points[i]) for i in path_idx]
        entries = (history0 + recent)[-memory:] if memory else []
        return {"history": entries or None}

    def step(path_idx, j, k):
        """x after one solver step from the teacher point j to level k (k = m: σ = 0), history along path_idx."""
        target = 0.0 if k == m else levels[k]
        return fn(cached, points[j], torch.tensor([levels[j], target], dtype=torch.float64),
                  **history(path_idx), **solver_args)

    def weight(k):
        """c²/(c² + σ_k²): how much an error at σ_k still moves the endpoint (module docstring)."""
        return 1.0 if k == m else c2 / (c2 + levels[k] ** 2)

    def err(x, k):
        ref = x_end if k == m else points[k]
        return weight(k) * float(((x - ref).reshape(n_samples, -1).to(torch.float64) ** 2).sum(1).mean())

    # A step that only evaluates the model at tabulated points (every multistep solver here, Euler) is a linear
    # combination of the tabulated tensors: run it once on their coordinates (unit vectors) and measure the error
    # with their Gram matrix — the same number, without touching [B, d] tensors per transition. A solver with inner
    # stages off the table (Heun) raises _OffTable on the first try and is run on the tensors.
    basis = points + values + [x_end] + [h[1] for h in history0] + [h[2] for h in history0]
    flat = torch.stack([b.reshape(n_samples, -1).to(torch.float64).cpu() for b in basis]).reshape(len(basis), -1)
    gram = (flat @ flat.T) / n_samples
    del flat
    unit = torch.eye(len(basis), dtype=torch.float64)
    e = [unit[a:a + 1] for a in range(len(basis))]
    lin_points, lin_values, lin_end = e[:m], e[m:2 * m], e[2 * m]
    h0 = len(history0)
    lin_history0 = [(h[0], e[2 * m + 1 + a], e[2 * m + 1 + h0 + a]) for a, h in enumerate(history0)]
    lin_model = _Cached(_off_table, lin_points, lin_values)

    def step_lin(path_idx, j, k):
        target = 0.0 if k == m else levels[k]
        kw = {}
        if traits(fn).multistep:
            recent = [(levels[i], lin_values[i], lin_points[i]) for i in path_idx]
            kw = {"history": ((lin_history0 + recent)[-memory:] if memory else []) or None}
        return fn(lin_model, lin_points[j], torch.tensor([levels[j], target], dtype=torch.float64), **kw,
                  **solver_args)

    def err_lin(c, k):
        r = (c - (lin_end if k == m else lin_points[k]))[0]
        return weight(k) * float(r @ gram @ r)

    try:
        step_lin([], 0, 1)
        linear = True
    except _OffTable:
        linear = False

    step_costs = {}

    def cost(path_idx, j, k):
        key = (tuple(path_idx[-memory:]) if memory else (), j, k)
        if key not in step_costs:
            step_costs[key] = err_lin(step_lin(path_idx, j, k), k) if linear else err(step(path_idx, j, k), k)
        return step_costs[key]

    # DP over states (previous level, current level) after s steps; value = cost so far, with the path kept
    states = {(None, 0): (0.0, [])}
    for s in progress_bar(range(steps - 1), enabled=progress, desc="dp: search"):
        nxt = {}
        left = steps - 1 - s                                      # steps after this one that still need a level
        for (i, j), (value, path_idx) in states.items():
            for k in range(j + 1, m - left + 1):
                v = value + cost(path_idx, j, k)
                if (j, k) not in nxt or v < nxt[(j, k)][0]:
                    nxt[(j, k)] = (v, path_idx + [j])
        states = nxt
    best = None
    for (i, j), (value, path_idx) in states.items():
        v = value + cost(path_idx, j, m)
        if best is None or v < best[0]:
            best = (v, path_idx + [j])
    dp_value, idx = best
    path = [levels[i] for i in idx]

    def solve(sig_path):
        grid = torch.tensor(sig_path + [0.0], dtype=torch.float64)
        return fn(call_model, x_top, grid, **({"history": history0 or None} if hist_kw else {}), **solver_args)

    def rms(x):
        return _rms(x, x_end)

    def total(sig_path):
        return float(((solve(sig_path) - x_end).reshape(n_samples, -1).to(torch.float64) ** 2).sum(1).mean())

    current = total(path)
    after_dp = current
    from . import _grids

    base_paths = {name: [float(v) for v in _grids.get(name, steps, sigma_min=sigma_min, sigma_max=top)[:-1]]
                  for name in baselines}
    base_totals = {name: total(p) for name, p in base_paths.items()}
    start_from = "dp"
    for name, v in base_totals.items():        # coordinate descent starts from the best of DP and the baselines
        if v < current:
            current, path, start_from = v, list(base_paths[name]), name
    for _ in progress_bar(range(refine), enabled=progress, desc="dp: refine"):
        for p in range(1, len(path)):
            hi = path[p - 1]
            lo = path[p + 1] if p + 1 < len(path) else sigma_min
            if p + 1 == len(path):               # the last level may move down to σ_min (inclusive)
                trial = _geometric(hi, lo, 8)[1:]
            else:
                trial = _geometric(hi, lo, 8)[1:-1]
            for s in trial:
                cand = path[:p] + [s] + path[p + 1:]
                v = total(cand)
                if v < current:
                    current, path = v, cand
    final = solve(path)
    base = {name: rms(solve(p)) for name, p in base_paths.items()}
    grid = torch.tensor(pre + path + [0.0], dtype=torch.float64)
    info = Search("dp", solver_name, nfe, steps, grid.tolist(), len(pre), sigma_skip, objective=current,
                  rms=rms(final), baseline_rms=base, evaluations=call_teacher.rows + (
                      call_model.rows if call_model is not call_teacher else 0),
                  details={"levels": m, "samples": n_samples, "teacher": teacher_how, "memory": memory,
                           "dp_value": dp_value, "endpoint_error_after_dp": after_dp, "refine_sweeps": refine,
                           "refined_from": start_from, "linear_costs": linear,
                           "warm_history": bool(history0), "endpoint_variance": c2})
    return grid, info


# ---------------------------------------------------------------------------------------------- learned weights
@torch.no_grad()
def fit_coefficients(teacher, sigmas, *, model=None, memory: int = 2, n_samples: int = 128, seed: int = 0,
                     shape=None, teacher_solver: str = "heun", substeps: int = 16, teleport=None,
                     sigma_skip: float | None = None, warm_history: bool = True, extra_args: dict | None = None,
                     return_info: bool = False, progress: bool = False):
    """Per-step weights of `samplers.learned` for the grid `sigmas`, fitted to the teacher's trajectories (the
    S4S/GAS idea, solved in closed form): step by step along the solver's *own* path from `n_samples` noise draws
    (`seed`), the weights of x_i and of the newest `memory` + 1 denoiser values are the least-squares fit of the
    teacher's point at σ_(i+1) (its endpoint for the last step), written as DDIM's step plus a correction with a
    tiny ridge (so collinear features fall back to DDIM). The model is called once per step, as the solver will.

    `teacher`/`model`/`shape`/`extra_args` as in `optimize`; a Gaussian teacher's trajectory is exact, any other
    is solved with `teacher_solver` in `substeps` steps per interval of the grid. With `teleport` (a fitted
    Gaussian) and `sigma_skip`, the weights are fitted for the part of the grid after the exact jump, its warm
    history included. Returns a list of per-step lists (pass as `coefficients=`), or (coefficients, info dict)."""
    teacher = check_denoiser(teacher, name="teacher")
    model = teacher if model is None else check_denoiser(model, name="model")
    memory = int(memory)
    if not 0 <= memory <= 3:
        raise ValueError(f"memory must be 0, 1, 2 or 3 (earlier denoiser values a step may use); got {memory}")
    n_samples = check_positive_int(n_samples, name="n_samples")
    extra_args = check_extra_args(extra_args)
    grid = [float(v) for v in check_sigmas(sigmas)]
    if grid[-1] != 0:
        raise ValueError("sigmas must end in 0 (the weights of the last step fit the teacher's endpoint)")
    device, dtype = device_of(model), dtype_of(model)
    shape = _shape(teacher, model, None, shape)
    gen = torch.Generator().manual_seed(int(seed))
    x_T = (grid[0] * torch.randn((n_samples, *shape), generator=gen)).to(device=device, dtype=dtype)
    call_teacher = _Counted(teacher, extra_args)
    call_model = call_teacher if model is teacher else _Counted(model, extra_args)
    history0, x_top, k = [], x_T, 0
    if teleport is not None:
        if sigma_skip is None:
            raise ValueError("teleport needs sigma_skip (the noise level of the grid the jump lands on)")
        jump = plan(teleport, torch.tensor(grid, dtype=torch.float64), sigma_skip=sigma_skip,
                    warm_history=warm_history, solver="learned", extra_args=extra_args)
        x_top, _, hist = jump(x_T, torch.tensor(grid, dtype=torch.float64))
        history0, k = list(hist or []), jump.k
    levels = grid[k:-1]
    points, x_end, teacher_how = _teacher_points(teacher, call_teacher, x_top, levels, teacher_solver, substeps,
                                                 extra_args, progress)
    targets = points[1:] + [x_end]
    x = x_top
    past = [h[1] for h in history0]
    coefficients, step_rms = [], []
    for i in progress_bar(range(len(levels)), enabled=progress, desc="fit coefficients"):
        s0 = levels[i]
        s1 = levels[i + 1] if i + 1 < len(levels) else 0.0
        past.append(call_model(x, s0))
        feats = [x] + [past[-1 - m] for m in range(min(memory, len(past) - 1) + 1)]
        ddim = [s1 / s0, 1 - s1 / s0] + [0.0] * (len(feats) - 2)
        flat = torch.stack([f.reshape(-1).to(torch.float64) for f in feats])            # [q, n·d]
        y = targets[i].reshape(-1).to(torch.float64) - (ddim[0] * flat[0] + ddim[1] * flat[1])
        gram = flat @ flat.T
        ridge = 1e-10 * float(gram.diagonal().mean()) * torch.eye(len(feats), dtype=torch.float64)
        delta = torch.linalg.solve(gram + ridge, flat @ y)
        c = [a + float(b) for a, b in zip(ddim, delta)]
        coefficients.append(c)
        x = sum(ci * f for ci, f in zip(c, feats))
        step_rms.append(_rms(x, targets[i]))
    # the same batch with DPM-Solver++(2M) on the same grid: the weights are fitted step by step, not to the
    # endpoint, so at some budgets a classic solver on the grid is the better choice — this says which
    reference = get_solver("dpmpp_2m")(call_model, x_top, torch.tensor(levels + [0.0], dtype=torch.float64),
                                       history=[(h[0], h[1]) for h in history0] or None)
    info = {"teacher": teacher_how, "samples": n_samples, "memory": memory, "skip": k, "sigma_skip": sigma_skip,
            "rms": step_rms[-1], "step_rms": step_rms,
            "dpmpp_2m_rms": _rms(reference, x_end),
            "evaluations": call_teacher.rows + (call_model.rows if call_model is not call_teacher else 0)}
    return (coefficients, info) if return_info else coefficients
