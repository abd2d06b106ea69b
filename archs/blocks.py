"""The catalog of compact blocks. Each is a plain `nn.Module` that drops into any model."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SpecError
from .plan import ir_hidden, se_channels

_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU}


def make_act(name: str | None) -> nn.Module:
    """Activation module by name; None gives Identity."""
    if name is None:
        return nn.Identity()
    if name not in _ACTS:
        raise SpecError(f"unknown activation {name!r}; choose from {', '.join(_ACTS)}")
    return _ACTS[name](inplace=True)


def _pos(name: str, v: int, lo: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise SpecError(f"{name} must be an integer >= {lo}, got {v!r}")


class ConvBNAct(nn.Sequential):
    """Conv2d + BatchNorm + activation, the basic unit (bias only when there is no norm)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int | None = None,
                 groups: int = 1, norm: bool = True, act: str | None = "relu", bias: bool | None = None):
        for n, v in (("in_ch", in_ch), ("out_ch", out_ch), ("kernel", kernel), ("stride", stride), ("groups", groups)):
            _pos(n, v)
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
    """Squeeze-and-excitation: global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid gate."""

    def __init__(self, ch: int, ratio: float = 0.25):
        super().__init__()
        _pos("ch", ch)
        if not 0 < ratio <= 1:
            raise SpecError(f"squeeze-excite ratio must be in (0, 1], got {ratio}")
        rd = se_channels(ch, ratio)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(ch, rd, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(rd, ch, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class Fire(nn.Module):
    """SqueezeNet Fire module: squeeze 1x1 -> (expand 1x1 || expand 3x3), concatenated; optional simple bypass."""

    def __init__(self, in_ch: int, squeeze: int, expand1x1: int, expand3x3: int, stride: int = 1,
                 bypass: bool = False, norm: bool = False, act: str = "relu"):
        super().__init__()
        for n, v in (("in_ch", in_ch), ("squeeze", squeeze), ("expand1x1", expand1x1), ("expand3x3", expand3x3),
                     ("stride", stride)):
            _pos(n, v)
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


class DepthwiseSeparable(nn.Module):
    """MobileNetV1 block: depthwise kxk conv (stride) + BN + act, then pointwise 1x1 + BN + act."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, norm: bool = True,
                 act: str = "relu"):
        super().__init__()
        self.dw = ConvBNAct(in_ch, in_ch, kernel, stride, groups=in_ch, norm=norm, act=act)
        self.pw = ConvBNAct(in_ch, out_ch, 1, norm=norm, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> depthwise kxk -> [squeeze-excite] -> 1x1 linear project; residual if shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, expand: float = 6, kernel: int = 3,
                 se: float = 0.0, norm: bool = True, act: str = "relu6"):
        super().__init__()
        _pos("in_ch", in_ch), _pos("out_ch", out_ch)
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


class LowRankConv2d(nn.Module):
    """Drop-in for `nn.Conv2d(in, out, k, stride, padding)`: a kx1 conv to `rank` channels, then a 1xk conv.

    This is the vertical/horizontal factorization of Jaderberg et al. (2014, scheme 2) / Tai et al. (2016):
    W[o, c, i, j] ~= sum_r H[o, r, j] V[r, c, i]. It has the same input/output shapes as the full conv;
    `from_conv` computes the optimal rank-r factors of a trained conv in closed form by an SVD.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, rank: int | None = None):
        super().__init__()
        for n, v in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size),
                     ("stride", stride)):
            _pos(n, v)
        _pos("padding", padding, 0)
        full = full_rank(in_channels, out_channels, kernel_size)
        rank = full if rank is None else rank
        _pos("rank", rank)
        k, s, p = kernel_size, stride, padding
        self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding = in_channels, out_channels, k, s, p
        self.rank = rank
        self.vertical = nn.Conv2d(in_channels, rank, (k, 1), (s, 1), (p, 0), bias=False)
        self.horizontal = nn.Conv2d(rank, out_channels, (1, k), (1, s), (0, p), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.horizontal(self.vertical(x))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int) -> "LowRankConv2d":
        """Best rank-`rank` approximation of a trained square-kernel, ungrouped, undilated conv (closed-form SVD)."""
        kh, kw = conv.kernel_size
        if kh != kw or conv.groups != 1 or conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1] \
                or conv.padding[0] != conv.padding[1] or isinstance(conv.padding, str):
            raise SpecError("LowRankConv2d.from_conv needs a square, ungrouped, undilated conv with equal strides/padding")
        o, c, k = conv.out_channels, conv.in_channels, kh
        lr = cls(c, o, k, conv.stride[0], conv.padding[0], bias=conv.bias is not None, rank=rank)
        w = conv.weight.detach().float()  # (o, c, k, k): M[(c, i), (o, j)] = W[o, c, i, j]
        m = w.permute(1, 2, 0, 3).reshape(c * k, o * k)
        u, sv, vh = torch.linalg.svd(m, full_matrices=False)
        r = min(rank, sv.numel())
        root = sv[:r].sqrt()
        vert = (u[:, :r] * root).T.reshape(r, c, k, 1)            # V[r, c, i]
        horiz = (vh[:r].T * root).reshape(o, k, r).permute(0, 2, 1).reshape(o, r, 1, k)  # H[o, r, j]
        with torch.no_grad():
            lr.vertical.weight.zero_()
            lr.horizontal.weight.zero_()
            lr.vertical.weight[:r].copy_(vert)
            lr.horizontal.weight[:, :r].copy_(horiz)
            if conv.bias is not None:
                lr.horizontal.bias.copy_(conv.bias.detach())
        return lr.to(conv.weight.device, conv.weight.dtype)


def full_rank(in_ch: int, out_ch: int, kernel: int) -> int:
    """Rank at which LowRankConv2d represents any kxk conv exactly."""
    return min(in_ch * kernel, out_ch * kernel)


class LowRankConvBNAct(nn.Sequential):
    """LowRankConv2d + BatchNorm + activation: the catalog's 'lowrank' block."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, rank: int = 1,
                 norm: bool = True, act: str | None = "relu"):
        layers: list[nn.Module] = [LowRankConv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=not norm, rank=rank)]
        if norm:
            layers.append(nn.BatchNorm2d(out_ch))
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)


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
