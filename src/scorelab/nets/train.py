"""Train an EDM-preconditioned denoiser (Karras et al. 2022, sec. 5 and appendix B.6); CPU or CUDA alike.

The pieces, each readable alone: the loss `EDMLoss` (nets/loss.py: λ(σ)‖D(x0 + σε, σ) − x0‖² with a σ mixture that
trains large σ too), the weights' average `EMA` (nets/ema.py: half-life in images, ramped up), the checkpoint
functions (nets/checkpoint.py: atomic safetensors, resumable), and here the configuration and the loop: Adam,
linear warm-up then cosine decay of the learning rate, gradient-norm clipping, a loss log.

Every batch is a pure function of (seed, step): the data order is a per-epoch permutation and the noise comes
from a generator seeded by the step, so a run resumed from a checkpoint continues exactly as if never stopped.
Checkpoints are written atomically every `checkpoint_every` steps. `init=` warm-starts a new run from a saved
model's weights (a fresh optimiser and schedule: continuing a model whose run directory is gone).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._checks import check_data, check_fraction, check_positive_int
from .checkpoint import CHECKPOINT, CKPT_KIND, CONFIG, MODEL, load_checkpoint, read_checkpoint, read_init, \
    remove_stale, save_checkpoint
from .ema import EMA
from .loss import EDMLoss

__all__ = ["TrainConfig", "train", "CHECKPOINT", "MODEL", "CONFIG", "CKPT_KIND", "EDMLoss", "EMA"]

# Fields that may change when resuming: they do not change what is computed at a given step.
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "log_every")
# Fields a resumed run may change on purpose (`change=`, CLI `--change`): a new optimisation stage on the same
# network and data, e.g. decaying the learning rate or lengthening the EMA after a constant-rate phase.
STAGE_FIELDS = ("lr", "warmup", "lr_schedule", "lr_min_ratio", "grad_clip", "ema_halflife_kimg", "ema_rampup")


@dataclass
class TrainConfig:
    """Every option of a training run (saved in the checkpoint; a resumed run must agree on all but
    `steps`, `checkpoint_every`, `log_every` and the STAGE_FIELDS it names in `change`)."""

    arch: str = "unet-small"
    net_options: dict = field(default_factory=dict)   # overrides of the arch preset (channels, num_blocks, ...)
    steps: int = 10_000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 200                                 # steps of linear learning-rate warm-up
    lr_schedule: str = "cosine"                       # "cosine" (to lr·lr_min_ratio at `steps`) or "constant"
    lr_min_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_halflife_kimg: float = 20.0
    ema_rampup: float = 0.1                           # half-life ≤ ema_rampup × images seen so far
    p_mean: float = -1.2
    p_std: float = 1.2
    uniform_fraction: float = 0.25
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float | None = None                   # None: the data's standard deviation
    skip: str = "edm"                                 # "gaussian": D = D_Gauss(x, σ) + c_out·F (see nets/precond.py)
    conditional: bool = False
    label_dropout: float = 0.1                        # conditional: fraction of labels replaced by "no label"
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50

    def validate(self) -> "TrainConfig":
        from . import ARCHS

        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}; got {self.arch!r}")
        if not isinstance(self.net_options, dict):
            raise TypeError(f"net_options must be a dict; got {type(self.net_options).__name__}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            setattr(self, name, check_positive_int(getattr(self, name), name=name))
        self.warmup = check_positive_int(self.warmup, name="warmup", minimum=0)
        self.seed = check_positive_int(self.seed, name="seed", minimum=0)
        for name in ("lr", "grad_clip", "ema_halflife_kimg", "ema_rampup", "p_std", "sigma_min"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0; got {v!r}")
        if not self.sigma_max > self.sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min={self.sigma_min}; got {self.sigma_max}")
        from .precond import SKIPS

        if self.skip not in SKIPS:
            raise ValueError(f"skip must be one of {SKIPS}; got {self.skip!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant'; got {self.lr_schedule!r}")
        check_fraction(self.lr_min_ratio, name="lr_min_ratio")
        check_fraction(self.uniform_fraction, name="uniform_fraction")
        check_fraction(self.label_dropout, name="label_dropout")
        if self.sigma_data is not None and not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise ValueError(f"sigma_data must be a finite number > 0 or None; got {self.sigma_data!r}")
        return self

    def learning_rate(self, step: int) -> float:
        """lr · min(1, (step+1)/warmup) · [cosine: r + (1−r)(1 + cos(π·progress))/2 after warm-up]."""
        lr = self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup else self.lr
        if self.lr_schedule == "cosine" and step >= self.warmup:
            progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
            lr *= self.lr_min_ratio + (1 - self.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return lr

    def loss(self) -> EDMLoss:
        """The loss this configuration trains with (`sigma_data` must be set)."""
        return EDMLoss(self.p_mean, self.p_std, self.sigma_data, uniform_fraction=self.uniform_fraction,
                       sigma_min=self.sigma_min, sigma_max=self.sigma_max,
                       label_dropout=self.label_dropout)

    def ema(self, model) -> EMA:
        return EMA(model, halflife_kimg=self.ema_halflife_kimg, rampup=self.ema_rampup)


def _fingerprint(data: torch.Tensor, labels) -> dict:
    d = data.to(torch.float64)
    fp = {"n": int(data.shape[0]), "shape": list(data.shape[1:]), "sum": round(float(d.sum()), 6),
          "sum_sq": round(float((d ** 2).sum()), 6)}
    if labels is not None:
        fp["labels_sum"] = int(labels.long().sum())
    return fp


class _BatchOrder:
    """Batch `step` = samples [step·B, (step+1)·B) of the concatenated per-epoch permutations (seeded by epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.b, self.seed, self._epoch, self._perm = n, batch_size, seed, None, None

    def _perm_of(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def __call__(self, step: int) -> torch.Tensor:
        out, start = [], step * self.b
        while sum(len(o) for o in out) < self.b:
            epoch, j = divmod(start, self.n)
            take = min(self.b - sum(len(o) for o in out), self.n - j)
            out.append(self._perm_of(epoch)[j:j + take])
            start += take
        return torch.cat(out)


def _train_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def _same_fingerprint_value(a, b) -> bool:
    """Float sums agree to 1e-9 relative: their last digits depend on the reduction order (thread count)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return a == b


def _check_resume(saved: dict, new: dict, saved_fp: dict, new_fp: dict, change=()) -> None:
    defaults = dataclasses.asdict(TrainConfig())   # fields added since the checkpoint was written: their default
    for key in sorted(set(saved) | set(new)):
        if key in RESUMABLE_FIELDS or key in change:
            continue
        if saved.get(key, defaults.get(key)) != new.get(key):
            hint = f"; pass change=({key!r},) (--change {key}) to start a new stage" if key in STAGE_FIELDS else ""
            raise ValueError(f"cannot resume: config field {key!r} differs (checkpoint has {saved.get(key)!r}, "
                             f"this run has {new.get(key)!r}){hint}")
    diff = [k for k in sorted(set(saved_fp) | set(new_fp))
            if not _same_fingerprint_value(saved_fp.get(k), new_fp.get(k))]
    if diff:
        raise ValueError(f"cannot resume: field 'data' differs from the checkpoint's data ({', '.join(diff)})")




class _LossLog:
    """Mean loss, images/s and learning rate over each `every` steps (and the last): history rows
    [step, loss, img/s], shown on the progress bar."""

    def __init__(self, history: list, every: int, last: int, bar):
        self.history, self.every, self.last, self.bar = history, every, last, bar
        self.window, self.t0 = [], time.perf_counter()

    def add(self, step: int, loss: float, batch_size: int, lr: float) -> None:
        self.window.append(loss)
        if len(self.window) == self.every or step + 1 == self.last:
            now = time.perf_counter()
            img_s = len(self.window) * batch_size / (now - self.t0)
            self.history.append([step + 1, round(sum(self.window) / len(self.window), 5), round(img_s, 1)])
            self.bar.set_postfix(loss=f"{self.history[-1][1]:.4f}", img_s=f"{img_s:.0f}", lr=f"{lr:.2e}")
            self.window, self.t0 = [], now


def _check_labels(labels, data: torch.Tensor, cfg: TrainConfig):
    if not cfg.conditional:
        return None
    if labels is None:
        raise ValueError("labels must be given when conditional=True")
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.shape[0] != data.shape[0] or (labels < 0).any():
        raise ValueError(f"labels must be {data.shape[0]} non-negative ints; got shape {tuple(labels.shape)}")
    return labels


def _resume_into(out: Path, model, ema, opt, meta: dict, cfg: TrainConfig, change: tuple, init) -> None:
    """Load `out`'s checkpoint into the run after checking it is the same run (ValueError naming the field)."""
    tensors, saved = read_checkpoint(out)
    _check_resume(saved["train"], meta["train"], saved["data"], meta["data"], change)
    if init is not None and (saved.get("init") or {}).get("sha256") != meta["init"]["sha256"]:
        raise ValueError(f"cannot resume: field 'init' differs (checkpoint started from "
                         f"{(saved.get('init') or {}).get('path')!r}, this run names {str(init)!r})")
    meta["init"] = saved.get("init")
    stages = list(saved.get("stages", []))
    changed = {k: [saved["train"].get(k), meta["train"][k]] for k in change if saved["train"].get(k) != meta["train"][k]}
    if changed:
        stages.append({"step": saved["step"], "changed": changed})
    meta["stages"] = stages
    load_checkpoint(tensors, model, ema, opt)
    meta.update(step=saved["step"], wall_seconds=saved["wall_seconds"], history=saved["history"])
    meta["train"]["steps"] = cfg.steps


def train(data, *, out=None, labels=None, config: TrainConfig | None = None, resume: bool = False,
          change=(), init=None, progress: bool = True, device=None, data_name: str | None = None, **options):
    """Train a denoiser on `data` [N, *shape] (images in [-1, 1] or vectors); return the EMA model (eval mode).

    `config` or keyword `options` (fields of TrainConfig). With `out`, checkpoints go to that directory; with
    `resume=True` training continues from `out/checkpoint.safetensors` when present (the config must match,
    except steps / checkpoint_every / log_every; a mismatch raises ValueError naming the field). `change` names
    fields of STAGE_FIELDS (learning rate, its schedule, clipping, EMA length) that this resumed run sets anew:
    a new stage, recorded in the checkpoint's `stages`. `init` (a model directory or .safetensors of the same arch)
    starts the weights and EMA from that model instead of random ones; recorded as `init` (path, sha256) in the
    checkpoint and config.json. A resumed run ignores `init` unless it names a different file (ValueError).
    `device` (default CPU; e.g. "cuda") is where the network lives; each batch's random draws are made on the CPU
    from the step's generator, so a run gives the same batches on any device."""
    from .._io import progress_bar

    from . import arch_config, build

    cfg = dataclasses.replace(config or TrainConfig(), **options) if options else (config or TrainConfig())
    cfg.validate()
    change = (change,) if isinstance(change, str) else tuple(change)
    bad = [c for c in change if c not in STAGE_FIELDS]
    if bad:
        raise ValueError(f"change may only name {', '.join(STAGE_FIELDS)}; got {', '.join(map(repr, bad))}")
    data = check_data(data, name="data", min_samples=2)
    labels = _check_labels(labels, data, cfg)
    if cfg.sigma_data is None:
        cfg.sigma_data = round(float(data.to(torch.float64).std()), 4)
    model_cfg = {**arch_config(cfg.arch, **cfg.net_options), "shape": list(data.shape[1:]),
                 "sigma_data": cfg.sigma_data, "n_classes": int(labels.max()) + 1 if labels is not None else 0}
    if cfg.skip != "edm":
        model_cfg["skip"] = cfg.skip

    torch.manual_seed(cfg.seed)
    model = build(model_cfg).to(torch.device(device or "cpu"))
    device = next(model.parameters()).device
    if cfg.skip == "gaussian":
        from ..models.gaussian import Gaussian

        model.set_gaussian(Gaussian.fit(data))
    ema = cfg.ema(build(model_cfg).to(device))
    ema.model.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    loss_fn = cfg.loss()
    meta = {"train": _train_dict(cfg), "data": _fingerprint(data, labels), "data_name": data_name, "step": 0,
            "wall_seconds": 0.0, "history": []}
    if init is not None:
        weights, meta["init"] = read_init(init, model_cfg)
        model.load_state_dict(weights)
        ema.model.load_state_dict(weights)
    out = Path(out) if out is not None else None
    if out is not None:
        remove_stale(out)
        if (out / CHECKPOINT).exists():
            if not resume:
                raise ValueError(f"out {str(out)!r} already holds a checkpoint; pass resume=True (--resume) to "
                                 "continue it or choose another directory")
            _resume_into(out, model, ema.model, opt, meta, cfg, change, init)

    has_dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    order = _BatchOrder(data.shape[0], cfg.batch_size, cfg.seed)
    start = meta["step"]
    bar = progress_bar(range(start, cfg.steps), initial=start, total=cfg.steps, enabled=progress, desc="train",
                       unit="step", dynamic_ncols=True)
    log, t_last = _LossLog(meta["history"], cfg.log_every, cfg.steps, bar), time.perf_counter()
    model.train()
    for step in bar:
        lr = cfg.learning_rate(step)
        for group in opt.param_groups:
            group["lr"] = lr
        seed = cfg.seed * 1_000_003 + step
        idx = order(step)
        x0 = data[idx].to(device)
        y = labels[idx].to(device) if labels is not None else None
        with _seeded_dropout(seed) if has_dropout else contextlib.nullcontext():
            loss = loss_fn(model, x0, y, generator=torch.Generator().manual_seed(seed)).flatten(1).mean(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(model, images=(step + 1) * x0.shape[0], batch_size=x0.shape[0])
        log.add(step, loss.item(), x0.shape[0], lr)
        if out is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            now = time.perf_counter()
            meta["wall_seconds"] += now - t_last
            t_last = now
            meta["step"] = step + 1
            save_checkpoint(out, model, ema.model, opt, meta)
    bar.close()
    ema.model.training_ = {"steps": cfg.steps, "history": meta["history"]}
    return ema.model.eval()


@contextlib.contextmanager
def _seeded_dropout(seed: int):
    """Dropout masks a function of the step: the global generator seeded inside a fork (restored after)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
