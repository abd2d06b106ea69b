"""Deployment on microcontrollers: full-integer int8 TFLite export and TensorFlow Lite Micro (TFLM) runs.

- `export_int8(model, calib_x, path)`: litert-torch's PT2E quantizer (per-channel symmetric int8 weights,
  int8 activations calibrated on `calib_x`, int8 input and output), channel-last (NHWC) input so the device
  needs no transpose; a constant pad (shortcut 'A') stays NHWC (`_pad_stays_channel_last`). Tensor names are
  shortened to their index afterwards (the converter writes the whole module path of every tensor, up to 300
  bytes each, into flash); the weights keep their 16-byte alignment.
  A graph with float tensors between operators (QUANTIZE / DEQUANTIZE islands) is refused: it would not be
  full-integer.
- `tflm_allocation(path, arena_bytes)`: the arena TFLM really uses (total, head = planned activations, tail =
  runtime structs), read from its recording allocator in a subprocess (a too-small arena can abort TFLM).
- `tflm_predict(path, x, arena_bytes)`: the int8 model run by the TFLM C++ runtime (`tflite-micro`).
- `write_c_array(path, out_dir, arena_bytes)`: `model_data.cc` / `model_data.h`, the model as a 16-byte aligned
  byte array with the arena size to reserve, as TFLM's examples compile it into firmware.

Everything here needs the optional extra `.[mcu]` (litert-torch, tflite-micro); `require_mcu()` says so.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from archs.errors import UserError
from archs.io import atomic_write_bytes, atomic_write_text

__all__ = ["MCU_EXTRA", "require_mcu", "TfliteGraph", "read_graph", "export_int8", "tflm_allocation",
           "tflm_predict", "write_c_array", "quantize_input"]

MCU_EXTRA = "pip install -e '.[mcu]'"
#: operators that mean the graph is not full-integer (float computation between int8 operators)
FLOAT_ISLAND_OPS = ("QUANTIZE", "DEQUANTIZE")
_ALIGN = 16


@contextlib.contextmanager
def native_logs_held() -> Iterator[None]:
    """Hold what is written to file descriptor 2 in a temporary file, and write it out only if the block fails.

    The converter's C++ libraries (TensorFlow's oneDNN note, absl's "InitializeLog" warning, MLIR's op counts)
    and torch's import-time deprecation notes log straight to descriptor 2, past Python's `sys.stderr`, so
    `contextlib.redirect_stderr` cannot quiet them: every export printed three lines of noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:  # what the libraries said may explain the failure
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))
                sys.stderr.flush()


def require_mcu() -> None:
    """Import the converter and the TFLM runtime, or fail with one line naming the optional extra."""
    missing = None
    with native_logs_held():  # caught inside: a missing extra is the one line below, not the libraries' logs too
        try:
            import litert_torch  # noqa: F401
            from tflite_micro.python.tflite_micro import runtime  # noqa: F401
        except ImportError as e:
            missing = e
    if missing is not None:
        raise UserError(f"the microcontroller path needs the optional extra .[mcu] (litert-torch and tflite-micro): "
                        f"{MCU_EXTRA} ({type(missing).__name__}: {missing})")


def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    return fb


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass
class TfliteGraph:
    """The operators of a .tflite file: [(name, [input tensor ids], [output tensor ids])] and its tensors
    (shape, type name, constant or not); enough to check a graph and to compare it with `archs.memory`."""

    ops: list[tuple[str, list[int], list[int]]]
    tensors: list[dict[str, Any]]
    inputs: list[int]
    outputs: list[int]
    file_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def op_names(self) -> list[str]:
        return [o[0] for o in self.ops]


def _load_model_t(data: bytes):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.convert_bytearray_to_object(bytearray(data))


def read_graph(path: str | os.PathLike) -> TfliteGraph:
    """Operators and tensors of a .tflite file (main subgraph)."""
    from tflite_micro.python.tflite_micro import runtime

    fb = _schema()
    data = Path(path).read_bytes()
    m = _load_model_t(data)
    ops_names, types = _enum_names(fb.BuiltinOperator), _enum_names(fb.TensorType)
    sg = m.subgraphs[0]
    ops = []
    for op in sg.operators or []:
        code = runtime.get_builtin_code_from_operator_code(m.operatorCodes[op.opcodeIndex])
        ops.append((ops_names.get(code, f"op{code}"), [int(i) for i in op.inputs], [int(i) for i in op.outputs]))
    tensors = []
    for t in sg.tensors:
        buf = m.buffers[t.buffer]
        const = buf.data is not None and len(buf.data) > 0
        q = t.quantization
        tensors.append({"shape": [int(s) for s in (t.shape if t.shape is not None else [])],
                        "type": types.get(t.type, str(t.type)), "const": bool(const),
                        "channels": 0 if q is None or q.scale is None else len(q.scale),
                        "zero_points": 0 if q is None or q.zeroPoint is None else len(q.zeroPoint)})
    return TfliteGraph(ops, tensors, [int(i) for i in sg.inputs], [int(i) for i in sg.outputs], len(data))


def _check_full_integer(g: TfliteGraph, path: Path) -> None:
    # QUANTIZE int8 -> int8 is a requantization TFLM runs in integers; from or to float it is a float island
    islands = sorted({n for n, ins, outs in g.ops if n in FLOAT_ISLAND_OPS
                      and any(g.tensors[t]["type"] == "FLOAT32" for t in ins[:1] + outs)})
    floats = sorted({g.ops[i][0] for i, (_, _, outs) in enumerate(g.ops)
                     if any(g.tensors[t]["type"] == "FLOAT32" for t in outs)})
    io = [g.tensors[t]["type"] for t in g.inputs + g.outputs]
    if islands or floats or any(t != "INT8" for t in io):
        raise UserError(f"{path.name} is not full-integer int8: float computation in "
                        f"{', '.join(floats or islands) or 'the input/output'} "
                        f"({', '.join(islands) or 'no'} QUANTIZE/DEQUANTIZE ops; input/output types {', '.join(io)})")


class _AlignedBuffer:
    """Packs a flatbuffer `Buffer` whose data vector is 16-byte aligned (what the TFLite converter writes and
    TFLM kernels expect for weights); the object API's own packing aligns bytes to 1."""

    def __init__(self, data: np.ndarray | None):
        self.data = data

    def Pack(self, builder):  # noqa: N802 - the flatbuffers object-API name
        fb = _schema()
        vec = None
        if self.data is not None and len(self.data):
            payload = np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(payload), _ALIGN)
            builder.head = builder.head - len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            vec = builder.EndVector()
        fb.BufferStart(builder)
        if vec is not None:
            fb.BufferAddData(builder, vec)
        return fb.BufferEnd(builder)


def shorten_names(data: bytes) -> bytes:
    """The same model with every tensor named by its index ("t12") and without what no micro runtime reads: the
    converter's names (module paths, up to hundreds of bytes each), its description, signature and metadata
    (min_runtime_version, keep_stablehlo_constant; TFLM reads none of them). Weights stay 16-byte aligned."""
    import flatbuffers

    m = _load_model_t(data)
    for sg in m.subgraphs:
        for i, t in enumerate(sg.tensors):
            t.name = f"t{i}"
    meta = {md.buffer for md in m.metadata or []}
    used = {t.buffer for sg in m.subgraphs for t in sg.tensors}
    if not meta & used and not m.metadataBuffer:
        keep = [b for b in range(len(m.buffers)) if b not in meta]
        new_index = {b: i for i, b in enumerate(keep)}
        m.buffers = [m.buffers[b] for b in keep]
        for sg in m.subgraphs:
            for t in sg.tensors:
                t.buffer = new_index[t.buffer]
        m.metadata, m.signatureDefs, m.description = None, None, None
    for b in range(len(m.buffers)):
        buf = m.buffers[b]
        if buf.offset:  # data outside the flatbuffer (models > 2 GB): not ours to rewrite
            return data
        m.buffers[b] = _AlignedBuffer(None if buf.data is None else np.asarray(buf.data, dtype=np.uint8))
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _full_integer_quantizer():
    """litert-torch's PT2E quantizer (per-channel symmetric int8 weights, static int8 activations), extended so
    that no operator is left float: its own patterns cover conv, linear, add, mul, cat, max pool, mean and
    sigmoid; here ReLU / ReLU6 / clamp after any quantized op take over that op's output observer (the converter
    then fuses them into it), layout and pooling ops share their input's quantization, and every other float op
    (hardswish, average pool after padding, ...) gets int8 input and output observers."""
    import torch.fx
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    aten = torch.ops.aten
    fuse = {aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default,
            aten.clamp.default, aten.relu6.default} if hasattr(aten, "relu6") else \
        {aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default, aten.clamp.default}
    shared = {aten.avg_pool2d.default, aten.constant_pad_nd.default, aten.pad.default, aten.slice.Tensor,
              aten.max_pool2d.default, aten.view.default, aten.reshape.default, aten.permute.default,
              aten.flatten.using_ints, aten.clone.default, aten.dropout.default, aten.squeeze.dim,
              aten.unsqueeze.default, aten.transpose.int, aten.contiguous.default, aten._unsafe_view.default,
              aten.alias.default}
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    act = config.input_activation

    def out_spec(n):
        a = n.meta.get("quantization_annotation") if isinstance(n, torch.fx.Node) else None
        return a.output_qspec if a is not None and a._annotated else None

    def is_float(n) -> bool:
        v = n.meta.get("val")
        return isinstance(v, torch.Tensor) and v.dtype.is_floating_point

    class FullInteger(PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            for n in model.graph.nodes:
                if n.op != "call_function" or not is_float(n):
                    continue
                a = n.meta.get("quantization_annotation")
                if a is not None and a._annotated:
                    continue
                src = n.args[0] if n.args and isinstance(n.args[0], torch.fx.Node) else None
                if n.target in fuse and src is not None and out_spec(src) is not None and len(src.users) == 1 \
                        and src.op == "call_function" and src.target not in shared:
                    n.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=out_spec(src),
                                                                               _annotated=True)
                    src.meta["quantization_annotation"].output_qspec = None
                elif (n.target in shared or n.target in fuse) and src is not None:
                    if out_spec(src) is not None:
                        spec = SharedQuantizationSpec(src)
                        n.meta["quantization_annotation"] = QuantizationAnnotation(
                            input_qspec_map={src: spec}, output_qspec=spec, _annotated=True)
                    else:
                        n.meta["quantization_annotation"] = QuantizationAnnotation(
                            input_qspec_map={src: act}, output_qspec=SharedQuantizationSpec((src, n)), _annotated=True)
                else:
                    inputs = {x: act for x in list(n.args) + list(n.kwargs.values())
                              if isinstance(x, torch.fx.Node) and is_float(x)}
                    n.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map=inputs, output_qspec=act, _annotated=True)
            for n in model.graph.nodes:  # concatenations: one scale for all inputs and the output
                if n.op == "call_function" and n.target == aten.cat.default and is_float(n):
                    share_concat(n)
            return model

    def share_concat(n) -> None:
        """Inputs and output of a concatenation share one observer (TFLite's int8 CONCATENATION wants one scale):
        otherwise the converter requantizes (an extra QUANTIZE op) any input that also feeds another op, and whether
        it must depends on the calibration data (whose range is wider), which no memory model could predict."""
        ins = [x for x in n.args[0] if isinstance(x, torch.fx.Node)]
        if not ins or out_spec(ins[0]) is None:
            return
        root = SharedQuantizationSpec(ins[0])
        for x in ins[1:]:
            if len(x.users) == 1 and out_spec(x) is not None:  # the output feeds only the concatenation
                x.meta["quantization_annotation"].output_qspec = root
        n.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={x: root for x in ins}, output_qspec=root, _annotated=True)

    return FullInteger().set_global(config)


def _pad_stays_channel_last() -> None:
    """Teach litert-torch's layout pass to run a constant pad (F.pad: the zero channels of shortcut 'A') in NHWC.

    The pass (`optimize_layout_transposes_pass`) knows no NHWC form of `aten.constant_pad_nd`, so it forced the pad
    into NCHW and placed the TRANSPOSEs around it by a min cut over the whole graph: where they went (before or
    after the slices, on the shortcut or on both inputs of the ADD and the ops after it) depended on the
    neighbouring ops, and a TRANSPOSE whose two sides got different scales could fail the converter. Rewritten
    here, the pad takes NHWC padding ((c, w, h, n) from the last dimension) and the shortcut converts to its
    STRIDED_SLICEs and one PAD, with no layout op. Registered once per process (an entry of the pass's registry
    in the pinned litert-torch 0.10.0); only 4-D pads reach it."""
    from litert_torch._convert.fx_passes.optimize_layout_transposes_pass import layout_rewrite

    aten = torch.ops.aten
    if aten.constant_pad_nd.default in layout_rewrite.rewriters:
        return

    def constant_pad_nhwc(node: torch.fx.Node) -> None:
        pads = list(node.args[1]) + [0] * (8 - len(node.args[1]))  # NCHW from the last dim: w, h, c, n
        node.args = (node.args[0], pads[4:6] + pads[0:2] + pads[2:4] + pads[6:8]) + tuple(node.args[2:])

    layout_rewrite.rewriters[aten.constant_pad_nd.default] = constant_pad_nhwc


class _SiLU(nn.Module):
    """x * sigmoid(x) written out, so the quantizer sees (and quantizes) the LOGISTIC and MUL the converter makes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class _HardSigmoid(nn.Module):
    """relu6(x + 3) / 6 written out with tensor constants, so that the ADD (ReLU6 fused) and MUL the converter
    makes are quantized (nn.Hardsigmoid is lowered after quantization, to float ops)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("three", torch.tensor(3.0))
        self.register_buffer("sixth", torch.tensor(1 / 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu6(x + self.three) * self.sixth


class _ChannelLast(nn.Module):
    """NHWC input for an NCHW model: the converter folds this permutation into its own layout change."""

    def __init__(self, model: nn.Module):
        super().__init__()
        import copy

        self.model = copy.deepcopy(model)
        for name, m in list(self.model.named_modules()):
            if isinstance(m, (nn.SiLU, nn.Hardsigmoid)):
                parent, _, attr = name.rpartition(".")
                setattr(self.model.get_submodule(parent) if parent else self.model, attr,
                        _SiLU() if isinstance(m, nn.SiLU) else _HardSigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


def export_int8(model: nn.Module, calib_x: torch.Tensor, path: str | os.PathLike) -> dict[str, Any]:
    """Full-integer int8 .tflite of `model` (NCHW float) with NHWC int8 input, calibrated on `calib_x`
    (float NCHW images, one forward each). Returns the operators and the input/output scale and zero point."""
    require_mcu()
    import io
    import warnings

    with native_logs_held():
        import litert_torch
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    path = Path(path)
    model = model.cpu().eval()
    calib = calib_x.detach().float().cpu().permute(0, 2, 3, 1).contiguous()
    example = (calib[:1],)
    quantizer = _full_integer_quantizer()
    _pad_stays_channel_last()
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            native_logs_held(), torch.no_grad():
        warnings.simplefilter("ignore")
        graph = torch.export.export(_ChannelLast(model).eval(), example).module()
        prepared = prepare_pt2e(graph, quantizer)
        for i in range(len(calib)):
            prepared(calib[i:i + 1])
        converted = convert_pt2e(prepared, fold_quantize=False)
        edge = litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
        tmp = path.with_name(f".{path.name}.raw")
        try:
            edge.export(str(tmp))
            raw = tmp.read_bytes()
        finally:
            tmp.unlink(missing_ok=True)
    atomic_write_bytes(path, shorten_names(raw))
    g = read_graph(path)
    _check_full_integer(g, path)
    from tflite_micro.python.tflite_micro import runtime

    m = _load_model_t(path.read_bytes())
    sg = m.subgraphs[0]
    qin, qout = sg.tensors[sg.inputs[0]].quantization, sg.tensors[sg.outputs[0]].quantization
    del runtime
    return {"ops": g.op_names(), "file_bytes": g.file_bytes, "converter_bytes": len(raw),
            "input_shape": g.tensors[g.inputs[0]]["shape"], "input_layout": "NHWC",
            "input_scale": float(qin.scale[0]), "input_zero_point": int(qin.zeroPoint[0]),
            "output_scale": float(qout.scale[0]), "output_zero_point": int(qout.zeroPoint[0])}


def quantize_input(x_nchw: torch.Tensor, scale: float, zero_point: int) -> np.ndarray:
    """Float NCHW images -> the int8 NHWC tensors the exported model takes."""
    x = x_nchw.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)


# ----------------------------------------------------------------------------------------------------------------
# TFLM runs (subprocess: an arena that is too small can abort the runtime)
# ----------------------------------------------------------------------------------------------------------------
_ALLOC_RE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_PART_RE = re.compile(r"'([^']+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+) ")
_MISSING_OP_RE = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'")


def _run_worker(path: Path, arena: int, inp: str = "", out: str = "", timeout: float = 600) -> tuple[int, str]:
    worker = Path(__file__).with_name("tflm_worker.py")
    args = [sys.executable, str(worker), str(path), str(int(arena))] + ([inp, out] if inp else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def tflm_allocation(path: str | os.PathLike, arena_bytes: int) -> dict[str, int] | None:
    """{"total", "head", "tail"} bytes TFLM's recording allocator reports for the model in an arena of
    `arena_bytes`, or None when it does not fit. An operator TFLM lacks is a UserError naming it."""
    require_mcu()
    rc, text = _run_worker(Path(path), arena_bytes)
    return _parse_allocation(Path(path), rc, text)


def _parse_allocation(path: Path, rc: int, text: str) -> dict[str, int] | None:
    missing = _MISSING_OP_RE.search(text)
    if missing:
        raise UserError(f"{path.name}: TensorFlow Lite Micro has no kernel for operator {missing[1]}")
    found: dict = {k: int(v) for k, v in _ALLOC_RE.findall(text)}
    if rc == 0 and len(found) == 3:
        found["parts"] = {name: [int(u), int(r), int(n)] for name, u, r, n in _PART_RE.findall(text)}
        return found
    if re.search(r"(?i)fail(ed)? to (allocate|resize)|arena|too small|not enough|exceed", text):
        return None
    raise UserError(f"{path.name}: TensorFlow Lite Micro failed (exit {rc}): "
                    f"{' '.join(text.strip().splitlines()[-3:])[:300]}")


def min_arena(path: str | os.PathLike, start: int) -> dict[str, int]:
    """The allocation report in an arena TFLM accepts, doubling from `start` (bytes) until it fits."""
    hi = max(1024, int(start))
    rep = tflm_allocation(path, hi)
    while rep is None:
        hi *= 2
        if hi > 1 << 31:
            raise UserError(f"{Path(path).name}: TensorFlow Lite Micro does not fit even a 2 GB arena")
        rep = tflm_allocation(path, hi)
    return {**rep, "arena_run": hi}


def smallest_arena(path: str | os.PathLike, start: int) -> int:
    """The smallest arena (bytes, to 16 bytes) in which TFLM allocates the model. It can exceed the total the
    recording allocator reports afterwards: planning needs temporary room at the head."""
    rep = min_arena(path, start)
    lo, hi = max(16, rep["total"] - 16), rep["arena_run"]

    def fits(arena: int) -> bool:
        # below an arena that fits, any failure is one of not fitting: a kernel whose temporary tensors found no
        # room fails to prepare ("false was not true"), or TFLM even crashes (exit -11, "All temp buffers must be
        # freed before calling ResetTempAllocations()", seen for a fully-connected kernel)
        rc, text = _run_worker(Path(path), arena)
        return rc == 0 and _parse_allocation(Path(path), rc, text) is not None

    if fits(lo):
        return lo
    while hi - lo > 16:
        mid = (lo + hi) // 2 // 16 * 16
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def tflm_predict(path: str | os.PathLike, x_int8: np.ndarray, arena_bytes: int) -> tuple[np.ndarray, dict]:
    """Int8 outputs of the model for every NHWC int8 input in `x_int8`, run by TFLM in an arena of
    `arena_bytes`, and the allocation report. A model that does not fit the arena is a UserError."""
    require_mcu()
    import tempfile

    path = Path(path)
    with tempfile.TemporaryDirectory() as td:
        inp, out = os.path.join(td, "x.npy"), os.path.join(td, "y.npy")
        np.save(inp, np.ascontiguousarray(x_int8, dtype=np.int8))
        rc, text = _run_worker(path, arena_bytes, inp, out)
        rep = _parse_allocation(path, rc, text)
        if rep is None:
            raise UserError(f"{path.name} does not fit a TensorFlow Lite Micro arena of {arena_bytes:,} bytes "
                            f"({arena_bytes / 1024:.1f} kB)")
        return np.load(out), rep


# ----------------------------------------------------------------------------------------------------------------
# Firmware source
# ----------------------------------------------------------------------------------------------------------------
def write_c_array(tflite_path: str | os.PathLike, out_dir: str | os.PathLike, arena_bytes: int,
                  name: str = "g_model", info: dict | None = None) -> tuple[Path, Path]:
    """model_data.h / model_data.cc: the .tflite as `alignas(16) const unsigned char g_model[]` plus its length
    and the tensor-arena size to reserve (`kTensorArenaSize`, bytes), as TFLM's examples compile a model."""
    data = Path(tflite_path).read_bytes()
    out = Path(out_dir)
    info = info or {}
    guard = "EDGENAS_MODEL_DATA_H_"
    notes = "".join(f"// {k}: {v}\n" for k, v in info.items())
    header = (f"// Generated by edgenas (python -m compress.run ... --export tflite). Int8 TFLite model for\n"
              f"// TensorFlow Lite Micro; input NHWC int8.\n{notes}"
              f"#ifndef {guard}\n#define {guard}\n\n"
              f"// Bytes of tensor arena to reserve: the arena TensorFlow Lite Micro ran the model in.\n"
              f"constexpr unsigned int kTensorArenaSize = {int(arena_bytes)};\n"
              f"extern const unsigned char {name}[];\nextern const unsigned int {name}_len;\n\n#endif  // {guard}\n")
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 12]) for i in range(0, len(data), 12)]
    source = (f'#include "model_data.h"\n\n'
              f"alignas(16) const unsigned char {name}[] = {{\n  " + ",\n  ".join(rows) + "\n};\n"
              f"const unsigned int {name}_len = {len(data)};\n")
    h, cc = out / "model_data.h", out / "model_data.cc"
    atomic_write_text(h, header)
    atomic_write_text(cc, source)
    return h, cc


# ----------------------------------------------------------------------------------------------------------------
# The --export tflite stage
# ----------------------------------------------------------------------------------------------------------------
class TflmModel:
    """The exported int8 model run in-process by TFLM (after a subprocess showed that it fits its arena): a callable
    from float NCHW images to dequantized logits, so the stage runner measures it like any other model."""

    def __init__(self, path: str | os.PathLike, arena_bytes: int, info: dict):
        from tflite_micro.python.tflite_micro import runtime

        self.path, self.info = Path(path), info
        self.interpreter = runtime.Interpreter.from_file(str(path), arena_size=int(arena_bytes))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ip, info = self.interpreter, self.info
        xs = quantize_input(torch.as_tensor(x), info["input_scale"], info["input_zero_point"])
        out = []
        for xi in xs:
            ip.set_input(xi[None], 0)
            ip.invoke()
            out.append(np.array(ip.get_output(0), dtype=np.float32).reshape(-1))
        y = (np.stack(out) - info["output_zero_point"]) * info["output_scale"]
        return torch.from_numpy(y.astype(np.float32))


def export_stage(model: nn.Module, spec, calib: torch.Tensor, test, d: Path, arena_bytes: int | None = None,
                 structure_changed: bool = False) -> tuple[TflmModel, dict, dict, Path]:
    """Export `model` to d/model_int8.tflite (+ model_data.cc/.h), size its TFLM arena from `archs.memory(spec)`
    (or `arena_bytes`; by probing TFLM when the layers no longer match the spec), check that it fits, and
    return (the model run by TFLM, the stage's row columns, its details, the artifact)."""
    from archs.memory import memory
    from training.loop import evaluate

    require_mcu()
    path = d / "model_int8.tflite"
    info = export_int8(model, calib, path)
    est = None if structure_changed else memory(spec)
    note = ""
    if arena_bytes is None:
        arena_bytes = est.arena_bytes if est is not None else smallest_arena(path, 4 * path.stat().st_size)
        rep = tflm_allocation(path, arena_bytes)
        if rep is None:  # the estimate was too small: run anyway in the smallest arena TFLM accepts, and say so
            need = smallest_arena(path, arena_bytes)
            note = (f"archs.memory's arena of {arena_bytes:,} bytes was too small for TFLM, which needed {need:,} "
                    "bytes (run with that)")
            arena_bytes, rep = need, tflm_allocation(path, need)
    else:
        rep = tflm_allocation(path, arena_bytes)
    if rep is None:
        raise UserError(f"{path.name} does not fit a TensorFlow Lite Micro arena of {arena_bytes:,} bytes "
                        f"({arena_bytes / 1024:.1f} kB); it needs {smallest_arena(path, arena_bytes):,} bytes")
    write_c_array(path, d, int(arena_bytes), info={"input": f"{info['input_shape']} int8 NHWC, scale "
                                                         f"{info['input_scale']:.8g}, zero point {info['input_zero_point']}",
                                               "output": f"int8, scale {info['output_scale']:.8g}, zero point "
                                                         f"{info['output_zero_point']}"})
    fp32 = evaluate(model, test)
    tm = TflmModel(path, arena_bytes, info)
    row = {"arena_bytes": rep["total"], "arena_head_bytes": rep["head"], "arena_tail_bytes": rep["tail"],
           "flash_bytes": path.stat().st_size,
           "arena_bytes_est": est.arena_bytes if est is not None else float("nan"),
           "arena_head_bytes_est": est.activation_bytes if est is not None else float("nan"),
           "flash_bytes_est": est.flash_bytes if est is not None else float("nan")}
    details = {**info, "arena_size_run": int(arena_bytes), "tflm_allocation": rep, "fp32_test_acc": fp32,
               "memory_model": None if est is None else est.to_dict(), "arena_note": note,
               "note": "TFLM (tflite-micro) reference kernels; arena and flash in bytes"}
    return tm, row, details, path


def format_mcu_table(df) -> str:
    """The --export tflite rows for a terminal: TFLM int8 accuracy and its change, arena and flash in kB
    (1 kB = 1,024 bytes), measured beside archs.memory's estimate."""
    from tabulate import tabulate

    def kb(v) -> str:
        return "n/a" if v != v else f"{v / 1024:.2f}"

    rows = [[r.stage, f"{100 * r.test_acc:.2f}", f"{100 * r.int8_acc_change:+.2f}", kb(r.arena_bytes),
             kb(r.arena_bytes_est), kb(r.arena_head_bytes), kb(r.arena_head_bytes_est), kb(r.flash_bytes),
             kb(r.flash_bytes_est)] for r in df.itertuples()]
    return tabulate(rows, headers=["stage", "TFLM int8 test acc %", "vs fp32 points", "arena kB", "arena est kB",
                                   "activations kB", "activations est kB", "flash kB", "flash est kB"],
                    tablefmt="github") + "\n(TensorFlow Lite Micro; kB = 1,024 bytes)"
