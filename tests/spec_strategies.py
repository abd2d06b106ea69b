"""Hypothesis strategy for random *valid* `NetSpec`s over every catalog block (shared by the test modules).

Each stage is drawn with arguments that exercise the cost model's corners (groups, padding, even pool kernels,
ceil mode, expand 1, squeeze-excite, Fire bypass, shortcut A/B, alpha rounding, odd resolutions). A drawn
stage that would make the spec invalid (vanishing feature map, too few channels for a Fire) is dropped, so
every generated spec validates; the draws stay deterministic, which keeps shrinking meaningful.
"""
from __future__ import annotations

import math

from hypothesis import strategies as st

from archs import HeadSpec, NetSpec, StageSpec, StemSpec
from archs.errors import SpecError
from archs.plan import resolve
from archs.spec import ACTIVATIONS

ALL_BLOCKS = ("conv", "dws", "ir", "fire", "lowrank", "basic", "maxpool", "avgpool")
KERNELS = (1, 3, 5, 7)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _stage(draw, kind: str, spec: NetSpec, c_in: int) -> StageSpec:
    stride = draw(st.integers(1, 2))
    if kind in ("maxpool", "avgpool"):
        k = draw(st.sampled_from((1, 2, 3, 5)))
        args = {"padding": draw(st.integers(0, k // 2))}
        if kind == "maxpool":
            args["ceil_mode"] = draw(st.booleans())
        return StageSpec(kind, kernel=k, stride=stride, repeats=draw(st.integers(1, 2)), args=args)
    # keep the input width (unscaled) sometimes, so residuals, Fire bypass and identity shortcuts happen
    same = draw(st.booleans()) and c_in > 1
    channels = c_in if same else draw(st.integers(1, 32))
    scale = not same
    out = spec.ch(channels, scale)
    repeats = draw(st.integers(1, 2))
    args: dict = {}
    k = draw(st.sampled_from(KERNELS))
    if kind == "conv":
        k = draw(st.sampled_from((1, 2, 3, 4, 5, 7)))  # even kernels are allowed for plain convs
        if draw(st.booleans()):
            args["padding"] = draw(st.integers(0, k))
        # groups must divide c_in and out (the first copy) and out (later copies): divisors of gcd(c_in, out)
        args["groups"] = draw(st.sampled_from(_divisors(math.gcd(c_in, out))))
    elif kind == "ir":
        args["expand"] = draw(st.sampled_from((1, 2, 3, 4, 6, 2.5)))
        args["se"] = draw(st.sampled_from((0.0, 0.0, 0.125, 0.25, 0.5)))
    elif kind == "fire":
        args["squeeze_ratio"] = draw(st.sampled_from((0.125, 0.25, 0.5, 1.0)))
        args["pct3x3"] = draw(st.sampled_from((0.25, 0.5, 0.75)))
        args["bypass"] = draw(st.booleans())
    elif kind == "lowrank":
        args["rank_ratio"] = draw(st.sampled_from((0.1, 0.25, 0.5, 0.75, 1.0)))
    elif kind == "basic":
        args["shortcut"] = draw(st.sampled_from(("A", "B")))
    return StageSpec(kind, channels, repeats=repeats, stride=stride, kernel=k, args=args, scale=scale)


def _ok(spec: NetSpec) -> bool:
    try:
        resolve(spec)
        return True
    except SpecError:
        return False


@st.composite
def random_spec(draw, blocks: tuple[str, ...] = ALL_BLOCKS, max_stages: int = 5, max_resolution: int = 24) -> NetSpec:
    """A random valid NetSpec (small enough that fvcore runs in well under a second)."""
    spec = NetSpec(
        num_classes=draw(st.integers(1, 12)),
        in_chans=draw(st.integers(1, 3)),
        resolution=draw(st.integers(3, max_resolution)),
        rho=draw(st.floats(0.5, 2.0, allow_nan=False, allow_infinity=False)),
        alpha=draw(st.floats(0.25, 2.0, allow_nan=False, allow_infinity=False)),
        divisor=draw(st.sampled_from((1, 2, 4, 8))),
        act=draw(st.sampled_from(ACTIVATIONS)),
        norm=draw(st.booleans()),
    )
    if draw(st.integers(0, 5)) == 0:
        spec.stem = StemSpec(channels=0)
    else:
        k = draw(st.sampled_from(KERNELS))
        spec.stem = StemSpec(draw(st.integers(1, 32)), k, draw(st.integers(1, 2)),
                             draw(st.one_of(st.none(), st.integers(0, k // 2))))
        if not _ok(spec):
            spec.stem.padding = None  # k // 2 always fits
    for _ in range(draw(st.integers(0, max_stages))):
        c_in = resolve(spec).feat_ch
        stage = _stage(draw, draw(st.sampled_from(blocks)), spec, c_in)
        spec.stages.append(stage)
        if not _ok(spec):
            spec.stages.pop()
    kind = draw(st.sampled_from(("pool", "flatten", "conv")))
    hidden = [] if kind == "conv" else draw(st.lists(st.integers(1, 48), max_size=2))
    spec.head = HeadSpec(kind, hidden, draw(st.sampled_from((0.0, 0.0, 0.2, 0.5))))
    return spec.validate()
