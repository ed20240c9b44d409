"""`scorelab train --data NAME|PATH --arch ARCH --steps N --out DIR [--resume]`: train a neural denoiser on the CPU."""
from __future__ import annotations

import json

from . import add_data_args


def register(sub) -> None:
    from ..nets import ARCHS
    from ..nets.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train an EDM-preconditioned neural denoiser (MLP / U-Net) on the CPU",
                       description="Train an EDM-preconditioned denoiser: EDM loss with a log-normal + log-uniform "
                                   "σ mixture, Adam, warm-up + cosine learning rate, gradient clipping, EMA, atomic "
                                   "checkpoints in DIR (model.safetensors + config.json are loadable with "
                                   "scorelab.load_model(DIR) at any time).")
    add_data_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (checkpoints, model, config)")
    p.add_argument("--arch", default=d.arch, choices=sorted(ARCHS), help=f"architecture (default: {d.arch})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"total optimiser steps (default: {d.steps})")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.safetensors if present")
    p.add_argument("--change", default="", metavar="FIELDS",
                   help="with --resume: comma-separated fields this run sets anew, a new training stage (lr, warmup, "
                        "lr_schedule, lr_min_ratio, grad_clip, ema_halflife_kimg, ema_rampup)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this saved model's weights (directory or .safetensors, same arch) with a fresh "
                        "optimiser and schedule: continue a model whose run directory is gone")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=["cosine", "constant"])
    p.add_argument("--lr-min-ratio", type=float, default=d.lr_min_ratio,
                   help=f"cosine schedule: final lr / lr (default: {d.lr_min_ratio})")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--ema-halflife-kimg", type=float, default=d.ema_halflife_kimg)
    p.add_argument("--p-mean", type=float, default=d.p_mean)
    p.add_argument("--p-std", type=float, default=d.p_std)
    p.add_argument("--uniform-fraction", type=float, default=d.uniform_fraction,
                   help="fraction of each batch with log-uniform σ on [sigma-min, sigma-max]")
    p.add_argument("--sigma-min", type=float, default=d.sigma_min)
    p.add_argument("--sigma-max", type=float, default=d.sigma_max)
    p.add_argument("--sigma-data", type=float, default=None, help="default: the data's standard deviation")
    p.add_argument("--gaussian-skip", dest="skip", action="store_const", const="gaussian", default=d.skip,
                   help="D = D_Gauss(x, σ) + c_out·F: the skip term is the denoiser of the Gaussian fitted to the "
                        "data (stored with the model), so the network learns only the non-Gaussian part")
    p.add_argument("--channels", type=int, nargs="+", default=None, help="U-Net channels per level (override)")
    p.add_argument("--num-blocks", type=int, default=None,
                   help="U-Net residual blocks per level, or convnet-local residual blocks (override)")
    p.add_argument("--attn-levels", type=int, nargs="*", default=None, metavar="LEVEL",
                   help="U-Net levels with self-attention (override; the flag alone: none, a purely convolutional "
                        "network when combined with --no-mid-attention)")
    p.add_argument("--no-mid-attention", dest="mid_attention", action="store_const", const=False, default=None,
                   help="U-Net without the self-attention layer in the middle block (override)")
    p.add_argument("--width", type=int, default=None, help="MLP width or convnet-local channels (override)")
    p.add_argument("--depth", type=int, default=None, help="MLP residual layers (override)")
    p.add_argument("--border", choices=["zero", "circular"], default=None,
                   help="convnet-local image border: zero padding or circular (override)")
    p.add_argument("--conditional", action="store_true", help="class-conditional (data with labels)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="STEPS")
    p.add_argument("--log-every", type=int, default=d.log_every, metavar="STEPS")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _load_data(args):
    from .. import data as data_mod

    if args.conditional:
        return data_mod.load(args.data, split=args.split, labels=True, limit=args.limit)
    return data_mod.resolve(args.data, split=args.split, limit=args.limit), None


def _run(args) -> int:
    import torch

    from ..nets.train import TrainConfig, train

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    x, y = _load_data(args)
    overrides = {"channels": args.channels, "num_blocks": args.num_blocks,
                 "attn_levels": args.attn_levels,
                 "mid_attention": args.mid_attention, "width": args.width, "depth": args.depth,
                 "border": args.border}
    cfg = TrainConfig(arch=args.arch, net_options={k: v for k, v in overrides.items() if v is not None},
                      steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                      lr_schedule=args.lr_schedule, lr_min_ratio=args.lr_min_ratio,
                      grad_clip=args.grad_clip, ema_halflife_kimg=args.ema_halflife_kimg,
                      p_mean=args.p_mean, p_std=args.p_std, uniform_fraction=args.uniform_fraction,
                      sigma_min=args.sigma_min, sigma_max=args.sigma_max, sigma_data=args.sigma_data, skip=args.skip,
                      conditional=args.conditional, seed=args.seed, checkpoint_every=args.checkpoint_every,
                      log_every=args.log_every)
    change = tuple(f.strip().replace("-", "_") for f in args.change.split(",") if f.strip())
    model = train(x, out=args.out, labels=y, config=cfg, resume=args.resume, change=change, init=args.init,
                  progress=not args.no_progress, device=args.device, data_name=args.data)
    hist = model.training_["history"]
    print(json.dumps({"out": args.out, "arch": args.arch, "steps": args.steps,
                      "final_loss": hist[-1][1] if hist else None}))
    return 0
