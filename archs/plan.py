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
    """Concrete blocks of `spec` at its input size. Raises SpecError when the feature map vanishes."""
    h = w = spec.input_size
    c = spec.in_chans
    blocks: list[Block] = []
    st = spec.stem
    if st.channels:
        p = st.kernel // 2 if st.padding is None else st.padding
        out = spec.ch(st.channels)
        ho, wo = _spatial("stem", h, w, st.kernel, st.stride, p)
        blocks.append(Block("conv", c, out, st.kernel, st.stride, h, w, ho, wo, {"padding": p, "groups": 1}))
        c, h, w = out, ho, wo
    for i, s in enumerate(spec.stages):
        where = f"stages[{i}]"
        kind = s.block
        if kind in POOL_BLOCKS:
            p = s.arg("padding")
            cm = bool(s.arg("ceil_mode")) if kind == "maxpool" else False
            for r in range(s.repeats):
                ho, wo = pool_out(h, s.kernel, s.stride, p, cm), pool_out(w, s.kernel, s.stride, p, cm)
                if ho < 1 or wo < 1:
                    raise SpecError(f"{where}: a {h}x{w} feature map is too small for {kind} kernel {s.kernel}")
                blocks.append(Block(kind, c, c, s.kernel, s.stride, h, w, ho, wo, {"padding": p, "ceil_mode": cm}))
                h, w = ho, wo
            continue
        out = spec.ch(s.channels, s.scale)
        for r in range(s.repeats):
            stride = s.stride if r == 0 else 1
            extra: dict[str, Any] = {}
            k = s.kernel
            if kind == "conv":
                p = s.args.get("padding", k // 2)
                g = s.args.get("groups", 1)
                if c % g or out % g:
                    raise SpecError(f"{where}: groups={g} must divide in channels {c} and out channels {out}")
                extra = {"padding": p, "groups": g}
            elif kind == "fire":
                p = 1  # the 3x3 expand; the 1x1 expand has padding 0 and the same output size
                k = 3
                e3 = max(1, int(round(out * s.arg("pct3x3"))))
                e1 = out - e3
                if e1 < 1:
                    raise SpecError(f"{where}: a Fire module needs at least 2 output channels, got {out}")
                sq = max(1, int(round(out * s.arg("squeeze_ratio"))))
                extra = {"squeeze": sq, "e1": e1, "e3": e3, "bypass": bool(s.arg("bypass"))}
            elif kind == "ir":
                p = k // 2
                hidden = ir_hidden(c, s.arg("expand"))
                se = s.arg("se")
                extra = {"expand": s.arg("expand"), "hidden": hidden, "se": se,
                         "se_ch": se_channels(hidden, se) if se else 0}
            elif kind == "lowrank":
                p = k // 2
                extra = {"rank": max(1, int(round(s.arg("rank_ratio") * min(c, out))))}
            elif kind == "basic":
                p = k // 2
                if s.arg("shortcut") == "A" and (stride != 1 or c != out) and out < c:
                    raise SpecError(f"{where}: shortcut 'A' cannot reduce channels ({c} -> {out}); use 'B'")
                extra = {"shortcut": s.arg("shortcut")}
            else:  # dws
                p = k // 2
            ho, wo = _spatial(where, h, w, k, stride, p)
            blocks.append(Block(kind, c, out, k, stride, h, w, ho, wo, extra))
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
