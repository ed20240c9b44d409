"""Training throughput (images/s) of each architecture on this machine: one EDM training step (forward, EDM loss,
backward, gradient clipping, Adam, EMA) timed over a few steps after two warm-up steps.

    python -m bench.train [--threads 1] [--steps 20] [--batch-size 64] [--out DIR] [--data-path DIR]

Also times diffusers' `UNet2DModel` at the size of `unet-small` (channels 32/64/64, one block per level,
attention at 7×7) in the same EDM wrapper when diffusers is installed. Prints a markdown table and writes the
result record train.json (bench/results by default). Data: Fashion-MNIST 28×28 for the U-Nets, 2-D two-moons for the MLPs."""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
from torch import nn
from scorelab._io import progress_bar as tqdm   # drawn only on a terminal

import scorelab as sl
from scorelab.nets import ARCHS, arch_config, build
from scorelab.nets.precond import EDMPrecond, edm_loss_weight

from . import record
from .common import add_output_arguments, fashion_mnist, show


class DiffusersNet(nn.Module):
    """F(x_in, c_noise) = UNet2DModel(x_in, 250·c_noise) (the time embedding expects a timestep-like scale)."""

    def __init__(self, channels=(32, 64, 64)):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                                block_out_channels=channels, norm_num_groups=8,
                                down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                                up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))

    def forward(self, x, c_noise, class_labels=None):
        return self.unet(x, 250 * c_noise).sample


def time_steps(model, data, steps, batch_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ema = copy.deepcopy(model).requires_grad_(False)
    t0 = None
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        x0 = data[torch.randint(len(data), (batch_size,), generator=g)]
        sigma = (torch.randn(batch_size, generator=g) * 1.2 - 1.2).exp()
        noise = torch.randn(x0.shape, generator=g)
        d = model(x0 + sigma.view(-1, *[1] * (x0.ndim - 1)) * noise, sigma)
        loss = (edm_loss_weight(sigma, model.sigma_data) * ((d - x0) ** 2).flatten(1).mean(1)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 0.001)
    return steps * batch_size / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="timed steps per architecture")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--archs", nargs="*", default=list(ARCHS) + ["diffusers-unet-small"])
    add_output_arguments(p)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    images = fashion_mnist("train", 4096, a.data_path)
    moons = sl.data.load("two-moons", n=4096)
    rows = []
    for arch in tqdm(a.archs, desc="archs"):
        if arch == "diffusers-unet-small":
            try:
                net = DiffusersNet()
            except ImportError:
                print("diffusers not installed: diffusers-unet-small skipped", file=sys.stderr)
                continue
            model, data = EDMPrecond(net, sigma_data=0.5, shape=(1, 28, 28)), images
        else:
            data = moons if ARCHS[arch]["net"] == "mlp" else images
            model = build({**arch_config(arch), "shape": list(data.shape[1:]), "sigma_data": 0.5, "n_classes": 0})
        img_s = time_steps(model, data, a.steps, a.batch_size)
        rows.append({"arch": arch, "params": sum(p.numel() for p in model.parameters()), "batch_size": a.batch_size,
                     "steps": a.steps, "img_per_s": round(img_s, 1), "shape": list(data.shape[1:])})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    record.write("train", rows, out=a.out, keys=["arch"], load_avg_1min_at_end=load, **describe(a.threads))
    print(show(rows, keys=["arch"]))
    print(f"\n{os.cpu_count()} cores, load average {load:.1f} at the end of the run (other jobs share the cores).")


def describe(threads: int) -> dict:
    return dict(title="Training throughput per architecture (one EDM training step)",
                notes=f"Images per second of one full EDM training step (forward, loss, backward, clipping, Adam, "
                      f"EMA) after two warm-up steps, {threads} torch thread(s); Fashion-MNIST 28×28 for the "
                      "U-Nets and conv nets, 2-D two-moons for the MLPs.")


if __name__ == "__main__":
    main()
