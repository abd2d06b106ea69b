"""Pruning: unstructured magnitude (per layer, global), Deep Compression's threshold, structured L1/L2 filter
zeroing, and physical channel removal with torch-pruning's dependency graph.

Mask methods (`magnitude`, `global`, `threshold`, `l1`, `l2`) keep the tensor shapes and zero weights. The masks
are installed with `torch.nn.utils.prune` (weight = weight_orig * weight_mask in a forward pre-hook), so they stay
applied through fine-tuning; `make_permanent` then folds them into plain weights (zeros stay zeros).

`channels` removes whole channels physically (torch-pruning `MetaPruner` + `GroupMagnitudeImportance`): the
dependency graph keeps depthwise convolutions, Fire's concatenation and residual additions consistent, so fvcore
MACs, parameters and latency really fall.

    masks = prune_masks(model, 0.9, "global")          # 90 % of conv/linear weights zeroed, masks active
    fit(model, ...)                                    # zeros stay zeros
    make_permanent(model)
    prune_channels(model, 0.5)                         # half the channels of every prunable group removed
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from archs.errors import UserError

__all__ = ["METHODS", "MASK_METHODS", "prunable_layers", "classifier_layer", "compute_masks", "apply_masks",
           "make_permanent", "prune_masks", "prune_channels", "ChannelPruner", "prune", "iterative_prune", "step_amount",
           "nonzero_params", "sparsity", "layer_sparsity", "has_masks", "check_ratio"]

MASK_METHODS = ("magnitude", "global", "threshold", "l1", "l2")
METHODS = (*MASK_METHODS, "channels")
PRUNABLE = (nn.Conv2d, nn.Linear)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------
#: largest threshold quality q accepted: |w| < 3 std(w) holds for 99.7 % of a normal layer's weights, so a larger q
#: (typically a fraction such as 50 meant as 50 %) leaves a network without weights; Deep Compression uses q ~ 1
MAX_QUALITY = 3.0


def check_ratio(method: str, amount: float) -> float:
    """Validate the pruning amount: a fraction in [0, 1) for ratio methods, a quality q >= 0 for `threshold`."""
    if method not in METHODS:
        raise UserError(f"unknown pruning method {method!r}; choose from {', '.join(METHODS)}")
    try:
        amount = float(amount)
    except (TypeError, ValueError):
        raise UserError(f"pruning amount must be a number, got {amount!r}") from None
    if not math.isfinite(amount):
        raise UserError(f"pruning amount must be finite, got {amount!r}")
    if method == "threshold":
        if amount < 0:
            raise UserError(f"threshold pruning takes a quality parameter q >= 0 (x the layer's weight std), got {amount}")
        if amount > MAX_QUALITY:
            raise UserError(f"threshold pruning quality q = {amount:g} layer standard deviations removes practically "
                            f"every weight (q = {MAX_QUALITY:g} already removes 99.7 % of normally distributed weights); "
                            f"use q <= {MAX_QUALITY:g}, or a fraction with --prune-method magnitude or global")
    elif not 0.0 <= amount < 1.0:
        raise UserError(f"pruning ratio must be in [0, 1) for method {method!r}, got {amount}")
    return amount


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def classifier_layer(model: nn.Module) -> nn.Module | None:
    """The layer that produces the logits: the last Conv2d/Linear in module order (never channel-pruned)."""
    layers = prunable_layers(model)
    return layers[-1][1] if layers else None


def _weight(m: nn.Module) -> torch.Tensor:
    """The effective weight (weight_orig * mask while a mask is installed)."""
    return m.weight.detach()


def has_masks(model: nn.Module) -> bool:
    return any(tprune.is_pruned(m) for m in model.modules() if isinstance(m, PRUNABLE)) or tprune.is_pruned(model)


def nonzero_params(model: nn.Module) -> int:
    """Non-zero entries over all parameters (effective weights when masks are installed)."""
    total = 0
    seen = set()
    for m in model.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            if name.endswith("_orig"):
                p = getattr(m, name[:-5])
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += int(torch.count_nonzero(p.detach()).item())
    return total


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over the prunable (conv/linear) weights."""
    n = z = 0
    for _, m in prunable_layers(model):
        w = _weight(m)
        n += w.numel()
        z += int((w == 0).sum().item())
    return z / n if n else 0.0


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zero weights per conv/linear layer."""
    return {n: float((_weight(m) == 0).float().mean().item()) for n, m in prunable_layers(model)}


# ----------------------------------------------------------------------------------------------------------------
# Mask pruning
# ----------------------------------------------------------------------------------------------------------------
def _keep_largest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Mask (same shape) that zeroes exactly the `n_prune` smallest scores (ties broken by position)."""
    mask = torch.ones_like(scores, dtype=torch.float32)
    if n_prune <= 0:
        return mask
    idx = torch.argsort(scores.flatten(), stable=True)[:n_prune]
    mask.view(-1)[idx] = 0.0
    return mask


def compute_masks(model: nn.Module, amount: float, method: str = "magnitude") -> dict[str, dict[str, torch.Tensor]]:
    """Masks {layer name: {"weight": mask[, "bias": mask]}} for a mask method.

    - `magnitude`: in every conv/linear layer the fraction `amount` of weights smallest in |w| is zeroed.
    - `global`: one |w| ranking over all conv/linear weights; `amount` of them is zeroed.
    - `threshold`: Deep Compression: |w| < q * std(w) is zeroed in each layer (`amount` is the quality q).
    - `l1` / `l2`: structured; in every conv/linear layer except the classifier the fraction `amount` of output
      filters (rows) with the smallest L1/L2 norm is zeroed entirely, bias included.
    Weights already zero rank lowest, so re-applying with a larger amount extends the previous masks.
    """
    amount = check_ratio(method, amount)
    if method == "channels":
        raise UserError("'channels' pruning removes channels physically; use prune_channels()")
    layers = prunable_layers(model)
    if not layers:
        raise UserError("the model has no Conv2d or Linear layers to prune")
    masks: dict[str, dict[str, torch.Tensor]] = {}
    if method == "magnitude":
        for n, m in layers:
            w = _weight(m).abs()
            masks[n] = {"weight": _keep_largest(w, int(round(amount * w.numel())))}
    elif method == "global":
        scores = torch.cat([_weight(m).abs().flatten() for _, m in layers])
        k = int(round(amount * scores.numel()))
        flat = _keep_largest(scores, k)
        i = 0
        for n, m in layers:
            w = _weight(m)
            masks[n] = {"weight": flat[i:i + w.numel()].view_as(w).clone()}
            i += w.numel()
    elif method == "threshold":
        for n, m in layers:
            w = _weight(m)
            thr = amount * float(w.float().std().item()) if w.numel() > 1 else 0.0
            masks[n] = {"weight": (w.abs() >= thr).float() if amount > 0 else torch.ones_like(w)}
    else:  # l1 / l2 structured filters
        p = 1 if method == "l1" else 2
        clf = classifier_layer(model)
        for n, m in layers:
            if m is clf:
                continue
            w = _weight(m)
            norms = w.flatten(1).norm(p=p, dim=1)
            keep = _keep_largest(norms, int(round(amount * w.shape[0])))
            entry = {"weight": keep.view(-1, *([1] * (w.dim() - 1))).expand_as(w).contiguous()}
            if m.bias is not None:
                entry["bias"] = keep.clone()
            masks[n] = entry
    return masks


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold installed masks into plain weights (torch.nn.utils.prune.remove); zeros stay zero."""
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, tprune.BasePruningMethod):
                tprune.remove(m, hook._tensor_name)
    return model


def apply_masks(model: nn.Module, masks: dict[str, dict[str, torch.Tensor]]) -> nn.Module:
    """Install masks with torch.nn.utils.prune (replacing any installed earlier); zeroed weights stay zero in fit."""
    make_permanent(model)
    mods = dict(model.named_modules())
    for name, entry in masks.items():
        m = mods[name]
        for tname, mask in entry.items():
            tprune.custom_from_mask(m, tname, mask.to(getattr(m, tname).device))
    return model


def prune_masks(model: nn.Module, amount: float, method: str = "magnitude") -> dict:
    """Compute and install masks; returns a summary (method, amount, sparsity, per-layer sparsity)."""
    masks = compute_masks(model, amount, method)
    apply_masks(model, masks)
    return {"method": method, "amount": float(amount), "sparsity": sparsity(model),
            "layer_sparsity": layer_sparsity(model)}


# ----------------------------------------------------------------------------------------------------------------
# Physical channel removal
# ----------------------------------------------------------------------------------------------------------------
def _example_input(model: nn.Module, input_shape) -> torch.Tensor:
    from archs.count import _model_and_shape

    _, shape = _model_and_shape(model, input_shape)
    p = next(model.parameters(), None)
    return torch.randn(shape, device=p.device if p is not None else "cpu")


def _ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels must stay: the classifier, and the residual stream of zero-padding
    ('A') shortcuts, whose channel padding torch-pruning cannot follow (only their inner conv1 is pruned)."""
    from archs.blocks import BasicResidual

    ignored = []
    clf = classifier_layer(model)
    if clf is not None:
        ignored.append(clf)
    if any(isinstance(m, BasicResidual) and m.mode == "A" for m in model.modules()):
        inner = {id(c) for m in model.modules() if isinstance(m, BasicResidual)
                 for c in m.conv1.modules() if isinstance(c, nn.Conv2d)}
        ignored += [m for _, m in prunable_layers(model) if id(m) not in inner and m is not clf]
    return ignored


class ChannelPruner:
    """torch-pruning MetaPruner over the model's dependency graph: `step()` removes channels physically.

    `ratio` is the fraction of channels removed from every prunable group when all `steps` are done (a linear
    schedule: step i reaches ratio * i / steps of the original channels). Importance: L1 or L2 norm of the
    group's weights (GroupMagnitudeImportance). The classifier's outputs are never pruned.
    """

    def __init__(self, model: nn.Module, ratio: float, input_shape=None, importance: str = "l1", steps: int = 1,
                 global_pruning: bool = False, round_to: int | None = None,
                 ignored_layers: list[nn.Module] | None = None):
        import torch_pruning as tp

        check_ratio("channels", ratio)
        if importance not in ("l1", "l2"):
            raise UserError(f"channel importance must be l1 or l2, got {importance!r}")
        if steps < 1:
            raise UserError(f"iterative steps must be >= 1, got {steps}")
        make_permanent(model)
        self.model, self.steps, self.done = model, int(steps), 0
        ex = _example_input(model, input_shape)
        ignored = _ignored_layers(model) + list(ignored_layers or [])
        imp = tp.importance.GroupMagnitudeImportance(p=1 if importance == "l1" else 2)
        was_training = model.training
        model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.pruner = tp.pruner.MetaPruner(model, ex, importance=imp, pruning_ratio=float(ratio),
                                               iterative_steps=self.steps, ignored_layers=ignored,
                                               global_pruning=global_pruning, round_to=round_to)
        model.train(was_training)

    def step(self) -> nn.Module:
        if self.done >= self.steps:
            raise RuntimeError("all pruning steps are done")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            self.pruner.step()
        self.done += 1
        return self.model


def prune_channels(model: nn.Module, ratio: float, input_shape=None, importance: str = "l1",
                   global_pruning: bool = False, round_to: int | None = None) -> nn.Module:
    """Remove the fraction `ratio` of channels from every prunable group, in place (one shot)."""
    if ratio <= 0:
        return model
    return ChannelPruner(model, ratio, input_shape, importance, 1, global_pruning, round_to).step()


# ----------------------------------------------------------------------------------------------------------------
# One entry point, one-shot and iterative
# ----------------------------------------------------------------------------------------------------------------
def prune(model: nn.Module, amount: float, method: str = "magnitude", input_shape=None,
          importance: str = "l1") -> dict:
    """Prune in place with any method; mask methods leave their masks installed (call `make_permanent` later)."""
    check_ratio(method, amount)
    if method == "channels":
        prune_channels(model, amount, input_shape, importance)
        return {"method": method, "amount": float(amount), "sparsity": sparsity(model)}
    return prune_masks(model, amount, method)


def step_amount(method: str, amount: float, i: int, steps: int) -> float:
    """Amount reached after step i of `steps`. Ratio mask methods shrink the *remaining* weights geometrically
    (keep (1 - amount)^(i / steps): every step removes the same share of what is left, as in Han et al.'s
    iterative pruning); the threshold quality q and channel ratios grow linearly."""
    if i >= steps:
        return float(amount)
    if method in ("magnitude", "global", "l1", "l2"):
        return 1.0 - (1.0 - amount) ** (i / steps)
    return amount * i / steps


def iterative_prune(model: nn.Module, amount: float, method: str, steps: int,
                    finetune: Callable[[nn.Module], float], baseline_val: float, max_drop: float | None = None,
                    input_shape=None, importance: str = "l1", on_step: Callable[[dict], None] | None = None):
    """prune -> fine-tune -> prune ... in `steps` steps to `amount` (schedule: `step_amount`), stopping before validation accuracy falls more
    than `max_drop` points (percentage points) below `baseline_val`.

    `finetune(model) -> val_acc` fine-tunes the model in place (masks stay applied) and returns validation
    accuracy in [0, 1]. A step that breaks the limit is undone: the model of the previous step is returned
    (the original when the first step already breaks it). Returns (model, history); masks are made permanent.
    """
    check_ratio(method, amount)
    if steps < 1:
        raise UserError(f"iterative steps must be >= 1, got {steps}")
    if max_drop is not None and (not math.isfinite(max_drop) or max_drop < 0):
        raise UserError(f"--max-drop must be >= 0 points, got {max_drop}")
    history: list[dict] = []
    best = copy.deepcopy(model)
    pruner = ChannelPruner(model, amount, input_shape, importance, steps) if method == "channels" else None
    for i in range(1, steps + 1):
        target = step_amount(method, amount, i, steps)
        if pruner is not None:
            pruner.step()
        else:
            prune_masks(model, target, method)
        val = float(finetune(model))
        drop = 100.0 * (baseline_val - val)
        row = {"step": i, "amount": target, "val_acc": val, "drop_points": drop, "sparsity": sparsity(model),
               "accepted": max_drop is None or drop <= max_drop}
        history.append(row)
        if on_step is not None:
            on_step(row)
        if not row["accepted"]:
            model = best
            break
        make_permanent(model)
        best = copy.deepcopy(model)
    make_permanent(model)
    return model, history
