"""The search space: Optuna trial -> `NetSpec`, fitted to hard budgets by bisection on the analytic count.

Structure (stages, block types, channels, repeats, strides, kernels, block arguments, resolution multiplier rho)
is sampled; the width multiplier alpha is sampled as an upper bound and then shrunk by bisection on `estimate`
until the network fits the MFLOPs and parameter budgets, so no trial is spent on an infeasible sample.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import optuna

from archs import Cost, HeadSpec, NetSpec, StageSpec, StemSpec, estimate
from archs.memory import Memory, memory
from archs.errors import SpecError, UserError
from archs.registry import default_space, get_kind, kinds, searchable
from archs.units import format_quantity

#: Block kinds the search can sample (`--space`), and those it samples by default: both from the registry.
#: The default space is the one the README's measured figures were made with; newer kinds are opt-in.
SEARCHABLE_BLOCKS = searchable()
DEFAULT_BLOCKS = default_space()


@dataclass
class Budget:
    """Hard limits; None means unconstrained. MFLOPs = million multiply-adds as fvcore counts them; sram_kb bounds
    the whole TFLM tensor arena (activations + runtime overhead) and flash_kb the int8 .tflite file, both in kB
    (1 kB = 1,024 bytes) as `archs.memory` computes them."""

    mflops: float | None = None
    params: float | None = None
    latency_ms: float | None = None
    sram_kb: float | None = None
    flash_kb: float | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.mflops, self.params, self.latency_ms, self.sram_kb, self.flash_kb))

    @property
    def mcu(self) -> bool:
        """True when a microcontroller budget (arena or flash) is set."""
        return self.sram_kb is not None or self.flash_kb is not None

    def fits(self, cost: Cost) -> bool:
        """True when the analytic cost is within the MFLOPs and parameter budgets."""
        return ((self.mflops is None or cost.macs <= self.mflops * 1e6)
                and (self.params is None or cost.params <= self.params))

    def fits_memory(self, mem: Memory) -> bool:
        """True when the int8 TFLM arena and flash are within the microcontroller budgets."""
        return ((self.sram_kb is None or mem.arena_bytes <= self.sram_kb * 1024)
                and (self.flash_kb is None or mem.flash_bytes <= self.flash_kb * 1024))

    def share(self, cost: Cost, latency_ms: float | None = None, mem: Memory | None = None) -> float:
        """Largest fraction of any budget used (1.0 = exactly at the limit)."""
        shares = []
        if mem is not None and self.sram_kb is not None:
            shares.append(mem.arena_bytes / (self.sram_kb * 1024))
        if mem is not None and self.flash_kb is not None:
            shares.append(mem.flash_bytes / (self.flash_kb * 1024))
        if self.mflops is not None:
            shares.append(cost.macs / (self.mflops * 1e6))
        if self.params is not None:
            shares.append(cost.params / self.params)
        if self.latency_ms is not None and latency_ms is not None:
            shares.append(latency_ms / self.latency_ms)
        return max(shares) if shares else float("nan")

    def describe(self) -> str:
        parts = []
        if self.mflops is not None:
            parts.append(f"{self.mflops:g} MFLOPs")
        if self.params is not None:
            parts.append(f"{format_quantity(self.params)} params")
        if self.latency_ms is not None:
            parts.append(f"{self.latency_ms:g} ms CPU latency")
        if self.sram_kb is not None:
            parts.append(f"{self.sram_kb:g} kB tensor arena")
        if self.flash_kb is not None:
            parts.append(f"{self.flash_kb:g} kB flash")
        return ", ".join(parts) or "no budget"


WIDTHS = ("alpha", "share")


@dataclass
class SearchSpace:
    """What the sampler may choose. Defaults suit small images (8-32 px); every range is editable."""

    blocks: tuple[str, ...] = DEFAULT_BLOCKS
    max_stages: int = 4
    max_repeats: int = 3
    channels: tuple[int, int] = (8, 128)        # per-stage channels before alpha, log-uniform
    stem_channels: tuple[int, ...] = (8, 16, 24, 32)
    kernels: tuple[int, ...] = (3, 5)
    expand: tuple[float, ...] = (1, 2, 3, 4, 6)
    se: tuple[float, ...] = (0.0, 0.25)
    squeeze_ratio: tuple[float, ...] = (0.125, 0.25, 0.5)
    pct3x3: tuple[float, ...] = (0.25, 0.5, 0.75)
    rank_ratio: tuple[float, ...] = (0.25, 0.5, 0.75)
    alpha: tuple[float, float] = (0.25, 2.0)
    alpha_min: float = 0.05                     # bisection floor
    # "alpha": alpha is sampled as an upper bound that the bisection shrinks (the default, as measured in the
    # README); "share": the sampler chooses the share of the budget to fill instead, and alpha is fitted to it,
    # so the value it models is the one that decided the network
    width: str = "alpha"
    budget_share: tuple[float, float] = (0.5, 1.0)
    rho: tuple[float, ...] = (0.75, 1.0, 1.5, 2.0)
    dropout: tuple[float, ...] = (0.0, 0.1, 0.2)
    downsample: tuple[str, ...] = ("none", "stride", "maxpool")  # how a stage may halve the feature map
    heads: tuple[str, ...] = ("pool", "flatten", "maxpool+flatten")  # global average pool, or flatten the map
    divisor: int = 4
    search_lr: bool = True
    lr: tuple[float, float] = (3e-3, 3e-2)      # AdamW, cosine to 0
    weight_decay: tuple[float, float] = (1e-5, 1e-3)
    min_feature: int = 2                        # do not downsample below this side length

    def validate(self) -> "SearchSpace":
        bad = [b for b in self.blocks if b not in SEARCHABLE_BLOCKS]  # unknown or not searchable
        if bad or not self.blocks:
            raise UserError(f"--space: unknown block type(s) {', '.join(bad) or '(none given)'}; "
                            f"choose from {', '.join(SEARCHABLE_BLOCKS)}")
        if self.width not in WIDTHS:
            raise UserError(f"--width must be {' or '.join(WIDTHS)}, got {self.width!r}")
        return self


@dataclass
class DataShape:
    """What the network must accept and produce."""

    in_chans: int
    resolution: int
    num_classes: int


@dataclass
class Candidate:
    """A sampled network fitted to the budget, with the hyper-parameters sampled alongside it."""

    spec: NetSpec
    cost: Cost
    hparams: dict[str, Any] = field(default_factory=dict)
    alpha_sampled: float = 1.0


def _stride_allowed(size: int, min_feature: int) -> bool:
    return (size + 1) // 2 >= min_feature


def sample_structure(trial: optuna.Trial, space: SearchSpace, shape: DataShape) -> tuple[NetSpec, float, dict]:
    """Sample a network structure (alpha = 1) and the sampled alpha upper bound and training hyper-parameters."""
    rho = trial.suggest_categorical("rho", list(space.rho))
    size = max(1, int(round(shape.resolution * rho)))
    stem_ch = trial.suggest_categorical("stem_channels", list(space.stem_channels))
    stem_stride = 2 if size >= 64 else 1
    size = (size + stem_stride - 1) // stem_stride
    n_stages = trial.suggest_int("n_stages", 1, space.max_stages)
    stages = []
    for i in range(n_stages):
        p = f"s{i}_"
        block = trial.suggest_categorical(p + "block", list(space.blocks))
        ch = trial.suggest_int(p + "channels", space.channels[0], space.channels[1], log=True)
        repeats = trial.suggest_int(p + "repeats", 1, space.max_repeats)
        down = trial.suggest_categorical(p + "downsample", list(space.downsample))
        stride = 1
        if down != "none" and _stride_allowed(size, space.min_feature):
            size = (size + 1) // 2
            if down == "stride":
                stride = 2
            else:  # 3x3/2 max pool (padding 1) before the block: ceil(size / 2) like a stride-2 conv
                stages.append(StageSpec("maxpool", kernel=3, stride=2, args={"padding": 1}))
        kind = get_kind(block, f"--space {block}")
        kernel = kind.kernel or trial.suggest_categorical(p + "kernel", list(space.kernels))
        args = kind.sample_args(trial, p, space)
        stages.append(StageSpec(block, ch, repeats, stride, kernel, args))
    head = trial.suggest_categorical("head", list(space.heads))
    if head == "maxpool+flatten":  # LeNet's ending: halve the map, then flatten it into the classifier
        head = "flatten"
        if _stride_allowed(size, space.min_feature):
            stages.append(StageSpec("maxpool", kernel=3, stride=2, args={"padding": 1}))
    dropout = trial.suggest_categorical("dropout", list(space.dropout))
    if space.width == "share":  # alpha is fitted to this share of the budget (see trial_budget)
        trial.suggest_float("budget_share", space.budget_share[0], space.budget_share[1])
        alpha = space.alpha[1]
    else:
        alpha = trial.suggest_float("alpha", space.alpha[0], space.alpha[1], log=True)
    hp: dict[str, Any] = {}
    if space.search_lr:
        hp["lr"] = trial.suggest_float("lr", space.lr[0], space.lr[1], log=True)
        hp["weight_decay"] = trial.suggest_float("weight_decay", space.weight_decay[0], space.weight_decay[1], log=True)
    spec = NetSpec(num_classes=shape.num_classes, in_chans=shape.in_chans, resolution=shape.resolution, rho=rho,
                   alpha=1.0, divisor=space.divisor, stem=StemSpec(stem_ch, 3, stem_stride), stages=stages,
                   head=HeadSpec(head, dropout=dropout))
    return spec, alpha, hp


def trial_budget(budget: Budget, params: dict[str, Any]) -> Budget:
    """The budget a trial's alpha is fitted to: `budget`, or its sampled `budget_share` of it (--width share)."""
    share = params.get("budget_share")
    if share is None:
        return budget
    scale = lambda v: None if v is None else v * share  # noqa: E731
    return Budget(scale(budget.mflops), scale(budget.params), scale(budget.latency_ms), scale(budget.sram_kb),
                  scale(budget.flash_kb))


def fit_alpha(spec: NetSpec, alpha_max: float, fits: Callable[[NetSpec], bool], alpha_min: float = 0.05,
              steps: int = 24) -> NetSpec | None:
    """Largest alpha in [alpha_min, alpha_max] whose network `fits`, by bisection; None if even alpha_min fails.

    Channel rounding makes cost a step function of alpha that is non-decreasing, so bisection is exact up to
    the final interval width. A midpoint whose alpha (rounded to 4 decimals, as specs keep it) is the fitting or
    the failing end's is not checked again: its answer is known (once the interval is that narrow, about a third
    of the steps, each a `memory` call under a microcontroller budget).
    """
    top = replace(spec, alpha=alpha_max)
    if fits(top):
        return top
    lo_spec = replace(spec, alpha=alpha_min)
    if not fits(lo_spec):
        return None
    lo, hi = math.log(alpha_min), math.log(alpha_max)
    best, failed = lo_spec, top.alpha
    for _ in range(steps):
        mid = (lo + hi) / 2
        alpha = round(math.exp(mid), 4)
        if alpha == best.alpha:
            lo = mid
        elif alpha == failed:
            hi = mid
        elif fits(cand := replace(spec, alpha=alpha)):
            lo, best = mid, cand
        else:
            hi, failed = mid, alpha
    return best


def analytic_fits(budget: Budget) -> Callable[[NetSpec], bool]:
    """Budget check from the spec alone: MFLOPs and params by `estimate`, arena and flash by `memory`."""
    if not budget.mcu:
        def fits(spec: NetSpec) -> bool:
            try:
                return budget.fits(estimate(spec))
            except SpecError:
                return False
        return fits

    def fits_mcu(spec: NetSpec) -> bool:
        try:
            return budget.fits(estimate(spec)) and budget.fits_memory(memory(spec))
        except SpecError:
            return False
    return fits_mcu


def sample(trial: optuna.Trial, space: SearchSpace, shape: DataShape, budget: Budget) -> Candidate | None:
    """Sample a candidate and fit it to the MFLOPs/params budgets (latency is checked by the caller)."""
    spec, alpha, hp = sample_structure(trial, space, shape)
    fitted = fit_alpha(spec, alpha, analytic_fits(trial_budget(budget, trial.params)), space.alpha_min)
    if fitted is None:
        return None
    fitted = fitted.validate()
    return Candidate(fitted, estimate(fitted), hp, alpha)


def _smallest_candidates(space: SearchSpace, shape: DataShape):
    """(spec, cost) of the one-stage, narrowest, lowest-rho networks at the alpha floor, one per block type."""
    rho = min(space.rho)
    for block in space.blocks:
        kind = get_kind(block, f"--space {block}")
        args = kind.smallest(space) if kind.smallest else {}
        size = max(1, int(round(shape.resolution * rho)))
        stem_stride = 2 if size >= 64 else 1
        stride = 2 if _stride_allowed((size + stem_stride - 1) // stem_stride, space.min_feature) else 1
        for k in (min(space.kernels),):
            spec = NetSpec(num_classes=shape.num_classes, in_chans=shape.in_chans, resolution=shape.resolution,
                           rho=rho, alpha=space.alpha_min, divisor=space.divisor,
                           stem=StemSpec(min(space.stem_channels), 3, stem_stride),
                           stages=[StageSpec(block, space.channels[0], 1, stride, kind.kernel or k, args)],
                           head=HeadSpec("pool"))
            try:
                yield spec, estimate(spec)
            except SpecError:
                continue


def smallest_network(space: SearchSpace, shape: DataShape) -> tuple[NetSpec, Cost]:
    """The cheapest network the space can produce (one stage, narrowest, lowest rho, alpha at its floor)."""
    best: tuple[NetSpec, Cost] | None = None
    for spec, cost in _smallest_candidates(space, shape):
        if best is None or (cost.macs, cost.params) < (best[1].macs, best[1].params):
            best = (spec, cost)
    if best is None:
        raise UserError("the search space cannot produce any network for this input size")
    return best


def smallest_memory(space: SearchSpace, shape: DataShape) -> tuple[int, int]:
    """The smallest tensor arena and the smallest flash (bytes) among the space's smallest networks."""
    mems = [memory(spec) for spec, _ in _smallest_candidates(space, shape)]
    if not mems:
        raise UserError("the search space cannot produce any network for this input size")
    return min(m.arena_bytes for m in mems), min(m.flash_bytes for m in mems)


def check_feasible(space: SearchSpace, shape: DataShape, budget: Budget) -> tuple[NetSpec, Cost]:
    """Fail at once, before any training, when no network in the space meets the budget."""
    spec, cost = smallest_network(space, shape)
    over = []
    if budget.mflops is not None and cost.macs > budget.mflops * 1e6:
        over.append(f"--budget-mflops {budget.mflops:g}")
    if budget.params is not None and cost.params > budget.params:
        over.append(f"--budget-params {format_quantity(budget.params)}")
    if over:
        raise UserError(f"impossible budget ({' and '.join(over)}): the smallest network in the search space costs "
                        f"{cost.macs / 1e6:.4g} MFLOPs and {cost.params:,} params at {shape.in_chans}x"
                        f"{spec.input_size}x{spec.input_size} input")
    if budget.mcu:
        arena, flash = smallest_memory(space, shape)
        if (budget.sram_kb is not None and arena > budget.sram_kb * 1024) or \
                (budget.flash_kb is not None and flash > budget.flash_kb * 1024):
            given = " and ".join(f"{flag} {v:g}" for flag, v in (("--budget-sram-kb", budget.sram_kb),
                                                                 ("--budget-flash-kb", budget.flash_kb)) if v is not None)
            raise UserError(f"impossible budget ({given}): the smallest networks in the search space need a "
                            f"{arena / 1024:.1f} kB tensor arena and {flash / 1024:.1f} kB of flash at the least "
                            f"(int8, TensorFlow Lite Micro; 1 kB = 1,024 bytes)")
    return spec, cost


# ----- classic designs as the study's first trials ----------------------------------------------------------------
def _stage(i: int, block: str, channels: int, down: str, kernel: int = 3, **args: Any) -> dict[str, Any]:
    p = f"s{i}_"
    params: dict[str, Any] = {p + "block": block, p + "channels": channels, p + "repeats": 1, p + "downsample": down}
    if not get_kind(block).kernel:
        params[p + "kernel"] = kernel
    params.update({p + k: v for k, v in args.items()})
    return params


def _template_params(kind: str, t: dict[str, Any]) -> dict[str, Any]:
    """A kind's classic design (stem, stages of (channels, downsample, args), head) as the space's parameters."""
    params: dict[str, Any] = {"stem_channels": t["stem_channels"], "n_stages": len(t["stages"])}
    for i, (channels, down, args) in enumerate(t["stages"]):
        params.update(_stage(i, kind, channels, down, **args))
    return {**params, "head": t["head"], "dropout": t["dropout"]}


#: Classic compact designs in the space's own parameters (alpha = upper bound, fitted to the budget like any
#: sample), each declared by its block kind's record: LeNet-like conv -> pool -> conv -> pool -> flatten,
#: MobileNetV1-like depthwise-separable, MobileNetV2-like inverted residual and SqueezeNet-like Fire stages with a
#: pooled head, and so on for the newer kinds, in catalog order.
TEMPLATES: dict[str, dict[str, Any]] = {name: _template_params(k.name, t) for k in kinds().values()
                                        for name, t in k.templates.items()}
_STAGE_KEY = re.compile(r"^s(\d+)_(.+)$")


def warm_start_trials(space: SearchSpace) -> list[tuple[str, dict[str, Any]]]:
    """The classic designs this space can express, as fixed parameters for `study.enqueue_trial`.

    A search then starts from known-good compact networks (fitted to the budget like every sample) instead of
    from random structures only, and the sampler learns from them. Learning rate and weight decay (when searched)
    are the centres of their ranges. Designs using a block, value or depth outside the space are left out.
    """
    choices: dict[str, tuple] = {"stem_channels": space.stem_channels, "kernel": space.kernels,
                                 "downsample": space.downsample, "head": space.heads, "dropout": space.dropout}
    rho = min(space.rho, key=lambda r: abs(r - 1.0))
    # a design is judged at the centre of the learning-rate and weight-decay ranges (log scale), not at a random
    # draw: a poor draw would make a good design look bad, and TPE would steer away from it
    hp = {"lr": math.sqrt(space.lr[0] * space.lr[1]),
          "weight_decay": math.sqrt(space.weight_decay[0] * space.weight_decay[1])} if space.search_lr else {}
    out = []
    for name, params in TEMPLATES.items():
        ok = params["n_stages"] <= space.max_stages
        for key, value in params.items():
            m = _STAGE_KEY.match(key)
            base = m[2] if m else key
            arg_choices = {c.arg: c for c in get_kind(params[f"s{m[1]}_block"]).search or ()} if m else {}
            if base == "block":
                ok &= value in space.blocks
            elif base == "channels":
                ok &= space.channels[0] <= value <= space.channels[1]
            elif base in choices:
                ok &= value in choices[base]
            elif base in arg_choices:  # a block argument: one of the choices the space gives that block
                ok &= value in arg_choices[base].options(space)
        if ok:
            width = {"budget_share": space.budget_share[1]} if space.width == "share" else {"alpha": space.alpha[1]}
            out.append((name, {**params, "rho": rho, **width, **hp}))
    return out
