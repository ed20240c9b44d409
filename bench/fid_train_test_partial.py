"""FID / KID / FD∞ of Fashion-MNIST train vs test from the feature blocks cached so far by
`bench.fid_reference_job` (cache lookups only: never runs the network).

    python -m bench.fid_train_test_partial [--out DIR] [--data-path DIR]

Prints a markdown table; writes the result record fid_train_test_partial.json (bench/results by default).
"""
from __future__ import annotations

import argparse

import torch

from . import record
from .common import add_output_arguments, fashion_mnist, show

DESCRIPTION = dict(title="FID, KID and FD∞ of Fashion-MNIST train vs test from the cached feature blocks",
                   notes="Only the Inception features already cached by bench.fid_reference_job are used (N: the "
                         "number of train and of test images available). FD∞ (fd_inf_train_subsets_vs_test): "
                         "extrapolation to infinitely many train images.", keys=["n"])


def cached_prefix(x: torch.Tensor, folder) -> torch.Tensor:
    """Features of the longest prefix of `x` whose blocks are all in the cache (no network evaluation)."""
    from scorelab._io import load_state
    from scorelab.metrics.inception import quantize
    from scorelab.metrics.stats import BLOCK, _sha1

    px = quantize(x)
    out = []
    for i in range(0, len(px), BLOCK):
        path = folder / f"{_sha1(px[i:i + BLOCK])}.safetensors"
        if not path.is_file():
            break
        out.append(load_state(path)[0]["features"])
    return torch.cat(out) if out else torch.zeros(0, 2048)


def main(argv=None):
    from scorelab.metrics.frechet import fd_inf, fid
    from scorelab.metrics.inception import default_extractor
    from scorelab.metrics.kid import kid
    from scorelab.metrics.stats import cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    folder = cache_dir() / "features" / default_extractor().sha1_[:12]
    train = cached_prefix(fashion_mnist("train", 10000, args.data_path), folder)
    test = cached_prefix(fashion_mnist("test", 10000, args.data_path), folder)
    n = min(len(train), len(test))
    if n == 0:
        raise SystemExit("fid_train_test_partial: no cached feature blocks yet (run python -m bench.fid_reference_job)")
    rows = []
    for m in sorted({m for m in (1000, 2000, 5000, 10000, n) if m <= n}):
        k = kid(train[:m], test[:m], n_subsets=100, subset_size=min(1000, m))
        rows.append({"n": m, "fid": fid(train[:m], test[:m]), "kid": k.mean, "kid_std": k.std})
    inf = fd_inf(train[:n], test[:n], n_points=10, min_n=max(2, n // 5)) if n >= 1000 else None
    print(show(rows, keys=["n"]))
    if inf is not None:
        print(f"\nFD∞ (train subsets of {n // 5}..{n} vs {n} test images) = {inf.value:.3f}")
    record.write("fid_train_test_partial", rows, out=args.out, n_available=n,
                 fd_inf_train_subsets_vs_test=None if inf is None else inf.value, **DESCRIPTION)


if __name__ == "__main__":
    main()
