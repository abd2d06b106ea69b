"""Exact analytic cost model: MACs as fvcore counts them and trainable parameters, from a spec alone.

Pure integer arithmetic over the resolved plan (no torch, no tracing), so the search can screen
thousands of candidates a second. Conventions (fvcore 0.1.5, eval mode, batch 1):
conv = out_numel * in/groups * kh * kw; linear = in * out; batch norm = 2 * numel;
adaptive average pool = input numel; ReLU, max/avg pool, add, cat, mul, pad count 0.
"""
from __future__ import annotations

from dataclasses import dataclass

from .plan import Block, resolve
from .spec import NetSpec


@dataclass(frozen=True, slots=True)
class Cost:
    """MACs (fvcore's count, million = MFLOPs in this package) and trainable parameters."""

    macs: int
    params: int

    @property
    def mflops(self) -> float:
        return self.macs / 1e6


def block_cost(b: Block, norm: bool) -> tuple[int, int]:
    """(MACs, params) of one resolved block.

    A conv costs out_ch * H_out * W_out * (in_ch / groups) * kh * kw MACs and as many weights. Every conv except
    LowRank's first factor carries BN (2 MACs per output element, 2 parameters per channel) or, without norm,
    a bias (1 parameter per channel, no MACs in fvcore's count). Written out inline: this is `estimate`'s hot loop.
    """
    kind, k, cin, cout = b.kind, b.kernel, b.in_ch, b.out_ch
    hw = b.h_out * b.w_out
    mb, pb = (2, 2) if norm else (0, 1)  # per output element MACs, per output channel params of BN or bias
    x = b.extra
    if kind == "conv":
        kk = cin // x["groups"] * k * k
        return cout * hw * (kk + mb), cout * (kk + pb)
    if kind == "dws":
        kk = k * k
        return cin * hw * (kk + mb) + cout * hw * (cin + mb), cin * (kk + pb) + cout * (cin + pb)
    if kind == "ir":
        hid = x["hidden"]
        kk = k * k
        m = hid * hw * (kk + mb) + cout * hw * (hid + mb)
        p = hid * (kk + pb) + cout * (hid + pb)
        if x["expand"] != 1:
            m += hid * b.h_in * b.w_in * (cin + mb)
            p += hid * (cin + pb)
        if x["se"]:
            r = x["se_ch"]
            m += hid * hw + 2 * hid * r  # pool + two 1x1 convs on a 1x1 map
            p += hid * r + r + r * hid + hid
        return m, p
    if kind == "fire":
        sq, e1, e3 = x["squeeze"], x["e1"], x["e3"]
        m = sq * b.h_in * b.w_in * (cin + mb) + e1 * hw * (sq + mb) + e3 * hw * (9 * sq + mb)
        return m, sq * (cin + pb) + e1 * (sq + pb) + e3 * (9 * sq + pb)
    if kind == "lowrank":
        r = x["rank"]
        # kx1 to r channels (stride on height only, no bias, no norm), then 1xk (stride on width) + BN/bias
        return r * b.h_out * b.w_in * cin * k + cout * hw * (r * k + mb), r * cin * k + cout * (r * k + pb)
    if kind == "basic":
        kk = k * k
        m = cout * hw * (cin * kk + mb) + cout * hw * (cout * kk + mb)
        p = cout * (cin * kk + pb) + cout * (cout * kk + pb)
        if x["shortcut"] == "B" and (b.stride != 1 or cin != cout):
            m += cout * hw * (cin + mb)
            p += cout * (cin + pb)
        return m, p
    return 0, 0  # max/avg pooling: no MACs in fvcore's count, no parameters


def estimate(spec: NetSpec) -> Cost:
    """Exact fvcore MACs and parameter count of `build(spec)` at `spec.input_shape`, without building it."""
    plan = resolve(spec)
    macs = params = 0
    norm = spec.norm
    for b in plan.blocks:
        m, p = block_cost(b, norm)
        macs += m
        params += p
    for kind, cin, cout in plan.head:
        if kind == "fc":
            macs += cin * cout
            params += cin * cout + cout
        elif kind == "conv":
            macs += cin * cout * plan.feat_h * plan.feat_w
            params += cin * cout + cout
        else:  # adaptive average pool: one per input element
            macs += cin
    return Cost(macs, params)
