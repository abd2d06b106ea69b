"""Low-rank factorization of trained layers: SVD of Linear layers (two Linear layers through rank r) and of
Conv2d layers (groups=1, k>1) into the catalog's `LowRankConv2d` (kx1 then 1xk, Tai et al. 2016).

Ranks are chosen per layer from the singular values: the smallest rank keeping a fraction `energy` of the
squared singular values (Frobenius energy), or, for a target MFLOPs, one common energy found by bisection. A
layer is replaced only where the factorization lowers its MACs.

    plan = lowrank(model, energy=0.9)                  # in place; returns the per-layer plan
    plan = lowrank(model, target_mflops=0.05)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from archs.blocks import LowRankConv2d
from archs.errors import UserError

__all__ = ["LowRankLinear", "LayerPlan", "rank_for_energy", "candidate_layers", "plan_ranks", "apply_plan",
           "lowrank", "conv_svd_matrix", "macs_at_rank"]


class LowRankLinear(nn.Module):
    """Drop-in for `nn.Linear(in, out)`: `first` (in -> rank, no bias) then `second` (rank -> out, bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        if rank < 1:
            raise UserError(f"rank must be >= 1, got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> "LowRankLinear":
        """Best rank-`rank` approximation (truncated SVD, W = U S V^T split as (U sqrt S)(sqrt S V^T))."""
        w = linear.weight.detach().float()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = min(rank, s.numel())
        lr = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
        root = s[:r].sqrt()
        with torch.no_grad():
            lr.first.weight.zero_()
            lr.second.weight.zero_()
            lr.first.weight[:r].copy_(root[:, None] * vh[:r])
            lr.second.weight[:, :r].copy_(u[:, :r] * root)
            if linear.bias is not None:
                lr.second.bias.copy_(linear.bias.detach())
        return lr.to(linear.weight.device, linear.weight.dtype)


def conv_svd_matrix(w: torch.Tensor) -> torch.Tensor:
    """The (c*k) x (o*k) matrix whose SVD gives LowRankConv2d's factors (same layout as `from_conv`)."""
    o, c, k, _ = w.shape
    return w.detach().float().permute(1, 2, 0, 3).reshape(c * k, o * k)


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2) (at least 1)."""
    e = (s.double() ** 2)
    total = float(e.sum())
    if total <= 0:
        return 1
    cum = torch.cumsum(e, 0) / total
    r = int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype) - 1e-12).item()) + 1
    return max(1, min(r, s.numel()))


@dataclass
class LayerPlan:
    """One candidate layer: its shapes, singular values, the chosen rank and MACs before/after."""

    name: str
    kind: str          # "linear" | "conv"
    full_rank: int
    macs: int          # MACs of the layer now (per image)
    rank: int = 0
    macs_after: int = 0
    energy_kept: float = 1.0
    replace: bool = False
    geom: tuple = ()   # conv: (out, in, k, stride, padding, h_in, w_in, h_out, w_out); linear: (in, out)

    def to_dict(self) -> dict:
        return asdict(self)


def _io_sizes(model: nn.Module, input_shape) -> dict[str, tuple]:
    """Spatial input/output sizes of every Conv2d (from one forward pass with hooks)."""
    sizes: dict[str, tuple] = {}
    hooks = []
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, n=n: sizes.__setitem__(n, (tuple(inp[0].shape[-2:]), tuple(out.shape[-2:])))))
    p = next(model.parameters())
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *tuple(input_shape)[-3:]), device=p.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return sizes


def candidate_layers(model: nn.Module, input_shape=None) -> tuple[list[LayerPlan], dict[str, torch.Tensor]]:
    """Plans (rank 0, not replaced) and singular values of every Linear and every square ungrouped Conv2d with k > 1."""
    if input_shape is None:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ValueError("input_shape is required for a model that was not built from a NetSpec")
        input_shape = spec.input_shape
    sizes = _io_sizes(model, input_shape)
    plans, svals = [], {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            s = torch.linalg.svdvals(m.weight.detach().float())
            plans.append(LayerPlan(n, "linear", s.numel(), m.in_features * m.out_features,
                                   geom=(m.in_features, m.out_features)))
            svals[n] = s
        elif isinstance(m, nn.Conv2d) and n in sizes:
            kh, kw = m.kernel_size
            if kh != kw or kh < 2 or m.groups != 1 or m.dilation != (1, 1) or m.stride[0] != m.stride[1] \
                    or isinstance(m.padding, str) or m.padding[0] != m.padding[1]:
                continue
            (hin, win), (hout, wout) = sizes[n]
            o, c, k = m.out_channels, m.in_channels, kh
            s = torch.linalg.svdvals(conv_svd_matrix(m.weight))
            plans.append(LayerPlan(n, "conv", s.numel(), o * c * k * k * hout * wout,
                                   geom=(o, c, k, m.stride[0], m.padding[0], hin, win, hout, wout)))
            svals[n] = s
    return plans, svals


def macs_at_rank(plan: LayerPlan, r: int) -> int:
    """MACs per image of the layer factorized at rank r (what fvcore counts for the two layers)."""
    if plan.kind == "linear":
        fin, fout = plan.geom
        return r * (fin + fout)
    o, c, k, s, p, hin, win, hout, wout = plan.geom
    # vertical (k x 1, stride (s, 1), pad (p, 0)): output hout x win; horizontal (1 x k, stride (1, s)): hout x wout
    return r * c * k * hout * win + o * r * k * hout * wout


def plan_ranks(model: nn.Module, energy: float | None = None, target_mflops: float | None = None,
               input_shape=None, total_macs: int | None = None) -> list[LayerPlan]:
    """Per-layer ranks for an energy fraction, or for a target total (fvcore MACs / 1e6) by bisection on energy.

    A layer is marked `replace` only when its factorized MACs are strictly lower than now.
    """
    if (energy is None) == (target_mflops is None):
        raise UserError("give exactly one of energy (fraction of singular-value energy kept) or target MFLOPs")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise UserError(f"low-rank energy must be in (0, 1], got {energy}")
    if target_mflops is not None and (not math.isfinite(target_mflops) or target_mflops <= 0):
        raise UserError(f"target MFLOPs must be positive, got {target_mflops}")
    plans, svals = candidate_layers(model, input_shape)
    if not plans:
        raise UserError("no layer can be factorized (needs Linear layers or ungrouped square Conv2d with k > 1)")
    def assign(e: float) -> int:
        saved = 0
        for pl in plans:
            r = rank_for_energy(svals[pl.name], e)
            after = macs_at_rank(pl, r)
            s2 = svals[pl.name].double() ** 2
            pl.rank, pl.macs_after = r, after
            pl.energy_kept = float(s2[:r].sum() / s2.sum()) if float(s2.sum()) > 0 else 1.0
            pl.replace = after < pl.macs
            if pl.replace:
                saved += pl.macs - after
        return saved

    if energy is not None:
        assign(energy)
        return plans
    if total_macs is None:
        from archs import count

        total_macs = count(model, input_shape).macs
    target = target_mflops * 1e6
    if total_macs <= target:
        assign(1.0)
        for pl in plans:
            pl.replace = False
        return plans
    lo, hi = 0.0, 1.0
    if total_macs - assign(1e-9) > target:  # even rank 1 everywhere cannot reach the target: do the most we can
        return plans
    for _ in range(40):
        mid = (lo + hi) / 2
        if total_macs - assign(mid) <= target:
            lo = mid
        else:
            hi = mid
    assign(lo)
    return plans


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def apply_plan(model: nn.Module, plans: list[LayerPlan]) -> nn.Module:
    """Replace the planned layers in place by their closed-form low-rank factorizations."""
    mods = dict(model.named_modules())
    for pl in plans:
        if not pl.replace:
            continue
        m = mods[pl.name]
        new = LowRankLinear.from_linear(m, pl.rank) if pl.kind == "linear" else LowRankConv2d.from_conv(m, pl.rank)
        _set_module(model, pl.name, new)
    return model


def lowrank(model: nn.Module, energy: float | None = None, target_mflops: float | None = None,
            input_shape=None) -> list[LayerPlan]:
    """Plan ranks and factorize in place; returns the plans (replaced layers have `replace=True`)."""
    plans = plan_ranks(model, energy, target_mflops, input_shape)
    apply_plan(model, plans)
    return plans
