"""The stage runner: every compression stage applied in order, measured, saved and tabulated.

One row per stage (original first) in `OUT/stages.csv` and a printed table; one folder per stage
(`OUT/NN_<label>/`) holding its model and metrics.json, reloadable with `load_stage`.

Columns (units in the names): stage, kind, test_acc ([0, 1]), val_acc, mflops (fvcore MACs / 1e6), params,
nonzero_params, size_bytes (bytes on disk of the stage's artifact: fp32 state_dict, Huffman file or quantized
ONNX), compression_ratio (original size_bytes / size_bytes), latency_b1_ms and latency_b64_ms (median CPU ms,
archs.latency), seconds (wall time of the stage's work: pruning, fine-tuning, encoding...), artifact, dir.

The stage folders' files (spec.json, structure.json, model.pt) are written and read by `compress.modeldir`.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from archs import count, latency
from archs.cli import progress
from archs.errors import UserError
from archs.export import onnx_io
from archs.io import atomic_write_json, atomic_write_text
from archs.preprocess import PREPROCESSING_KEY, Preprocessing
from training.data import Splits, TensorData
from training.loop import TrainConfig, evaluate, fit

from . import prune as P
from .lowrank import lowrank as lowrank_factorize
from .modeldir import (apply_structure, describe_structure, load_model, load_stage, save_stage_model,
                       structure_changed, write_spec_files)

__all__ = ["STAGE_KINDS", "COLUMNS", "Stage", "CompressConfig", "describe_structure", "apply_structure",
           "structure_changed", "save_stage_model", "load_stage", "load_model", "accuracy", "measure",
           "run_stages", "format_table", "finetune", "StageOutput"]

STAGE_KINDS = ("prune", "lowrank", "distill", "share", "huffman", "quantize", "export")
QUANT_MODES = ("int8", "fp16", "dynamic")
EXPORT_FORMATS = ("tflite",)
COLUMNS = ["stage", "kind", "test_acc", "val_acc", "mflops", "params", "nonzero_params", "size_bytes",
           "compression_ratio", "latency_b1_ms", "latency_b64_ms", "seconds", "artifact", "dir"]
#: columns only the --export tflite stage fills (bytes; NaN elsewhere): TFLM's arena (total = head + tail), the
#: .tflite file, the analytic `archs.memory` figures beside them, and the test-accuracy change fp32 -> int8
MCU_COLUMNS = ["int8_acc_change", "arena_bytes", "arena_head_bytes", "arena_tail_bytes", "flash_bytes",
               "arena_bytes_est", "arena_head_bytes_est", "flash_bytes_est"]
_STAGE_DIR = re.compile(r"^\d{2}_[A-Za-z0-9_.+-]+$")


# ----------------------------------------------------------------------------------------------------------------
# Stages and configuration
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One stage: kind in STAGE_KINDS and its value (prune ratio or quality, lowrank energy or
    {"mflops": target}, share bits, quantize mode; None for distill and huffman)."""

    kind: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise UserError(f"unknown stage {self.kind!r}; choose from {', '.join(STAGE_KINDS)}")

    def label(self, cfg: "CompressConfig | None" = None) -> str:
        v = self.value
        if self.kind == "prune":
            method = cfg.prune_method if cfg else "magnitude"
            return f"prune_{method}{float(v):g}"
        if self.kind == "lowrank":
            return f"lowrank_{float(v['mflops']):g}mflops" if isinstance(v, dict) else f"lowrank_e{float(v):g}"
        if self.kind == "share":
            return f"share_{int(v)}bit"
        if self.kind == "quantize":
            return f"quantize_{v}"
        if self.kind == "export":
            return f"export_{v}"
        return self.kind


@dataclass
class CompressConfig:
    """Everything the stages share: fine-tuning, pruning, distillation and measurement settings."""

    finetune_epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    device: str = "cpu"
    seed: int = 0
    prune_method: str = "magnitude"
    channel_importance: str = "l1"
    iterative: int = 1
    max_drop: float | None = None          # percentage points of validation accuracy
    teacher: nn.Module | None = None
    temperature: float = 4.0
    alpha: float = 0.9
    distill_epochs: int = 10
    distill_from_scratch: bool = False
    calib_images: int = 256
    quiet: bool = True
    measure_latency: bool = True
    tflm_arena_bytes: int | None = None    # --export tflite: arena to run TFLM in (None: archs.memory's figure)

    def train_config(self, epochs: int, augment: str = "none") -> TrainConfig:
        return TrainConfig(epochs=epochs, lr=self.lr, batch_size=self.batch_size, weight_decay=self.weight_decay,
                           augment=augment, device=self.device, seed=self.seed)


def validate_stages(stages: list[Stage], cfg: CompressConfig, has_teacher: bool | None = None) -> None:
    """Check the values of the stages and settings before any work is done. `has_teacher` tells whether a
    teacher will be there for --distill (default: whether cfg.teacher is set)."""
    if has_teacher is None:
        has_teacher = cfg.teacher is not None
    for st in stages:
        if st.kind == "prune":
            P.check_ratio(cfg.prune_method, st.value)
        elif st.kind == "lowrank":
            v = st.value
            if isinstance(v, dict):
                if not (isinstance(v.get("mflops"), (int, float)) and v["mflops"] > 0):
                    raise UserError(f"--lowrank-mflops must be positive, got {v.get('mflops')!r}")
            elif not (isinstance(v, (int, float)) and 0 < float(v) <= 1):
                raise UserError(f"--lowrank takes the fraction of singular-value energy kept, in (0, 1], got {v!r}")
        elif st.kind == "share":
            if isinstance(st.value, bool) or not isinstance(st.value, int) or not 1 <= st.value <= 16:
                raise UserError(f"--share-bits must be an integer in 1..16, got {st.value!r}")
        elif st.kind == "quantize":
            if st.value not in QUANT_MODES:
                raise UserError(f"--quantize must be one of {', '.join(QUANT_MODES)}, got {st.value!r}")
        elif st.kind == "export":
            if st.value not in EXPORT_FORMATS:
                raise UserError(f"--export must be one of {', '.join(EXPORT_FORMATS)}, got {st.value!r}")
            from .tflite import require_mcu

            require_mcu()
        elif st.kind == "distill" and not has_teacher:
            raise UserError("--distill needs a teacher: add --distill-from TEACHER (model directory or zoo:NAME)")
    if cfg.iterative < 1:
        raise UserError(f"--iterative must be >= 1, got {cfg.iterative}")
    if cfg.max_drop is not None and (not math.isfinite(cfg.max_drop) or cfg.max_drop < 0):
        raise UserError(f"--max-drop must be >= 0 points, got {cfg.max_drop}")
    if cfg.finetune_epochs < 0 or cfg.distill_epochs < 0:
        raise UserError("epochs must be >= 0")
    if cfg.calib_images < 1:
        raise UserError(f"--calib-images must be >= 1, got {cfg.calib_images}")


# ----------------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(model, data: TensorData, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1]: `training.loop.evaluate` for modules, batched argmax for other callables."""
    if isinstance(model, nn.Module):
        return evaluate(model, data)
    correct = 0
    x, y = data.x.cpu(), data.y.cpu()
    for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size)):
        out = torch.as_tensor(model(xb))
        correct += int((out.argmax(1) == yb).sum().item())
    return correct / len(data)


def measure(model, test: TensorData, size_bytes: int, float_model: nn.Module | None = None,
            input_shape=None, val: TensorData | None = None, latency_on: bool = True) -> dict:
    """test accuracy, fvcore MFLOPs, params, non-zero params, size, CPU latency at batch 1 and 64.

    For a quantized model the MFLOPs and parameter counts are those of the float model it was made from
    (`float_model`): the same multiply-adds, done in int8/fp16.
    """
    fm = float_model if float_model is not None else model
    fm = fm.cpu().eval()
    if isinstance(model, nn.Module):
        model = model.cpu().eval()
    shape = input_shape or fm.spec.input_shape
    c = count(fm, shape)
    row = {"test_acc": accuracy(model, test), "val_acc": accuracy(model, val) if val is not None else None,
           "mflops": c.macs / 1e6, "params": c.params, "nonzero_params": P.nonzero_params(fm),
           "size_bytes": int(size_bytes)}
    if latency_on:
        row["latency_b1_ms"] = latency(model, shape, batch_size=1)
        row["latency_b64_ms"] = latency(model, shape, batch_size=64)
    else:
        row["latency_b1_ms"] = row["latency_b64_ms"] = float("nan")
    return row


# ----------------------------------------------------------------------------------------------------------------
# Stage implementations
# ----------------------------------------------------------------------------------------------------------------
def finetune(model: nn.Module, splits: Splits, cfg: CompressConfig, epochs: int | None = None, desc: str = "finetune"):
    """Fine-tune with the one training loop (`training.loop.fit`), distilling from cfg.teacher when set."""
    epochs = cfg.finetune_epochs if epochs is None else epochs
    return fit(model, splits.train, splits.val, cfg.train_config(epochs, splits.augment), teacher=cfg.teacher,
               temperature=cfg.temperature, alpha=cfg.alpha, progress=not cfg.quiet, desc=desc)


@dataclass
class StageOutput:
    """What one `_stage_*` function hands back to the runner: the model passed on, the artifact it wrote, and what
    is measured for its table row."""

    model: nn.Module                # the float model the next stage starts from
    details: dict                   # stage-specific record, kept in metrics.json
    fmt: str = "float"              # metrics.json "format": float, huffman or quantized
    artifact: Path | None = None    # the file whose size is measured (None: the saved model.pt)
    measured: Any = None            # what is measured (decoded or quantized model; None: `model`)
    float_model: nn.Module | None = None  # float model of a quantized one, for MFLOPs and params
    passes_model: bool = True       # False: an artifact made from the model, which the next stage gets unchanged
    shared_info: Any = None         # weight-sharing codebooks, for a following huffman stage
    seconds: float | None = None    # wall time of the work, when the stage measures it itself
    row: dict = field(default_factory=dict)  # extra table columns (MCU_COLUMNS) the stage measured


def _stage_prune(model, st: Stage, splits: Splits, cfg: CompressConfig, d: Path, state: "_RunState") -> StageOutput:
    baseline = evaluate(model, splits.val)
    steps = cfg.iterative
    log = []

    def ft(m):
        r = finetune(m, splits, cfg, desc=f"prune step {len(log) + 1}/{steps}")
        log.append(r.history)
        return r.val_acc

    model, history = P.iterative_prune(model, float(st.value), cfg.prune_method, steps, ft, baseline,
                                       cfg.max_drop, importance=cfg.channel_importance)
    accepted = [h for h in history if h["accepted"]]
    details = {"method": cfg.prune_method, "amount": float(st.value), "steps": steps, "max_drop_points": cfg.max_drop,
               "baseline_val_acc": baseline, "steps_history": history,
               "amount_reached": accepted[-1]["amount"] if accepted else 0.0,
               "stopped_early": len(accepted) < steps, "sparsity": P.sparsity(model),
               "layer_sparsity": P.layer_sparsity(model)}
    if cfg.prune_method == "threshold":
        details["quality"] = float(st.value)
    return StageOutput(_settled(model), details)


def _stage_lowrank(model, st: Stage, splits: Splits, cfg: CompressConfig, d: Path, state: "_RunState") -> StageOutput:
    v = st.value
    model = model.cpu()
    if isinstance(v, dict):
        plans = lowrank_factorize(model, target_mflops=float(v["mflops"]))
    else:
        plans = lowrank_factorize(model, energy=float(v))
    after = count(model).macs
    details = {"energy": None if isinstance(v, dict) else float(v),
               "target_mflops": float(v["mflops"]) if isinstance(v, dict) else None,
               "mflops_before_finetune": after / 1e6, "layers": [p.to_dict() for p in plans],
               "replaced": sum(p.replace for p in plans)}
    if isinstance(v, dict) and after > v["mflops"] * 1e6:
        details["note"] = (f"target {v['mflops']:g} MFLOPs not reachable by factorizing Linear and k>1 convs "
                           f"(reached {after / 1e6:.4g})")
    if details["replaced"]:
        details["finetune"] = finetune(model, splits, cfg, desc="lowrank finetune").history
    return StageOutput(_settled(model), details)


def _reset(model: nn.Module) -> None:
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _stage_distill(model, st: Stage, splits: Splits, cfg: CompressConfig, d: Path, state: "_RunState") -> StageOutput:
    from .distill import distill

    if cfg.distill_from_scratch:
        torch.manual_seed(cfg.seed)
        _reset(model)
    r = distill(model, cfg.teacher, splits.train, splits.val, cfg.train_config(cfg.distill_epochs, splits.augment),
                temperature=cfg.temperature, alpha=cfg.alpha, progress=not cfg.quiet)
    return StageOutput(_settled(model), {"epochs": cfg.distill_epochs, "temperature": cfg.temperature,
                                         "alpha": cfg.alpha, "from_scratch": cfg.distill_from_scratch,
                                         "history": r.history})


def _stage_share(model, st: Stage, splits: Splits, cfg: CompressConfig, d: Path, state: "_RunState") -> StageOutput:
    from .share import share_weights

    info = share_weights(model, int(st.value), train=splits.train, val=splits.val,
                         cfg=cfg.train_config(cfg.finetune_epochs, splits.augment), teacher=cfg.teacher,
                         temperature=cfg.temperature, alpha=cfg.alpha, progress=not cfg.quiet)
    model.cpu().eval()
    details = {"bits": int(st.value), "finetune_epochs": cfg.finetune_epochs,
               "info": _json_safe(info.to_dict() if hasattr(info, "to_dict") else info)}
    return StageOutput(model, details, shared_info=info)


def _stage_huffman(model, st: Stage, splits: Splits, cfg: CompressConfig, d: Path, state: "_RunState") -> StageOutput:
    from .huffman import decode, encode, size_report

    t0 = time.perf_counter()
    art = d / "model.huff"
    encode(model, state.shared_info, art)
    decoded = copy.deepcopy(model)
    decoded.load_state_dict({k: torch.as_tensor(v) for k, v in decode(art).items()})
    seconds = time.perf_counter() - t0
    exact = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), decoded.state_dict().values()))
    details = {"roundtrip_exact": exact}
    try:
        details["size_report"] = _json_safe(size_report(model, state.shared_info))
    except Exception:  # noqa: BLE001 - the report is optional detail
        pass
    return StageOutput(model, details, "huffman", art, decoded, passes_model=False, seconds=seconds)


def _stage_quantize(model, st: Stage, splits: Splits, cfg: CompressConfig, d: Path, state: "_RunState") -> StageOutput:
    from .quantize import quantize

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    n = min(cfg.calib_images, len(splits.train))
    idx = torch.randperm(len(splits.train), generator=g)[:n]
    calib = splits.train.x.cpu()[idx]
    qm = quantize(copy.deepcopy(model).cpu().eval(), calib, st.value, d, input_shape=state.shape)
    seconds = time.perf_counter() - t0
    art = Path(qm.path)
    if not art.is_absolute() and not art.exists():
        art = d / art
    details = {"mode": st.value, "calib_images": n,
               "note": "dynamic quantizes Linear layers only; convolutions stay fp32" if st.value == "dynamic" else ""}
    return StageOutput(model, details, "quantized", art, qm, float_model=model, passes_model=False, seconds=seconds)


def _stage_export(model, st: Stage, splits: Splits, cfg: CompressConfig, d: Path, state: "_RunState") -> StageOutput:
    from .tflite import export_stage

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(splits.train), generator=g)[:min(cfg.calib_images, len(splits.train))]
    tm, row, details, art = export_stage(model, state.spec, splits.train.x.cpu()[idx], splits.test, d,
                                         cfg.tflm_arena_bytes, structure_changed(model, state.spec))
    details["calib_images"] = len(idx)
    return StageOutput(model, details, "tflite", art, tm, float_model=model, passes_model=False,
                       seconds=time.perf_counter() - t0, row=row)


#: The one dispatch: every kind in STAGE_KINDS runs through its `_stage_<kind>` function.
_STAGES: dict[str, Callable[..., StageOutput]] = {
    "prune": _stage_prune, "lowrank": _stage_lowrank, "distill": _stage_distill, "share": _stage_share,
    "huffman": _stage_huffman, "quantize": _stage_quantize, "export": _stage_export,
}
assert set(_STAGES) == set(STAGE_KINDS)


def _settled(model: nn.Module) -> nn.Module:
    """A stage's model on CPU in eval mode with pruning masks made permanent, ready to save and measure."""
    model = model.cpu().eval()
    P.make_permanent(model)
    return model


def _json_safe(obj: Any, depth: int = 0) -> Any:
    """Keep what JSON can hold (dicts, lists, numbers, strings) of an info object; drop tensors and arrays."""
    if depth > 6:
        return None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in obj.items()
                if not isinstance(v, torch.Tensor) and type(v).__module__ != "numpy"}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in obj[:1000]]
    if hasattr(obj, "__dataclass_fields__"):
        return _json_safe({k: getattr(obj, k) for k in obj.__dataclass_fields__}, depth)
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return _json_safe(obj.item(), depth)
    return None


# ----------------------------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _RunState:
    """What the runner keeps between stages: where it writes, what it measures, the rows so far."""

    out: Path
    spec: Any
    shape: tuple
    splits: Splits
    cfg: CompressConfig
    source: str
    say: Callable[[str], None]
    preprocessing: dict = field(default_factory=dict)  # archs.preprocess record, the same for every stage
    rows: list[dict] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    shared_info: Any = None

    def record(self, label: str, kind: str, d: Path, artifact: Path, m, seconds: float, details: dict,
               fmt: str, float_model=None, extra: dict | None = None) -> dict:
        """Measure `m`, append its row, write the stage's metrics.json and the whole stages.csv, print a line."""
        row = {"stage": label, "kind": kind}
        row.update(measure(m, self.splits.test, artifact.stat().st_size, float_model, self.shape, self.splits.val,
                           self.cfg.measure_latency))
        base = self.rows[0]["size_bytes"] if self.rows else row["size_bytes"]
        row["compression_ratio"] = base / row["size_bytes"] if row["size_bytes"] else float("nan")
        row["seconds"] = seconds
        if extra:
            row.update(extra)
            if "fp32_test_acc" in details:
                row["int8_acc_change"] = row["test_acc"] - details["fp32_test_acc"]
        try:
            row["artifact"] = str(artifact.resolve().relative_to(self.out.resolve()))
        except ValueError:
            row["artifact"] = str(artifact)
        row["dir"] = d.name
        self.rows.append(row)
        self.written.append(d.name)
        meta = {**row, "format": fmt, "artifact": os.path.relpath(artifact.resolve(), d.resolve()),
                "source": self.source, "spec": self.spec.to_string(), "seed": self.cfg.seed,
                "details": _json_safe(details), PREPROCESSING_KEY: self.preprocessing}
        if artifact.suffix == ".onnx":
            meta["io"] = onnx_io(artifact)
        elif artifact.suffix == ".tflite":  # full-integer: int8 NHWC input, int8 logits
            meta["io"] = {"input": {"dtype": "int8", "layout": details.get("input_layout", "NHWC"),
                                    "shape": details.get("input_shape"), "scale": details.get("input_scale"),
                                    "zero_point": details.get("input_zero_point")},
                          "output": {"dtype": "int8", "scale": details.get("output_scale"),
                                     "zero_point": details.get("output_zero_point")}}
        atomic_write_json(d / "metrics.json", meta)
        atomic_write_text(self.out / "stages.csv", self.table().to_csv(index=False))
        self.say(f"{label}: test {100 * row['test_acc']:.2f}%  {row['mflops']:.4g} MFLOPs  "
                 f"{row['nonzero_params']:,} nonzero  {row['size_bytes']:,} B ({row['compression_ratio']:.2f}x)  "
                 f"{row['latency_b1_ms']:.3f} ms b1  {seconds:.1f} s")
        return row

    def table(self) -> pd.DataFrame:
        mcu = any(k in r for r in self.rows for k in MCU_COLUMNS)
        return pd.DataFrame(self.rows, columns=COLUMNS + (MCU_COLUMNS if mcu else []))


def _fresh_stage_dir(out: Path, i: int, label: str) -> Path:
    """OUT/NN_<label>/, emptied of what an earlier run left there."""
    d = out / f"{i:02d}_{label}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def _record_original(model: nn.Module, state: _RunState, original_metrics: dict | None) -> None:
    d0 = state.out / "00_original"
    save_stage_model(d0, model, None, state.spec)
    state.record("original", "original", d0, d0 / "model.pt", model, 0.0,
                 {"source_metrics": original_metrics or {}}, "float")


def _run_stage(model: nn.Module, i: int, st: Stage, state: _RunState) -> nn.Module:
    """Run stage `i` through its `_stage_*` function, save its folder, record its row; the model passed on."""
    label = st.label(state.cfg)
    d = _fresh_stage_dir(state.out, i, label)
    t0 = time.perf_counter()
    res = _STAGES[st.kind](model, st, state.splits, state.cfg, d, state)
    seconds = res.seconds if res.seconds is not None else time.perf_counter() - t0
    measured = res.model if res.measured is None else res.measured
    if res.fmt == "float":
        save_stage_model(d, res.model, None, state.spec)
    elif res.fmt == "huffman":
        write_spec_files(d, measured, state.spec)
    if res.passes_model:
        state.shared_info = res.shared_info
    artifact = res.artifact if res.artifact is not None else d / "model.pt"
    state.record(label, st.kind, d, artifact, measured, seconds, res.details, res.fmt, res.float_model, res.row)
    return res.model


def _remove_stale_stage_dirs(out: Path, written: list[str]) -> None:
    """Remove stage folders of an earlier run that this run did not rewrite."""
    for p in out.iterdir():
        if p.is_dir() and _STAGE_DIR.match(p.name) and p.name not in written and (p / "metrics.json").is_file():
            try:
                if "stage" in json.loads((p / "metrics.json").read_text()):
                    shutil.rmtree(p)
            except (json.JSONDecodeError, OSError):
                pass


def run_stages(model: nn.Module, stages: list[Stage], splits: Splits, cfg: CompressConfig, out: str | Path,
               spec=None, source: str = "", original_metrics: dict | None = None,
               echo: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run `stages` in order on `model` (float, CPU), measuring the original first. Writes OUT/NN_<label>/ and
    OUT/stages.csv (rewritten after every stage) and returns the table.

    Model-changing stages (prune, lowrank, distill, share) pass their model on; quantize and huffman produce an
    artifact from the current model and leave it unchanged for the stages after them.
    """
    validate_stages(stages, cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = spec or model.spec
    prep = Preprocessing.from_data(splits, spec).to_dict()  # before resizing: the data set's own side
    splits = splits.resized(spec.input_size)
    state = _RunState(out, spec, spec.input_shape, splits, cfg, source, echo or (lambda s: None), prep)
    torch.manual_seed(cfg.seed)
    model = model.cpu().eval()
    P.make_permanent(model)
    _record_original(model, state, original_metrics)
    bar = progress(stages, desc="stages", unit="stage", disable=cfg.quiet, dynamic_ncols=True)
    for i, st in enumerate(bar, 1):
        bar.set_postfix_str(st.label(cfg))
        model = _run_stage(model, i, st, state)
    bar.close()
    _remove_stale_stage_dirs(out, state.written)
    return state.table()

def format_table(df: pd.DataFrame) -> str:
    """The stage table for a terminal: accuracy in percent, sizes in bytes, latency in ms."""
    from tabulate import tabulate

    rows = []
    for r in df.itertuples():
        rows.append([r.stage, f"{100 * r.test_acc:.2f}", f"{r.mflops:.4f}", f"{int(r.params):,}",
                     f"{int(r.nonzero_params):,}", f"{int(r.size_bytes):,}", f"{r.compression_ratio:.2f}x",
                     f"{r.latency_b1_ms:.3f}", f"{r.latency_b64_ms:.3f}", f"{r.seconds:.1f}"])
    table = tabulate(rows, headers=["stage", "test acc %", "MFLOPs", "params", "nonzero params", "size bytes",
                                    "ratio", "latency b1 ms", "latency b64 ms", "seconds"], tablefmt="github")
    if "arena_bytes" in df.columns and df["arena_bytes"].notna().any():
        from .tflite import format_mcu_table

        table += "\n\n" + format_mcu_table(df[df["arena_bytes"].notna()])
    return table
