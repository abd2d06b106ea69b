"""'mbv3': MobileNetV3's block (Howard et al. 2019), as in torchvision's `mobilenet_v3_small/large`.

Inverted residual: 1x1 expand (left out when the hidden width equals the input) -> depthwise kxk -> [squeeze-
excite with a hard-sigmoid gate, reduced width make_divisible(hidden * se, 8)] -> 1x1 linear project; residual
when the shape allows. The block's own activation (hard-swish or ReLU) replaces the network's.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SpecError
from ..registry import Arg, BlockKind, Choice, register
from ..shapes import make_divisible
from .ir import inverted_residual_cost, inverted_residual_tflite
from .layers import _ACTS, ConvBNAct, SqueezeExcite, check_positive


def mbv3_hidden(in_ch: int, expand: float, divisor: int) -> int:
    """Hidden width: make_divisible(in * expand, divisor) (torchvision rounds the expanded width to 8)."""
    return make_divisible(in_ch * expand, divisor)


def mbv3_se_channels(hidden: int, se: float) -> int:
    """Reduced width of the squeeze-excite (torchvision: make_divisible(hidden // 4, 8) at se = 0.25)."""
    return make_divisible(int(hidden * se), 8)


class MBConv3(nn.Module):
    """MobileNetV3 block: [1x1 expand] -> depthwise kxk -> [SE, hard-sigmoid] -> 1x1 project; residual if shapes allow."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int, kernel: int = 3, stride: int = 1, se: float = 0.0,
                 act: str = "hardswish", norm: bool = True):
        super().__init__()
        check_positive("in_ch", in_ch), check_positive("hidden", hidden), check_positive("out_ch", out_ch)
        self.expand = ConvBNAct(in_ch, hidden, 1, norm=norm, act=act) if hidden != in_ch else nn.Identity()
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, norm=norm, act=act)
        self.se = SqueezeExcite(hidden, se, "hardsigmoid", mbv3_se_channels(hidden, se)) if se else nn.Identity()
        self.project = ConvBNAct(hidden, out_ch, 1, norm=norm, act=None)
        self.use_res = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return out + x if self.use_res else out


def _extra(cin: int, expand: float, se: float, act: str, divisor: int) -> dict:
    hidden = mbv3_hidden(cin, expand, divisor)
    return {"expand": expand, "hidden": hidden, "se": se, "se_ch": mbv3_se_channels(hidden, se) if se else 0,
            "act": act}


def _stage(s, i, spec, c, out):
    a = s.arg("expand"), s.arg("se"), s.arg("act"), spec.divisor
    return s.kernel, s.kernel // 2, _extra(c, *a), _extra(out, *a) if s.repeats > 1 else None


def _check(s, where: str) -> None:
    if s.arg("act") not in _ACTS:
        raise SpecError(f"{where}.args.act: unknown activation {s.arg('act')!r}; choose from {', '.join(_ACTS)}")


KIND = register(BlockKind(
    "mbv3", MBConv3, "[1x1 expand], depthwise kxk, [SE, hard-sigmoid], 1x1 project; residual; own activation "
    "(MobileNetV3)", _stage,
    make=lambda b, n, a: MBConv3(b.in_ch, b.extra["hidden"], b.out_ch, b.kernel, b.stride, b.extra["se"],
                                 b.extra["act"], norm=n),
    cost=lambda b, norm: inverted_residual_cost(b, norm, b.extra["hidden"] != b.in_ch),
    tflite_graph=lambda g, b, spec, x: inverted_residual_tflite(g, b, x, b.extra["hidden"] != b.in_ch, b.extra["act"],
                                                                "hardsigmoid"),
    args={"expand": Arg((int, float), 4, lambda v, s: v >= 1, "must be >= 1"),
          "se": Arg((int, float), 0.0, lambda v, s: 0 <= v < 1, "must be in [0, 1)", "se (squeeze-excite ratio)"),
          "act": Arg(str, "hardswish")},
    check=_check,
    examples={"expand": (1, 2, 3, 4.5, 6), "se": (0.0, 0.25, 0.5), "act": ("relu", "hardswish")},
    search=(Choice("expand", space_field="expand"), Choice("se", space_field="se"),
            Choice("act", ("relu", "hardswish"))),
    smallest=lambda space: {"expand": min(space.expand), "se": 0.0, "act": "relu"},
    templates={"mobilenetv3-like": {"stem_channels": 16, "stages": [
        (24, "stride", {"expand": 4, "se": 0.0, "act": "relu"}),
        (40, "stride", {"expand": 3, "se": 0.25, "act": "hardswish"})], "head": "pool", "dropout": 0.0}},
    token="mbv3_",
))
