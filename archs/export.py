"""ONNX export with a dynamic batch axis, and a check that ONNX Runtime reproduces PyTorch's outputs."""
from __future__ import annotations

import contextlib
import io
import os
import typing
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None) -> Path:
    """Export `model` (eval mode, CPU) to ONNX with input 'input' and output 'logits', batch axis dynamic.

    Uses the TorchScript exporter (fast, ~0.2 s on small nets) and falls back to the dynamo exporter.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if input_shape is None:
        input_shape = model.spec.input_shape
    model = model.eval().cpu()
    x = torch.zeros((2, *tuple(input_shape)[1:]))
    tmp = path.with_suffix(".onnx.tmp")
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=["input"],
                                  output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                                  opset_version=17)
            except OSError:
                raise  # the disk, not the exporter: the other exporter would fail the same way
            except Exception:  # noqa: BLE001 - any exporter failure: try the other exporter
                batch = torch.export.Dim("batch", min=1, max=65536)
                torch.onnx.export(model, (x,), str(tmp), dynamo=True, input_names=["input"],
                                  output_names=["logits"], dynamic_shapes={"x": {0: batch}})
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()  # never leave a half-written model behind
        if isinstance(e, OSError) and e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    return path


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session with full graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_max_diff(model: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch's and ONNX Runtime's logits on `x`."""
    sess = onnx_session(path)
    with torch.no_grad():
        ref = model.eval().cpu()(x.cpu()).numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy().astype(np.float32)})[0]
    return float(np.abs(out - ref).max())


def onnx_io(path: str | os.PathLike) -> dict[str, typing.Any]:
    """Input and output of an ONNX artifact: name, element type and, where the tensor is quantized right at the
    model's edge (a QuantizeLinear reading the input, a DequantizeLinear writing the output), its scale and zero
    point. edgenas' QDQ models take and return float32; the first quantization records how the input is mapped
    to int8 (``q = round(x / scale) + zero_point``) when no float stem comes first."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    inits.update(consts)

    def qparams(node) -> dict[str, typing.Any]:
        out: dict[str, typing.Any] = {}
        if len(node.input) > 1 and node.input[1] in inits:
            s = inits[node.input[1]]
            out["scale"] = float(s) if s.size == 1 else [float(v) for v in s.ravel()]
        if len(node.input) > 2 and node.input[2] in inits:
            z = inits[node.input[2]]
            out["zero_point"] = int(z) if z.size == 1 else [int(v) for v in z.ravel()]
            out["quantized_dtype"] = str(z.dtype)
        elif "scale" in out:
            out["zero_point"], out["quantized_dtype"] = 0, "uint8"  # ONNX's default zero point type
        return out

    def elem(vi) -> str:
        return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name

    res: dict[str, typing.Any] = {}
    for key, vi in (("input", g.input[0]), ("output", g.output[0])):
        rec: dict[str, typing.Any] = {"name": vi.name, "dtype": elem(vi)}
        for n in g.node:
            if key == "input" and n.op_type == "QuantizeLinear" and n.input[0] == vi.name:
                rec.update(qparams(n))
                break
            if key == "output" and n.op_type == "DequantizeLinear" and vi.name in n.output:
                rec.update(qparams(n))
                break
        res[key] = rec
    return res
