"""Train the Fashion-MNIST classifier whose penultimate layer is scorelab's cheap feature network, and measure it.

    .venv/bin/python bench/train_classifier.py --out models/fashion-mnist-classifier     # the shipped model

Trains `sl.metrics.train_classifier` on the 60,000 training images (hflip augmentation), measures accuracy on the
10,000 test images, saves the model (model.safetensors + config.json, accuracy included) to --out, writes
bench/results/train_classifier.json and prints one JSON line: test accuracy, wall time, threads.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, write_result  # noqa: E402

import scorelab as sl  # noqa: E402
from scorelab.metrics.classifier import accuracy, save_classifier  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-augment", action="store_true", help="no horizontal flips")
    ap.add_argument("--limit", type=int, default=None, help="first N training images only (for a quick try)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="directory to save the model to (default: not saved)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x, y = sl.data.load("fashion-mnist", split="train", labels=True, limit=args.limit)
    xt, yt = sl.data.load("fashion-mnist", split="test", labels=True)
    t0 = time.perf_counter()
    model = sl.metrics.train_classifier(x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                        seed=args.seed, augment=not args.no_augment, progress=sys.stderr.isatty())
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_acc = accuracy(model, xt, yt)
    eval_seconds = time.perf_counter() - t1
    train_acc = accuracy(model, x[:10_000], y[:10_000])
    n_params = sum(p.numel() for p in model.parameters())
    result = dict(test_accuracy=round(test_acc, 4), train_accuracy_first10k=round(train_acc, 4),
                  train_seconds=round(train_seconds, 1), test_images_per_second=round(xt.shape[0] / eval_seconds),
                  threads=args.threads, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  augment=not args.no_augment, n_train=int(x.shape[0]), n_params=n_params,
                  final_loss=model.train_info_["final_loss"], out=args.out)
    if args.out:
        save_classifier(model, args.out, extra=dict(test_accuracy=result["test_accuracy"],
                                                    test_split="fashion-mnist test (10,000 images)",
                                                    command=command_line()))
    write_result("train_classifier", dict(name="train_classifier", **result), command_line())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
