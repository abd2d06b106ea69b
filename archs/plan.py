"""Resolve a `NetSpec` into concrete blocks (channels after alpha, strides, derived widths) and feature-map sizes.

The owner of shape validation: `NetSpec.validate` checks fields and arguments, then calls `resolve`, which
raises SpecError when a feature map vanishes or channels do not fit. Each stage is resolved by its kind's
record in the registry (`archs.registry`), so `build` instantiates modules from the plan and `estimate` prices
the same plan, and the two cannot drift apart. Pure Python, no torch arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import blocks as _catalog  # noqa: F401  registers the catalog's kinds
from .errors import SpecError
from .registry import Block, kinds
from .shapes import check_spatial, conv_out, ir_hidden, pool_out, se_channels  # noqa: F401  re-exported

if TYPE_CHECKING:
    from .spec import NetSpec

_REGISTRY = kinds()  # the live registry (a kind registered later is seen too)

__all__ = ["Block", "Plan", "resolve", "conv_out", "pool_out", "ir_hidden", "se_channels"]


@dataclass(slots=True)
class Plan:
    blocks: list[Block]
    head: list[tuple[str, int, int]]  # ('pool'|'conv'|'fc', in, out) in order; 'pool' in = numel pooled
    feat_ch: int
    feat_h: int
    feat_w: int


def resolve(spec: "NetSpec") -> Plan:
    """Concrete blocks of `spec` at its input size. Raises SpecError when the feature map vanishes.

    Hot path of `estimate` (the search screens thousands of candidates): a conv-like kind's `stage` looks its
    arguments up once per stage and gives the derived widths (`Block.extra`) of its first and later blocks; the
    output-size arithmetic (`conv_out`) is inlined. Other kinds (pooling) resolve their stage themselves.
    """
    h = w = spec.input_size
    c = spec.in_chans
    blocks: list[Block] = []
    add = blocks.append
    st = spec.stem
    if st.channels:
        p = st.kernel // 2 if st.padding is None else st.padding
        out = spec.ch(st.channels)
        ho, wo = check_spatial("stem", h, w, st.kernel, st.stride, p)
        add(Block("conv", c, out, st.kernel, st.stride, h, w, ho, wo, {"padding": p, "groups": 1}))
        c, h, w = out, ho, wo
    for i, s in enumerate(spec.stages):
        kind = _REGISTRY.get(s.block)
        if kind is None:
            raise SpecError(f"stages[{i}].block: unknown block {s.block!r}; choose from {', '.join(_REGISTRY)}")
        out = spec.ch(s.channels, s.scale) if kind.channels else c
        stage = kind.stage
        if stage is None:
            c, h, w = kind.resolve(s, i, spec, c, out, h, w, add)
            continue
        # the usual stage: `repeats` conv-like blocks, the first with the stage's stride (inlined conv_out)
        k, p, x, rest = stage(s, i, spec, c, out)
        stride = s.stride
        name = s.block
        for r in range(s.repeats):
            if r:  # every block gets its own dict
                x = rest if r == 1 else rest.copy()
            ho = (h + 2 * p - k) // stride + 1
            wo = (w + 2 * p - k) // stride + 1
            if ho < 1 or wo < 1:
                check_spatial(f"stages[{i}]", h, w, k, stride, p)  # raises with the message
            add(Block(name, c, out, k, stride, h, w, ho, wo, x))
            c, h, w, stride = out, ho, wo, 1
    hd = spec.head
    head: list[tuple[str, int, int]] = []
    if hd.kind == "conv":
        head.append(("conv", c, spec.num_classes))
        head.append(("pool", spec.num_classes * h * w, spec.num_classes))
    else:
        if hd.kind == "pool":
            head.append(("pool", c * h * w, c))
            n = c
        else:
            n = c * h * w
        for width in hd.hidden:
            head.append(("fc", n, width))
            n = width
        head.append(("fc", n, spec.num_classes))
    return Plan(blocks, head, c, h, w)
