"""Reference cost counting with fvcore (MACs), parameter counting, ptflops cross-check, and CPU latency."""
from __future__ import annotations

import logging
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from .spec import NetSpec

InputShape = Sequence[int]


@dataclass
class CountResult:
    """fvcore's MACs total, trainable parameters, and a per-layer table (module, type, macs, params)."""

    macs: int
    params: int
    layers: pd.DataFrame = field(repr=False)
    by_operator: dict[str, int] = field(default_factory=dict)

    @property
    def mflops(self) -> float:
        return self.macs / 1e6


def num_params(model: nn.Module) -> int:
    """Trainable parameters, BN included (sum of p.numel())."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _model_and_shape(model_or_spec: nn.Module | NetSpec, input_shape: InputShape | None) -> tuple[nn.Module, tuple]:
    if isinstance(model_or_spec, NetSpec):
        from .builder import build

        model = build(model_or_spec)
    else:
        model = model_or_spec
    if input_shape is None:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ValueError("input_shape is required for a model that was not built from a NetSpec")
        input_shape = spec.input_shape
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    return model, shape


def count(model_or_spec: nn.Module | NetSpec, input_shape: InputShape | None = None) -> CountResult:
    """Count MACs with fvcore's FlopCountAnalysis on the model in eval mode (its warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    model, shape = _model_and_shape(model_or_spec, input_shape)
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
        x = torch.zeros(shape, device=dev)
        logger = logging.getLogger("fvcore")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                fca = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
                total = int(fca.total())
                by_module = fca.by_module()
                by_op = {k: int(v) for k, v in fca.by_operator().items()}
        finally:
            logger.setLevel(level)
    finally:
        model.train(was_training)
    rows = []
    for name, mod in model.named_modules():
        if name and not any(True for _ in mod.children()):
            rows.append({"module": name, "type": type(mod).__name__, "macs": int(by_module.get(name, 0)),
                         "params": sum(q.numel() for q in mod.parameters(recurse=False) if q.requires_grad)})
    table = pd.DataFrame(rows, columns=["module", "type", "macs", "params"])
    return CountResult(total, num_params(model), table, by_op)


def conv_linear_macs(result: CountResult) -> int:
    """MACs of convolutions and linear layers only (what papers such as MobileNet report as Mult-Adds)."""
    return int(result.layers.loc[result.layers["type"].isin(["Conv2d", "Linear"]), "macs"].sum())


def count_ptflops(model: nn.Module, input_shape: InputShape, backend: str = "aten") -> int:
    """MACs by ptflops (backend 'aten': convolution and matmul ops only, bias included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ptflops import get_model_complexity_info

    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        macs, _ = get_model_complexity_info(model, shape, as_strings=False, print_per_layer_stat=False,
                                            verbose=False, backend=backend)
    return int(macs)


def latency(model, input_shape: InputShape | None = None, batch_size: int = 1, threads: int | None = None,
            warmup: int = 5, repeats: int = 30, max_seconds: float = 5.0) -> float:
    """Median milliseconds of one forward pass after warm-up (eval mode, no grad).

    `model` is an nn.Module or any callable taking a float tensor (an ONNX Runtime wrapper, say);
    `input_shape` defaults to the spec's input for models built by `build`.
    """
    is_module = isinstance(model, nn.Module)
    if is_module:
        model, shape = _model_and_shape(model, input_shape)
    elif input_shape is None:
        raise ValueError("input_shape is required for a callable that is not a built model")
    else:
        shape = tuple(int(s) for s in input_shape)
        shape = shape if len(shape) == 4 else (1, *shape)
    shape = (batch_size, *shape[1:])
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    was_training = model.training if is_module else False
    device = torch.device("cpu")
    if is_module:
        model.eval()
        p = next(model.parameters(), None)
        device = p.device if p is not None else device
    x = torch.randn(shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            start = time.perf_counter()
            for _ in range(repeats):
                sync(device)
                t0 = time.perf_counter()
                model(x)
                sync(device)
                times.append((time.perf_counter() - t0) * 1e3)
                if time.perf_counter() - start > max_seconds and len(times) >= 5:
                    break
    finally:
        if is_module:
            model.train(was_training)
        if threads:
            torch.set_num_threads(old_threads)
    return float(statistics.median(times))
