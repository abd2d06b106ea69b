"""'dws': MobileNetV1's depthwise-separable block (Howard et al. 2017)."""
from __future__ import annotations

import torch
from torch import nn

from ..registry import BlockKind, register
from ..tflite_graph import conv
from .layers import ConvBNAct


class DepthwiseSeparable(nn.Module):
    """MobileNetV1 block: depthwise kxk conv (stride) + BN + act, then pointwise 1x1 + BN + act."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, norm: bool = True,
                 act: str = "relu"):
        super().__init__()
        self.dw = ConvBNAct(in_ch, in_ch, kernel, stride, groups=in_ch, norm=norm, act=act)
        self.pw = ConvBNAct(in_ch, out_ch, 1, norm=norm, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


def _cost(b, norm):
    mb, pb = (2, 2) if norm else (0, 1)
    cin, cout, kk, hw = b.in_ch, b.out_ch, b.kernel * b.kernel, b.h_out * b.w_out
    return cin * hw * (kk + mb) + cout * hw * (cin + mb), cin * (kk + pb) + cout * (cin + pb)


def _tflite(g, b, spec, x):
    t, ho, wo = conv(g, x, b.in_ch, b.in_ch, b.kernel, b.stride, b.kernel // 2, b.h_in, b.w_in, b.in_ch, spec.act)
    return conv(g, t, b.in_ch, b.out_ch, 1, 1, 0, ho, wo, 1, spec.act)[0]


KIND = register(BlockKind(
    "dws", DepthwiseSeparable, "depthwise kxk + pointwise 1x1, each with BN + activation (MobileNetV1)",
    lambda s, i, spec, c, out: (s.kernel, s.kernel // 2, {}, {} if s.repeats > 1 else None),
    make=lambda b, n, a: DepthwiseSeparable(b.in_ch, b.out_ch, b.kernel, b.stride, norm=n, act=a),
    cost=_cost, tflite_graph=_tflite, search=(), default_space=True,
    templates={"mobilenet-like": {"stem_channels": 16, "stages": [(32, "stride", {}), (64, "stride", {})],
                                  "head": "pool", "dropout": 0.0}},
))
