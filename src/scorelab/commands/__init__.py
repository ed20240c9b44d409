"""Sub-commands of the `scorelab` CLI: one module each, with `register(subparsers)`; shared options here."""
from __future__ import annotations


def add_device_args(p) -> None:
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="computation dtype")


def add_data_args(p, *, required: bool = True) -> None:
    p.add_argument("--data", required=required, metavar="NAME|PATH",
                   help="data set name (see `scorelab data list`) or a path (.npy/.npz/folder of images)")
    p.add_argument("--split", default="train", choices=["train", "test"], help="data split (default: train)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N samples")


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]
