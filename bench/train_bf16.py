"""Training throughput of the shipped U-Net's architecture in float32 and under bfloat16 autocast on this CPU.

One full training step as scorelab.nets.train runs it (EDM loss with the shipped model's σ mixture, backward,
gradient clipping, Adam, EMA), the forward pass and loss inside `torch.autocast("cpu", torch.bfloat16)` for the
bf16 mode (weights, gradients and Adam state stay float32: mixed precision, not a bf16 model). The two modes are
timed in the same process, on the same batches, interleaved in blocks (f32, bf16, bf16, f32, ...) so both see the
same machine load; the record gives each mode's median and best images/s and their ratio, and the relative
difference of the loss and of the gradient norm between the modes on one batch (same weights).

    python -m bench.train_bf16 [--threads 1] [--rounds 6] [--block 5] [--batch-size 64] [--unet DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import time

import torch

from scorelab.nets import build
from scorelab.nets.checkpoint import read_init
from scorelab.nets.loss import EDMLoss

from . import record
from .common import add_output_arguments, fashion_mnist, show, unet_network, unet_path

MODES = ("float32", "bfloat16-autocast")


def autocast(mode: str):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if mode == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


class Trainer:
    """The training step of scorelab.nets.train (loss, backward, clip, Adam, EMA) for one model, with the forward
    pass and loss under `autocast(mode)`."""

    def __init__(self, model_cfg: dict, train_cfg: dict, weights: dict | None = None, seed: int = 0):
        torch.manual_seed(seed)
        self.model = build(model_cfg)
        if weights is not None:
            self.model.load_state_dict(weights)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=train_cfg.get("lr", 3e-4), foreach=True)
        self.loss = EDMLoss(train_cfg.get("p_mean", -1.2), train_cfg.get("p_std", 1.2),
                            model_cfg.get("sigma_data", 0.5),
                            uniform_fraction=train_cfg.get("uniform_fraction", 0.0),
                            sigma_min=train_cfg.get("sigma_min", 0.002), sigma_max=train_cfg.get("sigma_max", 80.0))
        self.clip = train_cfg.get("grad_clip", 1.0)

    def loss_value(self, x0, mode: str, seed: int):
        with autocast(mode):
            loss = self.loss(self.model, x0, None, generator=torch.Generator().manual_seed(seed))
            return loss.float().flatten(1).mean(1).mean()

    def step(self, x0, mode: str, seed: int) -> float:
        loss = self.loss_value(x0, mode, seed)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(p, 0.001)
        return float(loss.detach())

    def loss_and_grad_norm(self, x0, mode: str, seed: int) -> tuple[float, float]:
        """Loss and gradient norm on one batch without updating the weights."""
        loss = self.loss_value(x0, mode, seed)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.model.parameters()
                                                     if p.grad is not None]))
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach()), float(norm)


def measure(model_cfg: dict, train_cfg: dict, data, *, rounds: int, block: int, batch_size: int,
            weights: dict | None = None, warmup: int = 2) -> list[dict]:
    """Rows (one per mode) of images/s of the training step: `rounds` rounds, each one block of `block` steps per
    mode (the order alternating between rounds), after `warmup` untimed steps per mode. One model is trained
    throughout (the modes take turns on it), so both modes see the same weights' cost; it starts from `weights`
    (continued training), else from initialisation (where the U-Net's zero output layer makes both modes' loss
    equal)."""
    if rounds < 1 or block < 1 or batch_size < 1:
        raise ValueError(f"rounds, block and batch_size must be >= 1; got {rounds}, {block}, {batch_size}")
    tr = Trainer(model_cfg, train_cfg, weights)
    g = torch.Generator().manual_seed(0)

    def batch():
        return data[torch.randint(len(data), (batch_size,), generator=g)]

    x_check = batch()
    (l32, g32), (l16, g16) = (tr.loss_and_grad_norm(x_check, m, seed=12345) for m in MODES)
    for mode in MODES:
        for i in range(warmup):
            tr.step(batch(), mode, seed=i)
    times = {m: [] for m in MODES}
    step = 0
    for r in range(rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            for _ in range(block):
                x0 = batch()
                t = time.perf_counter()
                tr.step(x0, mode, seed=step)
                times[mode].append(time.perf_counter() - t)
                step += 1
    rows = []
    for mode in MODES:
        ts = times[mode]
        rows.append(dict(mode=mode, steps=len(ts), batch_size=batch_size,
                         img_per_s_median=batch_size / statistics.median(ts), img_per_s_best=batch_size / min(ts),
                         img_per_s_mean=batch_size * len(ts) / sum(ts)))
    base = rows[0]
    for r in rows:
        r["ratio_median"] = r["img_per_s_median"] / base["img_per_s_median"]
        r["ratio_best"] = r["img_per_s_best"] / base["img_per_s_best"]
    rows[1]["loss_rel_diff"] = abs(l16 - l32) / abs(l32)
    rows[1]["grad_norm_rel_diff"] = abs(g16 - g32) / abs(g32)
    rows[0]["loss_rel_diff"] = rows[0]["grad_norm_rel_diff"] = 0.0
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6, help="rounds of one block per mode (default %(default)s)")
    ap.add_argument("--block", type=int, default=5, help="timed steps per mode per round (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--unet", default=None, help="model directory whose config.json gives the architecture "
                                                 "(default: models/fashion-mnist-unet)")
    ap.add_argument("--name", default="train_bf16", help="record name: OUT/NAME.json (default %(default)s)")
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be >= 1; got {args.threads}")
    torch.set_num_threads(args.threads)
    path, label = unet_path(args.unet)
    cfg = json.loads((path / "config.json").read_text())
    weights = read_init(path, cfg["model"])[0] if (path / "model.safetensors").exists() else None
    data = fashion_mnist("train", 4096, args.data_path)
    t = time.perf_counter()
    try:
        rows = measure(cfg["model"], cfg.get("train", {}), data, rounds=args.rounds, block=args.block,
                       batch_size=args.batch_size, weights=weights)
    except ValueError as err:
        ap.error(str(err))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    record.write(args.name, rows, out=args.out, network=unet_network(args.unet), keys=["mode"],
                 title="Training throughput of the shipped U-Net: float32 vs bfloat16 autocast on this CPU",
                 columns=["mode", "steps", "img_per_s_median", "img_per_s_best", "ratio_median",
                          "ratio_best", "loss_rel_diff", "grad_norm_rel_diff"],
                 load_avg_1min_at_end=load, seconds=round(time.perf_counter() - t, 1),
                 notes="One full training step (EDM loss with the model's σ mixture, backward, clipping, Adam, EMA) "
                       f"of {label}'s architecture; bf16: forward and loss under torch.autocast('cpu', bfloat16), "
                       "float32 weights and optimizer. Modes interleaved in blocks in one process, same batches "
                       "and weights; ratio = bf16 images/s over float32 images/s; loss_rel_diff and "
                       "grad_norm_rel_diff: |bf16 − f32| / |f32| on one batch, from the shipped weights (the training starts "
                       "from them: continued training).")
    print(show(rows, keys=["mode"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
