"""Class-conditional analytic models: one fitted model per class beside the pooled one.

`Model.fit(data, labels=y)` (or `Model(data, labels=y)`) fits the pooled model on all of `data` as usual and, in
`class_models_`, the same model on each class's rows alone. The denoiser then takes `class_labels`:

    D(x, σ, class_labels=None)   the pooled (unconditional) model
    D(x, σ, class_labels=y)      row i from the model of class y[i] (an int applies to every row)

so the conditional model of class c *is* the model fitted on that class's subset (exact, by construction), and
every closed form of the model (e.g. the Gaussian's PF-ODE trajectory, hence teleportation) holds per class.
"""
from __future__ import annotations

import numpy as np
import torch

from .._checks import check_tensor

__all__ = ["ByClass", "class_indices"]


def class_indices(labels, n: int) -> dict[int, np.ndarray]:
    """{label: row indices} for integer `labels` of length n (a tensor, array or sequence of ints >= 0)."""
    try:
        y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    except (TypeError, ValueError):
        raise TypeError(f"labels must be a sequence of ints; got {type(labels).__name__}") from None
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"labels must have shape [N] = [{n}] (one label per row of data); got shape {y.shape}")
    if y.dtype.kind not in "iu" and not (y.dtype.kind in "fb" and np.all(np.asarray(y, dtype=float) % 1 == 0)):
        raise TypeError(f"labels must be integers; got dtype {y.dtype}")
    y = y.astype(np.int64)
    if (y < 0).any():
        raise ValueError(f"labels must be >= 0; got minimum {int(y.min())}")
    return {int(c): np.flatnonzero(y == c) for c in np.unique(y)}


def _rows(value, rows: torch.Tensor, batch: int):
    """A per-row argument (σ as [B], a tensor with B rows) restricted to `rows`; anything else passes unchanged."""
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
        return value[rows.to(value.device)]
    return value


class ByClass:
    """Mixin: per-sample dispatch of `class_labels` to the per-class models in `class_models_`."""

    classes_: tuple[int, ...] = ()
    class_models_: dict = {}

    @property
    def conditional(self) -> bool:
        """Whether the model was fitted with labels."""
        return bool(self.class_models_)

    def _set_classes(self, models: dict) -> None:
        self.class_models_ = {int(c): m for c, m in sorted(models.items())}
        self.classes_ = tuple(self.class_models_)

    def _labels(self, class_labels, batch: int) -> torch.Tensor | None:
        """class_labels as a [batch] long tensor (None → None), checked against the fitted classes."""
        if class_labels is None:
            return None
        if not self.conditional:
            raise ValueError(f"class_labels given but this {type(self).__name__} was fitted without labels; fit it "
                             f"with labels=... for a class-conditional model")
        try:
            y = torch.as_tensor(class_labels)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"class_labels must be an int or a [B] tensor of ints; got {class_labels!r}"[:200]) from None
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"class_labels must be integers; got dtype {y.dtype}")
        y = y.long().reshape(-1).cpu()
        if y.numel() == 1:
            y = y.expand(batch)
        if y.numel() != batch:
            raise ValueError(f"class_labels must be one int or [B] = [{batch}] ints; got {y.numel()} values")
        unknown = sorted(set(y.tolist()) - set(self.classes_))
        if unknown:
            raise ValueError(f"class_labels must be among the fitted classes {list(self.classes_)}; got {unknown}")
        return y

    def _by_class(self, method: str, x: torch.Tensor, class_labels, *args, row_args: int = 1, batch_dim: int = 0,
                  **kwargs):
        """Call `method` of each class's model on its rows of x (rows along `batch_dim` of the result); None when
        class_labels is None (the caller then uses the pooled model). The first `row_args` of `args` are per-row
        (σ as [B]: restricted to the class's rows); the others pass unchanged (e.g. a σ grid)."""
        if class_labels is None:        # the pooled model, which checks x itself
            return None
        check_tensor(x, name="x", finite=False)     # a list or an int tensor: the error names x
        labels = self._labels(class_labels, x.shape[0])
        out = None
        for c in labels.unique().tolist():
            rows = (labels == c).nonzero().reshape(-1)
            sub_args = [_rows(a, rows, x.shape[0]) if i < row_args else a for i, a in enumerate(args)]
            res = getattr(self.class_models_[c], method)(x[rows.to(x.device)], *sub_args, **kwargs)
            if out is None:
                shape = list(res.shape)
                shape[batch_dim] = x.shape[0]
                out = res.new_empty(shape)
            index = [slice(None)] * res.ndim
            index[batch_dim] = rows.to(res.device)
            out[tuple(index)] = res
        return out

    def _sample_by_class(self, n: int, class_labels, sigma, generator, like: torch.Tensor) -> torch.Tensor:
        """n draws, row i from the model of class class_labels[i] (`sample` of each class's model); `like`: a
        tensor of the model's dtype and device."""
        labels = self._labels(class_labels, n)
        out = like.new_empty(n, *self.shape_)
        for c in labels.unique().tolist():
            rows = (labels == c).nonzero().reshape(-1)
            out[rows.to(out.device)] = self.class_models_[c].sample(len(rows), sigma, generator)
        return out
