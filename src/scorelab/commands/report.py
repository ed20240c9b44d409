"""`scorelab report --model M --data D --out report.html`: one self-contained HTML page about a denoiser."""
from __future__ import annotations

import json


def _run(args) -> int:
    from ..report import build_report
    from . import check_steps

    check_steps(args.steps)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = build_report(args.model, args.data, args.out, n_fit=args.n_fit, n_eval=args.n_eval, steps=args.steps,
                          solver=args.solver, n_samples=args.n_samples, fid_samples=args.fid_samples,
                          features=args.features, threshold=args.threshold, models=models, seed=args.seed,
                          device=args.device)
    if args.json:
        from .._io import write_json

        write_json(args.json, result)
    print(json.dumps({"out": result["out"], "sigma_skip": result["sigma_skip"], "metrics": result["metrics"]}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="self-contained HTML report: explained variance, samples, FID/KID/NFE, memorisation",
                       description="Write one HTML page (plots embedded) comparing analytic models with a denoiser M "
                                   "and sampling M with and without teleportation.")
    p.add_argument("--model", required=True, metavar="PATH",
                   help="trained-network directory (scorelab train) or analytic model file (scorelab fit)")
    p.add_argument("--data", required=True, metavar="NAME|PATH", help="data set name or path (images)")
    p.add_argument("--out", required=True, metavar="HTML", help="where to write the report")
    p.add_argument("--n-fit", type=int, default=10000, help="training images for the analytic fits (default: 10000)")
    p.add_argument("--n-eval", type=int, default=256, help="held-out images for the diagnostics (default: 256)")
    p.add_argument("--steps", type=int, default=18, help="Karras grid steps (default: 18)")
    p.add_argument("--solver", default="heun", help="sampler (default: heun)")
    p.add_argument("--n-samples", type=int, default=64, help="images in each sample grid (default: 64)")
    p.add_argument("--fid-samples", type=int, default=500, help="samples per configuration for FID/KID (default: 500)")
    p.add_argument("--features", default="inception", choices=["inception", "pixels"],
                   help="FID/KID features (default: inception; 'pixels' for quick runs)")
    p.add_argument("--threshold", type=float, default=0.99, help="Gaussian EV_s needed to teleport (default: 0.99)")
    p.add_argument("--models", default="Gaussian,GMM (K=10),Empirical,Wiener (local)",
                   help="comma-separated analytic models to compare, among: Gaussian, GMM (K=10), GMM (K=100), "
                        "Empirical, Wiener (local), ELS (local) (slow); default: Gaussian, GMM (K=10), Empirical, Wiener (local)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="FILE", default=None, help="also write all numbers to this JSON file")
    p.set_defaults(func=_run)


# ---------------------------------------------------------------- `scorelab diagnose explained | suggest-skip`
# (registered by commands/diagnose.py's _DIAGNOSTICS table)

def _grid(args):
    from .. import schedules
    from . import check_steps

    if args.sigmas:
        try:
            levels = [float(v) for v in args.sigmas.split(",")]
        except ValueError:
            raise ValueError(f"--sigmas must be comma-separated numbers; got {args.sigmas!r}") from None
        return levels
    return schedules.karras(check_steps(args.steps), sigma_max=args.sigma_max)


def _common(p, *, reference_help: str) -> None:
    from . import add_data_args

    p.add_argument("--reference", required=True, metavar="PATH", help=reference_help)
    add_data_args(p, split="test")     # held-out data by default
    p.add_argument("--n", type=int, default=256, help="held-out images used (default: 256)")
    p.add_argument("--steps", type=int, default=18, help="Karras grid steps (default: 18)")
    p.add_argument("--sigma-max", type=float, default=80.0)
    p.add_argument("--n-fit", type=int, default=10000, help="training images for --fit models (default: 10000)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the table to this JSON file")
    p.add_argument("--device", default="cpu")


def _fit_named(names, args, log):
    from .. import data as data_mod
    from ..report import _fit_models

    if not names:
        return {}
    train = data_mod.resolve(args.data, split="train", limit=args.n_fit)
    return _fit_models(train, names, log)


def _run_explained(args) -> int:
    from .. import data as data_mod
    from .._io import write_json
    from ..diagnostics import explained_variance
    from .. import distributed
    from .._checks import check_positive_int
    from ..loading import load_denoiser
    from ..report import save_line_plot

    distributed.init()   # under torchrun: the held-out batches are dealt over the ranks, rank 0 writes
    grid = _grid(args)
    log = []
    ref = load_denoiser(args.reference, device=args.device)
    models = {p: load_denoiser(p, device=args.device) for p in args.model or []}
    models.update(_fit_named([m.strip() for m in (args.fit or "").split(",") if m.strip()], args, log))
    if not models:
        raise ValueError("give at least one --model PATH or --fit NAMES")
    held = data_mod.resolve(args.data, split=args.split, limit=args.limit)
    table = explained_variance(models, ref, held, grid, n=args.n, batch_size=check_positive_int(
        args.batch_size, name="--batch-size"), shard=True)
    if distributed.rank() != 0:
        return 0
    print(table.to_markdown())
    for line in log:
        print(line)
    if args.json:
        write_json(args.json, {"reference": args.reference, "data": args.data, "split": args.split,
                               "rows": list(table), "log": log})
    if args.plot:
        sig = sorted({r["sigma"] for r in table})
        col = "ev_score" if args.space == "score" else "ev_denoiser"
        ys = {m: [next(r[col] for r in table if r["model"] == m and r["sigma"] == s) for s in sig] for m in models}
        save_line_plot(sig, ys, args.plot, xlabel="σ", ylabel=col, logx=True, ylim=(-0.1, 1.02),
                       title=f"{col} against {args.reference}")
    return 0


def register_explained(sub) -> None:
    p = sub.add_parser("explained", help="explained variance (EV_s, EV_D, median r²) per σ of models against a reference",
                       description="Per-σ explained variance of analytic or trained models against a reference "
                                   "denoiser on noised held-out data (definitions in DESIGN.md).")
    _common(p, reference_help="reference denoiser: trained-network directory or model file")
    p.add_argument("--model", action="append", metavar="PATH", help="model file or network directory (repeatable)")
    p.add_argument("--fit", default=None, metavar="NAMES",
                   help="also fit these on the training split: e.g. 'Gaussian,GMM (K=10),Empirical'")
    p.add_argument("--sigmas", default=None, metavar="S1,S2,...", help="explicit noise levels instead of the grid")
    p.add_argument("--space", default="score", choices=["score", "denoiser"], help="EV plotted with --plot")
    p.add_argument("--plot", metavar="PNG", default=None, help="plot EV vs σ to this PNG")
    p.add_argument("--batch-size", type=int, default=256,
                   help="held-out images per denoiser call; under torchrun the batches are dealt over the "
                        "processes (default: 256)")
    p.set_defaults(func=_run_explained)


def _run_suggest_skip(args) -> int:
    from .. import data as data_mod
    from .._io import write_json
    from ..diagnostics import suggest_skip
    from ..loading import load_denoiser

    grid = _grid(args)
    ref = load_denoiser(args.reference, device=args.device)
    if args.gaussian:
        gauss = load_denoiser(args.gaussian, device=args.device)
    else:
        log = []
        gauss = _fit_named(["Gaussian"], args, log).get("Gaussian")
        if gauss is None:
            raise ValueError("could not fit a Gaussian: " + "; ".join(log))
    held = data_mod.resolve(args.data, split=args.split, limit=args.limit)
    res = suggest_skip(ref, gauss, held, grid, threshold=args.threshold, space=args.space, n=args.n)
    n_steps = len(grid) - 1
    out = {"sigma_skip": res.sigma_skip, "skip_index": res.skip_index, "steps": n_steps,
           "skip_fraction": res.skip_index / n_steps, "threshold": args.threshold, "space": args.space}
    if args.json:
        write_json(args.json, {**out, "rows": list(res.table)})
    if args.plot:
        from ..report import save_line_plot

        col = "ev_score" if args.space == "score" else "ev_denoiser"
        sig = res.table.column("sigma")
        save_line_plot(sig, {"Gaussian": res.table.column(col), f"threshold {args.threshold}": [args.threshold] * len(sig)},
                       args.plot, xlabel="σ", ylabel=col, logx=True,
                       title=f"σ_skip = {out['sigma_skip']} (skips {res.skip_index} of {n_steps} steps)")
        out["plot"] = args.plot
    print(res.table.to_markdown(["sigma", "ev_score", "ev_denoiser", "r2_median"]))
    print(json.dumps(out))
    return 0


def register_suggest_skip(sub) -> None:
    p = sub.add_parser("suggest-skip", help="smallest σ above which a Gaussian explains ≥ threshold of a reference",
                       description="σ_skip for teleportation: the smallest grid σ such that the Gaussian's EV against "
                                   "the reference is ≥ --threshold at every grid σ ≥ σ_skip. Use it as "
                                   "`scorelab sample --teleport G --sigma-skip σ_skip`.")
    _common(p, reference_help="reference denoiser (the network to be sped up): directory or model file")
    p.add_argument("--gaussian", default=None, metavar="PATH", help="fitted Gaussian file (default: fit on --data train)")
    p.add_argument("--threshold", type=float, default=0.99, help="EV needed (default: 0.99)")
    p.add_argument("--space", default="score", choices=["score", "denoiser"], help="EV_s (default) or EV_D")
    p.add_argument("--plot", metavar="PNG", default=None, help="plot the Gaussian's EV vs σ and the threshold")
    p.set_defaults(func=_run_suggest_skip, sigmas=None)
