"""'maxpool' and 'avgpool': pooling stages (keep the channels; no MACs in fvcore's count, no parameters)."""
from __future__ import annotations

from torch import nn

from ..errors import SpecError
from ..registry import Arg, Block, BlockKind, register
from ..shapes import pool_out
from ..tflite_graph import same_pad


def _resolver(kind: str):
    def resolve(s, i, spec, c, out, h, w, add):
        k, p = s.kernel, s.arg("padding")
        cm = bool(s.arg("ceil_mode")) if kind == "maxpool" else False
        for _ in range(s.repeats):
            ho, wo = pool_out(h, k, s.stride, p, cm), pool_out(w, k, s.stride, p, cm)
            if ho < 1 or wo < 1:
                raise SpecError(f"stages[{i}]: a {h}x{w} feature map is too small for {kind} kernel {k}")
            add(Block(kind, c, c, k, s.stride, h, w, ho, wo, {"padding": p, "ceil_mode": cm}))
            h, w = ho, wo
        return c, h, w
    return resolve


def _free(b, norm):
    return 0, 0


def _tflite_max(g, b, spec, x):
    p, k, s, c = b.extra["padding"], b.kernel, b.stride, b.in_ch
    ph = max(p, (b.h_out - 1) * s + k - b.h_in - p)  # padding after: ceil mode may read past the end
    pw = max(p, (b.w_out - 1) * s + k - b.w_in - p)
    if ph > 0 or pw > 0:
        # SAME pooling (TF pads with -inf, before = total // 2) covers it when it gives the same window
        same = all(o == -(-n // s) and same_pad(n, k, s)[0] == p for n, o in ((b.h_in, b.h_out), (b.w_in, b.w_out)))
        if same:
            g.opt("SAME")
        else:
            g.small_const(("pad", p, ph, p, pw), 32)
            g.small_const(("padv",), 1)
            x = g.op("PADV2", (x,), (b.h_in + p + ph) * (b.w_in + p + pw) * c)
    return g.op("MAX_POOL_2D", (x,), c * b.h_out * b.w_out)


def _tflite_avg(g, b, spec, x):
    p = b.extra["padding"]
    if p:  # PyTorch averages over the zero padding too (count_include_pad), so it is always an explicit PAD
        g.small_const(("pad", p, p, p, p), 32)
        x = g.op("PAD", (x,), (b.h_in + 2 * p) * (b.w_in + 2 * p) * b.in_ch)
    return g.op("AVERAGE_POOL_2D", (x,), b.in_ch * b.h_out * b.w_out)


_PADS = lambda c, o, k: range(k // 2 + 1)  # noqa: E731
_PADDING = Arg(int, 0, lambda v, s: 0 <= v <= s.kernel // 2, "must be in [0, kernel // 2]")

MAXPOOL = register(BlockKind(
    "maxpool", nn.MaxPool2d, "max pooling (every repeat uses the stride)", None,
    make=lambda b, n, a: nn.MaxPool2d(b.kernel, b.stride, b.extra["padding"], ceil_mode=b.extra["ceil_mode"]),
    cost=_free, resolve=_resolver("maxpool"), tflite_graph=_tflite_max, args={"ceil_mode": Arg(bool, False), "padding": _PADDING}, channels=False, odd_kernel=False,
    examples={"padding": _PADS, "ceil_mode": (False, True)},
))
AVGPOOL = register(BlockKind(
    "avgpool", nn.AvgPool2d, "average pooling (every repeat uses the stride)", None,
    make=lambda b, n, a: nn.AvgPool2d(b.kernel, b.stride, b.extra["padding"]),
    cost=_free, resolve=_resolver("avgpool"), tflite_graph=_tflite_avg, args={"padding": _PADDING}, channels=False, odd_kernel=False, examples={"padding": _PADS},
))
