"""`scorelab report --model M --data D --out report.html`: one self-contained HTML page about a denoiser."""
from __future__ import annotations

import json


def _run(args) -> int:
    from ..report import build_report

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
    p.add_argument("--models", default="Gaussian,GMM (K=10),Empirical,ELS (local)",
                   help="comma-separated analytic models to compare (default: all four)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="FILE", default=None, help="also write all numbers to this JSON file")
    p.set_defaults(func=_run)
