"""'fire': SqueezeNet's Fire module (Iandola et al. 2016)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SpecError
from ..registry import Arg, BlockKind, Choice, register
from ..tflite_graph import conv
from .layers import ConvBNAct, check_positive


class Fire(nn.Module):
    """SqueezeNet Fire module: squeeze 1x1 -> (expand 1x1 || expand 3x3), concatenated; optional simple bypass."""

    def __init__(self, in_ch: int, squeeze: int, expand1x1: int, expand3x3: int, stride: int = 1,
                 bypass: bool = False, norm: bool = False, act: str = "relu"):
        super().__init__()
        for n, v in (("in_ch", in_ch), ("squeeze", squeeze), ("expand1x1", expand1x1), ("expand3x3", expand3x3),
                     ("stride", stride)):
            check_positive(n, v)
        self.squeeze = ConvBNAct(in_ch, squeeze, 1, norm=norm, act=act)
        self.expand1x1 = ConvBNAct(squeeze, expand1x1, 1, stride, norm=norm, act=act)
        self.expand3x3 = ConvBNAct(squeeze, expand3x3, 3, stride, norm=norm, act=act)
        self.out_ch = expand1x1 + expand3x3
        # simple bypass (SqueezeNet paper, section 6) only where shapes allow it
        self.use_bypass = bool(bypass) and stride == 1 and in_ch == self.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        out = torch.cat([self.expand1x1(s), self.expand3x3(s)], 1)
        return out + x if self.use_bypass else out


def _stage(s, i, spec, c, out):
    e3 = max(1, int(round(out * s.arg("pct3x3"))))
    e1 = out - e3
    if e1 < 1:
        raise SpecError(f"stages[{i}]: a Fire module needs at least 2 output channels, got {out}")
    sq = max(1, int(round(out * s.arg("squeeze_ratio"))))
    x = {"squeeze": sq, "e1": e1, "e3": e3, "bypass": bool(s.arg("bypass"))}
    # kernel 3, padding 1: the 3x3 expand; the 1x1 expand has padding 0 and the same output size
    return 3, 1, x, x.copy() if s.repeats > 1 else None


def _cost(b, norm):
    mb, pb = (2, 2) if norm else (0, 1)
    x, cin, hw = b.extra, b.in_ch, b.h_out * b.w_out
    sq, e1, e3 = x["squeeze"], x["e1"], x["e3"]
    m = sq * b.h_in * b.w_in * (cin + mb) + e1 * hw * (sq + mb) + e3 * hw * (9 * sq + mb)
    return m, sq * (cin + pb) + e1 * (sq + pb) + e3 * (9 * sq + pb)


def _tflite(g, b, spec, x):
    e = b.extra
    sq = conv(g, x, b.in_ch, e["squeeze"], 1, 1, 0, b.h_in, b.w_in, 1, spec.act)[0]
    a = conv(g, sq, e["squeeze"], e["e1"], 1, b.stride, 0, b.h_in, b.w_in, 1, spec.act)[0]
    c, ho, wo = conv(g, sq, e["squeeze"], e["e3"], 3, b.stride, 1, b.h_in, b.w_in, 1, spec.act)
    t = g.op("CONCATENATION", (a, c), b.out_ch * ho * wo)
    if e["bypass"] and b.stride == 1 and b.in_ch == b.out_ch:
        t = g.op("ADD", (t, x), b.out_ch * ho * wo)
    return t


KIND = register(BlockKind(
    "fire", Fire, "squeeze 1x1, then expand 1x1 and 3x3 concatenated; optional bypass (SqueezeNet)", _stage,
    make=lambda b, n, a: Fire(b.in_ch, b.extra["squeeze"], b.extra["e1"], b.extra["e3"], b.stride,
                              b.extra["bypass"], norm=n, act=a),
    cost=_cost, tflite_graph=_tflite,
    args={"squeeze_ratio": Arg((int, float), 0.125, lambda v, s: 0 < v <= 1, "must be in (0, 1]"),
          "pct3x3": Arg((int, float), 0.5, lambda v, s: 0 < v < 1, "must be in (0, 1)"),
          "bypass": Arg(bool, False)},
    examples={"squeeze_ratio": (0.125, 0.25, 0.5, 1.0), "pct3x3": (0.25, 0.5, 0.75), "bypass": (False, True)},
    kernel=3,
    search=(Choice("squeeze_ratio", space_field="squeeze_ratio"), Choice("pct3x3", space_field="pct3x3"),
            Choice("bypass", (False, True))),
    default_space=True, smallest=lambda space: {"squeeze_ratio": min(space.squeeze_ratio), "pct3x3": 0.5},
    templates={"squeezenet-like": {"stem_channels": 16, "stages": [
        (32, "maxpool", {"squeeze_ratio": 0.25, "pct3x3": 0.5, "bypass": False}),
        (64, "maxpool", {"squeeze_ratio": 0.25, "pct3x3": 0.5, "bypass": False})], "head": "pool", "dropout": 0.0}},
))
