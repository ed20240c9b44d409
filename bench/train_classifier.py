"""Train the Fashion-MNIST classifier whose penultimate layer is scorelab's cheap feature network, and measure it.

    python -m bench.train_classifier --save models/fashion-mnist-classifier     # the shipped model

Trains `sl.metrics.train_classifier` on the 60,000 training images (hflip augmentation), measures accuracy on the
10,000 test images, saves the model (model.safetensors + config.json, accuracy included) to --save, writes the
result record train_classifier.json (bench/results by default) and prints one JSON line: test accuracy, wall time, threads.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import scorelab as sl
from scorelab.metrics.classifier import accuracy, save_classifier

from . import record
from .common import add_output_arguments, fashion_mnist


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-augment", action="store_true", help="no horizontal flips")
    ap.add_argument("--limit", type=int, default=None, help="first N training images only (for a quick try)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", default=None, metavar="DIR", help="directory to save the model to (default: not saved)")
    add_output_arguments(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x, y = fashion_mnist("train", args.limit, args.data_path, labels=True)
    xt, yt = fashion_mnist("test", None, args.data_path, labels=True)
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
                  final_loss=model.train_info_["final_loss"], saved_to=args.save)
    if args.save:
        save_classifier(model, args.save, extra=dict(test_accuracy=result["test_accuracy"],
                                                     test_split="fashion-mnist test (10,000 images)",
                                                     command=record.command_line()))
    record.write("train_classifier", [result], out=args.out, **DESCRIPTION)
    print(json.dumps(result))


DESCRIPTION = dict(title="The Fashion-MNIST feature classifier: accuracy and training time",
                   columns=["test_accuracy", "train_accuracy_first10k", "train_seconds", "test_images_per_second",
                            "epochs", "n_train", "n_params", "final_loss"],
                   notes="The classifier whose penultimate layer is scorelab's cheap feature network "
                         "(sl.metrics.classifier_features), trained on the 60,000 training images with horizontal "
                         "flips; accuracy on the 10,000 test images.")


if __name__ == "__main__":
    main()
