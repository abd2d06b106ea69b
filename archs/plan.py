"""Resolve a `NetSpec` into concrete blocks (channels after alpha, strides, derived widths) and feature-map sizes.

This is the single place where channel and shape arithmetic lives: `build` instantiates modules from the
plan and `estimate` prices the same plan, so the two cannot drift apart. Pure Python, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError
from .spec import POOL_BLOCKS, NetSpec


@dataclass(slots=True)
class Block:
    """One concrete block: type, input/output channels, input/output side lengths and resolved arguments."""

    kind: str
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    h_in: int
    w_in: int
    h_out: int
    w_out: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Plan:
    blocks: list[Block]
    head: list[tuple[str, int, int]]  # ('pool'|'conv'|'fc', in, out) in order; 'pool' in = numel pooled
    feat_ch: int
    feat_h: int
    feat_w: int


def ir_hidden(in_ch: int, expand: float) -> int:
    """Hidden width of an inverted residual (torchvision: int(round(in * expand)))."""
    return int(round(in_ch * expand))


def se_channels(ch: int, ratio: float) -> int:
    """Reduced width of a squeeze-excite layer."""
    return max(1, int(round(ch * ratio)))


def conv_out(n: int, k: int, s: int, p: int) -> int:
    """Output length of a convolution (floor mode)."""
    return (n + 2 * p - k) // s + 1


def pool_out(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """Output length of max/avg pooling with PyTorch's ceil-mode rule."""
    if not ceil_mode:
        return (n + 2 * p - k) // s + 1
    out = -(-(n + 2 * p - k) // s) + 1
    if (out - 1) * s >= n + p:
        out -= 1
    return out


def _spatial(where: str, h: int, w: int, k: int, s: int, p: int) -> tuple[int, int]:
    ho, wo = conv_out(h, k, s, p), conv_out(w, k, s, p)
    if ho < 1 or wo < 1:
        raise SpecError(f"{where}: a {h}x{w} feature map is too small for kernel {k} stride {s} padding {p}; "
                        "use a larger input resolution or fewer downsampling steps")
    return ho, wo


def resolve(spec: NetSpec) -> Plan:
    """Concrete blocks of `spec` at its input size. Raises SpecError when the feature map vanishes.

    Hot path of `estimate` (the search screens thousands of candidates): stage-constant arguments are looked up
    once per stage and the output-size arithmetic is inlined; `conv_out`/`pool_out` define the same rules.
    """
    h = w = spec.input_size
    c = spec.in_chans
    blocks: list[Block] = []
    add = blocks.append
    st = spec.stem
    if st.channels:
        p = st.kernel // 2 if st.padding is None else st.padding
        out = spec.ch(st.channels)
        ho, wo = _spatial("stem", h, w, st.kernel, st.stride, p)
        add(Block("conv", c, out, st.kernel, st.stride, h, w, ho, wo, {"padding": p, "groups": 1}))
        c, h, w = out, ho, wo
    for i, s in enumerate(spec.stages):
        kind = s.block
        k = s.kernel
        if kind in POOL_BLOCKS:
            p = s.arg("padding")
            cm = bool(s.arg("ceil_mode")) if kind == "maxpool" else False
            for r in range(s.repeats):
                ho, wo = pool_out(h, k, s.stride, p, cm), pool_out(w, k, s.stride, p, cm)
                if ho < 1 or wo < 1:
                    raise SpecError(f"stages[{i}]: a {h}x{w} feature map is too small for {kind} kernel {k}")
                add(Block(kind, c, c, k, s.stride, h, w, ho, wo, {"padding": p, "ceil_mode": cm}))
                h, w = ho, wo
            continue
        out = spec.ch(s.channels, s.scale)
        args = s.args
        p = k // 2
        if kind == "conv":
            p = args.get("padding", p)
            g = args.get("groups", 1)
        elif kind == "fire":
            p = 1  # the 3x3 expand; the 1x1 expand has padding 0 and the same output size
            k = 3
            e3 = max(1, int(round(out * s.arg("pct3x3"))))
            e1 = out - e3
            if e1 < 1:
                raise SpecError(f"stages[{i}]: a Fire module needs at least 2 output channels, got {out}")
            sq = max(1, int(round(out * s.arg("squeeze_ratio"))))
            bypass = bool(s.arg("bypass"))
        elif kind == "ir":
            expand, se = s.arg("expand"), s.arg("se")
        elif kind == "lowrank":
            rank_ratio = s.arg("rank_ratio")
        elif kind == "basic":
            shortcut = s.arg("shortcut")
        for r in range(s.repeats):
            stride = s.stride if r == 0 else 1
            if kind == "conv":
                if c % g or out % g:
                    raise SpecError(f"stages[{i}]: groups={g} must divide in channels {c} and out channels {out}")
                extra = {"padding": p, "groups": g}
            elif kind == "ir":
                hidden = ir_hidden(c, expand)
                extra = {"expand": expand, "hidden": hidden, "se": se, "se_ch": se_channels(hidden, se) if se else 0}
            elif kind == "fire":
                extra = {"squeeze": sq, "e1": e1, "e3": e3, "bypass": bypass}
            elif kind == "lowrank":
                extra = {"rank": max(1, int(round(rank_ratio * min(c, out))))}
            elif kind == "basic":
                if shortcut == "A" and (stride != 1 or c != out) and out < c:
                    raise SpecError(f"stages[{i}]: shortcut 'A' cannot reduce channels ({c} -> {out}); use 'B'")
                extra = {"shortcut": shortcut}
            else:  # dws
                extra = {}
            ho = (h + 2 * p - k) // stride + 1  # conv_out
            wo = (w + 2 * p - k) // stride + 1
            if ho < 1 or wo < 1:
                _spatial(f"stages[{i}]", h, w, k, stride, p)  # raises with the message
            add(Block(kind, c, out, k, stride, h, w, ho, wo, extra))
            c, h, w = out, ho, wo
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
