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


def _conv(cin: int, cout: int, kh: int, kw: int, ho: int, wo: int, groups: int = 1, bias: bool = False,
          norm: bool = False) -> tuple[int, int]:
    macs = cout * ho * wo * (cin // groups) * kh * kw
    params = cout * (cin // groups) * kh * kw + (cout if bias else 0)
    if norm:
        macs += 2 * cout * ho * wo
        params += 2 * cout
    return macs, params


def block_cost(b: Block, norm: bool) -> tuple[int, int]:
    """(MACs, params) of one resolved block."""
    k, ho, wo, x = b.kernel, b.h_out, b.w_out, b.extra
    bias = not norm
    if b.kind == "conv":
        return _conv(b.in_ch, b.out_ch, k, k, ho, wo, x["groups"], bias, norm)
    if b.kind == "dws":
        m1, p1 = _conv(b.in_ch, b.in_ch, k, k, ho, wo, b.in_ch, bias, norm)
        m2, p2 = _conv(b.in_ch, b.out_ch, 1, 1, ho, wo, 1, bias, norm)
        return m1 + m2, p1 + p2
    if b.kind == "ir":
        hid = x["hidden"]
        m = p = 0
        if x["expand"] != 1:
            m, p = _conv(b.in_ch, hid, 1, 1, b.h_in, b.w_in, 1, bias, norm)
        m2, p2 = _conv(hid, hid, k, k, ho, wo, hid, bias, norm)
        m3, p3 = _conv(hid, b.out_ch, 1, 1, ho, wo, 1, bias, norm)
        m, p = m + m2 + m3, p + p2 + p3
        if x["se"]:
            r = x["se_ch"]
            m += hid * ho * wo + 2 * hid * r  # pool + two 1x1 convs on a 1x1 map
            p += hid * r + r + r * hid + hid
        return m, p
    if b.kind == "fire":
        sq, e1, e3 = x["squeeze"], x["e1"], x["e3"]
        m1, p1 = _conv(b.in_ch, sq, 1, 1, b.h_in, b.w_in, 1, bias, norm)
        m2, p2 = _conv(sq, e1, 1, 1, ho, wo, 1, bias, norm)
        m3, p3 = _conv(sq, e3, 3, 3, ho, wo, 1, bias, norm)
        return m1 + m2 + m3, p1 + p2 + p3
    if b.kind == "lowrank":
        r = x["rank"]
        m1, p1 = _conv(b.in_ch, r, k, 1, ho, b.w_in, 1, False, False)      # kx1, stride on height only
        m2, p2 = _conv(r, b.out_ch, 1, k, ho, wo, 1, bias, norm)          # 1xk, stride on width
        return m1 + m2, p1 + p2
    if b.kind == "basic":
        m1, p1 = _conv(b.in_ch, b.out_ch, k, k, ho, wo, 1, bias, norm)
        m2, p2 = _conv(b.out_ch, b.out_ch, k, k, ho, wo, 1, bias, norm)
        m, p = m1 + m2, p1 + p2
        if x["shortcut"] == "B" and (b.stride != 1 or b.in_ch != b.out_ch):
            m3, p3 = _conv(b.in_ch, b.out_ch, 1, 1, ho, wo, 1, bias, norm)
            m, p = m + m3, p + p3
        return m, p
    return 0, 0  # max/avg pooling: no MACs in fvcore's count, no parameters


def estimate(spec: NetSpec) -> Cost:
    """Exact fvcore MACs and parameter count of `build(spec)` at `spec.input_shape`, without building it."""
    plan = resolve(spec)
    macs = params = 0
    for b in plan.blocks:
        m, p = block_cost(b, spec.norm)
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
