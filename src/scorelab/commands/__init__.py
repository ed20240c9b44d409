"""Sub-commands of the `scorelab` CLI: one module each, with `register(subparsers)`; shared options here."""
from __future__ import annotations


def add_device_args(p) -> None:
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="computation dtype")


def available_devices() -> list[str]:
    """The torch devices this machine can run on: cpu, then cuda:0..k-1 and mps where present."""
    import torch

    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(name: str, *, option: str = "--device") -> str:
    """`name` if torch can run on that device here, else ValueError naming `option` and the available devices
    (a string torch does not parse, `cuda` without CUDA, `cuda:3` on a one-GPU machine)."""
    import torch

    available = available_devices()
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is not None:
        if dev.type == "cpu":
            return name
        if dev.type == "cuda" and f"cuda:{dev.index or 0}" in available or dev.type == "mps" and "mps" in available:
            return name
    raise ValueError(f"{option} {name!r} is not a device this machine can use (available: {', '.join(available)})")


def check_steps(value: int, *, option: str = "--steps") -> int:
    """A grid's number of steps, 1 ..= schedules.MAX_STEPS, checked before a grid is built (errors name `option`)."""
    from ..schedules import MAX_STEPS

    if not 1 <= value <= MAX_STEPS:
        raise ValueError(f"{option} must be an integer in [1, {MAX_STEPS}]; got {value}")
    return value


def add_data_args(p, *, required: bool = True, split: str = "train") -> None:
    p.add_argument("--data", required=required, metavar="NAME|PATH",
                   help="data set name (see `scorelab data list`) or a path (.npy/.npz/folder of images)")
    p.add_argument("--split", default=split, choices=["train", "test"], help=f"data split (default: {split})")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N samples")


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]
