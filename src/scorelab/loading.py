"""One way to turn what a user names into a denoiser: a fitted analytic model file (`scorelab fit`, `.save`) or a
trained network (a directory or checkpoint, `scorelab train`); a callable is returned as it is."""
from __future__ import annotations

from pathlib import Path

__all__ = ["load_denoiser"]


def load_denoiser(spec, device=None, dtype=None, *, name: str = "model"):
    """The denoiser `spec` names: a callable (returned as is), a saved analytic model (`scorelab.models.load`) or
    a trained network (`scorelab.nets.load_model`), on `device`, cast to `dtype` when given. Errors name `name`
    (e.g. "--model" for the command line) and the path."""
    if callable(spec):
        return spec
    from ._io import load_state

    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{name} {str(path)!r} does not exist (expected a network directory or a model file)")
    kind = None
    if path.is_file():
        _, kind, _ = load_state(path)
    if path.is_dir() or kind == "edm-net":
        from .nets import load_model

        try:
            return load_model(path, device=device, dtype=dtype)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"{name} {str(path)!r}: {e}") from None
    from .models import load

    model = load(path, device=device)
    if dtype is not None and hasattr(model, "to"):
        model = model.to(device=device, dtype=dtype)
    return model
