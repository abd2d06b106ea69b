"""'ir': MobileNetV2's inverted residual (Sandler et al. 2018), optionally with squeeze-excite."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SpecError
from ..registry import Arg, BlockKind, Choice, register
from ..shapes import ir_hidden, se_channels
from ..tflite_graph import conv, squeeze_excite
from .layers import ConvBNAct, SqueezeExcite, check_positive, se_cost


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> depthwise kxk -> [squeeze-excite] -> 1x1 linear project; residual if shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, expand: float = 6, kernel: int = 3,
                 se: float = 0.0, norm: bool = True, act: str = "relu6"):
        super().__init__()
        check_positive("in_ch", in_ch), check_positive("out_ch", out_ch)
        if expand < 1:
            raise SpecError(f"expand ratio must be >= 1, got {expand}")
        hidden = ir_hidden(in_ch, expand)
        self.expand = ConvBNAct(in_ch, hidden, 1, norm=norm, act=act) if expand != 1 else nn.Identity()
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, norm=norm, act=act)
        self.se = SqueezeExcite(hidden, se) if se else nn.Identity()
        self.project = ConvBNAct(hidden, out_ch, 1, norm=norm, act=None)
        self.use_res = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return out + x if self.use_res else out


def _extra(cin: int, expand: float, se: float) -> dict:
    hidden = ir_hidden(cin, expand)
    return {"expand": expand, "hidden": hidden, "se": se, "se_ch": se_channels(hidden, se) if se else 0}


def _stage(s, i, spec, c, out):
    expand, se = s.arg("expand"), s.arg("se")
    return s.kernel, s.kernel // 2, _extra(c, expand, se), _extra(out, expand, se) if s.repeats > 1 else None


def inverted_residual_cost(b, norm: bool, expands: bool) -> tuple[int, int]:
    """(MACs, params) of [1x1 expand] -> depthwise kxk -> [SE] -> 1x1 project on a resolved block whose `extra`
    holds `hidden`, `se` and `se_ch` (MobileNetV2's and MobileNetV3's blocks alike)."""
    mb, pb = (2, 2) if norm else (0, 1)
    x, k, cin, cout, hw = b.extra, b.kernel, b.in_ch, b.out_ch, b.h_out * b.w_out
    hid = x["hidden"]
    kk = k * k
    m = hid * hw * (kk + mb) + cout * hw * (hid + mb)
    p = hid * (kk + pb) + cout * (hid + pb)
    if expands:
        m += hid * b.h_in * b.w_in * (cin + mb)
        p += hid * (cin + pb)
    if x["se"]:
        sm, sp = se_cost(hid, x["se_ch"], b.h_out, b.w_out)
        m, p = m + sm, p + sp
    return m, p


def inverted_residual_tflite(g, b, x: int, expands: bool, act: str | None, gate: str) -> int:
    """[1x1 expand + act] -> depthwise kxk + act -> [squeeze-excite with `gate`] -> 1x1 project, + the input
    when the shape allows (the ADD keeps it alive): MobileNetV2's and MobileNetV3's converted graphs alike."""
    hid, k, e = b.extra["hidden"], b.kernel, b.extra
    t = x
    if expands:
        t = conv(g, t, b.in_ch, hid, 1, 1, 0, b.h_in, b.w_in, 1, act)[0]
    t, ho, wo = conv(g, t, hid, hid, k, b.stride, k // 2, b.h_in, b.w_in, hid, act)
    if e["se"]:
        t = squeeze_excite(g, t, hid, e["se_ch"], ho * wo, gate)
    t = conv(g, t, hid, b.out_ch, 1, 1, 0, ho, wo, 1, None)[0]
    if b.stride == 1 and b.in_ch == b.out_ch:
        t = g.op("ADD", (t, x), b.out_ch * ho * wo)
    return t


KIND = register(BlockKind(
    "ir", InvertedResidual, "1x1 expand, depthwise kxk, [squeeze-excite], 1x1 linear project; residual (MobileNetV2)",
    _stage,
    make=lambda b, n, a: InvertedResidual(b.in_ch, b.out_ch, b.stride, b.extra["expand"], b.kernel, b.extra["se"],
                                          norm=n, act=a),
    cost=lambda b, norm: inverted_residual_cost(b, norm, b.extra["expand"] != 1),
    tflite_graph=lambda g, b, spec, x: inverted_residual_tflite(g, b, x, b.extra["expand"] != 1, spec.act, "sigmoid"),
    args={"expand": Arg((int, float), 6, lambda v, s: v >= 1, "must be >= 1"),
          "se": Arg((int, float), 0.0, lambda v, s: 0 <= v < 1, "must be in [0, 1)", "se (squeeze-excite ratio)")},
    examples={"expand": (1, 2, 3, 4, 6, 2.5), "se": (0.0, 0.0, 0.125, 0.25, 0.5)},
    search=(Choice("expand", space_field="expand"), Choice("se", space_field="se")), default_space=True,
    smallest=lambda space: {"expand": min(space.expand), "se": 0.0},
    templates={"mobilenetv2-like": {"stem_channels": 16, "stages": [(24, "stride", {"expand": 4, "se": 0.0}),
                                                                    (32, "stride", {"expand": 4, "se": 0.0})],
                                    "head": "pool", "dropout": 0.0}},
))
