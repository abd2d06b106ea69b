"""Low-rank factorization: exactness at full rank, optimal truncation, MACs falling where they should, reload."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import archs
from archs import HeadSpec, LowRankConv2d, NetSpec, StageSpec, StemSpec
from archs.errors import UserError
from compress.lowrank import (LowRankLinear, apply_plan, candidate_layers, conv_svd_matrix, lowrank, macs_at_rank,
                              plan_ranks, rank_for_energy)
from compress.stages import load_model, save_stage_model, structure_changed
from training import TrainConfig, evaluate, fit, load_data


def _spec() -> NetSpec:
    return NetSpec(num_classes=10, in_chans=1, resolution=8, divisor=1, stem=StemSpec(16),
                   stages=[StageSpec("conv", 32, kernel=3), StageSpec("conv", 32, kernel=3, stride=2),
                           StageSpec("dws", 32)], head=HeadSpec("pool", [64])).validate()


def _model(seed=0):
    torch.manual_seed(seed)
    return archs.build(_spec()).eval()


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_conv_at_full_rank_reproduces_the_output(stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride, padding, bias=True)
    s = torch.linalg.svdvals(conv_svd_matrix(conv.weight))
    lr = LowRankConv2d.from_conv(conv, s.numel())
    x = torch.randn(2, 6, 9, 9)
    assert torch.allclose(lr(x), conv(x), atol=1e-5)


def test_linear_at_full_rank_reproduces_and_truncation_is_optimal():
    torch.manual_seed(0)
    lin = nn.Linear(40, 24)
    x = torch.randn(5, 40)
    full = LowRankLinear.from_linear(lin, 24)
    assert torch.allclose(full(x), lin(x), atol=1e-5)
    s = torch.linalg.svdvals(lin.weight.detach())
    r = 6
    low = LowRankLinear.from_linear(lin, r)
    w_hat = low.second.weight @ low.first.weight
    err = torch.linalg.matrix_norm(lin.weight.detach() - w_hat) ** 2
    assert err.item() == pytest.approx((s[r:] ** 2).sum().item(), rel=1e-4)  # Eckart-Young
    assert torch.equal(low.second.bias, lin.bias)


def test_rank_for_energy():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert rank_for_energy(s, 0.5) == 1
    assert rank_for_energy(s, 9 / 14) == 1
    assert rank_for_energy(s, 0.7) == 2
    assert rank_for_energy(s, 0.99) == 3
    assert rank_for_energy(s, 1.0) == 3
    assert rank_for_energy(torch.zeros(3), 0.9) == 1


def test_low_rank_lowers_macs_and_the_analytic_count_matches_fvcore():
    m = _model()
    before = archs.count(m).macs
    x = torch.randn(3, 1, 8, 8)
    plans = lowrank(m, energy=0.5)
    replaced = [p for p in plans if p.replace]
    assert replaced
    assert {p.kind for p in replaced} == {"conv", "linear"}
    after = archs.count(m).macs
    assert after < before
    assert after == before - sum(p.macs - p.macs_after for p in replaced)
    assert m(x).shape == (3, 10)
    mods = dict(m.named_modules())
    for p in replaced:
        assert isinstance(mods[p.name], LowRankConv2d if p.kind == "conv" else LowRankLinear)
        assert p.macs_after == macs_at_rank(p, p.rank)


def test_only_layers_whose_macs_fall_are_replaced():
    m = _model()
    plans = plan_ranks(m, energy=1.0)
    for p in plans:
        assert p.replace == (p.macs_after < p.macs)
    # the 1-channel stem at full rank costs more MACs factorized than as one conv: never replaced at energy 1
    stem = next(p for p in plans if p.name == "features.0.0")
    assert not stem.replace
    # 1x1 and depthwise convs are not candidates
    names = {p.name for p in candidate_layers(m)[0]}
    assert "features.3.pw.0" not in names and "features.3.dw.0" not in names


def test_target_mflops_is_reached_by_bisection():
    m = _model()
    before = archs.count(m).macs
    target = 0.6 * before / 1e6
    plans = lowrank(m, target_mflops=target)
    after = archs.count(m).macs
    assert after <= target * 1e6
    assert after > 0.3 * before  # the highest energy that fits, not rank 1 everywhere
    assert any(p.replace for p in plans)


def test_bad_arguments():
    m = _model()
    with pytest.raises(UserError):
        plan_ranks(m)
    with pytest.raises(UserError):
        plan_ranks(m, energy=1.5)
    with pytest.raises(UserError):
        plan_ranks(m, energy=0.5, target_mflops=1)
    with pytest.raises(UserError):
        plan_ranks(m, target_mflops=-1)


def test_factorized_model_reloads_and_finetunes(tmp_path):
    d = load_data("digits", seed=0)
    m = _model()
    fit(m, d.train, d.val, TrainConfig(epochs=6, lr=1e-2, batch_size=32, seed=0))
    base = evaluate(m, d.test)
    lowrank(m, energy=0.9)
    assert structure_changed(m, _spec())
    fit(m, d.train, d.val, TrainConfig(epochs=3, lr=1e-3, batch_size=32, seed=0))
    acc = evaluate(m, d.test)
    assert acc >= base - 0.01  # <= 1 point, the README's compression targets (measured here: 0 points)
    save_stage_model(tmp_path / "lr", m, {"stage": "lowrank"})
    m2, _, _ = load_model(tmp_path / "lr")
    x = d.test.x[:16]
    assert torch.allclose(m2(x), m.eval()(x), atol=1e-6)
    assert evaluate(m2, d.test) == acc
