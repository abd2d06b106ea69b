"""'ghost': GhostNet's bottleneck (Han et al. 2020) built from Ghost modules, as in timm's `ghostnet`.

A Ghost module makes ceil(out / ratio) channels with a 1x1 primary conv and the rest with cheap depthwise 3x3
convs of those, then concatenates and slices to `out`. The bottleneck: Ghost module (expand, with activation) ->
depthwise kxk conv + BN only when strided -> [squeeze-excite, hard-sigmoid gate, reduced width rounded to a
multiple of 4] -> Ghost module (project, no activation); plus the input, through a depthwise kxk + BN + 1x1 +
BN shortcut when the shape changes. No activation after the sum.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import Arg, BlockKind, Choice, register
from ..shapes import make_divisible
from ..tflite_graph import conv, squeeze_excite
from .layers import ConvBNAct, SqueezeExcite, check_positive, se_cost


def ghost_primary(out_ch: int, ratio: int) -> int:
    """Channels of a Ghost module's primary conv: ceil(out / ratio)."""
    return math.ceil(out_ch / ratio)


def ghost_se_channels(hidden: int, se: float) -> int:
    """Reduced width of the bottleneck's squeeze-excite (timm: make_divisible(hidden * se, 4))."""
    return make_divisible(hidden * se, 4)


class GhostModule(nn.Module):
    """Primary kxk conv to ceil(out/ratio) channels + cheap depthwise dw_size convs for the rest, concatenated, sliced."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, ratio: int = 2, dw_size: int = 3, stride: int = 1,
                 norm: bool = True, act: str | None = "relu"):
        super().__init__()
        check_positive("out_ch", out_ch)
        check_positive("ratio", ratio, 2)
        init = ghost_primary(out_ch, ratio)
        self.out_ch = out_ch
        self.primary = ConvBNAct(in_ch, init, kernel, stride, norm=norm, act=act)
        self.cheap = ConvBNAct(init, init * (ratio - 1), dw_size, 1, groups=init, norm=norm, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        return torch.cat([x1, self.cheap(x1)], 1)[:, :self.out_ch]


class GhostBottleneck(nn.Module):
    """GhostNet's bottleneck: Ghost expand -> [depthwise kxk stride] -> [SE] -> Ghost project, + shortcut."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int, kernel: int = 3, stride: int = 1, se: float = 0.0,
                 ratio: int = 2, norm: bool = True, act: str = "relu"):
        super().__init__()
        check_positive("in_ch", in_ch), check_positive("hidden", hidden), check_positive("stride", stride)
        self.ghost1 = GhostModule(in_ch, hidden, ratio=ratio, norm=norm, act=act)
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, norm=norm, act=None) if stride > 1 \
            else nn.Identity()
        self.se = SqueezeExcite(hidden, se, "hardsigmoid", ghost_se_channels(hidden, se)) if se else nn.Identity()
        self.ghost2 = GhostModule(hidden, out_ch, ratio=ratio, norm=norm, act=None)
        if in_ch == out_ch and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(ConvBNAct(in_ch, in_ch, kernel, stride, groups=in_ch, norm=norm, act=None),
                                          ConvBNAct(in_ch, out_ch, 1, norm=norm, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.se(self.dw(self.ghost1(x)))) + self.shortcut(x)


def _extra(cin: int, expand: float, se: float, ratio: int, divisor: int) -> dict:
    hidden = make_divisible(cin * expand, divisor)
    return {"expand": expand, "hidden": hidden, "se": se, "se_ch": ghost_se_channels(hidden, se) if se else 0,
            "ratio": ratio}


def _stage(s, i, spec, c, out):
    a = s.arg("expand"), s.arg("se"), s.arg("ratio"), spec.divisor
    return s.kernel, s.kernel // 2, _extra(c, *a), _extra(out, *a) if s.repeats > 1 else None


def _module_cost(cin: int, cout: int, ratio: int, hw: int, mb: int, pb: int) -> tuple[int, int]:
    """(MACs, params) of a Ghost module (1x1 primary, depthwise 3x3 cheap) on an hw-pixel map."""
    init = ghost_primary(cout, ratio)
    new = init * (ratio - 1)
    return init * hw * (cin + mb) + new * hw * (9 + mb), init * (cin + pb) + new * (9 + pb)


def _cost(b, norm):
    mb, pb = (2, 2) if norm else (0, 1)
    x, k, cin, cout = b.extra, b.kernel, b.in_ch, b.out_ch
    hid, ratio, hw, kk = x["hidden"], x["ratio"], b.h_out * b.w_out, b.kernel * b.kernel
    m, p = _module_cost(cin, hid, ratio, b.h_in * b.w_in, mb, pb)
    if b.stride > 1:
        m += hid * hw * (kk + mb)
        p += hid * (kk + pb)
    if x["se"]:
        sm, sp = se_cost(hid, x["se_ch"], b.h_out, b.w_out)
        m, p = m + sm, p + sp
    gm, gp = _module_cost(hid, cout, ratio, hw, mb, pb)
    m, p = m + gm, p + gp
    if cin != cout or b.stride != 1:
        m += cin * hw * (kk + mb) + cout * hw * (cin + mb)
        p += cin * (kk + pb) + cout * (cin + pb)
    return m, p


def _module_tflite(g, x: int, cin: int, cout: int, ratio: int, h: int, w: int, act: str | None) -> int:
    """A Ghost module's converted graph: 1x1 primary conv, depthwise 3x3 cheap conv (depth multiplier ratio - 1),
    CONCATENATION (one scale for its inputs and output, see compress.tflite: no requantizing QUANTIZE), and a
    SLICE when ratio does not divide `cout`."""
    init = ghost_primary(cout, ratio)
    new = init * (ratio - 1)
    p = conv(g, x, cin, init, 1, 1, 0, h, w, 1, act)[0]
    c = conv(g, p, init, new, 3, 1, 1, h, w, init, act)[0]
    t = g.op("CONCATENATION", (p, c), (init + new) * h * w)
    if init + new > cout:
        g.small_const(("slice_begin",), 16)
        g.small_const(("slice_size", h, w, cout), 16)
        t = g.op("SLICE", (t,), cout * h * w)
    return t


def _tflite(g, b, spec, x):
    e, k = b.extra, b.kernel
    hid, ratio = e["hidden"], e["ratio"]
    t = _module_tflite(g, x, b.in_ch, hid, ratio, b.h_in, b.w_in, spec.act)
    ho, wo = b.h_out, b.w_out
    if b.stride > 1:
        t = conv(g, t, hid, hid, k, b.stride, k // 2, b.h_in, b.w_in, hid, None)[0]
    if e["se"]:
        t = squeeze_excite(g, t, hid, e["se_ch"], ho * wo, "hardsigmoid")
    t = _module_tflite(g, t, hid, b.out_ch, ratio, ho, wo, None)
    sc = x
    if b.in_ch != b.out_ch or b.stride != 1:  # after the main branch (forward order)
        sc = conv(g, x, b.in_ch, b.in_ch, k, b.stride, k // 2, b.h_in, b.w_in, b.in_ch, None)[0]
        sc = conv(g, sc, b.in_ch, b.out_ch, 1, 1, 0, ho, wo, 1, None)[0]
    return g.op("ADD", (t, sc), b.out_ch * ho * wo)


KIND = register(BlockKind(
    "ghost", GhostBottleneck, "Ghost module expand, [depthwise kxk if strided], [SE], Ghost module project; "
    "shortcut (GhostNet)", _stage,
    make=lambda b, n, a: GhostBottleneck(b.in_ch, b.extra["hidden"], b.out_ch, b.kernel, b.stride, b.extra["se"],
                                         b.extra["ratio"], norm=n, act=a),
    cost=_cost, tflite_graph=_tflite,
    args={"expand": Arg((int, float), 3, lambda v, s: v >= 1, "must be >= 1"),
          "se": Arg((int, float), 0.0, lambda v, s: 0 <= v < 1, "must be in [0, 1)", "se (squeeze-excite ratio)"),
          "ratio": Arg(int, 2, lambda v, s: v >= 2, "must be >= 2", "ratio (Ghost module ratio)")},
    examples={"expand": (1, 2, 3, 2.5, 6), "se": (0.0, 0.0, 0.25, 0.5), "ratio": (2, 2, 3)},
    search=(Choice("expand", space_field="expand"), Choice("se", space_field="se")),
    smallest=lambda space: {"expand": min(space.expand), "se": 0.0},
    templates={"ghostnet-like": {"stem_channels": 16, "stages": [(24, "stride", {"expand": 3, "se": 0.0}),
                                                                 (40, "stride", {"expand": 3, "se": 0.25})],
                                 "head": "pool", "dropout": 0.0}},
))
