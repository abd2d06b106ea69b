"""Post-training quantization for CPU inference, behind one function: `quantize(model, calib_x, mode, out_dir)`.

Every mode exports the float model to ONNX (`archs.export.export_onnx`, dynamic batch axis) and writes ONE
self-contained ONNX file that ONNX Runtime runs on the CPU; `load_quantized(path)` reopens it.

- "int8": static post-training quantization with ONNX Runtime (`quant_pre_process`, then `quantize_static`:
  QDQ format, int8 weights per output channel, uint8 activations calibrated (min/max) on `calib_x`). ORT fuses
  the QDQ pairs into QLinearConv / QLinearMatMul kernels, so inference really runs in int8 (except the stem
  convolution on the 1-3 image channels, kept float: int8 kernels are slow there). The file is then
  compacted without changing a single output: per-channel zero points that are all zero are dropped (they
  are optional), bias scales (input scale x weight scale) are recomputed by a Mul that ORT constant-folds at
  load instead of being stored, and tensor/node names are shortened (116 KB -> 84 KB on a 70 k-parameter CNN).
  Measured on digits CNNs (one thread): 3.7x smaller than the fp32 state_dict; against PyTorch fp32 eager
  about 12x faster at batch 1 (ONNX Runtime's per-call overhead is far lower) and 4x at batch 64; against the
  SAME model in ONNX Runtime fp32 1.4-1.7x faster at batch 64 and on par at batch 1. ORT's int8 convolutions
  use extra threads poorly on small feature maps: with 4 threads ORT fp32 overtakes int8 at batch 64.
  The torchao PT2E route (X86InductorQuantizer + torch.compile) was measured too and not chosen: ~60 s of
  compilation on 2 cores and 10x slower than ORT int8 at batch 1 here.
  PyTorch's eager/FX quantization API (deprecated) is not used. On x86 CPUs without VNNI the u8s8 kernels can saturate;
  `reduce_range` defaults to True there (7-bit weights), False on VNNI CPUs.
- "fp16": weights stored as float16 (the file halves), each followed by a Cast to float32 that ONNX Runtime
  folds when the session is created. Inference computes in float32: it is NOT faster on CPU than fp32
  (x86 has no fast fp16 convolution kernels in ONNX Runtime), only smaller.
- "dynamic": ONNX Runtime dynamic quantization of the Linear layers ONLY (Gemm/MatMul -> int8 weights,
  activations quantized on the fly per batch); Conv2d layers stay float32. It pays off for MLP-heavy models
  (LeNet-300-100); convolutional models barely change.

`QuantizedModel` is a callable: float NCHW tensor in, logits (torch.Tensor) out, so `archs.latency(qm,
input_shape, batch_size=64)` and `evaluate_callable(qm, data)` work on it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from archs.errors import UserError
from archs.export import export_onnx, onnx_session
from archs.io import atomic_write_bytes

__all__ = ["MODES", "QuantizedModel", "quantize", "load_quantized", "evaluate_callable", "cpu_has_vnni",
           "compact_qdq"]

MODES = ("int8", "fp16", "dynamic")
ARTIFACT = {"int8": "model_int8.onnx", "fp16": "model_fp16.onnx", "dynamic": "model_dynamic.onnx"}
_META_PREFIX = "edgenas."


# --------------------------------------------------------------------------------------------------------------------
# The quantized model
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class QuantizedModel:
    """A quantized ONNX model run by ONNX Runtime on the CPU. Call it on a float N×C×H×W tensor (or array) to get
    float32 logits as a torch.Tensor. `path` is the artifact, `size_bytes` its bytes on disk, `info` what
    `quantize` recorded (calibration images, agreement with the float model on them, timings...)."""

    path: Path
    mode: str
    threads: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _session: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def session(self):
        """The ONNX Runtime session (created on first use: full graph optimization, `threads` intra-op threads,
        torch.get_num_threads() by default)."""
        if self._session is None:
            try:
                self._session = onnx_session(self.path, threads=self.threads or torch.get_num_threads())
            except Exception as e:  # noqa: BLE001 - a bad file is a user-facing error
                raise UserError(f"cannot load quantized model {self.path}: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
            self._input = self._session.get_inputs()[0].name
        return self._session

    def __call__(self, x) -> torch.Tensor:
        sess = self.session
        if isinstance(x, torch.Tensor):
            arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        else:
            arr = np.ascontiguousarray(x, dtype=np.float32)
        return torch.from_numpy(sess.run(None, {self._input: arr})[0])

    def predict(self, x, batch_size: int = 256) -> torch.Tensor:
        """Logits of a large tensor, `batch_size` images at a time."""
        outs = [self(xb) for xb in torch.split(torch.as_tensor(x), batch_size)]
        return torch.cat(outs) if outs else torch.zeros((0, 0))

    def __getstate__(self):  # sessions do not pickle; reopen lazily
        d = self.__dict__.copy()
        d["_session"] = None
        d.pop("_input", None)
        return d

    def __repr__(self) -> str:
        return f"QuantizedModel(mode={self.mode!r}, path='{self.path}', size_bytes={self.size_bytes})"


def load_quantized(path: str | os.PathLike, threads: int | None = None) -> QuantizedModel:
    """Reopen a file written by `quantize` (the mode and info are read from its ONNX metadata)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"quantized model not found: {path}")
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - truncated/garbage file
        raise UserError(f"cannot read quantized model {path}: not a valid ONNX file ({type(e).__name__})") from None
    meta = {p.key[len(_META_PREFIX):]: p.value for p in m.metadata_props if p.key.startswith(_META_PREFIX)}
    mode = meta.get("mode")
    if mode not in MODES:
        raise UserError(f"{path} is not a quantized model written by edgenas (no '{_META_PREFIX}mode' metadata)")
    try:
        info = json.loads(meta.get("info", "{}"))
    except json.JSONDecodeError:
        info = {}
    qm = QuantizedModel(path, mode, threads, info)
    qm.session  # open now: a corrupt graph fails here with a UserError, not later
    return qm


@torch.no_grad()
def evaluate_callable(fn: Callable, data, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of any callable returning logits (a QuantizedModel, say) on a TensorData.
    (`training.loop.evaluate` takes nn.Modules only.)"""
    if len(data) == 0:
        raise UserError("cannot evaluate on an empty data set")
    correct = 0
    for xb, yb in zip(torch.split(data.x.cpu(), batch_size), torch.split(data.y.cpu(), batch_size)):
        correct += int((torch.as_tensor(fn(xb)).argmax(1) == yb).sum().item())
    return correct / len(data)


# --------------------------------------------------------------------------------------------------------------------
# quantize
# --------------------------------------------------------------------------------------------------------------------
def cpu_has_vnni() -> bool | None:
    """True when the CPU has AVX512-VNNI or AVX-VNNI (int8 dot products without u8s8 saturation), None when
    unknown (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        return None
    return None


def quantize(model: nn.Module, calib_x: torch.Tensor, mode: str, out_dir: str | os.PathLike, input_shape=None, *,
             per_channel: bool = True, reduce_range: bool | None = None, calibrate_method: str = "minmax",
             calib_batch_size: int = 32, float_stem: bool = True, threads: int | None = None) -> QuantizedModel:
    """Quantize `model` (float, eval mode; moved to the CPU) and write `out_dir/model_<mode>.onnx`.

    mode: "int8" (static, calibrated on `calib_x`: a few hundred normalized training images, N×C×H×W),
    "fp16" (weights stored in half precision, computed in fp32: smaller, not faster on CPU) or "dynamic"
    (Linear layers only, int8 weights; convolutions stay fp32). `calib_x` is only used by "int8" (and to check
    the agreement of every mode with the float model). `input_shape` defaults to `model.spec.input_shape`,
    else to calib_x's image shape. `reduce_range=None` picks True on CPUs without VNNI (see the module doc).
    `float_stem`: keep the convolution(s) reading the image (1-4 channels) in float32 for int8 (faster and
    more accurate; costs a few hundred bytes). `threads`: ONNX Runtime intra-op threads (default: torch's).
    """
    if mode not in MODES:
        raise UserError(f"unknown quantization mode {mode!r}; choose one of: {', '.join(MODES)}")
    if calibrate_method not in ("minmax", "entropy", "percentile"):
        raise UserError(f"unknown calibration method {calibrate_method!r}; use minmax, entropy or percentile")
    calib_x = torch.as_tensor(calib_x).detach().to("cpu", torch.float32)
    if calib_x.dim() != 4:
        raise UserError(f"calibration images must be N×C×H×W, got shape {tuple(calib_x.shape)}")
    if mode == "int8" and calib_x.shape[0] == 0:
        raise UserError("int8 static quantization needs calibration images; got none")
    if input_shape is None:
        spec = getattr(model, "spec", None)
        input_shape = tuple(spec.input_shape) if spec is not None else (1, *calib_x.shape[1:])
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) == 3:
        input_shape = (1, *input_shape)
    if calib_x.shape[0] and tuple(calib_x.shape[1:]) != input_shape[1:]:
        raise UserError(f"calibration images have shape {tuple(calib_x.shape[1:])} but the model takes "
                        f"{input_shape[1:]}")
    if reduce_range is None:
        reduce_range = cpu_has_vnni() is False
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ARTIFACT[mode]
    model = model.cpu().eval()

    info: dict[str, Any] = {"mode": mode, "runtime": "onnxruntime", "calib_images": int(calib_x.shape[0])}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".quantize.") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        fp32 = tmp / "fp32.onnx"
        try:
            export_onnx(model, fp32, input_shape)
        except Exception as e:  # noqa: BLE001 - both exporters failed: the model cannot be quantized this way
            raise UserError(f"cannot export the model to ONNX for quantization: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
        info["export_seconds"] = time.perf_counter() - t0
        info["fp32_onnx_bytes"] = fp32.stat().st_size
        t0 = time.perf_counter()
        with _quiet():
            if mode == "int8":
                qproto = _static_int8(fp32, tmp, calib_x, per_channel, reduce_range, calibrate_method,
                                      calib_batch_size, float_stem, info)
            elif mode == "dynamic":
                qproto = _dynamic_int8(fp32, tmp, per_channel, reduce_range, info)
            else:
                qproto = _fp16_weights(fp32)
        info["quantize_seconds"] = time.perf_counter() - t0
    if mode != "fp16":
        info.update(per_channel=per_channel, reduce_range=bool(reduce_range))
    _set_meta(qproto, mode, info)
    atomic_write_bytes(path, qproto.SerializeToString())
    qm = QuantizedModel(path, mode, threads, dict(info))
    if calib_x.shape[0]:  # agreement with the float model on (up to 512 of) the calibration images
        x = calib_x[:512]
        with torch.no_grad():
            ref = model(x)
        out = qm(x)
        qm.info["calib_argmax_agreement"] = float((out.argmax(1) == ref.argmax(1)).float().mean())
        qm.info["calib_max_abs_logit_diff"] = float((out - ref).abs().max())
    return qm


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantization tools log and warn a lot (shape inference, pre-processing hints)."""
    import logging

    sink = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _preprocess(fp32: Path, tmp: Path, info: dict) -> Path:
    """ORT's recommended pre-processing (symbolic shape inference, graph optimization incl. BN folding)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    try:
        quant_pre_process(str(fp32), str(pre))
        info["preprocessed"] = True
        return pre
    except Exception as e:  # noqa: BLE001 - quantization still works on the raw export
        info["preprocessed"] = False
        info["preprocess_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        return fp32


def _calib_reader(x: torch.Tensor, input_name: str, batch_size: int):
    """An ONNX Runtime CalibrationDataReader over a tensor of images, in batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = [b.contiguous().numpy() for b in torch.split(x, max(1, int(batch_size)))]
            self.i = 0

        def get_next(self):
            if self.i >= len(self.batches):
                return None
            self.i += 1
            return {input_name: self.batches[self.i - 1]}

        def rewind(self):
            self.i = 0

    return Reader()


def _input_name(path: Path) -> str:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits][0]


def _stem_convs(path: Path) -> list[str]:
    """Names of the Conv nodes that read the image itself (the stem: 1-4 input channels). Kept in float: int8
    convolution kernels are slow on so few input channels (measured: the stem alone took ~20 % of the int8
    model's time), and the first layer is the most sensitive to quantization."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in m.graph.initializer}
    image = {i.name for i in m.graph.input if i.name not in inits}
    out = []
    for n in m.graph.node:
        if n.op_type == "Conv" and n.input[0] in image and n.input[1] in inits:
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            if inits[n.input[1]].dims[1] * group <= 4:
                out.append(n.name)
    return [n for n in out if n]


def _static_int8(fp32: Path, tmp: Path, calib_x, per_channel, reduce_range, method, batch_size, float_stem, info):
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    pre = _preprocess(fp32, tmp, info)
    reader = _calib_reader(calib_x, _input_name(pre), batch_size)
    out = tmp / "int8.onnx"
    exclude = _stem_convs(pre) if float_stem else []
    info["float_nodes"] = exclude
    quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    nodes_to_exclude=exclude,
                    reduce_range=bool(reduce_range), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[method])
    info.update(format="QDQ", weights="int8 symmetric" + (" per-channel" if per_channel else " per-tensor"),
                activations="uint8 asymmetric (static, calibrated " + method + ")")
    model = onnx.load(str(out))
    before = model.ByteSize()
    compact_qdq(model)
    info["uncompacted_bytes"] = before
    return model


def _dynamic_int8(fp32: Path, tmp: Path, per_channel, reduce_range, info):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = _preprocess(fp32, tmp, info)
    out = tmp / "dynamic.onnx"
    # Linear layers only: torch exports them as Gemm (or MatMul + Add); Conv stays float
    quantize_dynamic(str(pre), str(out), op_types_to_quantize=["MatMul", "Gemm"], per_channel=per_channel,
                     reduce_range=bool(reduce_range), weight_type=QuantType.QInt8)
    model = onnx.load(str(out))
    info.update(weights="int8 (Linear layers only; Conv2d stays float32)", activations="quantized per batch at run time")
    info["quantized_linear_ops"] = sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in model.graph.node)
    _shorten_names(model)
    return model


def _fp16_weights(fp32: Path):
    """Every float32 initializer stored as float16 and cast back to float32 by a Cast node (folded by ORT)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(fp32))
    g = model.graph
    casts, keep = [], []
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init)
            half = numpy_helper.from_array(arr.astype(np.float16), init.name + "_fp16")
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
            keep.append(half)
        else:
            keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    _shorten_names(model)
    return model


def _set_meta(model, mode: str, info: dict) -> None:
    from onnx import helper

    del model.metadata_props[:]
    helper.set_model_props(model, {_META_PREFIX + "mode": mode,
                                   _META_PREFIX + "info": json.dumps(info, sort_keys=True, default=str)})


# --------------------------------------------------------------------------------------------------------------------
# Compaction of a QDQ model (outputs unchanged)
# --------------------------------------------------------------------------------------------------------------------
def compact_qdq(model) -> Any:
    """Shrink a QDQ ONNX model from `quantize_static` in place without changing what it computes:

    - zero points of int8 weights that are all zero are removed (an optional input; 0 is the default);
    - an int32 bias's DequantizeLinear scale, stored by ORT as input_scale × weight_scale per channel, is
      replaced by a Mul of those two initializers (ORT constant-folds it when the session is created); only
      where that float32 product equals the stored scale bit for bit. Its all-zero int32 zero point goes too;
    - node and tensor names are shortened (graph input/output names are kept), doc strings dropped.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    arr = {}

    def value(name):
        if name not in arr:
            arr[name] = numpy_helper.to_array(inits[name])
        return arr[name]

    drop: set[str] = set()
    muls = []
    for n in g.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        q = value(n.input[0])
        has_zp = len(n.input) > 2 and n.input[2] in inits
        if q.dtype == np.int8 and has_zp and not value(n.input[2]).any() and len(consumers.get(n.input[2], [])) == 1:
            drop.add(n.input[2])
            del n.input[2]
        elif q.dtype == np.int32 and n.input[1] in inits and len(consumers.get(n.input[1], [])) == 1:
            users = consumers.get(n.output[0], [])
            if len(users) != 1 or users[0].op_type not in ("Conv", "Gemm", "ConvTranspose") or len(users[0].input) < 3:
                continue
            xdq, wdq = producer.get(users[0].input[0]), producer.get(users[0].input[1])
            if not (xdq is not None and wdq is not None and xdq.op_type == wdq.op_type == "DequantizeLinear"
                    and xdq.input[1] in inits and wdq.input[1] in inits):
                continue
            prod = (value(xdq.input[1]).astype(np.float32) * value(wdq.input[1]).astype(np.float32)).astype(np.float32)
            stored = value(n.input[1])
            if prod.shape != stored.shape or not np.array_equal(prod.view(np.uint32), stored.view(np.uint32)):
                continue
            if has_zp and (value(n.input[2]).any() or len(consumers.get(n.input[2], [])) != 1):
                continue
            new = n.input[1] + "_mul"
            muls.append(helper.make_node("Mul", [xdq.input[1], wdq.input[1]], [new]))
            drop.add(n.input[1])
            if has_zp:
                drop.add(n.input[2])
                del n.input[2]
            n.input[1] = new
    kept = [i for i in g.initializer if i.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(muls + nodes)  # the Muls read initializers only: topological order holds
    _shorten_names(model)
    return model


def _shorten_names(model) -> None:
    g = model.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in g.node for a in n.attribute):
        return  # control flow with subgraphs: their outer-scope references would need renaming too; keep names
    keep = {i.name for i in g.input if i.name not in {x.name for x in g.initializer}} | {o.name for o in g.output}
    names: dict[str, str] = {}

    def short(s: str) -> str:
        if not s or s in keep:
            return s
        if s not in names:
            names[s] = format(len(names), "x")
        return names[s]

    for init in g.initializer:
        init.name = short(init.name)
        init.doc_string = ""
    for i in g.input:
        i.name = short(i.name)
    for n in g.node:
        n.name = ""
        n.doc_string = ""
        for k in range(len(n.input)):
            n.input[k] = short(n.input[k])
        for k in range(len(n.output)):
            n.output[k] = short(n.output[k])
    del g.value_info[:]
    model.doc_string = ""

