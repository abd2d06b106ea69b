"""'basic': the ResNet basic block (He et al. 2016) with 'A' (zero-pad) or 'B' (1x1 conv) shortcuts."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..registry import Arg, BlockKind, register
from ..tflite_graph import conv
from .layers import ConvBNAct, make_act


class BasicResidual(nn.Module):
    """ResNet basic block: two kxk conv+BN, identity or projected shortcut ('A' zero-pad as in CIFAR ResNets, 'B' 1x1 conv)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3, shortcut: str = "B",
                 norm: bool = True, act: str = "relu"):
        super().__init__()
        if shortcut not in ("A", "B"):
            raise SpecError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = ConvBNAct(in_ch, out_ch, kernel, stride, norm=norm, act=act)
        self.conv2 = ConvBNAct(out_ch, out_ch, kernel, 1, norm=norm, act=None)
        self.act = make_act(act)
        self.stride, self.pad = stride, out_ch - in_ch
        self.mode = "identity" if stride == 1 and in_ch == out_ch else shortcut
        if self.mode == "A" and out_ch < in_ch:
            raise SpecError("shortcut 'A' cannot reduce channels; use 'B'")
        self.proj = ConvBNAct(in_ch, out_ch, 1, stride, norm=norm, act=None) if self.mode == "B" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "B":
            sc = self.proj(x)
        elif self.mode == "A":
            sc = x[:, :, ::self.stride, ::self.stride]
            if self.pad:
                sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            sc = x
        return self.act(self.conv2(self.conv1(x)) + sc)


def _stage(s, i, spec, c, out):
    shortcut = s.arg("shortcut")
    if shortcut == "A" and (s.stride != 1 or c != out) and out < c:  # later blocks: stride 1, out -> out
        raise SpecError(f"stages[{i}]: shortcut 'A' cannot reduce channels ({c} -> {out}); use 'B'")
    return s.kernel, s.kernel // 2, {"shortcut": shortcut}, {"shortcut": shortcut} if s.repeats > 1 else None


def _cost(b, norm):
    mb, pb = (2, 2) if norm else (0, 1)
    k, cin, cout, hw = b.kernel, b.in_ch, b.out_ch, b.h_out * b.w_out
    kk = k * k
    m = cout * hw * (cin * kk + mb) + cout * hw * (cout * kk + mb)
    p = cout * (cin * kk + pb) + cout * (cout * kk + pb)
    if b.extra["shortcut"] == "B" and (b.stride != 1 or cin != cout):
        m += cout * hw * (cin + mb)
        p += cout * (cin + pb)
    return m, p


def _tflite(g, b, spec, x):
    k = b.kernel
    identity = b.stride == 1 and b.in_ch == b.out_ch
    sc = x
    ho, wo = (b.h_in - 1) // b.stride + 1, (b.w_in - 1) // b.stride + 1
    if not identity and b.extra["shortcut"] == "B":  # the shortcut runs first (forward order)
        sc = conv(g, x, b.in_ch, b.out_ch, 1, b.stride, 0, b.h_in, b.w_in, 1, None)[0]
    elif not identity:  # 'A': subsample, then zero-pad the channels, all in NHWC (compress.tflite keeps the pad there)
        # x[:, :, ::s, ::s]: one STRIDED_SLICE per dimension that shrinks; its begin, end and strides are int32[4]
        # constant tensors, stored once per value: the begin [0, 0, 0, 0] is shared, the end is the input's shape
        h, w, c = b.h_in, b.w_in, b.in_ch
        for dim, size in (("h", h), ("w", w)):
            if b.stride > 1 and size > 1:
                g.small_const(("i32x4", 0, 0, 0, 0), 16)
                g.small_const(("i32x4", 1, h, w, c), 16)
                g.small_const(("i32x4", 1, b.stride, 1, 1) if dim == "h" else ("i32x4", 1, 1, b.stride, 1), 16)
                h, w = (ho, w) if dim == "h" else (h, wo)
                sc = g.op("STRIDED_SLICE", (sc,), c * h * w)
        if b.out_ch > c:  # one PAD of the channel dimension, its paddings an int32[4, 2] constant
            lo = (b.out_ch - c) // 2
            g.small_const(("pad_nhwc", 0, 0, 0, 0, 0, 0, lo, b.out_ch - c - lo), 32)
            sc = g.op("PAD", (sc,), b.out_ch * ho * wo)
    t, ho, wo = conv(g, x, b.in_ch, b.out_ch, k, b.stride, k // 2, b.h_in, b.w_in, 1, spec.act)
    t = conv(g, t, b.out_ch, b.out_ch, k, 1, k // 2, ho, wo, 1, None)[0]
    n = b.out_ch * ho * wo
    t = g.op("ADD", (t, sc), n)
    return g.activation(t, n, spec.act)


KIND = register(BlockKind(
    "basic", BasicResidual, "two kxk conv + BN, identity or projected shortcut (ResNet)", _stage,
    make=lambda b, n, a: BasicResidual(b.in_ch, b.out_ch, b.stride, b.kernel, b.extra["shortcut"], norm=n, act=a),
    cost=_cost, tflite_graph=_tflite,
    args={"shortcut": Arg(str, "B", lambda v, s: v in ("A", "B"), "must be 'A' (zero-pad) or 'B' (1x1 conv)")},
    examples={"shortcut": ("A", "B")},
))
