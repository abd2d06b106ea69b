"""Declarative network description: `NetSpec` dataclasses, validation, JSON and one-line string forms.

A network is stem -> stages -> head. Each stage is `repeats` copies of one catalog block;
the first copy carries the stage's stride. Width multiplier alpha scales every channel count
(MobileNet's make-divisible rounding); resolution multiplier rho scales the input size.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import SpecError
from .plan import resolve
from .registry import by_token, get_kind, kinds
from .shapes import make_divisible  # noqa: F401  re-exported (zoo, search)

#: Block kinds in catalog order, and those without channels of their own (pooling): both read from the registry.
_REGISTRY = kinds()
BLOCK_TYPES = tuple(_REGISTRY)
POOL_BLOCKS = tuple(k.name for k in kinds().values() if not k.channels)
ACTIVATIONS = ("relu", "relu6", "hardswish", "silu")
HEAD_KINDS = ("pool", "flatten", "conv")


@dataclass
class StemSpec:
    """First convolution (conv + norm + act); channels=0 means no stem."""

    channels: int = 32
    kernel: int = 3
    stride: int = 1
    padding: int | None = None  # None: kernel // 2


@dataclass
class StageSpec:
    """`repeats` copies of one block type; the first copy uses `stride`."""

    block: str
    channels: int = 0
    repeats: int = 1
    stride: int = 1
    kernel: int = 3
    args: dict[str, Any] = field(default_factory=dict)
    scale: bool = True  # apply the width multiplier alpha to `channels`

    def arg(self, key: str) -> Any:
        """A block argument, falling back to the block type's default (None for an unknown block or key)."""
        args = self.args
        if key in args:
            return args[key]
        kind = _REGISTRY.get(self.block) if isinstance(self.block, str) else None
        a = kind.args.get(key) if kind is not None else None
        return a.default if a is not None else None


@dataclass
class HeadSpec:
    """Classifier: 'pool' (global average pool + FC), 'flatten' (flatten + FC), 'conv' (SqueezeNet's 1x1 conv + pool)."""

    kind: str = "pool"
    hidden: list[int] = field(default_factory=list)  # hidden FC widths before the last layer
    dropout: float = 0.0


@dataclass
class NetSpec:
    """A whole network. Input is `in_chans` x R x R with R = round(resolution * rho)."""

    num_classes: int = 10
    in_chans: int = 3
    resolution: int = 32
    rho: float = 1.0
    alpha: float = 1.0
    divisor: int = 8
    act: str = "relu"
    norm: bool = True
    stem: StemSpec = field(default_factory=StemSpec)
    stages: list[StageSpec] = field(default_factory=list)
    head: HeadSpec = field(default_factory=HeadSpec)
    name: str = field(default="", compare=False)  # label only; not part of the architecture

    # ----- derived quantities -------------------------------------------------------------
    @property
    def input_size(self) -> int:
        """Input side length in pixels after the resolution multiplier."""
        return max(1, int(round(self.resolution * self.rho)))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_chans, self.input_size, self.input_size)

    def ch(self, c: int, scale: bool = True) -> int:
        """Channels after the width multiplier and rounding."""
        if not scale or c <= 0:
            return c
        return make_divisible(c * self.alpha, self.divisor)

    def block_types(self) -> list[str]:
        return [s.block for s in self.stages]

    # ----- validation -----------------------------------------------------------------------
    def validate(self) -> "NetSpec":
        """Raise `SpecError` with a precise message if the spec cannot describe a network."""
        _check_int(self.num_classes, "num_classes", 1)
        _check_int(self.in_chans, "in_chans", 1)
        _check_int(self.resolution, "resolution", 1)
        _check_int(self.divisor, "divisor", 1)
        _check_pos_float(self.rho, "rho")
        _check_pos_float(self.alpha, "alpha")
        if self.input_size > MAX_INPUT_SIZE:
            raise SpecError(f"input size {self.input_size:,} px (resolution {self.resolution} x rho {self.rho:g}) is "
                            f"over the {MAX_INPUT_SIZE:,} px this package builds networks for")
        if self.act not in ACTIVATIONS:
            raise SpecError(f"act: unknown activation {self.act!r}; choose from {', '.join(ACTIVATIONS)}")
        if not isinstance(self.norm, bool):
            raise SpecError(f"norm must be true or false, got {self.norm!r}")
        st = self.stem
        if not isinstance(st, StemSpec):
            raise SpecError("stem must be an object with channels, kernel, stride")
        _check_int(st.channels, "stem.channels", 0)
        if st.channels:
            _check_int(st.kernel, "stem.kernel", 1)
            _check_int(st.stride, "stem.stride", 1)
            if st.padding is not None:
                _check_int(st.padding, "stem.padding", 0)
        if not isinstance(self.stages, list):
            raise SpecError("stages must be a list")
        for i, s in enumerate(self.stages):
            where = f"stages[{i}]"
            if not isinstance(s, StageSpec):
                raise SpecError(f"{where} must be an object")
            kind = get_kind(s.block, f"{where}.block")
            _check_int(s.repeats, f"{where}.repeats", 1)
            _check_int(s.stride, f"{where}.stride", 1)
            _check_int(s.kernel, f"{where}.kernel", 1)
            if kind.channels:
                _check_int(s.channels, f"{where}.channels", 1)
                if kind.odd_kernel and s.kernel % 2 == 0:
                    raise SpecError(f"{where}.kernel must be odd for block {s.block!r}, got {s.kernel}")
            if not isinstance(s.args, dict):
                raise SpecError(f"{where}.args must be an object")
            allowed = kind.args
            for k, v in s.args.items():
                if k not in allowed:
                    ok = ", ".join(allowed) or "none"
                    raise SpecError(f"{where}.args: unknown argument {k!r} for block {s.block!r} (allowed: {ok})")
                if isinstance(v, bool) and allowed[k].type is not bool:
                    raise SpecError(f"{where}.args.{k} must be a number, got {v!r}")
                if not isinstance(v, allowed[k].type):
                    raise SpecError(f"{where}.args.{k} has the wrong type: {v!r}")
            _check_block_args(kind, s, where)
        hd = self.head
        if not isinstance(hd, HeadSpec):
            raise SpecError("head must be an object")
        if hd.kind not in HEAD_KINDS:
            raise SpecError(f"head.kind: unknown head {hd.kind!r}; choose from {', '.join(HEAD_KINDS)}")
        if not isinstance(hd.hidden, list):
            raise SpecError("head.hidden must be a list of widths")
        for j, h in enumerate(hd.hidden):
            _check_int(h, f"head.hidden[{j}]", 1)
        if hd.kind == "conv" and hd.hidden:
            raise SpecError("head.hidden must be empty for a 'conv' head")
        if not isinstance(hd.dropout, (int, float)) or isinstance(hd.dropout, bool) or not 0 <= hd.dropout < 1:
            raise SpecError(f"head.dropout must be in [0, 1), got {hd.dropout!r}")
        resolve(self)  # raises SpecError when the feature map vanishes or channels do not fit
        return self

    # ----- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> "NetSpec":
        """Build and validate a spec from plain data (e.g. parsed JSON)."""
        if not isinstance(d, dict):
            raise SpecError("a spec must be a JSON object")
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"unknown spec field(s): {', '.join(unknown)}")
        try:
            if "stem" in d:
                d["stem"] = StemSpec(**_fields(d["stem"], StemSpec, "stem"))
            if "head" in d:
                d["head"] = HeadSpec(**_fields(d["head"], HeadSpec, "head"))
            if "stages" in d:
                if not isinstance(d["stages"], list):
                    raise SpecError("stages must be a list")
                d["stages"] = [StageSpec(**_fields(s, StageSpec, f"stages[{i}]")) for i, s in enumerate(d["stages"])]
            spec = cls(**d)
        except TypeError as e:  # missing required field such as stages[i].block
            raise SpecError(f"malformed spec: {e}") from None
        return spec.validate()

    @classmethod
    def from_json(cls, text: str) -> "NetSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        return cls.from_dict(d)

    def to_string(self) -> str:
        """Compact one-line form, e.g. `c10_i1_r8_a1.0_p1.0_d8_relu | stem16k3s1 | ir24k3s2n2(expand=6) | head:pool`."""
        return spec_to_string(self)

    @classmethod
    def from_string(cls, text: str) -> "NetSpec":
        return spec_from_string(text)

    def __str__(self) -> str:
        return self.to_string()


# ----------------------------------------------------------------------------------------------
def _fields(d: Any, kind: type, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise SpecError(f"{where} must be an object")
    unknown = sorted(set(d) - set(kind.__dataclass_fields__))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}")
    return d


#: largest input side (px) a spec may ask for: far above any edge network's input, far below what exhausts memory
MAX_INPUT_SIZE = 4096


def _check_int(v: Any, name: str, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{name} must be an integer, got {v!r}")
    if v < lo:
        raise SpecError(f"{name} must be >= {lo}, got {v}")


def _check_pos_float(v: Any, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise SpecError(f"{name} must be a positive number, got {v!r}")


def _check_block_args(kind, s: StageSpec, where: str) -> None:
    """The kind's per-argument checks (on given values and defaults alike), then its cross-argument check."""
    for name, a in kind.args.items():
        if a.check is not None:
            v = s.arg(name)
            if not a.check(v, s):
                raise SpecError(f"{where}.args.{a.label or name} {a.rule}, got {v!r}")
    if kind.check is not None:
        kind.check(s, where)


# ----- one-line string form ---------------------------------------------------------------------
_STAGE_REST = r"(?P<ch>\d+)?k(?P<k>\d+)s(?P<s>\d+)(?:n(?P<n>\d+))?(?P<fixed>!)?(?:\((?P<args>[^()]*)\))?$"
_STAGE_RE = re.compile(r"^(?P<block>[a-z]+)" + _STAGE_REST)  # an unknown block: its name fails validation
_REST_RE = re.compile("^" + _STAGE_REST)


def _match_stage(p: str) -> tuple[str, re.Match | None]:
    """(block name, match of the rest) of one stage of the string form; the kind's token comes first."""
    for token, kind in by_token():
        if p.startswith(token):
            m = _REST_RE.match(p[len(token):])
            if m:
                return kind.name, m
    m = _STAGE_RE.match(p)
    return (m["block"] if m else ""), m


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "T" if v else "F"
    return repr(v) if isinstance(v, float) else str(v)


def _parse_val(v: str) -> Any:
    if v in ("T", "F"):
        return v == "T"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def spec_to_string(spec: NetSpec) -> str:
    g = f"c{spec.num_classes}_i{spec.in_chans}_r{spec.resolution}_a{_fmt(float(spec.alpha))}_p{_fmt(float(spec.rho))}_d{spec.divisor}_{spec.act}"
    if not spec.norm:
        g += "_nonorm"
    parts = [g]
    st = spec.stem
    stem = f"stem{st.channels}k{st.kernel}s{st.stride}"
    if st.padding is not None:
        stem += f"p{st.padding}"
    parts.append(stem)
    for s in spec.stages:
        kind = kinds().get(s.block) if isinstance(s.block, str) else None
        token = kind.token if kind is not None else s.block
        t = f"{token}{s.channels if kind is None or kind.channels else ''}k{s.kernel}s{s.stride}"
        if s.repeats != 1:
            t += f"n{s.repeats}"
        if not s.scale:
            t += "!"
        if s.args:
            t += "(" + ",".join(f"{k}={_fmt(s.args[k])}" for k in sorted(s.args)) + ")"
        parts.append(t)
    h = f"head:{spec.head.kind}"
    if spec.head.hidden:
        h += "_" + "-".join(map(str, spec.head.hidden))
    if spec.head.dropout:
        h += f"_drop{_fmt(float(spec.head.dropout))}"
    parts.append(h)
    return " | ".join(parts)


def spec_from_string(text: str) -> NetSpec:
    """Parse the one-line form written by `spec_to_string`."""
    parts = [p.strip() for p in str(text).split("|")]
    if len(parts) < 3:
        raise SpecError(f"spec string needs 'globals | stem | stages... | head:...', got {text!r}")
    d: dict[str, Any] = {}
    g = parts[0].split("_")
    keys = {"c": "num_classes", "i": "in_chans", "r": "resolution", "a": "alpha", "p": "rho", "d": "divisor"}
    for tok in g:
        if tok == "nonorm":
            d["norm"] = False
        elif tok in ACTIVATIONS:
            d["act"] = tok
        elif tok[:1] in keys:
            d[keys[tok[0]]] = _parse_val(tok[1:])
        else:
            raise SpecError(f"spec string: cannot read {tok!r} in {parts[0]!r}")
    m = re.match(r"^stem(\d+)k(\d+)s(\d+)(?:p(\d+))?$", parts[1])
    if not m:
        raise SpecError(f"spec string: cannot read stem {parts[1]!r}")
    d["stem"] = {"channels": int(m[1]), "kernel": int(m[2]), "stride": int(m[3]), "padding": int(m[4]) if m[4] else None}
    stages = []
    for p in parts[2:-1]:
        block, m = _match_stage(p)
        if not m:
            raise SpecError(f"spec string: cannot read stage {p!r}")
        args = {}
        for tok in filter(None, (m["args"] or "").split(",")):
            key, eq, val = tok.partition("=")
            if not eq or not key.strip():
                raise SpecError(f"spec string: cannot read argument {tok!r} in {p!r} (expected name=value)")
            args[key.strip()] = _parse_val(val.strip())
        stages.append({"block": block, "channels": int(m["ch"] or 0), "kernel": int(m["k"]), "stride": int(m["s"]),
                       "repeats": int(m["n"] or 1), "scale": not m["fixed"], "args": args})
    d["stages"] = stages
    h = parts[-1]
    if not h.startswith("head:"):
        raise SpecError(f"spec string: last part must be 'head:...', got {h!r}")
    htoks = h[5:].split("_")
    head: dict[str, Any] = {"kind": htoks[0], "hidden": [], "dropout": 0.0}
    for tok in htoks[1:]:
        if tok.startswith("drop"):
            head["dropout"] = float(tok[4:])
        else:
            try:
                head["hidden"] = [int(x) for x in tok.split("-")]
            except ValueError:
                raise SpecError(f"spec string: cannot read head part {tok!r}") from None
    d["head"] = head
    return NetSpec.from_dict(d)
