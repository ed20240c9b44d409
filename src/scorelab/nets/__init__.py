"""Neural denoisers trained on the CPU: EDM-preconditioned MLP and U-Net, training loop, reference models.

    net = sl.load_model("models/fashion-mnist-unet")    # σ-space denoiser D(x, σ), EMA weights, eval mode
    model = sl.nets.train(x, out="runs/fm", arch="unet-small", steps=20_000)
"""
from __future__ import annotations

import inspect
from pathlib import Path

from .._io import load_state

__all__ = ["ARCHS", "build", "load_model", "model_sha256", "train", "TrainConfig", "EDMPrecond", "from_diffusers"]

KIND = "edm-net"

# Named architectures: `scorelab train --arch NAME`. "unet-small" is the shipped Fashion-MNIST reference model.
ARCHS = {
    "mlp": {"net": "mlp", "width": 128, "depth": 4},
    "mlp-large": {"net": "mlp", "width": 256, "depth": 6},
    "unet-tiny": {"net": "unet", "channels": [16, 32, 32], "num_blocks": 1, "attn_levels": []},
    "unet-small": {"net": "unet", "channels": [32, 64, 64], "num_blocks": 1, "attn_levels": [2]},
    "unet-medium": {"net": "unet", "channels": [48, 96, 96], "num_blocks": 2, "attn_levels": [2]},
    # local, convolution-only (receptive field 17×17, zero padding): the network ELS is meant to predict
    "convnet-local": {"net": "local", "width": 48, "num_blocks": 3, "border": "zero"},
}


def arch_config(arch: str, **overrides) -> dict:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}; got {arch!r}")
    cfg = dict(ARCHS[arch])
    for k, v in overrides.items():
        if v is not None:
            cfg[k] = list(v) if isinstance(v, tuple) else v
    return cfg


def build(config: dict):
    """An (untrained) EDMPrecond from a model config {net, shape, sigma_data, n_classes[, skip], **net options}
    (skip "gaussian": the Gaussian-skip denoiser, its statistics zero until set_gaussian or load_state_dict)."""
    from .localnet import LocalConvNet
    from .mlp import MLP
    from .precond import EDMPrecond
    from .unet import UNet

    cfg = dict(config)
    kind, shape = cfg.pop("net"), tuple(cfg.pop("shape"))
    sigma_data, n_classes = cfg.pop("sigma_data"), int(cfg.pop("n_classes", 0))
    skip = cfg.pop("skip", "edm")
    nets = {  # kind: (class, sample dimensions, what that data must be)
        "mlp": (MLP, 1, "arch 'mlp' needs vector data [N, d]"),
        "unet": (UNet, 3, "a U-Net arch needs image data [N, C, H, W]"),
        "local": (LocalConvNet, 3, "a convnet arch needs image data [N, C, H, W]"),
    }
    if kind not in nets:
        raise ValueError(f"config 'net' must be 'mlp', 'unet' or 'local'; got {kind!r}")
    cls, ndim, needs = nets[kind]
    takes = set(inspect.signature(cls).parameters) - {"dim", "in_channels", "n_classes"}
    if set(cfg) - takes:
        raise ValueError(f"net option(s) {sorted(set(cfg) - takes)} do not apply to a {kind!r} network "
                         f"(its options: {sorted(takes)})")
    if len(shape) != ndim:
        raise ValueError(f"{needs}; got sample shape {shape}")
    net = cls(shape[0], n_classes=n_classes, **cfg)
    return EDMPrecond(net, sigma_data=sigma_data, shape=shape, n_classes=n_classes, config=config, skip=skip)


def model_file(path, name: str = "path") -> Path:
    """The weights file of a saved model: `path` itself, or `path`/model.safetensors for a directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{name} {str(path)!r} does not exist (expected a model directory or .safetensors)")
    return path


def model_sha256(path) -> str:
    """sha256 of a saved model's weights file: which network a result or a warm start came from."""
    import hashlib

    return hashlib.sha256(model_file(path).read_bytes()).hexdigest()


def load_model(path, device=None, dtype=None):
    """A trained denoiser from a directory holding model.safetensors (+ config.json), or from the file itself.

    Returns an eval-mode EDMPrecond with frozen (EMA) weights: D(x, σ[, class_labels]), `shape_`, `sigma_data`."""
    tensors, _, config = load_state(model_file(path), kind=KIND)
    model = build(config["model"])
    model.load_state_dict(tensors)
    model = model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


def save_model(model, path, extra: dict | None = None) -> None:
    """Write `model`'s weights + config (the format `load_model` reads); `extra` goes into the header too."""
    from .._io import save_state

    save_state(path, model.state_dict(), kind=KIND, config={"model": model.config, **(extra or {})})


def __getattr__(name):
    if name == "from_diffusers":
        from .diffusers import from_diffusers

        return from_diffusers
    raise AttributeError(f"module 'scorelab.nets' has no attribute {name!r}")


# Imported last: binds the name `train` to the function (not the submodule scorelab.nets.train).
from .precond import EDMPrecond  # noqa: E402
from .train import TrainConfig, train  # noqa: E402
