"""A cheap domain feature network: the penultimate layer of a small Fashion-MNIST CNN, for Fréchet distances.

Inception runs at 6–8 images/s on two cores; this network extracts features of ~1,500 images/s on one thread, so
wide sampler sweeps can compare Fréchet distances in its feature space (DESIGN.md, "Measuring FID differences
honestly") and keep Inception FID for the headline points. The shipped model is models/fashion-mnist-classifier
(its accuracy and training command are in its README).

    feats = sl.metrics.classifier_features(images)          # [N, 128] float32, images [N, 1, 28, 28] in [−1, 1]
    net = sl.metrics.ClassifierFeatures()                   # the same, reusable; net.sha1_ keys caches
    model = sl.metrics.train_classifier(x, y, epochs=3)     # → Classifier (eval mode); save_classifier(model, dir)

Architecture (`Classifier`, channels c = (32, 64, 128), 0.28 M parameters):

    28×28: conv3×3 1→c₀ → BN → ReLU → maxpool 2
    14×14: conv3×3 c₀→c₁ → BN → ReLU → conv3×3 c₁→c₁ → BN → ReLU → maxpool 2
     7×7 : conv3×3 c₁→c₂ → BN → ReLU → conv3×3 c₂→c₂ → BN → ReLU
           global average pool → features φ(x) ∈ ℝ^{c₂} (non-negative)  → linear c₂→10 (logits)

Inputs are quantised as an 8-bit PNG would store them (u = round((x + 1)·127.5), x ← u / 127.5 − 1), as for
Inception: Fashion-MNIST itself is 8-bit, so training and test images pass through unchanged.
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_positive_int
from .._io import load_state, save_state, write_json
from . import pixels

__all__ = ["Classifier", "ClassifierFeatures", "classifier_features", "train_classifier", "save_classifier",
           "load_classifier", "accuracy", "DEFAULT_PATH", "SHAPE"]

KIND = "classifier"
SHAPE = (1, 28, 28)
CHANNELS = (32, 64, 128)
MODEL, CONFIG = "model.safetensors", "config.json"
DEFAULT_PATH = Path(__file__).resolve().parents[3] / "models" / "fashion-mnist-classifier"
RETRAIN = "python -m bench.train_classifier --save models/fashion-mnist-classifier"


def check_images(images, *, name: str = "images") -> torch.Tensor:
    """Images [N, 1, 28, 28], floating, finite, N ≥ 1 (values are clamped to [−1, 1] later)."""
    return pixels.check_images(images, name=name, shape=SHAPE, what="Fashion-MNIST-sized images in [-1, 1]")


def quantize(images: torch.Tensor) -> torch.Tensor:
    """x ∈ [−1, 1] → round((x + 1)·127.5) / 127.5 − 1: the value an 8-bit PNG would hold (exact for Fashion-MNIST),
    with the pixel values u of `pixels.quantize` (the same as Inception's)."""
    return pixels.dequantize(pixels.quantize(images), images.dtype)


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Classifier(nn.Module):
    """Small CNN for [N, 1, 28, 28] images: `features(x)` → [N, channels[2]] (penultimate), `forward(x)` → logits."""

    def __init__(self, channels=CHANNELS, n_classes: int = 10):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 3 or min(channels) < 1:
            raise ValueError(f"channels must be 3 positive integers; got {channels}")
        n_classes = check_positive_int(n_classes, name="n_classes", minimum=2)
        c0, c1, c2 = channels
        self.body = nn.Sequential(
            *_conv(1, c0), nn.MaxPool2d(2),
            *_conv(c0, c1), *_conv(c1, c1), nn.MaxPool2d(2),
            *_conv(c1, c2), *_conv(c2, c2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c2, n_classes)
        self.config = {"net": "cnn", "channels": list(channels), "n_classes": n_classes, "shape": list(SHAPE)}

    @property
    def feature_dim(self) -> int:
        return self.config["channels"][-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _check_labels(labels, n: int, n_classes: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of class indices; got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape [{n}] (one per image); got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices; got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes - 1}]; got values in [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    return labels.long()


def train_classifier(images, labels, *, epochs: int = 3, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     augment: bool = True, channels=CHANNELS, n_classes: int = 10, progress: bool = True,
                     device=None) -> Classifier:
    """Train a `Classifier` on images [N, 1, 28, 28] in [−1, 1] and int labels [N]; returns it in eval mode.

    Adam (β = 0.9, 0.999), learning rate `lr` on a cosine from lr to 0 over all steps (the last partial batch
    of each epoch is dropped), cross-entropy. `augment=True` flips each image horizontally with probability ½.
    Reproducible: the initial weights, the shuffles and the flips all come from `seed` (global RNG untouched).
    The fitted model carries `train_info_` (options, steps, final loss, seconds)."""
    images = quantize(check_images(images))
    labels = _check_labels(labels, images.shape[0], check_positive_int(n_classes, name="n_classes", minimum=2))
    epochs = check_positive_int(epochs, name="epochs")
    batch_size = check_positive_int(batch_size, name="batch_size")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0; got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    n = images.shape[0]
    batch_size = min(batch_size, n)
    device = torch.device(device or "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(channels, n_classes).to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    per_epoch = n // batch_size
    total = epochs * per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    from .._io import progress_bar

    model.train()
    losses, t0, step = [], time.perf_counter(), 0
    bar = progress_bar(total=total, desc="classifier", unit="step", enabled=progress, leave=False)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        for i in range(per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = images[idx]
            if augment:
                f = flips[idx]
                x = torch.where(f[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x.to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
            bar.update(1)
    bar.close()
    model = model.eval().requires_grad_(False)
    tail = losses[-min(50, len(losses)):]
    model.train_info_ = dict(n_images=n, epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule="cosine",
                             optimizer="adam", seed=seed, augment="hflip" if augment else "none", steps=step,
                             final_loss=round(sum(tail) / len(tail), 5), seconds=round(time.perf_counter() - t0, 1),
                             threads=torch.get_num_threads())
    return model


@torch.inference_mode()
def _batched(fn, images: torch.Tensor, batch_size: int, device, width: int, dtype, progress: bool, desc: str):
    from .._io import progress_bar

    out = torch.empty(images.shape[0], width, dtype=dtype)
    starts = range(0, images.shape[0], batch_size)
    for i in progress_bar(starts, desc=desc, unit="batch", enabled=progress and len(starts) >= 2, leave=False):
        batch = quantize(images[i:i + batch_size].to(device=device, dtype=torch.float32))
        out[i:i + batch.shape[0]] = fn(batch).to(dtype).cpu()
    return out


def accuracy(model: Classifier, images, labels, *, batch_size: int = 500) -> float:
    """Fraction of `images` whose arg-max logit is `labels`."""
    images = check_images(images)
    labels = _check_labels(labels, images.shape[0], model.config["n_classes"])
    device = next(model.parameters()).device
    logits = _batched(model.eval(), images, batch_size, device, model.config["n_classes"], torch.float32, False, "")
    return float((logits.argmax(1) == labels.cpu()).double().mean())


def save_classifier(model: Classifier, path, extra: dict | None = None) -> None:
    """Write `model` to `path`: a directory (→ model.safetensors + config.json) or a `.safetensors` file.

    `extra` (e.g. {"test_accuracy": ...}) goes into the header and config.json beside the training info."""
    if not isinstance(model, Classifier):
        raise TypeError(f"model must be a Classifier; got {type(model).__name__}")
    path = Path(path)
    info = {"train": getattr(model, "train_info_", None), **(extra or {})}
    config = {"model": model.config, **info}
    if path.suffix == ".safetensors":
        save_state(path, model.state_dict(), kind=KIND, config=config)
        return
    save_state(path / MODEL, model.state_dict(), kind=KIND, config=config)
    write_json(path / CONFIG, config)


def load_classifier(path=None, device=None) -> Classifier:
    """A saved `Classifier` (eval mode, frozen) from a directory holding model.safetensors or the file itself;
    default: the shipped models/fashion-mnist-classifier. `config_` holds the saved header (accuracy, training)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if path.is_dir():
        path = path / MODEL
    if not path.exists():
        how = f" (train it with: {RETRAIN})" if path.parent == DEFAULT_PATH else ""
        raise FileNotFoundError(f"path {str(path)!r} does not exist (expected a classifier directory or "
                                f".safetensors){how}")
    tensors, _, config = load_state(path, kind=KIND)
    cfg = config.get("model", {})
    model = Classifier(cfg.get("channels", CHANNELS), cfg.get("n_classes", 10))
    model.load_state_dict(tensors)
    model.config_ = config
    model.path_ = path
    return model.eval().requires_grad_(False).to(device=device)


def _state_sha1(model: Classifier) -> str:
    h = hashlib.sha1(repr(model.config).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ClassifierFeatures:
    """Callable feature extractor: images [N, 1, 28, 28] in [−1, 1] → float32 penultimate features [N, D].

    From `path` (a saved classifier; default the shipped models/fashion-mnist-classifier) or an in-memory
    `model`. Batched (`batch_size`), on `device`. `sha1_` hashes the config and weights (to key cached
    statistics: equal weights, equal key, wherever they were loaded from)."""

    def __init__(self, path=None, *, model: Classifier | None = None, device=None, batch_size: int = 500):
        if model is not None and path is not None:
            raise ValueError("give path or model, not both")
        self.device = torch.device(device or "cpu")
        self.batch_size = check_positive_int(batch_size, name="batch_size")
        if model is None:
            model = load_classifier(path, device=self.device)
        elif not isinstance(model, Classifier):
            raise TypeError(f"model must be a Classifier; got {type(model).__name__}")
        self.net_ = model.eval().requires_grad_(False).to(self.device)
        self.path = getattr(model, "path_", None)
        self.feature_dim = model.feature_dim
        self._sha1 = None

    @property
    def sha1_(self) -> str:
        if self._sha1 is None:
            self._sha1 = _state_sha1(self.net_)
        return self._sha1

    def __call__(self, images: torch.Tensor, *, progress: bool = False, desc: str = "classifier") -> torch.Tensor:
        images = check_images(images)
        return _batched(self.net_.features, images, self.batch_size, self.device, self.feature_dim, torch.float32,
                        progress, desc)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted class indices [N] (int64)."""
        images = check_images(images)
        logits = _batched(self.net_, images, self.batch_size, self.device, self.net_.config["n_classes"],
                          torch.float32, False, "")
        return logits.argmax(1)


_DEFAULT: dict = {}


def default_extractor(path=None, device=None, batch_size: int = 500) -> ClassifierFeatures:
    """A process-wide ClassifierFeatures per (path, device, batch size): the weights are read once."""
    key = (str(Path(path).resolve()) if path is not None else None, str(torch.device(device or "cpu")), batch_size)
    if key not in _DEFAULT:
        _DEFAULT[key] = ClassifierFeatures(path, device=device, batch_size=batch_size)
    return _DEFAULT[key]


def classifier_features(images: torch.Tensor, path=None, *, batch_size: int = 500, device=None,
                        progress: bool = False) -> torch.Tensor:
    """Penultimate-layer features [N, D] (float32) of images [N, 1, 28, 28] in [−1, 1], by the classifier at `path`
    (default: the shipped models/fashion-mnist-classifier)."""
    return default_extractor(path, device, batch_size)(images, progress=progress)
