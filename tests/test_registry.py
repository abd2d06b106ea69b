"""The block registry: every layer reads it, every registered kind is counted exactly, unknown kinds fail loudly,
the new kinds (Ghost, MBConv3) are searchable and in the zoo with the published figures, no import cycles."""
from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from archs import NetSpec, StageSpec, StemSpec, build, count, estimate, zoo
from archs.blocks import MBConv3
from archs.builder import _make_block
from archs.count import conv_linear_macs, num_params
from archs.errors import SpecError, UserError
from archs.estimate import block_cost
from archs.plan import Block, resolve
from archs.registry import BlockKind, block_table, get_kind, kinds, names, register
from search.space import (DEFAULT_BLOCKS, SEARCHABLE_BLOCKS, Budget, DataShape, SearchSpace, sample,
                          sample_structure, smallest_network, warm_start_trials)
from spec_strategies import random_spec
from test_cost import _assert_exact, _spec  # the exactness check and the corner-spec helper of the cost tests

ROOT = Path(__file__).resolve().parents[1]


# ----- every registered kind is counted exactly: drawn from the registry, so a new kind is covered at once -------
@pytest.mark.parametrize("kind", names())
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(data=st.data())
def test_estimate_equals_fvcore_for_every_registered_kind(kind, data):
    spec = data.draw(random_spec(blocks=(kind,), max_stages=3))
    assume(any(s.block == kind for s in spec.stages))
    _assert_exact(spec)


NEW_CORNERS = {
    "ghost_stride_se_identity": _spec([StageSpec("ghost", 16, 2, 2, 5, {"expand": 2.5, "se": 0.25}),
                                       StageSpec("ghost", 16, 2, 1, 3, {"expand": 1}, scale=False)]),
    "ghost_ratio3_nonorm": _spec([StageSpec("ghost", 20, 1, 2, 3, {"ratio": 3, "se": 0.5})], norm=False, divisor=1),
    "mbv3_expand1_se_hswish": _spec([StageSpec("mbv3", 12, 2, 1, 3, {"expand": 1, "se": 0.25}, scale=False),
                                     StageSpec("mbv3", 24, 1, 2, 5, {"expand": 4.5, "act": "relu"})],
                                    act="hardswish"),
    "mbv3_nonorm": _spec([StageSpec("mbv3", 16, 2, 2, 3, {"expand": 3, "se": 0.25})], norm=False, divisor=4),
}


@pytest.mark.parametrize("name", sorted(NEW_CORNERS))
def test_new_kind_corners_exact(name):
    _assert_exact(NEW_CORNERS[name])


# ----- unknown kinds fail loudly at every layer --------------------------------------------------------------------
def _unvalidated(block: str = "nope") -> NetSpec:
    return NetSpec(num_classes=3, in_chans=1, resolution=8, stem=StemSpec(8, 3, 1), stages=[StageSpec(block, 8)])


def _block(kind: str = "nope") -> Block:
    return Block(kind, 8, 8, 3, 1, 8, 8, 8, 8, {})


def test_unknown_kind_registry():
    with pytest.raises(SpecError, match="unknown block 'nope'; choose from conv, dws"):
        get_kind("nope")
    with pytest.raises(SpecError, match="unknown block"):
        get_kind(["not", "a", "name"])


def test_unknown_kind_spec():
    with pytest.raises(SpecError, match=r"stages\[0\]\.block: unknown block 'nope'"):
        _unvalidated().validate()
    with pytest.raises(SpecError, match="unknown block 'nope'"):
        NetSpec.from_string("c3_i1_r8_a1.0_p1.0_d8_relu | stem8k3s1 | nope8k3s1 | head:pool")
    assert StageSpec("nope", 8).arg("expand") is None


def test_unknown_kind_plan():
    with pytest.raises(SpecError, match=r"stages\[0\]\.block: unknown block 'nope'"):
        resolve(_unvalidated())  # no silent fall-through to 'dws'


def test_unknown_kind_builder():
    spec = _unvalidated("conv").validate()
    with pytest.raises(SpecError, match="unknown block 'nope'"):
        _make_block(_block(), spec, False)
    with pytest.raises(SpecError, match="unknown block 'nope'"):
        build(_unvalidated())


def test_unknown_kind_estimate():
    with pytest.raises(SpecError, match="unknown block 'nope'"):
        block_cost(_block(), True)  # never (0, 0): a half-added kind must not look free to the budget check
    with pytest.raises(SpecError, match="unknown block 'nope'"):
        estimate(_unvalidated())


def test_unknown_kind_search_space():
    with pytest.raises(UserError, match="unknown block type"):
        SearchSpace(blocks=("nope",)).validate()
    with pytest.raises(UserError, match="unknown block type"):
        SearchSpace(blocks=("basic",)).validate()  # registered but not searchable
    space = SearchSpace(blocks=("nope",))  # not validated: the sampler itself still refuses
    with pytest.raises(SpecError, match="unknown block 'nope'"):
        sample_structure(optuna.trial.FixedTrial({"rho": 1.0, "stem_channels": 8, "n_stages": 1, "s0_block": "nope",
                                                  "s0_channels": 8, "s0_repeats": 1, "s0_downsample": "none"}),
                         space, DataShape(1, 8, 10))
    with pytest.raises(SpecError, match="unknown block 'nope'"):
        smallest_network(space, DataShape(1, 8, 10))


def test_register_refuses_duplicates_and_clashing_tokens():
    conv = get_kind("conv")
    with pytest.raises(ValueError, match="registered twice"):
        register(conv)
    with pytest.raises(ValueError, match="clashes"):
        register(BlockKind("conv2", conv.module, "x", conv.stage, conv.make, conv.cost, token="conv2"))
    assert "conv2" not in kinds()
    with pytest.raises(ValueError, match="exactly one of"):
        BlockKind("conv3", conv.module, "x", None, conv.make, conv.cost)


# ----- the new kinds: searchable (opt-in), string form, zoo figures ------------------------------------------------
def test_default_space_unchanged_and_new_kinds_opt_in():
    assert DEFAULT_BLOCKS == ("conv", "dws", "ir", "fire", "lowrank") == SearchSpace().blocks
    assert {"ghost", "mbv3"} <= set(SEARCHABLE_BLOCKS)
    assert [n for n, _ in warm_start_trials(SearchSpace())] == ["lenet-like", "mobilenet-like", "mobilenetv2-like",
                                                                "squeezenet-like"]
    names_new = [n for n, _ in warm_start_trials(SearchSpace(blocks=("ghost", "mbv3")))]
    assert names_new == ["ghostnet-like", "mobilenetv3-like"]


def test_ghost_and_mbv3_are_searched_and_fitted():
    space = SearchSpace(blocks=("ghost", "mbv3")).validate()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        cand = sample(trial, space, DataShape(1, 8, 10), Budget(mflops=0.5, params=20_000))
        if cand is not None:
            assert cand.cost.macs <= 0.5e6 and cand.cost.params <= 20_000
            seen.update(s.block for s in cand.spec.stages)
            if "mbv3" in trial.params.values():
                assert any(k.endswith("_act") for k in trial.params)
        study.tell(trial, 0.0)
    assert {"ghost", "mbv3"} <= seen


def test_mbv3_string_form_roundtrips():
    spec = NEW_CORNERS["mbv3_expand1_se_hswish"]
    text = spec.to_string()
    assert "mbv3_12k3s1n2!" in text
    assert NetSpec.from_string(text) == spec


def test_mobilenet_v3_matches_torchvision_exactly():
    torchvision = pytest.importorskip("torchvision")
    for name, ref, params in (("mobilenet_v3_small", torchvision.models.mobilenet_v3_small, 2_542_856),
                              ("mobilenet_v3_large", torchvision.models.mobilenet_v3_large, 5_483_032)):
        spec = zoo.get(name)
        e = estimate(spec)
        tv = ref()
        assert e.params == num_params(tv) == params
        assert e.macs == count(tv, (1, 3, 224, 224)).macs  # fvcore on torchvision's own model


def test_ghostnet_has_timm_ghostnet_100_figures():
    """timm 1.0's ghostnet_100: 5,182,508 parameters and 141,150,512 conv + linear MACs (fvcore) at 224x224.
    fvcore's total differs from timm's by the squeeze-excite global pools only: timm pools with x.mean (not
    counted), the catalog's SqueezeExcite with AdaptiveAvgPool2d (counted, as in torchvision's MobileNetV3)."""
    spec = zoo.get("ghostnet")
    model = build(spec)
    c = count(model)
    assert (estimate(spec).macs, estimate(spec).params) == (c.macs, c.params)
    assert c.params == 5_182_508
    assert conv_linear_macs(c) == 141_150_512


def test_mbv3_module_matches_torchvision_block():
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig

    ref = InvertedResidual(InvertedResidualConfig(24, 5, 72, 40, True, "HS", 2, 1, 1.0), torch.nn.BatchNorm2d)
    ours = MBConv3(24, 72, 40, 5, 2, 0.25, "hardswish")
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in ref.parameters()]


# ----- README and import structure ----------------------------------------------------------------------------------
def test_readme_block_table_is_the_registry():
    assert block_table() in (ROOT / "README.md").read_text()


PACKAGES = ("archs", "search", "compress", "analysis", "training")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Project modules `path` imports anywhere (module level or inside functions), except under TYPE_CHECKING."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from package import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def _import_graph() -> dict[str, set[str]]:
    files = {(_module_name(p)): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    # a package __init__ is a re-export facade: importing a.b runs a/__init__ first by design, so it is no edge target
    return {m: {d for d in _imports(p) if d in files and d != m and files[d].name != "__init__.py"}
            for m, p in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = [stack.pop()]
            while comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    graph = _import_graph()
    assert "archs.plan" in graph["archs.spec"] and "compress.modeldir" in graph["compress.distill"]  # sees imports
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]  # and finds cycles
    assert _cycles(graph) == []


def test_memory_model_covers_every_kind_and_refuses_one_without_a_graph(monkeypatch):
    """archs.memory (TFLM arena) reads each kind's `tflite_graph` record: every catalog kind has one; a kind without
    it is a SpecError naming it (never a KeyError), and `supported` says so."""
    import dataclasses

    from archs import registry
    from archs.memory import BLOCK_GRAPH, memory, supported

    assert list(BLOCK_GRAPH) == list(names()) and all(supported(k) for k in names())
    spec = _spec([StageSpec("ghost", 16, 1, 2)])
    memory(spec)
    monkeypatch.setitem(registry._KINDS, "ghost", dataclasses.replace(get_kind("ghost"), tflite_graph=None))
    assert not supported("ghost") and "ghost" not in BLOCK_GRAPH
    with pytest.raises(SpecError, match="no TFLM graph for block kind 'ghost'"):
        memory(spec)
    with pytest.raises(SpecError, match="unknown block 'nope'"):
        memory(_unvalidated())
