"""Model directories: the files of a float model and of a compress stage folder, written and read back.

A folder holds `spec.json`, `model.pt` (fp32 state_dict, loaded with weights_only=True) and `metrics.json`.
Structural stages (physical channel pruning, low-rank factorization) change layer shapes, so such a folder also
has `structure.json` describing every Conv2d / Linear / BatchNorm2d / LowRankConv2d / LowRankLinear (type and
constructor arguments, re-applied to a fresh `build(spec)`). Without structural change the folder is a plain
model directory (`archs.io.load_model_dir` reads it too). Huffman stage folders are decoded from `model.huff`;
quantized ones are read with `compress.quantize.load_quantized`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from archs import build
from archs.blocks import LowRankConv2d
from archs.errors import SpecError, UserError
from archs.io import atomic_write_json, atomic_write_text, load_state_dict, read_spec, save_state_dict

from . import prune as P
from .lowrank import LowRankLinear

__all__ = ["describe_structure", "apply_structure", "structure_changed", "write_spec_files", "save_stage_model",
           "read_metrics", "load_model", "load_stage"]


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


def write_spec_files(directory: Path, model: nn.Module, spec) -> None:
    """spec.json, plus structure.json when the layers differ from a fresh build (a stale one is removed)."""
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
    write_spec_files(d, model, spec)
    save_state_dict(d / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    if metrics is not None:
        atomic_write_json(d / "metrics.json", metrics)
    return d


def read_metrics(d: Path) -> dict:
    """metrics.json of a folder as a dict ({} when absent); a corrupt file is a one-line UserError."""
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
    metrics = read_metrics(d)
    fmt = metrics.get("format", "float")
    if fmt in ("quantized", "tflite"):
        raise UserError(f"{d} holds a {fmt} model, not a float model with spec.json + model.pt")
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
    metrics = read_metrics(d) if d.is_dir() else {}
    if metrics.get("format") == "quantized":
        from .quantize import load_quantized

        return load_quantized(d / metrics["artifact"])
    if metrics.get("format") == "tflite":
        from .tflite import TflmModel

        return TflmModel(d / metrics["artifact"], int(metrics["arena_bytes"]), metrics["details"])
    return load_model(d)[0]
