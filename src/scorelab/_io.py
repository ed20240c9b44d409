"""Atomic file writing, the safetensors + JSON-header format of fitted models and checkpoints, progress bars."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

FORMAT = "scorelab"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside `path`; on success rename it over `path` (never half-written)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    except OSError as e:   # name the file asked for, not the temporary one or a parent
        raise OSError(f"cannot write {str(path)!r} ({e.strerror or e})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_state(path, tensors: dict, *, kind: str, config: dict | None = None) -> None:
    """Write `tensors` (name → tensor) with a JSON header {format, kind, config} to a safetensors file, atomically."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "kind": kind, "config": json.dumps(config or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_state(path, *, kind: str | None = None, device=None):
    """Read a file written by `save_state`: returns (tensors, kind, config)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} does not exist or is not a file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types on corrupt files
        raise ValueError(f"path {str(path)!r} is not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"path {str(path)!r} is not a scorelab file (no scorelab header)")
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"path {str(path)!r} holds a {meta.get('kind')!r}, expected a {kind!r}")
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta.get("kind"), json.loads(meta.get("config", "{}"))


def progress_bar(iterable=None, *, enabled: bool = True, file=None, **kwargs):
    """The project's one way to make a tqdm bar: drawn on `file` (stderr) only when `enabled` and that stream is a
    terminal (or a notebook runs tqdm.auto's widget). Redirected to a file or a pipe (CI logs, `2> log`) the bar's
    carriage-return redraws read as blank lines, so it is disabled there. Redraws at most every 0.5 s."""
    import sys

    from tqdm.auto import tqdm

    stream = sys.stderr if file is None else file
    isatty = getattr(stream, "isatty", None)
    notebook = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)
    shown = enabled and (notebook or callable(isatty) and bool(isatty()))
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, file=stream, disable=not shown, **kwargs)
