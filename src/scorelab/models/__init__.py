"""Closed-form denoisers fitted to data. Each is a callable D(x, σ) and saves to safetensors + JSON header.

Every model is built in Python with `Model.fit(data, ...)` (returns a fitted instance; for the non-parametric
models, which keep the data, it is the same as the constructor); learned attributes end in `_`. The models know
nothing of the command line: `scorelab fit KIND` maps its options onto these calls in `scorelab/commands/fit.py`.
The shared mathematics has one home each: the Gaussian closed form in `gaussian.py` (`gaussian_denoiser`), the
streamed softmax posterior in `softmax.py` (`SoftmaxSums`)."""
from __future__ import annotations

from importlib import import_module

from .._io import load_state

# kind (as written in the file header and used by `scorelab fit KIND`) → "module:Class"
REGISTRY = {
    "gaussian": "scorelab.models.gaussian:Gaussian",
    "gmm": "scorelab.models.gmm:GMM",
    "empirical": "scorelab.models.empirical:Empirical",
    "knn": "scorelab.models.knn:KNN",
    "cfdm": "scorelab.models.cfdm:CFDM",
    "els": "scorelab.models.local:ELS",
    "pspc": "scorelab.models.local:PSPC",
    "wiener": "scorelab.models.local:Wiener",
}


def model_class(kind: str):
    if kind not in REGISTRY:
        raise ValueError(f"model kind must be one of {sorted(REGISTRY)}; got {kind!r}")
    module, cls = REGISTRY[kind].split(":")
    try:
        return getattr(import_module(module), cls)
    except (ImportError, AttributeError):
        raise ValueError(f"model kind {kind!r} is not available in this installation") from None


def available() -> list[str]:
    out = []
    for kind in REGISTRY:
        try:
            model_class(kind)
            out.append(kind)
        except ValueError:
            pass
    return out


def load(path, device=None):
    """Load any fitted model saved by `Model.save(path)`, dispatching on the file's header."""
    _, kind, _ = load_state(path)
    return model_class(kind).load(path, device=device)
