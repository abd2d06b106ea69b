"""'maxpool' and 'avgpool': pooling stages (keep the channels; no MACs in fvcore's count, no parameters)."""
from __future__ import annotations

from torch import nn

from ..errors import SpecError
from ..registry import Arg, Block, BlockKind, register
from ..shapes import pool_out


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


_PADS = lambda c, o, k: range(k // 2 + 1)  # noqa: E731
_PADDING = Arg(int, 0, lambda v, s: 0 <= v <= s.kernel // 2, "must be in [0, kernel // 2]")

MAXPOOL = register(BlockKind(
    "maxpool", nn.MaxPool2d, "max pooling (every repeat uses the stride)", None,
    make=lambda b, n, a: nn.MaxPool2d(b.kernel, b.stride, b.extra["padding"], ceil_mode=b.extra["ceil_mode"]),
    cost=_free, resolve=_resolver("maxpool"), args={"ceil_mode": Arg(bool, False), "padding": _PADDING}, channels=False, odd_kernel=False,
    examples={"padding": _PADS, "ceil_mode": (False, True)},
))
AVGPOOL = register(BlockKind(
    "avgpool", nn.AvgPool2d, "average pooling (every repeat uses the stride)", None,
    make=lambda b, n, a: nn.AvgPool2d(b.kernel, b.stride, b.extra["padding"]),
    cost=_free, resolve=_resolver("avgpool"), args={"padding": _PADDING}, channels=False, odd_kernel=False, examples={"padding": _PADS},
))
