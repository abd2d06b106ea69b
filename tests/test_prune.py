"""Pruning on small catalog networks and the digits data: masks, structured filters, physical channel removal."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import archs
from archs import HeadSpec, NetSpec, StageSpec, StemSpec
from archs.errors import UserError
from compress.prune import (ChannelPruner, check_ratio, classifier_layer, compute_masks, has_masks, iterative_prune,
                            layer_sparsity, make_permanent, nonzero_params, prune, prune_channels, prune_masks,
                            prunable_layers, sparsity, step_amount)
from compress.stages import load_model, save_stage_model, structure_changed
from training import TrainConfig, evaluate, fit, load_data


def _spec(stages, res=8, act="relu", head=None, stem=16) -> NetSpec:
    return NetSpec(num_classes=10, in_chans=1, resolution=res, divisor=1, act=act, stem=StemSpec(stem),
                   stages=stages, head=head or HeadSpec("pool")).validate()


SPECS = {
    "fire": _spec([StageSpec("fire", 32, 2, 2, args={"bypass": True}), StageSpec("fire", 48)], res=16),
    "dws": _spec([StageSpec("dws", 24, 2, 2), StageSpec("dws", 32)], res=16),
    "dws8": _spec([StageSpec("dws", 32, 1, 2), StageSpec("dws", 64)]),
    "ir_se": _spec([StageSpec("ir", 16, 2, 1, args={"expand": 4}), StageSpec("ir", 24, 1, 2, args={"expand": 4, "se": 0.25})],
                   res=16, act="relu6"),
    "basic_B": _spec([StageSpec("basic", 16, 2), StageSpec("basic", 32, 1, 2)]),
    "basic_A": archs.zoo.get("resnet20", in_chans=1, resolution=8),
    "lowrank": _spec([StageSpec("lowrank", 32, args={"rank_ratio": 0.5})]),
    "lenet5": archs.zoo.get("lenet5", resolution=16),
}


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0)


def _model(name="dws", seed=0):
    torch.manual_seed(seed)
    return archs.build(SPECS[name]).eval()


# ------------------------------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------------------------------
def test_magnitude_zeroes_the_smallest_fraction_in_every_layer():
    m = _model("dws")
    before = {n: l.weight.detach().clone() for n, l in prunable_layers(m)}
    prune_masks(m, 0.6, "magnitude")
    for n, l in prunable_layers(m):
        w, w0 = l.weight.detach(), before[n]
        assert abs((w == 0).float().mean().item() - 0.6) <= 1.0 / w.numel() + 1e-6
        kept = w0[w != 0].abs()
        if kept.numel() and (w == 0).any():
            assert kept.min() >= w0[w == 0].abs().max()  # the smallest magnitudes went
        assert torch.equal(w[w != 0], w0[w != 0])      # the rest untouched


def test_global_ranks_all_layers_together():
    m = _model("fire")
    scores = torch.cat([l.weight.detach().abs().flatten() for _, l in prunable_layers(m)])
    thr = scores.sort().values[int(round(0.7 * scores.numel())) - 1]
    prune_masks(m, 0.7, "global")
    assert sparsity(m) == pytest.approx(0.7, abs=1e-3)
    per_layer = layer_sparsity(m)
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05  # not uniform: one ranking
    for _, l in prunable_layers(m):
        w = l.weight.detach()
        assert (w[w != 0].abs() >= thr).all()


def test_threshold_is_quality_times_layer_std():
    m = _model("dws")
    stds = {n: l.weight.detach().std().item() for n, l in prunable_layers(m)}
    w0 = {n: l.weight.detach().clone() for n, l in prunable_layers(m)}
    prune_masks(m, 0.8, "threshold")
    for n, l in prunable_layers(m):
        expect_zero = w0[n].abs() < 0.8 * stds[n]
        assert torch.equal(l.weight.detach() == 0, expect_zero)


@pytest.mark.parametrize("method", ["l1", "l2"])
def test_structured_filters_zeroed_whole_and_classifier_kept(method):
    m = _model("basic_B")
    clf = classifier_layer(m)
    w_clf = clf.weight.detach().clone()
    prune_masks(m, 0.5, method)
    for _, l in prunable_layers(m):
        w = l.weight.detach().flatten(1)
        if l is clf:
            assert torch.equal(l.weight.detach(), w_clf)
            continue
        zero_rows = (w == 0).all(1)
        assert zero_rows.sum().item() == round(0.5 * w.shape[0])
        assert ((w != 0).any(1) | zero_rows).all()  # rows are all-zero or untouched


def test_masks_stay_zero_through_finetuning_and_become_permanent(digits):
    m = _model("dws8")
    prune_masks(m, 0.75, "magnitude")
    assert has_masks(m)
    zero = {n: (l.weight.detach() == 0).clone() for n, l in prunable_layers(m)}
    fit(m, digits.train, digits.val, TrainConfig(epochs=2, lr=3e-3, seed=0))
    for n, l in prunable_layers(m):
        assert (l.weight.detach()[zero[n]] == 0).all()
        assert l.weight_orig.detach()[zero[n]].abs().sum() > 0   # the hidden originals moved: the mask did the work
    make_permanent(m)
    assert not has_masks(m)
    keys = list(m.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    assert set(keys) == set(archs.build(SPECS["dws8"]).state_dict())
    for n, l in prunable_layers(m):
        assert torch.equal(l.weight.detach() == 0, zero[n] | (l.weight.detach() == 0))
        assert (l.weight.detach()[zero[n]] == 0).all()
    # a second fine-tuning without masks is free to move them, so masks must stay installed while fine-tuning
    assert sparsity(m) >= 0.75 - 1e-3


def test_reapplying_a_larger_ratio_extends_the_masks():
    m = _model("dws")
    prune_masks(m, 0.4, "magnitude")
    first = {n: (l.weight.detach() == 0).clone() for n, l in prunable_layers(m)}
    make_permanent(m)
    prune_masks(m, 0.8, "magnitude")
    for n, l in prunable_layers(m):
        assert (l.weight.detach()[first[n]] == 0).all()
    assert sparsity(m) == pytest.approx(0.8, abs=0.01)


def test_nonzero_params_counts_effective_weights():
    m = _model("dws")
    total = archs.num_params(m)
    prune_masks(m, 0.5, "global")
    zeros = sum(int((l.weight.detach() == 0).sum()) for _, l in prunable_layers(m))
    assert nonzero_params(m) <= total - zeros + 1  # BN / bias entries are non-zero
    assert nonzero_params(m) < total


def test_bad_ratios_are_user_errors():
    with pytest.raises(UserError):
        check_ratio("magnitude", 1.0)
    with pytest.raises(UserError):
        check_ratio("global", -0.1)
    with pytest.raises(UserError):
        check_ratio("threshold", -1)
    with pytest.raises(UserError):
        check_ratio("nope", 0.5)
    assert check_ratio("threshold", 2.5) == 2.5


# ------------------------------------------------------------------------------------------------------------------
# physical channel removal
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SPECS))
def test_channel_pruning_lowers_macs_and_keeps_the_output(name, tmp_path):
    m = _model(name)
    shape = SPECS[name].input_shape
    c0 = archs.count(m)
    prune_channels(m, 0.5)
    x = torch.randn(3, *shape[1:])
    y = m(x)
    assert y.shape == (3, 10)
    c1 = archs.count(m)
    assert c1.macs < c0.macs
    assert c1.params < c0.params
    if name != "basic_A":  # option-A residual streams keep their width: only the inner convs shrink
        assert c1.macs <= 0.55 * c0.macs
    assert structure_changed(m, SPECS[name])
    # the pruned model reloads from spec.json + structure.json + model.pt (weights_only)
    save_stage_model(tmp_path / "s", m, {"stage": "t"})
    m2, spec2, _ = load_model(tmp_path / "s")
    assert torch.allclose(m2(x), m.eval()(x), atol=1e-6)
    assert archs.count(m2).macs == c1.macs


def test_depthwise_fire_and_residual_groups_stay_consistent():
    m = _model("fire")
    prune_channels(m, 0.5)
    f = m.features[1]  # first Fire: concat of two expand branches, bypass add on the second Fire
    s_out = f.squeeze[0].out_channels
    assert f.expand1x1[0].in_channels == s_out and f.expand3x3[0].in_channels == s_out
    nxt = m.features[2]
    assert nxt.squeeze[0].in_channels == f.expand1x1[0].out_channels + f.expand3x3[0].out_channels
    d = _model("dws")
    prune_channels(d, 0.5)
    for blk in d.features[1:]:
        dw = blk.dw[0]
        assert dw.groups == dw.in_channels == dw.out_channels
    r = _model("ir_se")
    prune_channels(r, 0.5)
    blk = r.features[2]  # stride-1 residual block: input and output channels must still match
    assert blk.use_res and blk.project[0].out_channels == r.features[1].project[0].out_channels


def test_classifier_outputs_never_pruned():
    m = _model("lenet5")
    prune_channels(m, 0.7)
    assert classifier_layer(m).out_features == 10


def test_pruned_model_trains_and_keeps_accuracy(digits):
    m = _model("dws8")
    fit(m, digits.train, digits.val, TrainConfig(epochs=8, lr=1e-2, batch_size=32, seed=0))
    base = evaluate(m, digits.test)
    assert base > 0.9
    c0 = archs.count(m).macs
    prune_channels(m, 0.5)
    fit(m, digits.train, digits.val, TrainConfig(epochs=8, lr=3e-3, batch_size=32, seed=0))
    assert archs.count(m).macs <= 0.55 * c0
    # The README's <= 1 point is for benchmarks/compression.py's recipe (16x16 CNN trained 20 epochs, 2 pruning steps
    # of 20 fine-tuning epochs). This 8x8 net, trained and fine-tuned 8 epochs in one step to keep the suite fast,
    # lost 1.67 points on one machine and 2.8-4.7 points on another (seed 0: 3.3; seeds 1-4: 3.9-4.7), the CPU's
    # arithmetic changing the training path; 5 points holds on both, while a pruning that cut the wrong channels
    # (or kept stale weights) loses tens of points.
    assert evaluate(m, digits.test) >= base - 0.05


# ------------------------------------------------------------------------------------------------------------------
# iterative pruning with a maximum drop
# ------------------------------------------------------------------------------------------------------------------
def test_iterative_stops_before_the_drop_limit_and_undoes_the_last_step():
    m = _model("dws")
    vals = iter([0.95, 0.945, 0.90, 0.85])

    def ft(model):  # stand-in for fine-tuning: returns a validation accuracy
        return next(vals)

    model, hist = iterative_prune(m, 0.8, "magnitude", 4, ft, baseline_val=0.955, max_drop=2.0)
    assert [h["accepted"] for h in hist] == [True, True, False]
    # step 2 of 4 kept (1 - 0.8) ** (2 / 4) of the weights: the geometric schedule of the remaining weights
    assert sparsity(model) == pytest.approx(1 - 0.2 ** 0.5, abs=0.01)
    assert step_amount("magnitude", 0.8, 4, 4) == 0.8 and step_amount("channels", 0.6, 1, 3) == pytest.approx(0.2)
    assert not has_masks(model)


def test_iterative_channels_steps_shrink_monotonically():
    m = _model("fire")
    macs = [archs.count(m).macs]

    def ft(model):
        macs.append(archs.count(model).macs)
        return 0.9

    model, hist = iterative_prune(m, 0.5, "channels", 3, ft, baseline_val=0.9, max_drop=1.0)
    assert len(hist) == 3 and all(h["accepted"] for h in hist)
    assert macs[0] > macs[1] > macs[2] > macs[3]


def test_prune_dispatches_all_methods():
    for method, amount in (("magnitude", 0.5), ("global", 0.5), ("threshold", 1.0), ("l1", 0.5), ("l2", 0.5)):
        m = _model("dws")
        info = prune(m, amount, method)
        make_permanent(m)
        assert info["sparsity"] > 0.2, method
    m = _model("dws")
    c0 = archs.count(m).macs
    prune(m, 0.5, "channels")
    assert archs.count(m).macs < c0
