"""Hypothesis strategy for random *valid* `NetSpec`s over every registered block kind (shared by the test modules).

Each stage's kind is drawn from the registry and its arguments from the kind's `examples`, which exercise the
cost model's corners (groups, padding, even pool kernels, ceil mode, expand 1, squeeze-excite, Fire bypass,
shortcut A/B, Ghost ratios, MobileNetV3 activations, alpha rounding, odd resolutions), so a newly registered
kind is drawn the moment it exists. A drawn stage that would make the spec invalid (vanishing feature map, too
few channels for a Fire) is dropped, so every generated spec validates; the draws stay deterministic, which
keeps shrinking meaningful.
"""
from __future__ import annotations

from hypothesis import strategies as st

from archs import HeadSpec, NetSpec, StageSpec, StemSpec
from archs.errors import SpecError
from archs.plan import resolve
from archs.registry import get_kind, names
from archs.spec import ACTIVATIONS

ALL_BLOCKS = names()
KERNELS = (1, 3, 5, 7)
EVEN_KERNELS = (1, 2, 3, 4, 5, 7)  # for kinds that allow even kernels (plain conv)
POOL_KERNELS = (1, 2, 3, 5)


def _args(draw, kind, c_in: int, out: int, k: int) -> dict:
    args = {}
    for name in kind.examples:
        v = draw(st.sampled_from(kind.example_values(name, c_in, out, k)))
        if v is not None:
            args[name] = v
    return args


def _stage(draw, name: str, spec: NetSpec, c_in: int) -> StageSpec:
    kind = get_kind(name)
    stride = draw(st.integers(1, 2))
    if not kind.channels:
        k = draw(st.sampled_from(POOL_KERNELS))
        return StageSpec(name, kernel=k, stride=stride, repeats=draw(st.integers(1, 2)),
                         args=_args(draw, kind, c_in, c_in, k))
    # keep the input width (unscaled) sometimes, so residuals, Fire bypass and identity shortcuts happen
    same = draw(st.booleans()) and c_in > 1
    channels = c_in if same else draw(st.integers(1, 32))
    scale = not same
    out = spec.ch(channels, scale)
    repeats = draw(st.integers(1, 2))
    k = draw(st.sampled_from(KERNELS if kind.odd_kernel else EVEN_KERNELS))
    return StageSpec(name, channels, repeats=repeats, stride=stride, kernel=k, args=_args(draw, kind, c_in, out, k),
                     scale=scale)


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
