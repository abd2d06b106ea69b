"""Zero-cost proxies: score an untrained, budget-fitted network in milliseconds, and a screen that trains the best.

NASWOT (Mellor et al. 2021): log-determinant of the kernel of binary ReLU activation codes over a batch; SynFlow
(Tanaka et al. 2020): sum of |theta * dR/dtheta| for R = sum of the output of the all-positive network on an
all-ones input (data-free); grad-norm: the L2 norm of the loss gradient of every conv/linear weight on one batch
(Abdelfattah et al. 2021). #params and MACs are the baselines they must beat (from the analytic count).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna
import torch
import torch.nn.functional as F
from torch import nn

from archs import NetSpec, build, estimate

from .space import Budget, DataShape, SearchSpace, analytic_fits, fit_alpha, sample_structure, trial_budget

PROXIES = ("naswot", "synflow", "grad_norm", "params", "macs")
_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU)


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log|K_H| of the Hamming-similarity kernel of the batch's binary activation codes (higher = better)."""
    codes: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        codes.append((out.detach().flatten(1) > 0).float())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _ACTS)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if not codes:
        return float("nan")
    c = torch.cat(codes, 1).double()
    k = c @ c.T + (1 - c) @ (1 - c).T
    return float(torch.linalg.slogdet(k)[1])


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def synflow(model: nn.Module, x: torch.Tensor) -> float:
    """SynFlow saliency summed over conv/linear weights, in double precision on |weights| (data-free)."""
    model = model.double().eval()  # batch norm at its initial statistics: a fixed affine map
    with torch.no_grad():
        signs = {n: p.sign() for n, p in model.state_dict().items() if p.is_floating_point()}
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.abs_()
    model.zero_grad()
    model(torch.ones((1, *x.shape[1:]), dtype=torch.float64)).sum().backward()
    score = sum(float((w.detach() * w.grad).abs().sum()) for w in _weights(model) if w.grad is not None)
    with torch.no_grad():
        for n, p in model.state_dict().items():
            if n in signs:
                p.mul_(signs[n])
    model.float()
    # the all-positive product grows with depth by orders of magnitude: compare logs
    return math.log(score) if score > 0 else float("-inf")


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum of the L2 norms of the cross-entropy gradients of every conv/linear weight on one batch."""
    model.train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return float(sum(w.grad.norm() for w in _weights(model) if w.grad is not None))


def score_all(spec: NetSpec, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, float]:
    """Every proxy of `spec` at the initial weights of `seed` (as a trial seeded so would start), and the time."""
    t0 = time.perf_counter()
    out = {name: score(spec, name, x, y, seed) for name in ("params", "macs", "naswot", "grad_norm", "synflow")}
    out["seconds"] = time.perf_counter() - t0
    return out


def score(spec: NetSpec, proxy: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    """One proxy of `spec` (higher = predicted better)."""
    if proxy in ("params", "macs"):
        cost = estimate(spec)
        return float(cost.params if proxy == "params" else cost.macs)
    torch.manual_seed(seed)
    model = build(spec)
    if proxy == "naswot":
        return naswot(model, x)
    if proxy == "synflow":
        return synflow(model, x)
    if proxy == "grad_norm":
        return grad_norm(model, x, y)
    raise ValueError(f"unknown proxy {proxy!r}; choose from {', '.join(PROXIES)}")


@dataclass
class Screen:
    """Propose the best of `k` random budget-fitted candidates by a proxy (a trial then trains it).

    Candidates are drawn by Optuna's RandomSampler from the search space itself, fitted by the same bisection as
    any trial; infeasible draws are skipped (at most 10 k draws). A proxy named "-NAME" prefers low NAME scores."""

    space: SearchSpace
    shape: DataShape
    budget: Budget
    k: int
    proxy: str
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # input size -> (images, labels) to score on
    seed: int = 0

    def __post_init__(self) -> None:
        self._draws = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=self.seed))
        self._fits = analytic_fits(self.budget)
        self.seconds = 0.0  # spent scoring, for equal-compute accounting

    def propose(self) -> dict[str, Any] | None:
        """The parameters of the best-scoring of `k` feasible random candidates (None if none was feasible)."""
        t0 = time.perf_counter()
        best: tuple[float, dict[str, Any]] | None = None
        scored = 0
        for _ in range(10 * self.k):
            if scored >= self.k:
                break
            t = self._draws.ask()
            spec, alpha, _ = sample_structure(t, self.space, self.shape)
            fits = self._fits if "budget_share" not in t.params else analytic_fits(trial_budget(self.budget, t.params))
            fitted = fit_alpha(spec, alpha, fits, self.space.alpha_min)
            if fitted is None:
                continue
            x, y = self.batch(fitted.input_size)
            sign = -1.0 if self.proxy.startswith("-") else 1.0
            s = sign * score(fitted.validate(), self.proxy.lstrip("-"), x, y, self.seed + t.number)
            scored += 1
            if not math.isnan(s) and (best is None or s > best[0]):
                best = (s, dict(t.params))
        self.seconds += time.perf_counter() - t0
        return best[1] if best else None
