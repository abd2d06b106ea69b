"""Seeded random valid `NetSpec`s like the search produces, for benchmarks: `random_specs(n, seed)`.

Mostly small nets at 8-64 px (1 or 3 input channels, 2-5 stages of every registered block kind, alpha 0.25-2,
rho 0.5-2), and about one in ten larger nets at 96-160 px with more downsampling. Block arguments are drawn
from each kind's `examples` in the registry, so a new kind is drawn as soon as it is registered. Every spec
validates.
"""
from __future__ import annotations

import math
import random

from archs import HeadSpec, NetSpec, StageSpec, StemSpec
from archs.errors import SpecError
from archs.plan import resolve
from archs.registry import get_kind, names

BLOCKS = names()


def _ok(spec: NetSpec) -> bool:
    try:
        resolve(spec)
        return True
    except SpecError:
        return False


def _args(rng: random.Random, kind, c_in: int, out: int, k: int) -> dict:
    args = {}
    for name in kind.examples:
        v = rng.choice(kind.example_values(name, c_in, out, k))
        if v is not None:
            args[name] = v
    return args


def _stage(rng: random.Random, name: str, spec: NetSpec, c_in: int, large: bool) -> StageSpec:
    kind = get_kind(name)
    stride = rng.choice((1, 2, 2) if large else (1, 1, 2))
    if not kind.channels:
        k = rng.choice((2, 3))
        return StageSpec(name, kernel=k, stride=2 if rng.random() < 0.8 else 1, args=_args(rng, kind, c_in, c_in, k))
    same = rng.random() < 0.25
    channels = c_in if same else int(round(math.exp(rng.uniform(math.log(8), math.log(128 if large else 96)))))
    out = spec.ch(channels, not same)
    k = rng.choice((3, 3, 5, 1, 7))
    return StageSpec(name, channels, repeats=rng.randint(1, 3), stride=stride, kernel=k,
                     args=_args(rng, kind, c_in, out, k), scale=not same)


def random_spec(rng: random.Random, kinds: tuple[str, ...] = BLOCKS) -> NetSpec:
    """One random valid spec drawn from `rng`, its stages of the block `kinds` (default: every registered one)."""
    large = rng.random() < 0.1
    spec = NetSpec(num_classes=rng.choice((10, 10, 100, 1000) if large else (2, 10, 10, 26)),
                   in_chans=3 if large else rng.choice((1, 3)),
                   resolution=rng.choice((96, 128, 160)) if large else rng.choice((8, 8, 16, 28, 32, 32, 48, 64)),
                   rho=rng.choice((0.5, 0.75, 1.0, 1.0, 1.25, 1.5, 2.0)) if not large else rng.choice((0.75, 1.0)),
                   alpha=round(rng.uniform(0.25, 2.0), 3), divisor=rng.choice((1, 2, 4, 8, 8)),
                   act=rng.choice(("relu", "relu", "relu6", "hardswish", "silu")), norm=rng.random() < 0.85,
                   name=f"random{'_large' if large else ''}")
    if rng.random() < 0.1:
        spec.stem = StemSpec(channels=0)
    else:
        spec.stem = StemSpec(rng.choice((8, 16, 24, 32)), rng.choice((3, 3, 5)) if not large else 3,
                             2 if large or rng.random() < 0.2 else 1)
    n_stages = rng.randint(3, 7) if large else rng.randint(1, 5)
    tries = 0
    while len(spec.stages) < n_stages and tries < 4 * n_stages:
        tries += 1
        c_in = resolve(spec).feat_ch
        spec.stages.append(_stage(rng, rng.choice(kinds), spec, c_in, large))
        if not _ok(spec):
            spec.stages.pop()
    kind = rng.choice(("pool", "pool", "flatten", "conv")) if not large else rng.choice(("pool", "conv"))
    if kind == "flatten" and resolve(spec).feat_h * resolve(spec).feat_w > 64:
        kind = "pool"
    hidden = [] if kind == "conv" or rng.random() < 0.7 else [rng.choice((32, 64, 128))]
    spec.head = HeadSpec(kind, hidden, rng.choice((0.0, 0.1, 0.2)))
    return spec.validate()


def random_specs(n: int, seed: int = 0, kinds: tuple[str, ...] | None = None) -> list[NetSpec]:
    """`n` random valid specs, the same for the same seed (and `kinds`, default every registered block kind)."""
    rng = random.Random(seed)
    return [random_spec(rng, tuple(kinds) if kinds else BLOCKS) for _ in range(n)]
