"""The one training loop of the project: `fit`, `evaluate`, `predict_logits`, knowledge distillation.

Data are `TensorData` held on the device (moved once); each epoch draws a seeded permutation and slices it
into batches, with augmentation done batched on the device. No DataLoader, no per-step host syncs on CUDA.

    cfg = TrainConfig(epochs=30, device="auto")
    result = fit(model, splits.train, splits.val, cfg, on_epoch=lambda e, acc: trial.report(acc, e))
    test_acc = evaluate(model, splits.test)
"""
from __future__ import annotations

import math
import random
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from archs.errors import UserError

from .data import AUGMENTS, TensorData

__all__ = ["TrainConfig", "FitResult", "TrainingDiverged", "fit", "evaluate", "predict_logits",
           "distillation_loss", "resolve_device", "set_seed", "augment_batch"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "none")

# On CUDA the loss is checked for NaN/inf on the host only every this many steps (and at the end of each epoch);
# the first bad step is recorded on the device, so the reported step is exact while the hot loop never waits.
CUDA_NAN_CHECK_EVERY = 32


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite at `epoch`, `step` (both counted from 1)."""

    def __init__(self, epoch: int, step: int, loss: float = float("nan"), lr: float | None = None):
        self.epoch, self.step, self.loss, self.lr = int(epoch), int(step), float(loss), lr
        at_lr = f" (lr {lr:.3g})" if lr is not None else ""
        super().__init__(f"training diverged: loss became {loss} at epoch {self.epoch}, step {self.step} of the "
                         f"epoch{at_lr}; lower the learning rate or set grad_clip")

    def __reduce__(self):
        return (type(self), (self.epoch, self.step, self.loss, self.lr))


# --------------------------------------------------------------------------------------------------------------------
# Devices and seeds
# --------------------------------------------------------------------------------------------------------------------
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """"auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:N" (or "mps") -> torch.device.

    UserError for an unknown string or an accelerator that this machine does not have.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    s = str(spec).strip().lower()
    if not _DEVICE_RE.match(s):
        raise UserError(f"invalid device {spec!r}; use auto, cpu, cuda or cuda:N")
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError("device 'mps' requested but MPS is not available on this machine")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise UserError(f"device {spec!r} requested but CUDA is not available on this machine; use --device cpu")
    dev = torch.device(s)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def set_seed(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and every CUDA device)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """How to train. `amp` only takes effect on CUDA (bf16 autocast when supported, else fp16 with GradScaler)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"          # "adamw" | "sgd" (momentum 0.9, nesterov)
    schedule: str = "cosine"          # "cosine" (per step, to 0) | "none"
    warmup_epochs: float = 0.0        # linear warmup before the cosine
    label_smoothing: float = 0.0
    augment: str = "none"             # "none" | "crop" | "crop_flip"
    amp: bool = True
    device: str = "cpu"
    seed: int = 0
    grad_clip: float | None = None    # max global grad norm

    def __post_init__(self) -> None:
        def bad(what: str, v) -> UserError:
            return UserError(f"invalid training setting {what}={v!r}")

        if isinstance(self.epochs, bool) or int(self.epochs) != self.epochs or self.epochs < 0:
            raise bad("epochs", self.epochs) from None
        if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise bad("batch_size", self.batch_size) from None
        self.epochs, self.batch_size = int(self.epochs), int(self.batch_size)
        if not _finite(self.lr) or self.lr <= 0:
            raise bad("lr", self.lr)
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", self.weight_decay)
        if not _finite(self.warmup_epochs) or self.warmup_epochs < 0:
            raise bad("warmup_epochs", self.warmup_epochs)
        if not _finite(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", self.label_smoothing)
        if self.grad_clip is not None and (not _finite(self.grad_clip) or self.grad_clip <= 0):
            raise bad("grad_clip", self.grad_clip)
        self.optimizer = str(self.optimizer).lower()
        self.schedule = str(self.schedule).lower()
        self.augment = str(self.augment).lower()
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.augment not in AUGMENTS:
            raise UserError(f"unknown augmentation {self.augment!r}; choose one of: {', '.join(AUGMENTS)}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed:
            raise bad("seed", self.seed)
        self.seed = int(self.seed)
        if not isinstance(self.device, (str, torch.device)):
            raise bad("device", self.device)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["device"] = str(d["device"])
        return d


def _finite(v) -> bool:
    try:
        return not isinstance(v, bool) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


@dataclass
class FitResult:
    """What `fit` measured. Epochs in `history` are numbered from 1; `seconds` includes validation,
    `images_per_second` counts training steps only."""

    history: list[dict] = field(default_factory=list)   # epoch, train_loss, val_acc, lr, seconds
    val_acc: float | None = None                        # after the last epoch (None without val data)
    best_val_acc: float | None = None
    seconds: float = 0.0
    images_per_second: float = 0.0


# --------------------------------------------------------------------------------------------------------------------
# Losses and augmentation
# --------------------------------------------------------------------------------------------------------------------
def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton et al. 2015: alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, y).

    The KL term is averaged over the batch (`batchmean`); T² keeps its gradients on the scale of the CE term.
    """
    if not temperature > 0:
        raise UserError(f"distillation temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"distillation alpha must be in [0, 1], got {alpha}")
    s = student_logits.float()
    ce = F.cross_entropy(s, targets, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    t = teacher_logits.detach().float()
    kd = F.kl_div(F.log_softmax(s / temperature, dim=1), F.log_softmax(t / temperature, dim=1),
                  reduction="batchmean", log_target=True) * (temperature * temperature)
    if alpha == 1:
        return kd
    return alpha * kd + (1.0 - alpha) * ce


def crop_pad(size: int) -> int:
    """Translation range of the "crop" augmentation for size×size images: 4 at 32, 1 at 8."""
    return max(1, int(size) // 8)


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Batched augmentation on x's device. "crop": every image shifted by its own random offset of up to
    `crop_pad(H)` pixels in each direction, uncovered pixels 0 (the per-channel mean, data being normalized);
    "crop_flip": the same plus a horizontal flip with probability 1/2."""
    if mode == "none" or x.shape[0] == 0:
        return x
    b, c, h, w = x.shape
    p = crop_pad(min(h, w))
    dev = x.device
    xp = F.pad(x, (p, p, p, p))
    hp, wp = h + 2 * p, w + 2 * p
    off = torch.randint(0, 2 * p + 1, (2, b), device=dev, generator=generator)
    rows = off[0].view(b, 1, 1) + torch.arange(h, device=dev).view(1, h, 1)   # (b, h, 1)
    cols = off[1].view(b, 1, 1) + torch.arange(w, device=dev).view(1, 1, w)   # (b, 1, w)
    if mode == "crop_flip":
        flip = torch.rand(b, device=dev, generator=generator) < 0.5
        cols = torch.where(flip.view(b, 1, 1), cols.flip(2), cols)
    idx = (rows * wp + cols).view(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(xp.reshape(b, c, hp * wp), 2, idx).view(b, c, h, w)


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------
def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on biases and norm parameters (1-D), as timm does
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    if not decay and not no_decay:
        raise UserError("the model has no trainable parameters")
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "none":
            return 1.0
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


# --------------------------------------------------------------------------------------------------------------------
# fit / evaluate
# --------------------------------------------------------------------------------------------------------------------
def fit(model: nn.Module, train: TensorData, val: TensorData | None, cfg: TrainConfig | None = None, *,
        teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.9,
        on_epoch: Callable[[int, float], None] | None = None, progress: bool = False,
        desc: str = "train") -> FitResult:
    """Train `model` in place on `train`; evaluate on `val` after every epoch.

    With `teacher`, the loss is `distillation_loss(student, teacher, y, temperature, alpha)`; the teacher runs in
    eval mode without gradients on the same augmented batch. `on_epoch(epoch, val_acc)` (epoch counted from 1)
    is called after each epoch when val data are given; whatever it raises (e.g. optuna.TrialPruned) propagates.
    NaN/inf loss raises `TrainingDiverged` (checked every step on CPU, every `CUDA_NAN_CHECK_EVERY` steps on
    CUDA with the exact step recorded). The global RNGs are seeded from `cfg.seed`; the model is left in eval mode.
    """
    cfg = cfg or TrainConfig()
    _check_fit_args(train, teacher, temperature, alpha)
    device = resolve_device(cfg.device)
    if val is not None and len(val) == 0:
        val = None
    set_seed(cfg.seed)
    t_start = time.perf_counter()
    run = _start_run(model, train, val, cfg, device, teacher, temperature, alpha)
    result = FitResult()
    train_seconds = 0.0
    bar = _progress_bar(cfg.epochs, desc) if progress else None
    try:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            train_loss = _train_epoch(run, epoch)
            train_seconds += time.perf_counter() - t0
            val_acc = evaluate(model, run.val, device=device, amp=cfg.amp) if run.val is not None else None
            _record_epoch(result, bar, epoch, train_loss, val_acc, run.opt.param_groups[0]["lr"], t0)
            if on_epoch is not None and val_acc is not None:
                on_epoch(epoch, val_acc)
        if cfg.epochs == 0 and run.val is not None:
            result.val_acc = result.best_val_acc = evaluate(model, run.val, device=device, amp=cfg.amp)
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    result.seconds = time.perf_counter() - t_start
    result.images_per_second = (len(run.train) * cfg.epochs / train_seconds) if train_seconds > 0 else 0.0
    return result


def _check_fit_args(train: TensorData, teacher: nn.Module | None, temperature: float, alpha: float) -> None:
    if len(train) == 0:
        raise UserError("cannot train on an empty data set")
    if teacher is not None:
        if not temperature > 0:
            raise UserError(f"distillation temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"distillation alpha must be in [0, 1], got {alpha}")


@dataclass
class _Run:
    """What `fit` keeps across epochs: device copies of the data, optimizer, schedule, scaler and generators."""

    model: nn.Module
    train: TensorData
    val: TensorData | None
    cfg: TrainConfig
    device: torch.device
    teacher: nn.Module | None      # None when not distilling (or alpha == 0)
    temperature: float
    alpha: float
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR | None
    params: list[torch.Tensor]
    perm_gen: torch.Generator
    aug_gen: torch.Generator | None
    n_batches: int


def _start_run(model: nn.Module, train: TensorData, val: TensorData | None, cfg: TrainConfig, device: torch.device,
               teacher: nn.Module | None, temperature: float, alpha: float) -> _Run:
    """Move model and data to the device once; make the optimizer, warm-up/cosine schedule and seeded generators."""
    model.to(device)
    train_d = train.to(device)
    val_d = val.to(device) if val is not None else None
    use_teacher = teacher is not None and alpha > 0
    if use_teacher:
        teacher.to(device).eval()
    amp_dtype = _amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    n_batches = max(1, math.ceil(len(train_d) / cfg.batch_size))
    total_steps = cfg.epochs * n_batches
    opt = _make_optimizer(model, cfg)
    warmup = min(total_steps, int(round(cfg.warmup_epochs * n_batches)))
    sched = None
    if cfg.schedule != "none" or warmup:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total_steps, warmup, cfg.schedule))
    perm_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1) if cfg.augment != "none" else None
    params = [p for g in opt.param_groups for p in g["params"]]
    return _Run(model, train_d, val_d, cfg, device, teacher if use_teacher else None, temperature, alpha, amp_dtype,
                scaler, opt, sched, params, perm_gen, aug_gen, n_batches)


def _progress_bar(epochs: int, desc: str):
    from archs.cli import progress

    return progress(total=epochs, desc=desc, unit="epoch", dynamic_ncols=True, leave=True)


def _train_epoch(run: _Run, epoch: int) -> float:
    """One epoch over a seeded permutation in evenly sized batches; the mean training loss per example."""
    model, device, data = run.model, run.device, run.train
    model.train()
    n = len(data)
    # evenly sized batches (no tiny last batch to upset BatchNorm), none larger than batch_size
    perm = torch.randperm(n, generator=run.perm_gen).to(device, non_blocking=True)
    batches = torch.tensor_split(perm, run.n_batches)
    on_cuda = device.type == "cuda"
    loss_host = 0.0
    if on_cuda:  # per-step losses stay on the device: one copy kernel per step, no host sync
        step_losses = torch.zeros(len(batches), device=device)
        checked = 0
    for step, idx in enumerate(batches):
        xb = data.x.index_select(0, idx)
        yb = data.y.index_select(0, idx)
        if run.aug_gen is not None:
            xb = augment_batch(xb, run.cfg.augment, run.aug_gen)
        loss = _batch_loss(run, xb, yb)
        if on_cuda:
            step_losses[step] = loss.detach()
            if (step + 1) % CUDA_NAN_CHECK_EVERY == 0:
                _check_finite(step_losses, checked, step + 1, epoch, run.opt)
                checked = step + 1
        else:  # on CPU reading the loss costs nothing: check every step
            lv = loss.item()
            if not math.isfinite(lv):
                raise TrainingDiverged(epoch, step + 1, lv, run.opt.param_groups[0]["lr"])
            loss_host += lv * idx.numel()
        _optimizer_step(run, loss)
    if on_cuda:
        _check_finite(step_losses, checked, len(batches), epoch, run.opt)
        sizes = torch.tensor([b.numel() for b in batches], device=device, dtype=torch.float32)
        loss_host = float((step_losses * sizes).sum().item())  # the epoch's one sync
    return loss_host / n


def _batch_loss(run: _Run, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, or the distillation loss against the teacher's logits on the same batch (under autocast)."""
    with _autocast(run.device, run.amp_dtype):
        out = run.model(xb)
        if run.teacher is not None:
            with torch.no_grad():
                t_out = run.teacher(xb)
            return distillation_loss(out, t_out, yb, run.temperature, run.alpha, run.cfg.label_smoothing)
        return F.cross_entropy(out.float(), yb, label_smoothing=run.cfg.label_smoothing)


def _optimizer_step(run: _Run, loss: torch.Tensor) -> None:
    """Backward (scaled under fp16 autocast), optional gradient clipping, optimizer and schedule step."""
    opt, clip = run.opt, run.cfg.grad_clip
    opt.zero_grad(set_to_none=True)
    if run.scaler.is_enabled():
        run.scaler.scale(loss).backward()
        if clip is not None:
            run.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(run.params, clip)
        run.scaler.step(opt)
        run.scaler.update()
    else:
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(run.params, clip)
        opt.step()
    if run.sched is not None:
        run.sched.step()


def _record_epoch(result: FitResult, bar, epoch: int, train_loss: float, val_acc: float | None, lr: float,
                  t0: float) -> None:
    """Append the epoch's history row, track the last and best validation accuracy, update the progress bar."""
    result.history.append({"epoch": epoch, "train_loss": train_loss, "val_acc": val_acc, "lr": lr,
                           "seconds": time.perf_counter() - t0})
    if val_acc is not None:
        result.val_acc = val_acc
        result.best_val_acc = val_acc if result.best_val_acc is None else max(result.best_val_acc, val_acc)
    if bar is not None:
        post = {"loss": f"{train_loss:.4f}"}
        if val_acc is not None:
            post["val_acc"] = f"{100 * val_acc:.2f}%"
        bar.set_postfix(post)
        bar.update(1)


def _check_finite(step_losses: torch.Tensor, lo: int, hi: int, epoch: int, opt) -> None:
    """Raise TrainingDiverged at the first non-finite loss among steps lo..hi-1 (one host sync)."""
    chunk = step_losses[lo:hi]
    bad = ~torch.isfinite(chunk)
    if bool(bad.any().item()):
        i = int(bad.nonzero()[0, 0].item())
        raise TrainingDiverged(epoch, lo + i + 1, float(chunk[i].item()), opt.param_groups[0]["lr"])


@torch.no_grad()
def predict_logits(model: nn.Module, data: TensorData, batch_size: int = 1024, device: torch.device | str | None = None,
                   amp: bool = True) -> torch.Tensor:
    """Logits (float32, N×classes) of `model` in eval mode, returned on the device `data` lives on.
    `device` defaults to the model's; the model is moved there and its train/eval mode restored afterwards."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    dev = resolve_device(device) if device is not None else _model_device(model)
    model.to(dev)
    was_training = model.training
    model.eval()
    amp_dtype = _amp_dtype(dev, amp)
    outs = []
    try:
        for xb in torch.split(data.x, batch_size):
            with _autocast(dev, amp_dtype):
                outs.append(model(xb.to(dev, non_blocking=True)).float())
    finally:
        model.train(was_training)
    if not outs:
        return torch.zeros((0, 0), device=data.x.device)
    return torch.cat(outs).to(data.x.device)


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, batch_size: int = 1024, device: torch.device | str | None = None,
             amp: bool = True) -> float:
    """Top-1 accuracy in [0, 1] of `model` (eval mode, no grad) on `data`."""
    if len(data) == 0:
        raise UserError("cannot evaluate on an empty data set")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    dev = resolve_device(device) if device is not None else _model_device(model)
    model.to(dev)
    was_training = model.training
    model.eval()
    amp_dtype = _amp_dtype(dev, amp)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    try:
        for xb, yb in zip(torch.split(data.x, batch_size), torch.split(data.y, batch_size)):
            with _autocast(dev, amp_dtype):
                out = model(xb.to(dev, non_blocking=True))
            correct += (out.argmax(dim=1) == yb.to(dev, non_blocking=True)).sum()
    finally:
        model.train(was_training)
    return correct.item() / len(data)
