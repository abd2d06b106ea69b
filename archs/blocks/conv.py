"""'conv': a plain convolution + norm + activation (any kernel, padding and groups)."""
from __future__ import annotations

import math

from ..errors import SpecError
from ..registry import Arg, BlockKind, register
from ..tflite_graph import conv
from .layers import ConvBNAct


def _stage(s, i, spec, c, out):
    k = s.kernel
    p = s.args.get("padding", k // 2)
    g = s.args.get("groups", 1)
    if c % g or out % g:  # later blocks take `out` channels in: covered by the same check
        raise SpecError(f"stages[{i}]: groups={g} must divide in channels {c} and out channels {out}")
    return k, p, {"padding": p, "groups": g}, {"padding": p, "groups": g} if s.repeats > 1 else None


def _cost(b, norm):
    mb, pb = (2, 2) if norm else (0, 1)
    kk = b.in_ch // b.extra["groups"] * b.kernel * b.kernel
    hw = b.h_out * b.w_out
    return b.out_ch * hw * (kk + mb), b.out_ch * (kk + pb)


def _tflite(g, b, spec, x):
    return conv(g, x, b.in_ch, b.out_ch, b.kernel, b.stride, b.extra["padding"], b.h_in, b.w_in, b.extra["groups"],
                spec.act)[0]


KIND = register(BlockKind(
    "conv", ConvBNAct, "Conv2d + BN + activation", _stage,
    make=lambda b, n, a: ConvBNAct(b.in_ch, b.out_ch, b.kernel, b.stride, b.extra["padding"], b.extra["groups"],
                                   norm=n, act=a),
    cost=_cost, tflite_graph=_tflite,
    args={"padding": Arg(int, None),
          "groups": Arg(int, 1, lambda v, s: v >= 1, "must be >= 1")},
    examples={"padding": lambda c, o, k: (None, None, *range(k + 1)),
              "groups": lambda c, o, k: [d for d in range(1, math.gcd(c, o) + 1) if math.gcd(c, o) % d == 0]},
    odd_kernel=False, search=(), default_space=True,
    templates={"lenet-like": {"stem_channels": 8, "stages": [(16, "maxpool", {})], "head": "maxpool+flatten",
                              "dropout": 0.0}},
))
