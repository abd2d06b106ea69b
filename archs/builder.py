"""`build(spec) -> nn.Module`: instantiate a `NetSpec` from the catalog blocks."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import make_act
from .errors import SpecError
from .plan import Block, resolve
from .registry import get_kind
from .spec import NetSpec


class Net(nn.Module):
    """A network built from a `NetSpec`; `net.spec` is the description it was built from."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        spec.validate()
        self.spec = spec
        plan = resolve(spec)
        self.features = nn.Sequential(*[_make_block(b, spec, i == 0 and spec.stem.channels > 0)
                                        for i, b in enumerate(plan.blocks)])
        self.head = _make_head(spec, plan.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(spec: NetSpec | dict | str) -> Net:
    """Build a network from a `NetSpec`, its JSON dict, or its one-line string."""
    if isinstance(spec, dict):
        spec = NetSpec.from_dict(spec)
    elif isinstance(spec, str):
        spec = NetSpec.from_json(spec) if spec.lstrip().startswith("{") else NetSpec.from_string(spec)
    elif not isinstance(spec, NetSpec):
        raise SpecError(f"build() needs a NetSpec, its JSON dict or its string form, got {type(spec).__name__}")
    return Net(spec)


def _make_block(b: Block, spec: NetSpec, is_stem: bool) -> nn.Module:
    """The module of one resolved block, made by its kind's registry record."""
    return get_kind(b.kind).make(b, spec.norm, spec.act)


def _make_head(spec: NetSpec, head: list[tuple[str, int, int]]) -> nn.Sequential:
    hd = spec.head
    layers: list[nn.Module] = []
    if hd.kind == "conv":
        if hd.dropout:
            layers.append(nn.Dropout(hd.dropout))
        _, cin, cout = head[0]
        layers += [nn.Conv2d(cin, cout, 1), make_act(spec.act), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        return nn.Sequential(*layers)
    if hd.kind == "pool":
        layers.append(nn.AdaptiveAvgPool2d(1))
    layers.append(nn.Flatten(1))
    fcs = [h for h in head if h[0] == "fc"]
    for _, cin, cout in fcs[:-1]:
        layers += [nn.Linear(cin, cout), make_act(spec.act)]
    if hd.dropout:
        layers.append(nn.Dropout(hd.dropout))
    _, cin, cout = fcs[-1]
    layers.append(nn.Linear(cin, cout))
    return nn.Sequential(*layers)
