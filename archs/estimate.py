"""Exact analytic cost model: MACs as fvcore counts them and trainable parameters, from a spec alone.

Pure integer arithmetic over the resolved plan (no torch, no tracing), so the search can screen
thousands of candidates a second. Conventions (fvcore 0.1.5, eval mode, batch 1):
conv = out_numel * in/groups * kh * kw; linear = in * out; batch norm = 2 * numel;
adaptive average pool = input numel; ReLU, max/avg pool, add, cat, mul, pad count 0.
"""
from __future__ import annotations

from dataclasses import dataclass

from .plan import Block, resolve
from .registry import costs, get_kind

_COSTS = costs()
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
    """(MACs, params) of one resolved block, by its kind's registry record (SpecError for an unknown kind).

    A conv costs out_ch * H_out * W_out * (in_ch / groups) * kh * kw MACs and as many weights; each conv with a
    norm carries BN (2 MACs per output element, 2 parameters per channel) or, without norm, a bias (1 parameter
    per channel, no MACs in fvcore's count). Pooling costs nothing in fvcore's count.
    """
    return get_kind(b.kind).cost(b, norm)


def estimate(spec: NetSpec) -> Cost:
    """Exact fvcore MACs and parameter count of `build(spec)` at `spec.input_shape`, without building it."""
    plan = resolve(spec)
    macs = params = 0
    norm = spec.norm
    cost_of = _COSTS
    for b in plan.blocks:
        cost = cost_of.get(b.kind)
        if cost is None:
            get_kind(b.kind)  # raises SpecError naming the known kinds
        m, p = cost(b, norm)
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
