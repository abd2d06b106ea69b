"""'lowrank': a kxk conv factorized into kx1 and 1xk convs (Jaderberg et al. 2014), and its trained-layer form."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SpecError
from ..registry import Arg, BlockKind, Choice, register
from ..tflite_graph import conv
from .layers import check_positive, make_act


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
            check_positive(n, v)
        check_positive("padding", padding, 0)
        full = full_rank(in_channels, out_channels, kernel_size)
        rank = full if rank is None else rank
        check_positive("rank", rank)
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


def _stage(s, i, spec, c, out):
    r = s.arg("rank_ratio")
    rest = {"rank": max(1, int(round(r * out)))} if s.repeats > 1 else None
    return s.kernel, s.kernel // 2, {"rank": max(1, int(round(r * min(c, out))))}, rest


def _cost(b, norm):
    mb, pb = (2, 2) if norm else (0, 1)
    r, k, cin, cout, hw = b.extra["rank"], b.kernel, b.in_ch, b.out_ch, b.h_out * b.w_out
    # kx1 to r channels (stride on height only, no bias, no norm), then 1xk (stride on width) + BN/bias
    return r * b.h_out * b.w_in * cin * k + cout * hw * (r * k + mb), r * cin * k + cout * (r * k + pb)


def _tflite(g, b, spec, x):
    k, s, p, r = b.kernel, b.stride, b.kernel // 2, b.extra["rank"]
    # k x 1 to `rank` channels (stride and padding on height; the converter adds a zero bias), then 1 x k + act
    t, ho, w = conv(g, x, b.in_ch, r, k, s, p, b.h_in, b.w_in, 1, None, kw=1, sw=1, pw=0, zero_bias=True)
    return conv(g, t, r, b.out_ch, 1, 1, 0, ho, w, 1, spec.act, kw=k, sw=s, pw=p)[0]


KIND = register(BlockKind(
    "lowrank", LowRankConvBNAct, "kx1 conv to rank channels, then 1xk conv, + BN + activation", _stage,
    make=lambda b, n, a: LowRankConvBNAct(b.in_ch, b.out_ch, b.kernel, b.stride, b.extra["rank"], norm=n, act=a),
    cost=_cost, tflite_graph=_tflite,
    args={"rank_ratio": Arg((int, float), 0.5, lambda v, s: 0 < v <= 1, "must be in (0, 1]")},
    examples={"rank_ratio": (0.1, 0.25, 0.5, 0.75, 1.0)},
    search=(Choice("rank_ratio", space_field="rank_ratio"),), default_space=True,
    smallest=lambda space: {"rank_ratio": min(space.rank_ratio)},
))
