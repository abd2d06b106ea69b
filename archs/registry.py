"""The block registry: one `BlockKind` record per catalog block, read by every layer.

A record holds everything about one kind: its `nn.Module`, its arguments (types, defaults, checks), how a stage of
it resolves into concrete `Block`s (channels, shapes), how to build one, its exact analytic MACs and parameters,
its search-space choices, its operators in the int8 TFLite export (`tflite_graph`, for `archs.memory`), and its
name in the one-line string form. `spec`, `plan`, `builder`, `estimate`, `memory` and `search.space` look kinds up
here, so a kind is added in one place (see `archs/blocks/__init__.py`) and an
unknown kind is a `SpecError` at every layer. Pure Python: the records live in the block modules.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from .errors import SpecError

if TYPE_CHECKING:  # the spec module reads the registry, never the other way round
    from .spec import NetSpec, StageSpec


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


@dataclass(frozen=True)
class Arg:
    """One block argument: accepted type(s), default, and a check on the value (with the stage, for its kernel).

    `check(value, stage)` returns True when the value is allowed; otherwise the error reads
    "<where>.args.<label> <rule>, got <value>".
    """

    type: type | tuple[type, ...]
    default: Any = None
    check: Callable[[Any, "StageSpec"], bool] | None = None
    rule: str = ""
    label: str = ""  # name in the error message, when it says more than the key (e.g. "se (squeeze-excite ratio)")


@dataclass(frozen=True)
class Choice:
    """A searched block argument: Optuna parameter `s<i>_<arg>`, categorical over `values`, or over the
    `SearchSpace` field `space_field` when the choices are editable there."""

    arg: str
    values: tuple = ()
    space_field: str | None = None

    def options(self, space: Any) -> tuple:
        return tuple(getattr(space, self.space_field)) if self.space_field else self.values


Resolver = Callable[["StageSpec", int, "NetSpec", int, int, int, int, Callable[[Block], None]], tuple[int, int, int]]
Stager = Callable[["StageSpec", int, "NetSpec", int, int], tuple[int, int, dict, dict | None]]


@dataclass(frozen=True)
class BlockKind:
    """Everything about one block kind (see the module docstring). Register it with `register`."""

    name: str                                   # StageSpec.block
    module: type                                # the nn.Module it builds
    summary: str                                # one line for the README block table
    stage: Stager | None                        # conv-like kinds: (stage, i, spec, c_in, c_out) -> (kernel,
    #   padding, first, rest): `s.repeats` blocks, the first with the stage's stride and resolved arguments
    #   (`Block.extra`) `first`, the others (c_out in, stride 1) `rest` (None when repeats == 1); raises
    #   SpecError where the arguments do not fit
    make: Callable[[Block, bool, str], Any]     # (block, norm, act) -> nn.Module
    cost: Callable[[Block, bool], tuple[int, int]]  # (block, norm) -> (fvcore MACs, trainable params)
    args: Mapping[str, Arg] = field(default_factory=dict)
    resolve: Resolver | None = None             # other kinds (pooling): (stage, i, spec, c_in, c_out, h, w, add)
    #   -> (c, h, w) after the stage, adding its Blocks itself
    check: Callable[["StageSpec", str], None] | None = None  # checks across arguments; raises SpecError
    channels: bool = True                       # False: keeps its input channels (pooling), `channels` unused
    odd_kernel: bool = True                     # False: even kernels allowed (plain conv, pooling)
    kernel: int | None = None                   # fixed kernel (Fire: 3): the search does not sample one
    search: tuple[Choice, ...] | None = None    # searched arguments in suggest order; None: not searchable
    default_space: bool = False                 # in the search's default `--space`
    smallest: Callable[[Any], dict] | None = None  # SearchSpace -> the cheapest arguments (feasibility check)
    templates: Mapping[str, dict] = field(default_factory=dict)  # classic designs for the search's warm start:
    #   name -> {stem_channels, stages: [(channels, downsample, args)], head, dropout}
    examples: Mapping[str, Any] = field(default_factory=dict)  # arg -> values (or (c_in, c_out, kernel) -> values)
    #   that exercise the cost model's corners; None = leave the argument out. Test strategies and
    #   benchmarks/specgen.py draw every registered kind's stages from these.
    token: str = ""                             # name in the one-line string form (default: `name`)
    tflite_graph: Callable[[Any, Block, "NetSpec", int], int] | None = None  # (graph, block, spec, input tensor)
    #   -> output tensor: adds the block's operators of the int8 TFLite export to an `archs.tflite_graph.Graph`
    #   (what `archs.memory` places as TFLM does); None: the memory model does not know this kind

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"block kind name {self.name!r}: lower-case letters, digits and _ only")
        if (self.stage is None) == (self.resolve is None):
            raise ValueError(f"block kind {self.name!r}: give exactly one of `stage` and `resolve`")
        if not self.token:
            object.__setattr__(self, "token", self.name)

    def example_values(self, arg: str, c_in: int, c_out: int, kernel: int) -> tuple:
        """The example values of `arg` for a stage from c_in to c_out channels with this kernel."""
        v = self.examples[arg]
        return tuple(v(c_in, c_out, kernel) if callable(v) else v)

    def defaults(self) -> dict[str, Any]:
        return {k: a.default for k, a in self.args.items()}

    def sample_args(self, trial: Any, prefix: str, space: Any) -> dict[str, Any]:
        """The searched arguments of one stage, suggested in declaration order (`s<i>_<arg>`)."""
        return {c.arg: trial.suggest_categorical(prefix + c.arg, list(c.options(space))) for c in self.search or ()}


_KINDS: dict[str, BlockKind] = {}
_COSTS: dict[str, Callable[[Block, bool], tuple[int, int]]] = {}  # name -> cost, for `estimate`'s hot loop


def costs() -> Mapping[str, Callable[[Block, bool], tuple[int, int]]]:
    """Every registered kind's cost function by name (read-only view; `estimate`'s per-block lookup)."""
    return _COSTS


def register(kind: BlockKind) -> BlockKind:
    """Add a kind to the registry (catalog order = registration order); a name or string token used twice fails."""
    if kind.name in _KINDS:
        raise ValueError(f"block kind {kind.name!r} is registered twice")
    for other in _KINDS.values():
        # the string form writes token + channels: no token may be another token followed by digits
        for a, b in ((kind.token, other.token), (other.token, kind.token)):
            if a == b or (a.startswith(b) and a[len(b):].isdigit()):
                raise ValueError(f"block kind {kind.name!r}: string token {kind.token!r} clashes with {other.name!r}")
    _KINDS[kind.name] = kind
    _COSTS[kind.name] = kind.cost
    return kind


def kinds() -> Mapping[str, BlockKind]:
    """Every registered kind by name, in catalog order (read-only view)."""
    return _KINDS


def names() -> tuple[str, ...]:
    return tuple(_KINDS)


def get_kind(name: Any, where: str = "block") -> BlockKind:
    """The record of `name`; SpecError naming the known kinds when there is none."""
    kind = _KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise SpecError(f"{where}: unknown block {name!r}; choose from {', '.join(_KINDS)}")
    return kind


def searchable() -> tuple[str, ...]:
    """Kinds the search can sample."""
    return tuple(k.name for k in _KINDS.values() if k.search is not None)


def default_space() -> tuple[str, ...]:
    """Kinds in the search's default `--space` (the space the README's measured figures were made with)."""
    return tuple(k.name for k in _KINDS.values() if k.search is not None and k.default_space)


def by_token() -> Iterator[tuple[str, BlockKind]]:
    """(token, kind) pairs, longest token first, for parsing the one-line string form."""
    return iter(sorted(((k.token, k) for k in _KINDS.values()), key=lambda t: -len(t[0])))


def block_table() -> str:
    """The README's block table (Markdown), generated from the registry: kind, module, arguments, searched."""
    rows = ["| kind | module | what it is | arguments (default) | searched |", "|---|---|---|---|---|"]
    for k in _KINDS.values():
        args = ", ".join(f"`{n}` ({a.default!r})" for n, a in k.args.items()) or "—"
        if k.search is None:
            searched = "no"
        else:
            searched = ("default" if k.default_space else "opt-in") + (
                ": " + ", ".join(c.arg for c in k.search) if k.search else "")
        rows.append(f"| `{k.name}` | `{k.module.__name__}` | {k.summary} | {args} | {searched} |")
    return "\n".join(rows)
