"""Cost counting: the analytic `estimate` equals fvcore exactly; ptflops cross-check; CPU latency."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from torch import nn

from archs import (HeadSpec, NetSpec, StageSpec, StemSpec, build, conv_linear_macs, count, count_ptflops, estimate,
                   latency, num_params, zoo)
from spec_strategies import random_spec


def _assert_exact(spec: NetSpec) -> None:
    model = build(spec)
    c = count(model)
    e = estimate(spec)
    assert (e.macs, e.params) == (c.macs, c.params), spec.to_string()
    assert c.params == num_params(model)
    assert int(c.layers["params"].sum()) == c.params  # the per-layer table accounts for every parameter


@settings(max_examples=60, deadline=None)
@given(random_spec())
def test_estimate_equals_fvcore_on_random_specs(spec):
    _assert_exact(spec)


def _spec(stages, **kw) -> NetSpec:
    base = dict(num_classes=7, in_chans=3, resolution=13, stem=StemSpec(12, 3, 1))
    base.update(kw)
    return NetSpec(stages=stages, **base).validate()


# Corners that must always be covered, whatever hypothesis draws.
CORNERS = {
    "conv_groups_padding": _spec([StageSpec("conv", 24, 2, 2, 5, {"padding": 0, "groups": 4}),
                                  StageSpec("conv", 24, 1, 1, 4, {"groups": 12})]),
    "conv_even_kernel_nonorm": _spec([StageSpec("conv", 10, 1, 2, 2)], norm=False, divisor=1),
    "dws_k7_odd": _spec([StageSpec("dws", 20, 2, 2, 7)], resolution=15, rho=0.77),
    "ir_se_expand1": _spec([StageSpec("ir", 16, 1, 1, 3, {"expand": 1, "se": 0.25}),
                            StageSpec("ir", 16, 2, 2, 5, {"expand": 2.5, "se": 0.5}),
                            StageSpec("ir", 16, 1, 1, 3, {"expand": 6}, scale=False)], act="relu6"),
    "fire_bypass_stride": _spec([StageSpec("fire", 12, 2, 1, args={"bypass": True}, scale=False),
                                 StageSpec("fire", 24, 1, 2, args={"squeeze_ratio": 0.25, "pct3x3": 0.75})],
                                norm=False),
    "lowrank_strides": _spec([StageSpec("lowrank", 16, 2, 2, 5, {"rank_ratio": 0.25}),
                              StageSpec("lowrank", 20, 1, 2, 3, {"rank_ratio": 1.0})], resolution=17),
    "basic_a_b": _spec([StageSpec("basic", 24, 2, 2, args={"shortcut": "A"}),
                        StageSpec("basic", 32, 1, 2, args={"shortcut": "B"}),
                        StageSpec("basic", 32, 1, 1, args={"shortcut": "B"})], norm=True),
    "pools_ceil": _spec([StageSpec("maxpool", kernel=3, stride=2, args={"ceil_mode": True}),
                         StageSpec("avgpool", kernel=2, stride=2, args={"padding": 1}),
                         StageSpec("maxpool", kernel=3, stride=1, args={"padding": 1})], resolution=14),
    "flatten_hidden_rho_alpha": _spec([StageSpec("dws", 16, stride=2), StageSpec("ir", 24, stride=2)],
                                      head=HeadSpec("flatten", [33, 17], 0.3), rho=1.37, alpha=1.63, in_chans=1),
    "conv_head_no_stem": _spec([StageSpec("fire", 16), StageSpec("maxpool", kernel=2, stride=2)],
                               stem=StemSpec(0), head=HeadSpec("conv", dropout=0.5), in_chans=2),
    "pool_head_hidden": _spec([StageSpec("conv", 8)], head=HeadSpec("pool", [5]), alpha=0.25, divisor=2,
                              act="hardswish"),
}


@pytest.mark.parametrize("name", sorted(CORNERS))
def test_estimate_equals_fvcore_on_corner_specs(name):
    _assert_exact(CORNERS[name])


ZOO_CASES = [(n, {}) for n in zoo.names()] + [
    ("mobilenet_v1", {"alpha": 0.5, "resolution": 128}), ("mobilenet_v1", {"alpha": 0.25, "resolution": 97}),
    ("mobilenet_v2", {"width": 0.35, "resolution": 96}), ("mobilenet_v2", {"width": 1.4, "resolution": 64}),
    ("squeezenet1_0", {"num_classes": 10, "in_chans": 1, "resolution": 65}),
    ("resnet20", {"num_classes": 100, "resolution": 27}), ("lenet5", {"resolution": 32}),
]


@pytest.mark.parametrize("name,kw", ZOO_CASES, ids=[f"{n}{kw or ''}" for n, kw in ZOO_CASES])
def test_estimate_equals_fvcore_on_zoo(name, kw):
    _assert_exact(zoo.get(name, **kw))


def _bias_adds(model: nn.Module, input_shape) -> int:
    """Additions of conv/linear biases: one per output element of every layer that has a bias."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        total += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None]
    with torch.no_grad():
        model.eval()(torch.zeros(input_shape))
    for h in handles:
        h.remove()
    return total


PTFLOPS_SPECS = {**{k: CORNERS[k] for k in ("conv_groups_padding", "ir_se_expand1", "fire_bypass_stride",
                                              "lowrank_strides", "basic_a_b", "conv_head_no_stem",
                                              "flatten_hidden_rho_alpha", "conv_even_kernel_nonorm")},
                 "lenet5": zoo.lenet5(), "lenet300_100": zoo.lenet300_100(), "svhn_cnn": zoo.svhn_cnn(),
                 "resnet20": zoo.resnet20(), "squeezenet1_1_64": zoo.squeezenet1_1(resolution=64),
                 "mobilenet_v2_64": zoo.mobilenet_v2(0.5, resolution=64)}


@pytest.mark.parametrize("name", sorted(PTFLOPS_SPECS))
def test_conv_linear_macs_match_ptflops_aten(name):
    """ptflops 0.7.5's aten backend counts aten.convolution as batch * prod(weight) * prod(out spatial) plus, with a
    bias, one add per output element; aten.addmm (Linear) as in * out plus out bias adds. Nothing else (no BN, no
    pooling). So aten == fvcore's conv+linear MACs + bias adds, exactly."""
    spec = PTFLOPS_SPECS[name]
    model = build(spec)
    c = count(model)
    aten = count_ptflops(model, spec.input_shape, backend="aten")
    bias = _bias_adds(model, spec.input_shape)
    assert aten == conv_linear_macs(c) + bias
    if spec.norm and spec.head.kind != "conv" and not any(s.block == "ir" and s.arg("se") for s in spec.stages):
        assert bias == sum(spec.head.hidden) + spec.num_classes  # convs with BN have no bias: only the FC layers


def test_ptflops_aten_convention_on_a_single_conv_and_linear():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Flatten(), nn.Linear(8 * 5 * 5, 4))
    aten = count_ptflops(conv, (1, 3, 9, 9), backend="aten")
    conv_macs, fc_macs = 8 * 5 * 5 * 3 * 3 * 3, 200 * 4
    assert aten == conv_macs + 8 * 5 * 5 + fc_macs + 4
    c = count(conv, (1, 3, 9, 9))
    assert c.macs == conv_linear_macs(c) == conv_macs + fc_macs  # fvcore: multiplications only


def test_count_result_table_and_input_shapes():
    spec = CORNERS["ir_se_expand1"]
    model = build(spec)
    c = count(model)
    assert list(c.layers.columns) == ["module", "type", "macs", "params"]
    assert c.mflops == c.macs / 1e6 and c.by_operator["conv"] > 0 and c.by_operator["batch_norm"] > 0
    assert int(c.layers["macs"].sum()) == c.macs  # every counted op belongs to a leaf module
    assert count(model, spec.input_shape[1:]).macs == c.macs == count(spec).macs  # 3-d shape, or a spec
    model.train()
    count(model)
    assert model.training  # count() restores the mode it found
    with pytest.raises(ValueError, match="input_shape is required"):
        count(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_latency_module_batch_threads_and_callable():
    spec = CORNERS["dws_k7_odd"]
    model = build(spec)
    threads = torch.get_num_threads()
    ms = latency(model, repeats=5, warmup=1)
    assert ms > 0
    ms4 = latency(model, batch_size=4, threads=1, repeats=5, warmup=1)
    assert ms4 > 0 and torch.get_num_threads() == threads  # thread count restored
    assert model.training  # latency() runs in eval mode and restores the mode
    seen = []

    def fn(x):
        seen.append(tuple(x.shape))
        return x.sum()

    assert latency(fn, input_shape=(3, 5, 5), batch_size=2, repeats=4, warmup=1) > 0
    assert seen and set(seen) == {(2, 3, 5, 5)} and len(seen) == 5
    with pytest.raises(ValueError, match="input_shape is required"):
        latency(fn)
