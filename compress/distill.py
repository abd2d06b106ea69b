"""Knowledge distillation as a stage: the student trained on the teacher's soft targets (Hinton et al. 2015)
through the one training loop, `training.loop.fit(teacher=...)` (loss: `training.loop.distillation_loss`).

    teacher, info = load_teacher("zoo:resnet20", splits, student.spec.input_shape, out_dir="results/x/compress")
    result = distill(student, teacher, splits.train, splits.val, TrainConfig(epochs=30), temperature=4, alpha=0.9)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from archs.errors import UserError
from training.data import Splits, TensorData
from training.loop import FitResult, TrainConfig, fit

from .modeldir import load_model

__all__ = ["distill", "load_teacher", "check_teacher"]


def distill(student: nn.Module, teacher: nn.Module, train: TensorData, val: TensorData | None,
            cfg: TrainConfig, temperature: float = 4.0, alpha: float = 0.9, progress: bool = False,
            on_epoch=None) -> FitResult:
    """Train `student` in place with alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE."""
    if teacher is None:
        raise UserError("distillation needs a teacher model")
    return fit(student, train, val, cfg, teacher=teacher.eval(), temperature=temperature, alpha=alpha,
               on_epoch=on_epoch, progress=progress, desc="distill")


def check_teacher(teacher: nn.Module, input_shape, num_classes: int, where: str = "teacher") -> nn.Module:
    """The teacher must take the student's input and produce `num_classes` logits."""
    shape = (2, *tuple(input_shape)[-3:])
    p = next(teacher.parameters(), None)
    try:
        with torch.no_grad():
            out = teacher.eval()(torch.zeros(shape, device=p.device if p is not None else "cpu"))
    except Exception as e:  # noqa: BLE001 - a mismatched teacher is a user mistake
        raise UserError(f"{where} cannot take the student's input {tuple(shape[1:])}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:150]}") from None
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise UserError(f"{where} outputs shape {tuple(out.shape[1:])}, the student needs {num_classes} class logits")
    return teacher


def load_teacher(ref: str, splits: Splits, input_shape, out_dir: str | Path | None = None, epochs: int = 30,
                 seed: int = 0, device: str = "cpu", quiet: bool = True, lr: float | None = None,
                 batch_size: int = 64, dataset: str | None = None) -> tuple[nn.Module, dict]:
    """A teacher from a model directory (spec.json + model.pt, or a float compress stage folder) or `zoo:NAME`.

    A zoo network is built for the student's input size and trained first (the `compress.train` code path),
    cached in OUT_DIR/teacher_<name>/ and reused when that folder holds a teacher trained the same way.
    """
    size = int(tuple(input_shape)[-1])
    if isinstance(ref, str) and ref.startswith("zoo:"):
        from .train import train_model

        name = ref[4:]
        d = Path(out_dir or ".") / f"teacher_{name}"
        want = {"source": ref, "dataset": dataset or splits.name, "seed": seed, "epochs": epochs, "resolution": size}
        if (d / "metrics.json").is_file():
            try:
                m = json.loads((d / "metrics.json").read_text())
                if all(m.get(k) == v for k, v in want.items()):
                    teacher, _, metrics = load_model(d)
                    return check_teacher(teacher, input_shape, splits.num_classes, ref), {**metrics, "dir": str(d),
                                                                                          "reused": True}
            except (UserError, json.JSONDecodeError, OSError):
                pass
        teacher, metrics = train_model(ref, splits=splits, epochs=epochs, out=d, seed=seed, lr=lr,
                                       batch_size=batch_size, resolution=size, device=device, quiet=quiet,
                                       dataset=dataset or splits.name)
        return check_teacher(teacher.cpu(), input_shape, splits.num_classes, ref), {**metrics, "dir": str(d),
                                                                                    "reused": False}
    teacher, _, metrics = load_model(ref)
    return check_teacher(teacher, input_shape, splits.num_classes, f"teacher {ref}"), {**metrics, "dir": str(ref)}
