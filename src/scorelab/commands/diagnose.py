"""`scorelab diagnose ...`: diagnostics of samples and models. Each diagnostic is a sub-sub-command registered in
`_DIAGNOSTICS` (name → register function).

  scorelab diagnose nearest --samples FILE --data NAME|PATH --out grid.png
      memorised fraction (d1/d2 < 1/3) and a PNG of each sample beside its nearest training images.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import add_data_args


def load_samples(path, option: str = "--samples"):
    """Samples written by `scorelab sample` or saved by hand: .npy/.npz (via scorelab.data), .pt, .safetensors.

    A missing, corrupt or truncated file, or a .pt that holds pickled code (refused by torch.load(weights_only=True)),
    is a ValueError/FileNotFoundError naming `option` and the path: one line from the CLI."""
    p = Path(path)
    where = f"{option} {str(p)!r}"
    if not p.is_file():
        raise FileNotFoundError(f"{where} does not exist or is not a file")
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz", ".pt", ".pth", ".safetensors"):
        raise ValueError(f"{where} must be a .npy, .npz, .pt or .safetensors file")
    try:
        x = _read_samples(p, suffix)
    except Exception as e:   # numpy, pickle, zip and safetensors each raise their own types on bad bytes
        reason = _reason(e, p)
        if reason.startswith("is not a readable"):   # scorelab.data's own message, already complete
            raise ValueError(f"{where} {reason}") from None
        raise ValueError(f"{where} is not a readable {suffix} samples file ({reason})") from None
    if x is None:
        raise ValueError(f"{where} holds no tensor (expected a tensor or a dict with 'images')")
    return x


def _reason(e: Exception, p: Path) -> str:
    """The informative line of a reader's error: torch.load's weights-only refusal names the blocked GLOBAL (a
    pickled object or code) or the bad opcode among lines of advice; other readers' first line, minus the path."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        glob = next((ln for ln in lines if "GLOBAL" in ln), None)
        if glob is not None:
            return f"torch.load(weights_only=True) refused pickled code or objects: {glob.rstrip('.')}"
        advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
        lines = [ln for ln in lines if not ln.startswith(advice)] or lines
    reason = lines[0] if lines else type(e).__name__
    return reason.replace(f"{p} ", "", 1).replace(f"{str(p)!r} ", "", 1)


def _read_samples(p: Path, suffix: str):
    import torch

    if suffix in (".npy", ".npz"):
        from .. import data

        x = data.resolve(str(p))
        return x.to_tensor() if hasattr(x, "to_tensor") else x
    if suffix in (".pt", ".pth"):
        obj = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            obj = next((obj[k] for k in ("images", "samples", "x") if k in obj), None)
        return obj.float() if isinstance(obj, torch.Tensor) else None
    from safetensors.torch import load_file

    t = load_file(str(p))
    key = next((k for k in ("images", "samples", "x") if k in t), None) or next(iter(t), None)
    return None if key is None else t[key].float()


def _register_nearest(sub) -> None:
    p = sub.add_parser("nearest", help="memorised fraction (d1/d2 < 1/3) and nearest-training-image grid",
                       description="For each sample, find its nearest training images (exact, streamed), report the "
                                   "fraction with d1/d2 < threshold and write a PNG: each row is a sample followed by "
                                   "its k nearest training images.")
    p.add_argument("--samples", required=True, metavar="FILE", help="samples (.npy/.npz/.pt/.safetensors), [B,C,H,W]")
    add_data_args(p)
    p.add_argument("--out", required=True, metavar="PNG", help="where to write the grid")
    p.add_argument("--k", type=int, default=3, help="training neighbours shown per sample (default: 3)")
    p.add_argument("--n", type=int, default=16, help="samples shown in the grid (default: 16)")
    p.add_argument("--threshold", type=float, default=1 / 3, help="d1/d2 below which a sample is memorised")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to this JSON file")
    p.set_defaults(func=_run_nearest)


def _run_nearest(args) -> int:
    from .. import data as data_mod
    from .._checks import check_positive_int
    from .._io import write_json
    from ..metrics.nearest import memorization, save_nearest_grid

    k = check_positive_int(args.k, name="--k")
    n = check_positive_int(args.n, name="--n")
    samples = load_samples(args.samples)
    train = data_mod.resolve(args.data, split=args.split, limit=args.limit)
    if tuple(samples.shape[1:]) != tuple(train.shape[1:]):
        raise ValueError(f"samples have shape {tuple(samples.shape[1:])} but --data has {tuple(train.shape[1:])}")
    frac, ratios, nearest = memorization(samples, train, threshold=args.threshold, return_ratios=True)
    save_nearest_grid(samples[:n], train, args.out, k=k)
    result = {"samples": args.samples, "data": args.data, "n_samples": int(samples.shape[0]),
              "threshold": args.threshold, "memorized_fraction": frac,
              "median_ratio": float(ratios.median()), "grid": args.out}
    if args.json:
        write_json(args.json, {**result, "ratios": ratios.tolist(), "nearest": nearest.tolist()})
    print(json.dumps(result))
    return 0


# name → function(subparsers) adding the diagnostic; other diagnostics are added here
_DIAGNOSTICS = {"nearest": _register_nearest}


def _register_from_report(sub) -> None:  # `explained` and `suggest-skip` live in commands/report.py
    from .report import register_explained, register_suggest_skip

    register_explained(sub)
    register_suggest_skip(sub)


_DIAGNOSTICS["explained, suggest-skip"] = _register_from_report


def register(sub) -> None:
    p = sub.add_parser("diagnose", help="diagnostics: memorisation (nearest training images), ...",
                       description="Diagnostics of samples and models.")
    kinds = p.add_subparsers(dest="diagnostic", metavar="DIAGNOSTIC", required=True)
    for add in _DIAGNOSTICS.values():
        add(kinds)
