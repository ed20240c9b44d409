"""`scorelab schedule optimize|show`: σ grids tuned to a model by the closed form, saved as JSON with provenance."""
from __future__ import annotations

import json

from . import add_device_args, torch_dtype


def register(sub) -> None:
    from ..samplers import SAMPLERS

    p = sub.add_parser("schedule", help="tune a σ grid to a model for a solver and NFE budget; show a saved grid",
                       description="Few-step schedules tuned by the closed form (scorelab.schedules.optimize).")
    ss = p.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)
    o = ss.add_parser(
        "optimize", help="search the grid on which a solver spends --nfe evaluations best",
        description="Search a σ grid for --solver at --nfe denoiser evaluations and save it as JSON with its "
                    "provenance. --method dp: dynamic programming against a teacher's trajectories (exact for a "
                    "fitted Gaussian teacher; otherwise a fine solve), then coordinate descent on full solves. "
                    "--method ays: Align Your Steps' KL bound (closed form for a Gaussian teacher; otherwise "
                    "sampled on --data). With --teleport and --sigma-skip the grid that runs after the Gaussian's "
                    "exact jump is searched and --nfe counts the model's evaluations only. Use the result with "
                    "`scorelab sample --sigmas FILE`.")
    o.add_argument("--model", required=True, metavar="FILE|DIR",
                   help="the model the solver will run (a fitted model .safetensors or a trained network)")
    o.add_argument("--teacher", default=None, metavar="FILE|DIR",
                   help="the model whose trajectories (dp) or bound (ays) define the target (default: --model)")
    o.add_argument("--solver", default="dpmpp_2m",
                   choices=sorted(n for n in SAMPLERS if n not in ("edm_stochastic", "euler_ancestral",
                                                                    "dpmpp_2m_sde")),
                   help="deterministic solver the grid is for (default: dpmpp_2m)")
    o.add_argument("--nfe", type=int, required=True, help="denoiser evaluations per sample the grid may spend")
    o.add_argument("--method", default="dp", choices=["dp", "ays"], help="search objective (default: dp)")
    o.add_argument("--data", default=None, metavar="NAME|PATH",
                   help="held-out clean samples for --method ays with a non-Gaussian teacher (test split of a "
                        "named data set, or a file/folder)")
    o.add_argument("--n-samples", type=int, default=128,
                   help="noise draws (dp) or data rows (ays) the objective averages over (default: 128)")
    o.add_argument("--candidates", type=int, default=None,
                   help="levels of the fine candidate grid (default: 48 for dp, 129 for ays)")
    o.add_argument("--refine", type=int, default=2, help="coordinate-descent sweeps after dp (default: 2)")
    o.add_argument("--sigma-min", type=float, default=0.002, help="smallest non-zero σ (default: 0.002)")
    o.add_argument("--sigma-max", type=float, default=80.0, help="largest σ (default: 80)")
    o.add_argument("--teleport", default=None, metavar="GAUSSIAN_FILE",
                   help="a Gaussian saved by `scorelab fit gaussian`: search the grid after its exact jump")
    o.add_argument("--sigma-skip", type=float, default=None, help="the level the jump lands on (with --teleport)")
    o.add_argument("--no-warm-history", action="store_true",
                   help="with --teleport: do not warm a multistep solver's history from the Gaussian")
    o.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="solver option, repeatable (e.g. --opt order=3)")
    o.add_argument("--fit-coefficients", action="store_true",
                   help="also fit per-step weights of the 'learned' solver to the teacher on the found grid "
                        "(sample with --solver learned --sigmas FILE)")
    o.add_argument("--memory", type=int, default=2,
                   help="earlier denoiser values a learned step may use, 0-3 (default: 2)")
    o.add_argument("--shape", default=None, metavar="C,H,W", help="sample shape when the model records none")
    o.add_argument("--seed", type=int, default=0, help="seed of the noise draws / data subset (default: 0)")
    o.add_argument("--out", required=True, metavar="JSON", help="where to write the schedule")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_args(o)
    o.set_defaults(func=_optimize)
    s = ss.add_parser("show", help="print a saved schedule and its provenance",
                      description="Print a schedule written by `scorelab schedule optimize` (σ values, steps and "
                                  "provenance) as JSON.")
    s.add_argument("file", metavar="JSON", help="a schedule file")
    s.set_defaults(func=_show)


def _optimize(args) -> int:
    import torch

    from .. import schedules
    from .sample import load_denoiser, load_teleport, parse_opts

    dtype = torch_dtype(args.dtype)
    as64 = dtype if args.dtype == "float64" else None
    for name in ("nfe", "n_samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    model = load_denoiser(args.model, device=args.device, dtype=as64)
    teacher = model if args.teacher is None else load_denoiser(args.teacher, device=args.device, dtype=as64,
                                                               option="--teacher")
    teleport = None
    if args.teleport is not None:
        teleport = load_teleport(args.teleport, device=args.device)
        if args.sigma_skip is None:
            raise ValueError("--teleport needs --sigma-skip S (the level the jump lands on)")
    elif args.sigma_skip is not None:
        raise ValueError("--sigma-skip needs --teleport GAUSSIAN_FILE")
    data = None
    if args.data is not None:
        from .. import data as data_mod

        named = args.data in getattr(data_mod, "DATASETS", {})
        data = data_mod.resolve(args.data, split="test" if named else "train")
        data = torch.as_tensor(data) if not isinstance(data, torch.Tensor) else data
    shape = None
    if args.shape:
        try:
            shape = tuple(int(v) for v in args.shape.split(","))
        except ValueError:
            raise ValueError(f"--shape must be comma-separated integers like 1,28,28; got {args.shape!r}") from None
    grid, info = schedules.optimize(
        teacher, model=None if args.teacher is None else model, solver=args.solver, nfe=args.nfe,
        method=args.method, data=data, sigma_min=args.sigma_min, sigma_max=args.sigma_max, shape=shape,
        n_samples=args.n_samples, candidates=args.candidates, refine=args.refine, teleport=teleport,
        sigma_skip=args.sigma_skip, warm_history=not args.no_warm_history, solver_args=parse_opts(args.opt),
        seed=args.seed, return_info=True, progress=not args.no_progress)
    provenance = dict(model=str(args.model), teacher=str(args.teacher or args.model), teleport=args.teleport,
                      data=args.data, seed=args.seed, solver_options=parse_opts(args.opt), **info.provenance())
    fitted = None
    if args.fit_coefficients:
        coefficients, fitted = schedules.fit_coefficients(
            teacher, grid, model=None if args.teacher is None else model, memory=args.memory,
            n_samples=args.n_samples, seed=args.seed, shape=shape, teleport=teleport, sigma_skip=args.sigma_skip,
            warm_history=not args.no_warm_history, return_info=True, progress=not args.no_progress)
        provenance.update(coefficients=coefficients, coefficients_info=fitted)
    schedules.save(grid, args.out, **provenance)
    print(json.dumps(dict(out=args.out, sigmas=[round(float(v), 6) for v in grid], method=info.method,
                          solver=info.solver, nfe=info.nfe, steps=info.steps, rms=info.rms,
                          baseline_rms=info.baseline_rms, objective=info.objective, seconds=info.seconds,
                          learned_rms=None if fitted is None else fitted["rms"])))
    return 0


def _show(args) -> int:
    from .. import schedules

    sigmas, provenance = schedules.load(args.file, provenance=True)
    print(json.dumps(dict(file=args.file, steps=len(sigmas) - 1, sigmas=[float(v) for v in sigmas],
                          provenance=provenance), indent=2))
    return 0
