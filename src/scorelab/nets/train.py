"""Train an EDM-preconditioned denoiser on the CPU (Karras et al. 2022, sec. 5 and appendix B.6).

Loss: E_{x0, σ, ε} λ(σ) ‖D(x0 + σε, σ) − x0‖², λ(σ) = (σ² + σ_d²) / (σ σ_d)².
σ distribution: a mixture — a fraction `uniform_fraction` of each batch log-uniform on [sigma_min, sigma_max], the
rest log-normal ln σ ~ N(p_mean, p_std²) — so that large σ (≳ 8), which the log-normal alone almost never
draws, is trained too. Adam, linear warm-up then cosine decay of the learning rate, gradient-norm clipping,
EMA of the weights with a half-life in images (EDM's `ema_halflife_kimg`, ramped up over the first images).

Every batch is a pure function of (seed, step): the data order is a per-epoch permutation and the noise comes
from a generator seeded by the step, so a run resumed from a checkpoint continues exactly as if never stopped.
Checkpoints (`checkpoint.safetensors`: weights, EMA, Adam state; `model.safetensors` + `config.json`: the EMA
denoiser `load_model` reads) are written atomically every `checkpoint_every` steps. `init=` warm-starts a new run
from a saved model's weights (a fresh optimiser and schedule: continuing a model whose run directory is gone).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._checks import check_data, check_fraction, check_positive_int
from .._io import load_state, save_state, write_json
from .precond import edm_loss_weight

__all__ = ["TrainConfig", "train", "CHECKPOINT", "MODEL"]

CHECKPOINT, MODEL, CONFIG = "checkpoint.safetensors", "model.safetensors", "config.json"
CKPT_KIND = "edm-train-checkpoint"
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


def _sample_sigma(cfg: TrainConfig, b: int, g: torch.Generator) -> torch.Tensor:
    """First round(b·uniform_fraction) entries log-uniform on [sigma_min, sigma_max], the rest log-normal."""
    n_u = round(b * cfg.uniform_fraction)
    lo, hi = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
    log_u = lo + (hi - lo) * torch.rand(n_u, generator=g, dtype=torch.float64)
    log_n = cfg.p_mean + cfg.p_std * torch.randn(b - n_u, generator=g, dtype=torch.float64)
    return torch.cat([log_u, log_n]).exp()


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


def _save(out: Path, model, ema, opt, meta: dict) -> None:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    for i, st in opt.state_dict()["state"].items():
        tensors.update({f"opt/{i}/{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    info = {"steps": meta["step"], "images": meta["step"] * meta["train"]["batch_size"],
            "wall_seconds": round(meta["wall_seconds"], 1), "final_loss": meta["history"][-1][1] if meta["history"] else None}
    from . import save_model

    save_model(ema, out / MODEL, extra={"training": info, "init": meta.get("init")})   # loadable at any time
    write_json(out / CONFIG, {"model": ema.config, "train": meta["train"], "data": meta["data"], "training": info,
                              "stages": meta.get("stages", []), "init": meta.get("init"), "history": meta["history"]})
    save_state(out / CHECKPOINT, tensors, kind=CKPT_KIND, config=meta)     # written last: the resume point


def _init_record(init, model_cfg: dict) -> tuple[dict, dict]:
    """Weights of the saved model `init` (directory or .safetensors) and the provenance record of the warm start."""
    from . import KIND, model_file, model_sha256

    path = model_file(init, name="init")
    tensors, _, saved = load_state(path, kind=KIND)
    src = saved["model"]
    for key in sorted(set(src) | set(model_cfg)):
        if src.get(key) != model_cfg.get(key):
            raise ValueError(f"init model's config field {key!r} is {src.get(key)!r}; this run's is "
                             f"{model_cfg.get(key)!r} (same arch, net options, data shape and sigma_data needed)")
    digest = model_sha256(path)
    return tensors, {"path": str(init), "sha256": digest, "training": saved.get("training")}


def train(data, *, out=None, labels=None, config: TrainConfig | None = None, resume: bool = False,
          change=(), init=None, progress: bool = True, device=None, data_name: str | None = None, **options):
    """Train a denoiser on `data` [N, *shape] (images in [-1, 1] or vectors); return the EMA model (eval mode).

    `config` or keyword `options` (fields of TrainConfig). With `out`, checkpoints go to that directory; with
    `resume=True` training continues from `out/checkpoint.safetensors` when present (the config must match,
    except steps / checkpoint_every / log_every; a mismatch raises ValueError naming the field). `change` names
    fields of STAGE_FIELDS (learning rate, its schedule, clipping, EMA length) that this resumed run sets anew:
    a new stage, recorded in the checkpoint's `stages`. `init` (a model directory or .safetensors of the same arch)
    starts the weights and EMA from that model instead of random ones; recorded as `init` (path, sha256) in the
    checkpoint and config.json. A resumed run ignores `init` unless it names a different file (ValueError)."""
    from tqdm.auto import tqdm

    from . import arch_config, build

    cfg = dataclasses.replace(config or TrainConfig(), **options) if options else (config or TrainConfig())
    cfg.validate()
    change = (change,) if isinstance(change, str) else tuple(change)
    bad = [c for c in change if c not in STAGE_FIELDS]
    if bad:
        raise ValueError(f"change may only name {', '.join(STAGE_FIELDS)}; got {', '.join(map(repr, bad))}")
    data = check_data(data, name="data", min_samples=2)
    if cfg.conditional:
        if labels is None:
            raise ValueError("labels must be given when conditional=True")
        labels = torch.as_tensor(labels).long().reshape(-1)
        if labels.shape[0] != data.shape[0] or (labels < 0).any():
            raise ValueError(f"labels must be {data.shape[0]} non-negative ints; got shape {tuple(labels.shape)}")
    else:
        labels = None
    device = torch.device(device or "cpu")
    if cfg.sigma_data is None:
        cfg.sigma_data = round(float(data.to(torch.float64).std()), 4)
    n_classes = int(labels.max()) + 1 if labels is not None else 0
    model_cfg = {**arch_config(cfg.arch, **cfg.net_options), "shape": list(data.shape[1:]),
                 "sigma_data": cfg.sigma_data, "n_classes": n_classes}
    if cfg.skip != "edm":
        model_cfg["skip"] = cfg.skip

    torch.manual_seed(cfg.seed)
    model = build(model_cfg).to(device)
    if cfg.skip == "gaussian":
        from ..models.gaussian import Gaussian

        model.set_gaussian(Gaussian.fit(data))
    ema = build(model_cfg).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    has_dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    meta = {"train": _train_dict(cfg), "data": _fingerprint(data, labels), "data_name": data_name, "step": 0,
            "wall_seconds": 0.0, "history": []}
    if init is not None:
        weights, meta["init"] = _init_record(init, model_cfg)
        model.load_state_dict(weights)
        ema.load_state_dict(weights)

    out = Path(out) if out is not None else None
    if out is not None and out.is_dir():
        for stale in out.glob(".*.tmp"):      # left by a process killed while writing: the target is intact
            stale.unlink(missing_ok=True)
    if out is not None and (out / CHECKPOINT).exists():
        if not resume:
            raise ValueError(f"out {str(out)!r} already holds a checkpoint; pass resume=True (--resume) to continue "
                             "it or choose another directory")
        tensors, _, saved = load_state(out / CHECKPOINT, kind=CKPT_KIND)
        _check_resume(saved["train"], meta["train"], saved["data"], meta["data"], change)
        if init is not None and (saved.get("init") or {}).get("sha256") != meta["init"]["sha256"]:
            raise ValueError(f"cannot resume: field 'init' differs (checkpoint started from "
                             f"{(saved.get('init') or {}).get('path')!r}, this run names {str(init)!r})")
        meta["init"] = saved.get("init")
        stages = list(saved.get("stages", []))
        changed = {k: [saved["train"].get(k), meta["train"][k]] for k in change
                   if saved["train"].get(k) != meta["train"][k]}
        if changed:
            stages.append({"step": saved["step"], "changed": changed})
        meta["stages"] = stages
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema/")})
        state = {}
        for k, v in tensors.items():
            if k.startswith("opt/"):
                _, i, name = k.split("/")
                state.setdefault(int(i), {})[name] = v.to(device)
        opt_sd = opt.state_dict()
        opt_sd["state"] = state
        opt.load_state_dict(opt_sd)
        meta.update(step=saved["step"], wall_seconds=saved["wall_seconds"], history=saved["history"])
        meta["train"]["steps"] = cfg.steps

    params, ema_params = list(model.parameters()), list(ema.parameters())
    order = _BatchOrder(data.shape[0], cfg.batch_size, cfg.seed)
    start = meta["step"]
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="train",
               unit="step", dynamic_ncols=True)
    window, t_window, t_last = [], time.perf_counter(), time.perf_counter()
    model.train()
    for step in bar:
        lr = cfg.learning_rate(step)
        for group in opt.param_groups:
            group["lr"] = lr
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = order(step)
        x0 = data[idx].to(device)
        b = x0.shape[0]
        sigma = _sample_sigma(cfg, b, g)
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        y = None
        if labels is not None:
            y = labels[idx].clone()
            y[torch.rand(b, generator=g) < cfg.label_dropout] = n_classes   # "no label"
            y = y.to(device)
        sigma_x = sigma.to(device=device, dtype=x0.dtype)
        x_noisy = x0 + sigma_x.view(-1, *[1] * (x0.ndim - 1)) * noise.to(device)
        if has_dropout:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed * 1_000_003 + step)             # dropout masks: a function of the step
                denoised = model(x_noisy, sigma_x, y)
        else:
            denoised = model(x_noisy, sigma_x, y)
        weight = edm_loss_weight(sigma, model.sigma_data).to(device=device, dtype=x0.dtype)
        loss = (weight * ((denoised - x0) ** 2).flatten(1).mean(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():                                              # EMA, half-life in images
            halflife = min(cfg.ema_halflife_kimg * 1000, (step + 1) * b * cfg.ema_rampup)
            beta = 0.5 ** (b / max(halflife, 1e-8))
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - beta)
        window.append(loss.item())
        if len(window) == cfg.log_every or step + 1 == cfg.steps:
            now = time.perf_counter()
            img_s = len(window) * b / (now - t_window)
            meta["history"].append([step + 1, round(sum(window) / len(window), 5), round(img_s, 1)])
            bar.set_postfix(loss=f"{meta['history'][-1][1]:.4f}", img_s=f"{img_s:.0f}", lr=f"{lr:.2e}")
            window, t_window = [], now
        if out is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            now = time.perf_counter()
            meta["wall_seconds"] += now - t_last
            t_last = now
            meta["step"] = step + 1
            _save(out, model, ema, opt, meta)
    bar.close()
    ema.training_ = {"steps": cfg.steps, "history": meta["history"]}
    return ema.eval()
