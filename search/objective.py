"""The Optuna objective: sample -> fit to budget -> build -> train -> report. No over-budget network is ever trained."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from archs import build, estimate, latency
from archs.memory import memory, supported
from archs.spec import POOL_BLOCKS, NetSpec
from training.data import Splits, TensorData, fold_split
from training.loop import TrainConfig, TrainingDiverged, fit, set_seed

from .confirm import CONFIRMS, fold_of
from .space import Budget, DataShape, SearchSpace, analytic_fits, fit_alpha, sample_structure, trial_budget
from .storage import StorageUnavailable, fail_fast
from .workers import check_interrupt

COST_OBJECTIVES = {"mflops": "mflops", "params": "params_count", "latency": "latency_ms", "sram": "sram_kb",
                   "flash": "flash_kb"}

#: A hard latency budget on a noisy CPU: α is fitted to (1 - LATENCY_MARGIN) x --budget-latency-ms on one
#: measurement per candidate, then the fitted network is measured again (the confirmation, the trial's recorded
#: `latency_ms`); if that median exceeds the budget itself the trial is pruned as infeasible before any training.
LATENCY_MARGIN = 0.1


def latency_fit_target(budget_ms: float) -> float:
    """The latency, in ms, that α is fitted to under a --budget-latency-ms of `budget_ms`."""
    return budget_ms * (1 - LATENCY_MARGIN)


class TrialFailed(Exception):
    """A trial that could not produce a result (diverged, out of memory); recorded as FAIL, the study goes on."""


@dataclass
class ParetoStopper:
    """Early stopping for multi-objective studies, where Optuna's pruners cannot be used.

    After `warmup` epochs, a trial stops when at least half of the completed trials (and at least `min_trials`)
    dominate it at the same epoch: validation accuracy at least as high and cost at most as high.
    """

    cost_key: str
    warmup: int
    min_trials: int = 5

    def should_stop(self, study: optuna.Study, epoch: int, acc: float, cost: float) -> bool:
        if epoch < self.warmup:
            return False
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if len(t.user_attrs.get("curve", [])) >= epoch]
        if len(done) < self.min_trials:
            return False
        dominating = sum(1 for t in done
                         if t.user_attrs["curve"][epoch - 1] >= acc and t.user_attrs.get(self.cost_key, math.inf) <= cost)
        return dominating >= len(done) / 2


class Objective:
    """Callable objective; data are loaded once and resized once per input resolution.

    `folds` (--confirm-folds): a confirmation trial that records a fold (search.confirm.FOLD) trains and validates
    on that fold of train+val (`training.data.fold_split`, seeded by the training seed, i.e. --seed, like the data
    split); every other trial uses the train and val splits."""

    def __init__(self, data: Splits, space: SearchSpace, budget: Budget, objectives: list[str], train: TrainConfig,
                 device: torch.device, teacher: torch.nn.Module | None = None, kd_temperature: float = 4.0,
                 kd_alpha: float = 0.9, log: Callable[[str], None] | None = None, folds: int = 1):
        self.data, self.space, self.budget, self.objectives, self.folds = data, space, budget, objectives, folds
        self.train_cfg, self.device, self.teacher = train, device, teacher
        self.kd_temperature, self.kd_alpha = kd_temperature, kd_alpha
        self.log = log or (lambda s: None)
        self.shape = DataShape(data.in_chans, data.resolution, data.num_classes)
        self._cache: dict[int, tuple[TensorData, TensorData]] = {}
        self._fold_cache: tuple[tuple[int, int], tuple[TensorData, TensorData]] | None = None  # the last fold used
        multi = len(objectives) > 1
        self.stopper = ParetoStopper(COST_OBJECTIVES[objectives[1]], max(1, train.epochs // 2)) if multi else None

    def split(self, size: int, fold: int = 0) -> tuple[TensorData, TensorData]:
        """Train and validation tensors at `size` px on the training device (cached), of fold `fold` of the
        objective's `folds` (0: the train and val splits)."""
        if size not in self._cache:
            self._cache[size] = (self.data.train.resized(size).to(self.device),
                                 self.data.val.resized(size).to(self.device))
        if fold == 0:
            return self._cache[size]
        if self._fold_cache is None or self._fold_cache[0] != (size, fold):  # one fold copy at a time: memory
            self._fold_cache = ((size, fold), fold_split(*self._cache[size], fold, self.folds, self.train_cfg.seed))
        return self._fold_cache[1]

    def fits(self, spec: NetSpec, budget: Budget | None = None) -> bool:
        """Analytic budgets first (microseconds), then the measured CPU latency budget if any."""
        budget = budget or self.budget
        if not analytic_fits(budget)(spec):
            return False
        if budget.latency_ms is None:
            return True
        return latency(build(spec), repeats=20, max_seconds=1.0) <= latency_fit_target(budget.latency_ms)

    def __call__(self, trial: optuna.Trial):
        spec, alpha_max, hp = sample_structure(trial, self.space, self.shape)
        target = trial_budget(self.budget, trial.params)  # the budget, or its sampled share (--width share)
        fitted = fit_alpha(spec, alpha_max, lambda s: self.fits(s, target), self.space.alpha_min,
                           steps=24 if self.budget.latency_ms is None else 8)
        if fitted is None:
            trial.set_user_attr("fail_reason", "infeasible: over budget even at the smallest width")
            trial.set_user_attr("infeasible", True)  # never trained; does not count towards --trials
            raise optuna.TrialPruned("no width multiplier fits the budget")
        spec = fitted.validate()
        cost = estimate(spec)
        set_seed(self.train_cfg.seed + trial.number)  # the initial weights depend on the trial only, not on history
        model = build(spec)
        lat = latency(model, repeats=20, max_seconds=1.0)  # with a latency budget: its confirmation measurement
        if self.budget.latency_ms is not None and lat > self.budget.latency_ms:
            trial.set_user_attr("fail_reason", f"infeasible: {lat:.3f} ms measured after fitting to "
                                f"{latency_fit_target(self.budget.latency_ms):.3f} ms is over the "
                                f"{self.budget.latency_ms:g} ms latency budget")
            trial.set_user_attr("infeasible", True)
            trial.set_user_attr("latency_ms", lat)
            raise optuna.TrialPruned("over the latency budget on the confirmation measurement")
        trial.set_user_attr("spec", spec.to_string())
        trial.set_user_attr("spec_json", spec.to_dict())
        trial.set_user_attr("blocks", "+".join(dict.fromkeys(spec.block_types())))
        trial.set_user_attr("depth", sum(s.repeats for s in spec.stages if s.block not in POOL_BLOCKS))  # blocks, not pools
        trial.set_user_attr("resolution", spec.input_size)
        trial.set_user_attr("alpha", spec.alpha)
        trial.set_user_attr("rho", spec.rho)
        trial.set_user_attr("mflops", cost.macs / 1e6)
        trial.set_user_attr("params_count", cost.params)
        trial.set_user_attr("latency_ms", lat)
        # int8 TFLM memory, kB = 1,024 bytes (None for a block kind without a TFLite graph record)
        mem = memory(spec) if all(supported(k) for k in spec.block_types()) else None
        nan = float("nan")
        trial.set_user_attr("sram_kb", mem.arena_bytes / 1024 if mem else None)
        trial.set_user_attr("arena_kb", mem.activation_bytes / 1024 if mem else None)
        trial.set_user_attr("flash_kb", mem.flash_bytes / 1024 if mem else None)
        trial.set_user_attr("budget_share", self.budget.share(cost, lat, mem))
        trial.set_user_attr("hparams", hp)
        cfg = replace(self.train_cfg, seed=self.train_cfg.seed + trial.number, **hp)
        fold = fold_of(trial)  # recorded when the confirmation was queued (search.confirm.FOLD)
        if not 0 <= fold < max(self.folds, 1):
            raise RuntimeError(f"internal error: trial {trial.number} asks for fold {fold} of {self.folds}")
        train, val = self.split(spec.input_size, fold)
        curve: list[float] = []
        own_cost = {"mflops": cost.macs / 1e6, "params_count": cost.params, "latency_ms": lat,
                    "sram_kb": mem.arena_bytes / 1024 if mem else nan, "flash_kb": mem.flash_bytes / 1024 if mem else nan}
        confirming = CONFIRMS in trial.user_attrs  # a re-evaluation runs to the end: its mean must be fair

        def on_epoch(epoch: int, acc: float) -> None:
            check_interrupt()  # a Ctrl-C whose KeyboardInterrupt Python dropped stops the trial here
            curve.append(acc)
            trial.set_user_attr("curve", list(curve))
            try:
                with fail_fast():  # during a database outage: keep training, skip this epoch's pruning check
                    if self.stopper is None:
                        trial.report(acc, epoch)
                        stop = not confirming and trial.should_prune()
                    else:
                        stop = self.stopper.should_stop(trial.study, epoch, acc, own_cost[self.stopper.cost_key])
            except StorageUnavailable:
                stop = False
            if stop:
                trial.set_user_attr("epochs_run", epoch)
                raise optuna.TrialPruned(f"{'pruned' if self.stopper is None else 'dominated'} at epoch {epoch}")

        model.to(self.device)
        try:
            res = fit(model, train, val, cfg, teacher=self.teacher, temperature=self.kd_temperature,
                      alpha=self.kd_alpha, on_epoch=on_epoch)
        except TrainingDiverged as e:
            trial.set_user_attr("fail_reason", f"diverged: {e}")
            raise TrialFailed(str(e)) from None
        except torch.OutOfMemoryError:
            trial.set_user_attr("fail_reason", "out of memory")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise TrialFailed("out of memory") from None
        trial.set_user_attr("val_acc", res.val_acc)
        trial.set_user_attr("best_val_acc", res.best_val_acc)
        trial.set_user_attr("epochs_run", len(res.history))
        trial.set_user_attr("train_seconds", res.seconds)
        if self.stopper is None:
            return res.val_acc
        return res.val_acc, own_cost[COST_OBJECTIVES[self.objectives[1]]]
