"""Layers the catalog blocks are made of: conv + norm + activation, squeeze-excite, activations by name."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SpecError
from ..shapes import se_channels

_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU}
_GATES = {"sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid}


def make_act(name: str | None) -> nn.Module:
    """Activation module by name; None gives Identity."""
    if name is None:
        return nn.Identity()
    if name not in _ACTS:
        raise SpecError(f"unknown activation {name!r}; choose from {', '.join(_ACTS)}")
    return _ACTS[name](inplace=True)


def check_positive(name: str, v: int, lo: int = 1) -> None:
    """SpecError unless `v` is an integer >= lo (constructor argument checks)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise SpecError(f"{name} must be an integer >= {lo}, got {v!r}")


class ConvBNAct(nn.Sequential):
    """Conv2d + BatchNorm + activation, the basic unit (bias only when there is no norm)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int | None = None,
                 groups: int = 1, norm: bool = True, act: str | None = "relu", bias: bool | None = None):
        for n, v in (("in_ch", in_ch), ("out_ch", out_ch), ("kernel", kernel), ("stride", stride), ("groups", groups)):
            check_positive(n, v)
        if in_ch % groups or out_ch % groups:
            raise SpecError(f"groups={groups} must divide in_ch={in_ch} and out_ch={out_ch}")
        padding = kernel // 2 if padding is None else padding
        bias = (not norm) if bias is None else bias
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=bias)]
        if norm:
            layers.append(nn.BatchNorm2d(out_ch))
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> gate (sigmoid or hard-sigmoid).

    The reduced width is `reduced` when given (MobileNetV3 and GhostNet round it to a multiple of 8 or 4),
    else round(ch * ratio).
    """

    def __init__(self, ch: int, ratio: float = 0.25, gate: str = "sigmoid", reduced: int | None = None):
        super().__init__()
        check_positive("ch", ch)
        if not 0 < ratio <= 1:
            raise SpecError(f"squeeze-excite ratio must be in (0, 1], got {ratio}")
        if gate not in _GATES:
            raise SpecError(f"unknown squeeze-excite gate {gate!r}; choose from {', '.join(_GATES)}")
        rd = se_channels(ch, ratio) if reduced is None else reduced
        check_positive("reduced", rd)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(ch, rd, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(rd, ch, 1)
        self.gate = _GATES[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


def se_cost(ch: int, reduced: int, h: int, w: int) -> tuple[int, int]:
    """(MACs, params) of a SqueezeExcite on a ch x h x w map: the pool plus two biased 1x1 convs on a 1x1 map."""
    return ch * h * w + 2 * ch * reduced, ch * reduced + reduced + reduced * ch + ch
