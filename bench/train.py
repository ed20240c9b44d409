"""Training throughput (images/s) of each architecture on this machine, with the training loop of scorelab.nets.

    python bench/train.py [--threads 1] [--steps 30] [--batch-size 128]

Prints a markdown table and writes bench/results/train.json. Data: Fashion-MNIST (28×28) for U-Nets, two-moons
(2-D) for MLPs; the first steps (warm-up of the allocator) are excluded from the timing."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import scorelab as sl
from scorelab._io import write_json
from scorelab.nets import ARCHS


def images(n=2048):
    try:
        return sl.data.load("fashion-mnist", split="train")[:n]
    except Exception:  # data module not available: the throughput does not depend on pixel values
        return torch.rand(n, 1, 28, 28) * 2 - 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30, help="timed steps per architecture")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--archs", nargs="*", default=list(ARCHS))
    p.add_argument("--out", default="bench/results/train.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for arch in a.archs:
        if ARCHS[arch]["net"] == "mlp":
            data = torch.randn(4096, 2) * 0.5
        else:
            data = images()
        warm = 5
        model = sl.nets.train(data, arch=arch, steps=warm, batch_size=a.batch_size, progress=False, warmup=1)
        t0 = time.perf_counter()
        sl.nets.train(data, arch=arch, steps=a.steps, batch_size=a.batch_size, progress=False, warmup=1)
        sec = time.perf_counter() - t0
        n_params = sum(p.numel() for p in model.parameters())
        rows.append({"arch": arch, "params": n_params, "batch_size": a.batch_size, "steps": a.steps,
                     "seconds": round(sec, 2), "img_per_s": round(a.steps * a.batch_size / sec, 1),
                     "shape": list(data.shape[1:])})
        print(f"{arch}: {rows[-1]['img_per_s']} img/s", file=sys.stderr)
    write_json(a.out, {"threads": a.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                       "rows": rows})
    print(f"| arch | params | data | batch | img/s ({a.threads} thread{'s' if a.threads > 1 else ''}) |")
    print("|---|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['arch']} | {r['params'] / 1e6:.2f} M | {'×'.join(map(str, r['shape']))} | {r['batch_size']} | {r['img_per_s']:.0f} |")


if __name__ == "__main__":
    main()
