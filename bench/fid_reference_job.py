"""Inception FID and KID of Fashion-MNIST train vs test at 5k/5k and 10k/10k: the reference the U-Net's FID is
judged against (DESIGN.md: at most twice this). Features are computed in interleaved blocks of 500 and cached, so an
interrupted run resumes and `bench.fid_train_test_partial` can report any prefix. Single thread; about 25 minutes.

    python -m bench.fid_reference_job [--out DIR] [--data-path DIR]

Writes the result record fid_train_test.json (bench/results by default).
"""
from __future__ import annotations

import argparse
import time

import torch

from . import record
from .common import add_output_arguments, fashion_mnist, show

DESCRIPTION = dict(title="FID and KID of Fashion-MNIST train vs test images (Inception)",
                   notes="The first N training images against the first N test images; KID over 100 subsets of "
                         "1,000. The U-Net's FID bar (DESIGN.md) is twice the 5k value.", keys=["n"])


def main(argv=None):
    from scorelab.metrics.frechet import fid
    from scorelab.metrics.kid import kid
    from scorelab.metrics.stats import cached_image_features

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    train = fashion_mnist("train", 10000, args.data_path)
    test = fashion_mnist("test", 10000, args.data_path)
    t0 = time.time()
    feats = {}
    for lo in range(0, 10000, 500):  # interleaved blocks: any prefix gives a train-vs-test FID of equal sizes
        for split, x in (("test", test), ("train", train)):
            f = cached_image_features(x[lo:lo + 500], desc=f"{split}[{lo}:{lo + 500}]", progress=False)
            feats.setdefault(split, []).append(f)
            print(f"{split}[{lo}:{lo + 500}] done, {time.time() - t0:.0f}s", flush=True)
    feats = {k: torch.cat(v) for k, v in feats.items()}
    extract_seconds = time.time() - t0
    rows = []
    for n in (5000, 10000):
        k = kid(feats["train"][:n], feats["test"][:n], n_subsets=100, subset_size=1000)
        rows.append(dict(n=n, fid=fid(feats["train"][:n], feats["test"][:n]), kid=k.mean, kid_std=k.std))
    print(show(rows, keys=["n"]))
    record.write("fid_train_test", rows, out=args.out, extract_seconds=extract_seconds, **DESCRIPTION)


if __name__ == "__main__":
    main()
