"""The stage runner: every compression stage applied in order, measured, saved and tabulated.

One row per stage (original first) in `OUT/stages.csv` and a printed table; one folder per stage
(`OUT/NN_<label>/`) holding its model and metrics.json, reloadable with `load_stage`.

Columns (units in the names): stage, kind, test_acc ([0, 1]), val_acc, mflops (fvcore MACs / 1e6), params,
nonzero_params, size_bytes (bytes on disk of the stage's artifact: fp32 state_dict, Huffman file or quantized
ONNX), compression_ratio (original size_bytes / size_bytes), latency_b1_ms and latency_b64_ms (median CPU ms,
archs.latency), seconds (wall time of the stage's work: pruning, fine-tuning, encoding...), artifact, dir.

Structural stages (physical channel pruning, low-rank factorization) change layer shapes, so a stage folder
stores the original `spec.json`, a `structure.json` describing every Conv2d / Linear / BatchNorm2d /
LowRankConv2d / LowRankLinear (type and constructor arguments, re-applied to a fresh `build(spec)`), and the
state_dict in `model.pt`, loaded with weights_only=True. Without structural change no structure.json is
written and the folder is a plain model directory (`archs.io.load_model_dir` reads it too).
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from archs import build, count, latency
from archs.blocks import LowRankConv2d
from archs.cli import progress
from archs.export import onnx_io
from archs.errors import SpecError, UserError
from archs.preprocess import PREPROCESSING_KEY, Preprocessing
from archs.io import atomic_write_json, atomic_write_text, load_state_dict, read_spec, save_state_dict
from training.data import Splits, TensorData
from training.loop import TrainConfig, evaluate, fit

from . import prune as P
from .lowrank import LowRankLinear, lowrank as lowrank_factorize

__all__ = ["STAGE_KINDS", "COLUMNS", "Stage", "CompressConfig", "describe_structure", "apply_structure",
           "structure_changed", "save_stage_model", "load_stage", "load_model", "accuracy", "measure",
           "run_stages", "format_table", "finetune"]

STAGE_KINDS = ("prune", "lowrank", "distill", "share", "huffman", "quantize")
QUANT_MODES = ("int8", "fp16", "dynamic")
COLUMNS = ["stage", "kind", "test_acc", "val_acc", "mflops", "params", "nonzero_params", "size_bytes",
           "compression_ratio", "latency_b1_ms", "latency_b64_ms", "seconds", "artifact", "dir"]
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
# Structure of physically pruned / factorized models
# ----------------------------------------------------------------------------------------------------------------
def _pair(v) -> list:
    return list(v) if isinstance(v, (tuple, list)) else v


def _record(m: nn.Module) -> dict | None:
    if isinstance(m, LowRankConv2d):
        return {"type": "LowRankConv2d", "args": {
            "in_channels": m.vertical.in_channels, "out_channels": m.horizontal.out_channels,
            "kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
            "bias": m.horizontal.bias is not None, "rank": m.vertical.out_channels}}
    if isinstance(m, LowRankLinear):
        return {"type": "LowRankLinear", "args": {
            "in_features": m.first.in_features, "out_features": m.second.out_features,
            "rank": m.first.out_features, "bias": m.second.bias is not None}}
    if isinstance(m, nn.Conv2d):
        w = m.weight
        return {"type": "Conv2d", "args": {
            "in_channels": int(w.shape[1] * m.groups), "out_channels": int(w.shape[0]),
            "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride), "padding": _pair(m.padding),
            "dilation": _pair(m.dilation), "groups": int(m.groups), "bias": m.bias is not None,
            "padding_mode": m.padding_mode}}
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "args": {"in_features": int(m.weight.shape[1]), "out_features": int(m.weight.shape[0]),
                                           "bias": m.bias is not None}}
    if isinstance(m, nn.BatchNorm2d):
        n = m.weight.shape[0] if m.affine else m.running_mean.shape[0]
        return {"type": "BatchNorm2d", "args": {"num_features": int(n), "eps": m.eps, "momentum": m.momentum,
                                                "affine": m.affine, "track_running_stats": m.track_running_stats}}
    return None


_CONSTRUCT: dict[str, Callable[..., nn.Module]] = {
    "LowRankConv2d": LowRankConv2d, "LowRankLinear": LowRankLinear,
    "Conv2d": lambda **a: nn.Conv2d(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in a.items()}),
    "Linear": nn.Linear, "BatchNorm2d": nn.BatchNorm2d,
}
_CONTAINERS = ("LowRankConv2d", "LowRankLinear")


def describe_structure(model: nn.Module) -> list[dict]:
    """[{"path", "type", "args"}] for every layer whose shape a compression stage may change."""
    return [{"path": n, **r} for n, m in model.named_modules() if n and (r := _record(m)) is not None]


def structure_changed(model: nn.Module, spec) -> bool:
    """True when the model's layers no longer match a fresh build of `spec`."""
    return describe_structure(build(spec)) != describe_structure(model)


def apply_structure(model: nn.Module, records: list[dict]) -> nn.Module:
    """Re-create the recorded layers (containers first, then leaves) in a freshly built model, in place."""
    if not isinstance(records, list):
        raise UserError("structure.json must hold a list of layer records")
    ordered = [r for r in records if r.get("type") in _CONTAINERS] + \
              [r for r in records if r.get("type") not in _CONTAINERS]
    for r in ordered:
        try:
            path, typ, args = r["path"], r["type"], r["args"]
            ctor = _CONSTRUCT[typ]
            new = ctor(**args)
            parent_name, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if not hasattr(parent, attr):
                raise AttributeError(path)
            setattr(parent, attr, new)
        except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as e:
            raise UserError(f"structure.json: bad layer record {str(r)[:120]}: {type(e).__name__}: {e}") from None
    return model


def _stage_files(directory: Path, model: nn.Module, spec) -> None:
    atomic_write_text(directory / "spec.json", spec.to_json() + "\n")
    s = directory / "structure.json"
    if structure_changed(model, spec):
        atomic_write_json(s, describe_structure(model))
    elif s.exists():
        s.unlink()


def save_stage_model(directory: str | Path, model: nn.Module, metrics: dict | None = None, spec=None) -> Path:
    """spec.json (+ structure.json when layers changed) + model.pt (fp32 state_dict) + metrics.json."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    spec = spec or model.spec
    P.make_permanent(model)
    _stage_files(d, model, spec)
    save_state_dict(d / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    if metrics is not None:
        atomic_write_json(d / "metrics.json", metrics)
    return d


def _read_metrics(d: Path) -> dict:
    f = d / "metrics.json"
    if not f.is_file():
        return {}
    try:
        m = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{f} is not valid JSON: {e}") from None
    if not isinstance(m, dict):
        raise UserError(f"{f} must hold a JSON object")
    return m


def load_model(directory: str | Path, map_location: str = "cpu"):
    """(model in eval mode, spec, metrics) of a model directory or a float stage folder (structure re-applied).

    Quantized stage folders are not float models: read them with `load_stage`.
    """
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"model directory not found: {d}")
    metrics = _read_metrics(d)
    fmt = metrics.get("format", "float")
    if fmt == "quantized":
        raise UserError(f"{d} holds a quantized model, not a float model with spec.json + model.pt")
    spec = read_spec(d / "spec.json")
    try:
        model = build(spec)
    except SpecError as e:
        raise SpecError(f"{d / 'spec.json'}: {e}") from None
    sfile = d / "structure.json"
    if sfile.is_file():
        try:
            records = json.loads(sfile.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{sfile} is not valid JSON: {e}") from None
        apply_structure(model, records)
    if fmt == "huffman":
        from .huffman import decode

        art = d / metrics.get("artifact", "model.huff")
        if not art.is_file():
            raise UserError(f"Huffman file not found: {art}")
        try:
            state = decode(art)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt file must be a one-line error
            raise UserError(f"cannot decode {art}: {type(e).__name__}: {str(e)[:200]}") from None
    else:
        state = load_state_dict(d / "model.pt", map_location)
    try:
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        more = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else ""
        raise UserError(f"{d}: the weights do not match spec.json/structure.json: {first} {more}"[:400]) from None
    return model.eval(), spec, metrics


def load_stage(directory: str | Path):
    """The model of a stage folder: nn.Module (float, pruned, factorized, shared, Huffman-decoded) or the
    quantized model object of `compress.quantize.load_quantized` for quantize stages."""
    d = Path(directory)
    metrics = _read_metrics(d) if d.is_dir() else {}
    if metrics.get("format") == "quantized":
        from .quantize import load_quantized

        return load_quantized(d / metrics["artifact"])
    return load_model(d)[0]


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


def _stage_prune(model, st: Stage, splits: Splits, cfg: CompressConfig) -> tuple[nn.Module, dict]:
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
    return model, details


def _stage_lowrank(model, st: Stage, splits: Splits, cfg: CompressConfig) -> tuple[nn.Module, dict]:
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
    return model, details


def _reset(model: nn.Module) -> None:
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _stage_distill(model, st: Stage, splits: Splits, cfg: CompressConfig) -> tuple[nn.Module, dict]:
    from .distill import distill

    if cfg.distill_from_scratch:
        torch.manual_seed(cfg.seed)
        _reset(model)
    r = distill(model, cfg.teacher, splits.train, splits.val, cfg.train_config(cfg.distill_epochs, splits.augment),
                temperature=cfg.temperature, alpha=cfg.alpha, progress=not cfg.quiet)
    return model, {"epochs": cfg.distill_epochs, "temperature": cfg.temperature, "alpha": cfg.alpha,
                   "from_scratch": cfg.distill_from_scratch, "history": r.history}


def _stage_share(model, st: Stage, splits: Splits, cfg: CompressConfig) -> tuple[nn.Module, Any, dict]:
    from .share import share_weights

    info = share_weights(model, int(st.value), train=splits.train, val=splits.val,
                         cfg=cfg.train_config(cfg.finetune_epochs, splits.augment), teacher=cfg.teacher,
                         temperature=cfg.temperature, alpha=cfg.alpha, progress=not cfg.quiet)
    model.cpu().eval()
    return model, info, {"bits": int(st.value), "finetune_epochs": cfg.finetune_epochs}


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
def _dir_size(path: Path) -> int:
    return path.stat().st_size


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
    shape = spec.input_shape
    say = echo or (lambda s: None)
    torch.manual_seed(cfg.seed)
    model = model.cpu().eval()
    P.make_permanent(model)
    rows: list[dict] = []
    written: list[str] = []
    csv = out / "stages.csv"

    def record(label: str, kind: str, d: Path, artifact: Path, m, seconds: float, details: dict,
               fmt: str, float_model=None) -> dict:
        row = {"stage": label, "kind": kind}
        row.update(measure(m, splits.test, _dir_size(artifact), float_model, shape, splits.val, cfg.measure_latency))
        base = rows[0]["size_bytes"] if rows else row["size_bytes"]
        row["compression_ratio"] = base / row["size_bytes"] if row["size_bytes"] else float("nan")
        row["seconds"] = seconds
        try:
            row["artifact"] = str(artifact.resolve().relative_to(out.resolve()))
        except ValueError:
            row["artifact"] = str(artifact)
        row["dir"] = d.name
        rows.append(row)
        written.append(d.name)
        meta = {**row, "format": fmt, "artifact": os.path.relpath(artifact.resolve(), d.resolve()), "source": source, "spec": spec.to_string(),
                "seed": cfg.seed, "details": _json_safe(details), PREPROCESSING_KEY: prep}
        if artifact.suffix == ".onnx":
            meta["io"] = onnx_io(artifact)
        atomic_write_json(d / "metrics.json", meta)
        df = pd.DataFrame(rows, columns=COLUMNS)
        atomic_write_text(csv, df.to_csv(index=False))
        say(f"{label}: test {100 * row['test_acc']:.2f}%  {row['mflops']:.4g} MFLOPs  {row['nonzero_params']:,} nonzero"
            f"  {row['size_bytes']:,} B ({row['compression_ratio']:.2f}x)  {row['latency_b1_ms']:.3f} ms b1"
            f"  {seconds:.1f} s")
        return row

    # original
    d0 = out / "00_original"
    save_stage_model(d0, model, None, spec)
    record("original", "original", d0, d0 / "model.pt", model, 0.0, {"source_metrics": original_metrics or {}},
           "float")

    shared_info = None
    bar = progress(stages, desc="stages", unit="stage", disable=cfg.quiet, dynamic_ncols=True)
    for i, st in enumerate(bar, 1):
        label = st.label(cfg)
        bar.set_postfix_str(label)
        d = out / f"{i:02d}_{label}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        t0 = time.perf_counter()
        if st.kind in ("prune", "lowrank", "distill"):
            fn = {"prune": _stage_prune, "lowrank": _stage_lowrank, "distill": _stage_distill}[st.kind]
            model, details = fn(model, st, splits, cfg)
            model = model.cpu().eval()
            P.make_permanent(model)
            seconds = time.perf_counter() - t0
            save_stage_model(d, model, None, spec)
            shared_info = None
            record(label, st.kind, d, d / "model.pt", model, seconds, details, "float")
        elif st.kind == "share":
            model, shared_info, details = _stage_share(model, st, splits, cfg)
            seconds = time.perf_counter() - t0
            save_stage_model(d, model, None, spec)
            details["info"] = _json_safe(shared_info.to_dict() if hasattr(shared_info, "to_dict") else shared_info)
            record(label, st.kind, d, d / "model.pt", model, seconds, details, "float")
        elif st.kind == "huffman":
            from .huffman import decode, encode

            art = d / "model.huff"
            encode(model, shared_info, art)
            decoded = copy.deepcopy(model)
            decoded.load_state_dict({k: torch.as_tensor(v) for k, v in decode(art).items()})
            seconds = time.perf_counter() - t0
            exact = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), decoded.state_dict().values()))
            _stage_files(d, decoded, spec)
            details = {"roundtrip_exact": exact}
            try:
                from .huffman import size_report

                details["size_report"] = _json_safe(size_report(model, shared_info))
            except Exception:  # noqa: BLE001 - the report is optional detail
                pass
            record(label, st.kind, d, art, decoded, seconds, details, "huffman")
        elif st.kind == "quantize":
            from .quantize import quantize

            g = torch.Generator().manual_seed(cfg.seed)
            n = min(cfg.calib_images, len(splits.train))
            idx = torch.randperm(len(splits.train), generator=g)[:n]
            calib = splits.train.x.cpu()[idx]
            qm = quantize(copy.deepcopy(model).cpu().eval(), calib, st.value, d, input_shape=shape)
            seconds = time.perf_counter() - t0
            art = Path(qm.path)
            if not art.is_absolute() and not art.exists():
                art = d / art
            details = {"mode": st.value, "calib_images": n,
                       "note": "dynamic quantizes Linear layers only; convolutions stay fp32" if st.value == "dynamic"
                       else ""}
            record(label, st.kind, d, art, qm, seconds, details, "quantized", float_model=model)
    bar.close()
    # remove stage folders of an earlier run that this run did not rewrite
    for p in out.iterdir():
        if p.is_dir() and _STAGE_DIR.match(p.name) and p.name not in written and (p / "metrics.json").is_file():
            try:
                if "stage" in json.loads((p / "metrics.json").read_text()):
                    shutil.rmtree(p)
            except (json.JSONDecodeError, OSError):
                pass
    return pd.DataFrame(rows, columns=COLUMNS)


def format_table(df: pd.DataFrame) -> str:
    """The stage table for a terminal: accuracy in percent, sizes in bytes, latency in ms."""
    from tabulate import tabulate

    rows = []
    for r in df.itertuples():
        rows.append([r.stage, f"{100 * r.test_acc:.2f}", f"{r.mflops:.4f}", f"{int(r.params):,}",
                     f"{int(r.nonzero_params):,}", f"{int(r.size_bytes):,}", f"{r.compression_ratio:.2f}x",
                     f"{r.latency_b1_ms:.3f}", f"{r.latency_b64_ms:.3f}", f"{r.seconds:.1f}"])
    return tabulate(rows, headers=["stage", "test acc %", "MFLOPs", "params", "nonzero params", "size bytes",
                                   "ratio", "latency b1 ms", "latency b64 ms", "seconds"], tablefmt="github")
