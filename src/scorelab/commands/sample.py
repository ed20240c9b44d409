"""`scorelab sample --model FILE|DIR --out grid.png`: draw samples with any solver, optionally teleported."""
from __future__ import annotations

import json
from pathlib import Path

from . import add_device_args, check_steps, torch_dtype


def register(sub) -> None:
    from ..samplers import SAMPLERS
    from ..schedules import NAMES

    p = sub.add_parser(
        "sample", help="draw samples from a saved model with any solver (optionally teleported)",
        description="Draw samples from a saved closed-form model (`scorelab fit`) or a trained network directory "
                    "(`scorelab train`), write a PNG grid (images) or scatter plot (2-D vectors) and a JSON "
                    "summary with the NFE and timings. With --teleport, a fitted Gaussian's exact jump replaces "
                    "the first steps (--skip fraction or --sigma-skip level). --class conditions a class-conditional "
                    "model; --guidance W applies classifier-free guidance (with --class) or autoguidance (with "
                    "--guide-with).")
    p.add_argument("--model", required=True, metavar="FILE|DIR",
                   help="a model saved by `scorelab fit` (.safetensors) or a trained network (directory or file)")
    p.add_argument("--solver", default=None, choices=sorted(SAMPLERS),
                   help="sampler (default: heun; with --particles dpmpp_2m_sde)")
    p.add_argument("--steps", type=int, default=None, help="number of solver steps of the grid (default: 18)")
    p.add_argument("--schedule", default=None, choices=sorted(NAMES), help="σ grid (default: karras)")
    p.add_argument("--sigmas", default=None, metavar="JSON",
                   help="a saved grid (`scorelab schedule optimize`) instead of --schedule/--steps; with --teleport "
                        "and no --skip/--sigma-skip, the jump lands on the grid's recorded sigma_skip")
    p.add_argument("--sigma-min", type=float, default=None,
                   help="smallest non-zero σ (default: 0.002; not for vp_linear, whose range its βs set)")
    p.add_argument("--sigma-max", type=float, default=None,
                   help="largest σ (default: 80; not for vp_linear, whose range its βs set)")
    p.add_argument("--rho", type=float, default=None, help="Karras ρ (default: 7)")
    p.add_argument("--teleport", default=None, metavar="GAUSSIAN_FILE",
                   help="a Gaussian saved by `scorelab fit gaussian`: jump exactly over the first steps")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--skip", default=None, metavar="FRAC|auto",
                   help="fraction of the steps the jump replaces (with --teleport), e.g. 0.2; 'auto': the largest "
                        "skip where the Gaussian explains >= --skip-threshold of the model on --skip-data")
    g.add_argument("--sigma-skip", type=float, default=None, metavar="S",
                   help="noise level the jump lands on (with --teleport)")
    p.add_argument("--skip-data", default=None, metavar="NAME|PATH",
                   help="held-out data for --skip auto: a data set name (its test split is used) or a file/folder")
    p.add_argument("--skip-threshold", type=float, default=0.99,
                   help="score-space explained variance required by --skip auto (default: 0.99)")
    p.add_argument("--warm-history", action="store_true",
                   help="multistep solvers: take the skipped points' history from the Gaussian (no extra NFE)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="solver option, repeatable: e.g. --opt eta=1 --opt S_churn=40 --opt order=2")
    c = p.add_argument_group("conditioning and guidance")
    c.add_argument("--class", dest="class_labels", default=None, metavar="C[,C...]|all",
                   help="class label(s) for a class-conditional model: one label for every sample, a comma-separated "
                        "list cycled over the samples, or 'all' (every class in turn)")
    c.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="guidance scale w: classifier-free guidance D(x,∅) + w·(D(x,c) − D(x,∅)) with --class, or "
                        "autoguidance D_weak + w·(D − D_weak) with --guide-with (1: no guidance)")
    c.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guide only where LO < σ <= HI (Kynkäänniemi et al. 2024); elsewhere the model alone")
    c.add_argument("--guide-with", default=None, metavar="FILE|DIR",
                   help="autoguidance: the weaker model to guide with (an earlier or smaller network, or a fitted "
                        "Gaussian .safetensors)")
    c.add_argument("--particles", type=int, default=None, metavar="K",
                   help="Feynman-Kac correctors (scorelab.smc): sample the target --guidance aims at, p(x|c)^w "
                        "p(x)^(1-w) (with --guide-with: p^w p_weak^(1-w)), with K weighted, resampled particles per "
                        "sample; solver dpmpp_2m_sde (default) or euler_ancestral, --opt eta=/ess_threshold=/"
                        "selection=loo; K times the network evaluations; batches of --batch-size samples, seeded "
                        "by (seed, batch)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=64,
                   help="number of samples (default: 64); --num-samples is the spelling torchrun lets through")
    p.add_argument("--seed", type=int, default=0, help="seed; sample i depends only on (seed, i) (default: 0)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch (default: 64)")
    p.add_argument("--shape", default=None, metavar="C,H,W",
                   help="sample shape when the model does not record one (e.g. 1,28,28)")
    p.add_argument("--out", default="samples.png", metavar="PNG", help="grid / scatter PNG (default: samples.png)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the summary JSON here")
    p.add_argument("--save-samples", default=None, metavar="NPY", help="also write the samples as a .npy array")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_args(p)
    p.set_defaults(func=_run)


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_opts(items) -> dict:
    """["eta=1", "variant=bh2"] → {"eta": 1, "variant": "bh2"}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--opt must be KEY=VALUE; got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def load_denoiser(path, device=None, dtype=None, option: str = "--model"):
    """`scorelab.loading.load_denoiser` with errors naming the command-line `option`."""
    from ..loading import load_denoiser as load

    return load(path, device=device, dtype=dtype, name=option)


def load_teleport(path, device=None):
    """The fitted Gaussian of --teleport: a .safetensors file written by `scorelab fit gaussian`. A folder or a
    network file is a trained network (what --model takes), which has no exact jump."""
    from .._io import load_state
    from ..models import load

    expected = "expected a fitted Gaussian: the .safetensors file written by `scorelab fit gaussian`"
    where = f"--teleport {str(path)!r}"
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{where} is a folder (a trained network, which --model takes); {expected}")
    if not path.exists():
        raise FileNotFoundError(f"{where} does not exist; {expected}")
    _, kind, _ = load_state(path)
    if kind == "edm-net":
        raise ValueError(f"{where} holds a trained network (which --model takes); {expected}")
    if kind != "gaussian":
        raise ValueError(f"{where} holds a {kind!r} model; {expected}")
    return load(path, device=device)


def model_classes(model) -> list[int] | None:
    """The class labels a model accepts: a network's 0..n_classes−1, a conditional analytic model's classes_; None
    for an unconditional model."""
    n_classes = getattr(model, "n_classes", 0)
    if isinstance(n_classes, int) and n_classes > 0:
        return list(range(n_classes))
    classes = getattr(model, "classes_", ())
    return list(classes) if classes else None


def parse_classes(text: str, n: int, classes: list[int] | None, model: str):
    """--class: a [n] long tensor of labels (one label, a list cycled over the samples, or 'all')."""
    import torch

    if classes is None:
        raise ValueError(f"--class needs a class-conditional --model; {model!r} is unconditional")
    if text.strip() == "all":
        labels = classes
    else:
        try:
            labels = [int(t) for t in text.split(",")]
        except ValueError:
            raise ValueError(f"--class must be integers separated by commas, or 'all'; got {text!r}") from None
        bad = sorted(set(labels) - set(classes))
        if bad or not labels:
            raise ValueError(f"--class must name classes of the model ({classes[0]}..{classes[-1]}); got {text!r}")
    return torch.tensor([labels[i % len(labels)] for i in range(n)])


def parse_interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(t) for t in text.split(","))
    except ValueError:
        raise ValueError(f"--guidance-interval must be LO,HI (two noise levels); got {text!r}") from None
    if not 0 <= lo < hi:
        raise ValueError(f"--guidance-interval must satisfy 0 <= LO < HI; got {text!r}")
    return lo, hi


def guided_model(args, model, labels, device, dtype):
    """--guidance/--guide-with/--guidance-interval applied to `model` (itself when no guidance is asked for)."""
    from .. import guidance

    if args.guidance is None:
        if args.guide_with is not None or args.guidance_interval is not None:
            raise ValueError("--guide-with and --guidance-interval need --guidance W")
        return model
    interval = parse_interval(args.guidance_interval) if args.guidance_interval is not None else None
    weak = guidance_partner(args, model, labels, device, dtype)
    if weak is not None:
        weak_cond = labels is not None and model_classes(weak) is not None
        return guidance.autoguidance(model, weak, args.guidance, interval, weak_cond=weak_cond)
    return guidance.cfg(model, args.guidance, interval=interval)


def guidance_partner(args, model, labels, device, dtype):
    """With --guidance: the weaker model of --guide-with (autoguidance), or None for classifier-free guidance
    (which needs --class)."""
    if args.guide_with is not None:
        weak = load_denoiser(args.guide_with, device=device, dtype=dtype, option="--guide-with")
        weak_shape, shape = getattr(weak, "shape_", None), getattr(model, "shape_", None)
        if weak_shape is not None and shape is not None and tuple(weak_shape) != tuple(shape):
            raise ValueError(f"--guide-with {args.guide_with!r} draws samples of shape {tuple(weak_shape)} but "
                             f"--model {args.model!r} of shape {tuple(shape)}: the two models must share it")
        return weak
    if labels is None:
        raise ValueError("--guidance without --guide-with is classifier-free guidance: it needs --class")
    return None


def write_outputs(args, images, summary: dict, title: str) -> None:
    """The PNG (an image grid for [n, C, H, W], a scatter plot titled `title` for vectors; summary["out"]), the
    --save-samples array, the --json summary and its one-line print."""
    import numpy as np

    from .._io import atomic_path, write_json
    from ..images import save_grid, save_scatter

    summary["out"] = None
    if images.ndim == 4:
        save_grid(images, args.out)
        summary["out"] = args.out
    elif images.ndim == 2 and images.shape[1] >= 2:
        save_scatter(images[:, :2], args.out, title=title)
        summary["out"] = args.out
    if args.save_samples:
        with atomic_path(args.save_samples, ".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, images.numpy())
    if args.json:
        write_json(args.json, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "sigmas"}))


def _run(args) -> int:
    from .. import distributed, schedules
    from ..sample import sample

    sharded = distributed.init()   # under torchrun (before loading: "cuda" is then this rank's GPU)
    if args.particles is not None:
        fkc_conflicts = [name for name, given in (("--teleport", args.teleport), ("--guidance-interval",
                         args.guidance_interval), ("--warm-history", args.warm_history), ("torchrun", sharded))
                         if given]
        if fkc_conflicts:
            raise ValueError(f"--particles (Feynman-Kac correctors) does not combine with {', '.join(fkc_conflicts)}")
        if args.solver not in (None, "dpmpp_2m_sde", "euler_ancestral"):
            raise ValueError(f"--particles steps with dpmpp_2m_sde or euler_ancestral; got --solver {args.solver}")
    args.solver = args.solver or ("dpmpp_2m_sde" if args.particles is not None else "heun")
    dtype = torch_dtype(args.dtype)
    saved_skip = learned_coefficients = None
    if args.solver == "learned" and args.sigmas is None:
        raise ValueError("--solver learned runs weights fitted for one grid: give that grid with --sigmas FILE")
    if args.sigmas is not None:
        given = [f"--{k.replace('_', '-')}" for k in ("steps", "schedule", "sigma_min", "sigma_max", "rho")
                 if getattr(args, k) is not None]
        if given:
            raise ValueError(f"--sigmas gives the whole grid: drop {', '.join(given)}")
        sigmas, provenance = schedules.load(args.sigmas, provenance=True)
        saved_skip = provenance.get("sigma_skip")
        if args.solver == "learned" and not any(o.startswith("coefficients=") for o in args.opt):
            if not provenance.get("coefficients"):
                raise ValueError(f"--solver learned needs fitted weights: {args.sigmas!r} has none (make it with "
                                 f"`scorelab schedule optimize --fit-coefficients`)")
            learned_coefficients = provenance["coefficients"]
    else:
        args.steps = 18 if args.steps is None else args.steps
        args.schedule = args.schedule or "karras"
        check_steps(args.steps)
    model = load_denoiser(args.model, device=args.device, dtype=dtype if args.dtype == "float64" else None)
    shape = getattr(model, "shape_", None)
    if args.shape:
        try:
            shape = tuple(int(s) for s in args.shape.split(","))
        except ValueError:
            raise ValueError(f"--shape must be comma-separated integers like 1,28,28; got {args.shape!r}") from None
    if shape is None:
        raise ValueError(f"--model {args.model!r} records no sample shape; pass --shape C,H,W")
    kwargs = {}
    if args.sigmas is not None:
        pass
    elif args.schedule in ("karras", "exponential", "logsnr_uniform", "vp_cosine"):
        kwargs = dict(sigma_min=0.002 if args.sigma_min is None else args.sigma_min,
                      sigma_max=80.0 if args.sigma_max is None else args.sigma_max)
    elif args.sigma_min is not None or args.sigma_max is not None:
        raise ValueError(f"--sigma-min/--sigma-max do not apply to --schedule {args.schedule} (its σ range follows "
                         f"from its β schedule); use karras, exponential, logsnr_uniform or vp_cosine")
    if args.rho is not None:
        if args.schedule != "karras":
            raise ValueError(f"--rho applies to --schedule karras only; got --schedule {args.schedule}")
        kwargs["rho"] = args.rho
    if args.sigmas is None:
        sigmas = schedules.get(args.schedule, args.steps, **kwargs)
    gaussian = None
    if args.teleport is not None:
        gaussian = load_teleport(args.teleport, device=args.device)
    elif args.skip is not None or args.sigma_skip is not None or args.warm_history:
        raise ValueError("--skip/--sigma-skip/--warm-history need --teleport GAUSSIAN_FILE")
    skip = args.skip
    if gaussian is not None and skip is None and args.sigma_skip is None and saved_skip is not None:
        args.sigma_skip = float(saved_skip)
    if skip is not None and skip != "auto":
        try:
            skip = float(skip)
        except ValueError:
            raise ValueError(f"--skip must be a fraction in [0, 1) or 'auto'; got {skip!r}") from None
    skip_data = None
    if skip == "auto":
        if args.class_labels is not None:
            raise ValueError("--skip auto measures the unconditional model, so it cannot be combined with --class; "
                             "give --skip FRAC or --sigma-skip S")
        if args.skip_data is None:
            raise ValueError("--skip auto needs --skip-data NAME|PATH (held-out clean samples)")
        from .. import data as data_mod

        named = isinstance(args.skip_data, str) and args.skip_data in getattr(data_mod, "DATASETS", {})
        skip_data = data_mod.resolve(args.skip_data, split="test" if named else "train")
    elif args.skip_data is not None:
        raise ValueError("--skip-data is only used with --skip auto")
    labels = None
    if args.class_labels is not None:
        labels = parse_classes(args.class_labels, args.n, model_classes(model), args.model)
    if args.particles is not None:
        return _run_fkc(args, model, labels, shape, sigmas, dtype)
    denoiser = guided_model(args, model, labels, args.device, dtype if args.dtype == "float64" else None)
    extra_args = {"class_labels": labels} if labels is not None else None
    teleport_args = extra_args if gaussian is not None and model_classes(gaussian) is not None else None
    kw = dict(shape=shape, sigmas=sigmas, solver=args.solver, seed=args.seed,
              teleport=gaussian, skip=skip, sigma_skip=args.sigma_skip, skip_data=skip_data,
              skip_threshold=args.skip_threshold, extra_args=extra_args, teleport_args=teleport_args,
              warm_history=args.warm_history, batch_size=args.batch_size, device=args.device, dtype=dtype,
              progress=not args.no_progress, **parse_opts(args.opt))
    if learned_coefficients is not None:
        kw["coefficients"] = learned_coefficients
    run = None
    if sharded:   # under torchrun: batches dealt out over the ranks, rank 0 writes the outputs
        if not args.save_samples:
            raise ValueError("under torchrun, sample needs --save-samples NPY (each rank's batches are written "
                             "beside it, assembled into it, and a rerun resumes)")
        run = distributed.sample(denoiser, args.n, args.save_samples, **kw)
        if run.rank != 0:
            return 0
        result = run.result
    else:
        result = sample(denoiser, n=args.n, **kw)
    images = result.images.float().cpu()
    summary = dict(model=str(args.model), teleport=args.teleport, schedule=args.sigmas or args.schedule,
                   class_labels=args.class_labels, guidance=args.guidance, guidance_interval=args.guidance_interval,
                   guide_with=args.guide_with, **result.summary(),
                   batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                   images_per_second=round(args.n / max(result.seconds, 1e-9), 3), out=None,
                   samples=args.save_samples, world_size=1 if run is None else run.world_size,
                   samples_per_rank=[args.n] if run is None else run.shares)
    write_outputs(args, images, summary, title=f"{result.solver}, NFE {result.nfe}")
    return 0


def _run_fkc(args, model, labels, shape, sigmas, dtype) -> int:
    """--particles K: Feynman–Kac corrector sampling of the guided target (scorelab.smc), in batches."""
    import math
    import time

    import torch

    from .. import smc
    from .._io import progress_bar
    from ..noise import sample_seed

    if args.particles < 1:
        raise ValueError(f"--particles must be >= 1; got {args.particles}")
    if args.guidance is None:
        raise ValueError("--particles samples the target of --guidance W: give --guidance (with --class, or with "
                         "--guide-with)")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}")
    weak = guidance_partner(args, model, labels, args.device, dtype if args.dtype == "float64" else None)
    target = smc.cfg(model, args.guidance, uncond=weak)
    opts = parse_opts(args.opt)
    unknown = sorted(set(opts) - {"eta", "ess_threshold", "population", "resample_window", "selection"})
    if unknown:
        raise ValueError(f"--opt with --particles takes eta, ess_threshold, population, resample_window, selection; "
                         f"got {', '.join(unknown)}")
    t0 = time.perf_counter()
    parts, ess, resampled, nfe, network_nfe = [], [], [], 0, 0
    batches = range(math.ceil(args.n / args.batch_size))
    for b in progress_bar(batches, enabled=not args.no_progress, desc="fkc"):
        lo, hi = b * args.batch_size, min(args.n, (b + 1) * args.batch_size)
        cond = {"class_labels": labels[lo:hi]} if labels is not None else None
        out = smc.sample(target, hi - lo, shape, sigmas, particles=args.particles, solver=args.solver,
                         extra_args=cond, seed=sample_seed(args.seed, b), device=args.device, dtype=dtype, **opts)
        parts.append(out.samples.float().cpu())
        ess.append(out.ess.float().mean(0).cpu())
        resampled.append(out.resampled.float().mean(0).cpu())
        nfe, network_nfe = out.nfe, out.network_nfe
    images = torch.cat(parts)
    seconds = time.perf_counter() - t0
    ess_all = torch.cat(ess)
    summary = dict(model=str(args.model), class_labels=args.class_labels, guidance=args.guidance,
                   guide_with=args.guide_with, method="feynman-kac correctors", particles=args.particles,
                   solver=args.solver, solver_opts=opts, n=int(images.shape[0]), shape=list(images.shape[1:]),
                   steps=len(sigmas) - 1, sigmas=[float(v) for v in sigmas], seed=args.seed,
                   batch_size=args.batch_size, nfe=nfe, network_nfe=network_nfe,
                   cost=args.particles * network_nfe, ess_mean=round(float(ess_all.mean()), 4),
                   ess_min=round(float(ess_all.min()), 4), resampled_fraction=round(float(torch.cat(resampled).mean()), 4),
                   seconds=round(seconds, 4), images_per_second=round(args.n / max(seconds, 1e-9), 3), out=None,
                   samples=args.save_samples, device=args.device, dtype=args.dtype)
    write_outputs(args, images, summary, title=f"FKC, K = {args.particles}, w = {args.guidance:g}")
    return 0
