"""Cross-validated confirmations (--confirm-folds K): the folds of train+val, the fold each confirmation records,
the objective training on it, and studies that keep their folds across a resume."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from archs.errors import UserError
from search.confirm import CONFIRMS, FOLD, enqueue_confirmation, next_fold
from search.run import main
from training.data import TensorData, fold_positions, fold_split, load_data

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--budget-mflops", "0.05", "--epochs", "1", "--final-epochs", "0", "--quiet", "--top-k", "1",
        "--sampler", "random"]


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=3)


def test_folds_are_disjoint_cover_train_and_val_and_fold_0_is_the_val_split(digits):
    n_train, n_val = len(digits.train), len(digits.val)
    folds = fold_positions(digits.train.y.numpy(), n_val, 5, seed=3)
    assert len(folds) == 5
    both = np.concatenate(folds)
    assert len(both) == len(set(both.tolist())) == n_train + n_val  # disjoint, and together all of train+val
    assert sorted(both.tolist()) == list(range(n_train + n_val))
    assert folds[0].tolist() == list(range(n_train, n_train + n_val))  # the search's own val split
    # val is a fifth of train+val: five folds of (almost) its size, each with every class
    assert all(abs(len(f) - n_val) <= 10 for f in folds)
    y = torch.cat([digits.train.y, digits.val.y]).numpy()
    assert all(len(set(y[f].tolist())) == 10 for f in folds)


def test_folds_are_deterministic_per_seed(digits):
    y = digits.train.y.numpy()
    a = fold_positions(y, len(digits.val), 5, seed=3)
    b = fold_positions(y.copy(), len(digits.val), 5, seed=3)
    c = fold_positions(y, len(digits.val), 5, seed=4)
    assert all((x == z).all() for x, z in zip(a, b))
    assert any(not np.array_equal(x, z) for x, z in zip(a[1:], c[1:]))
    assert [f.tolist() for f in fold_positions(y, len(digits.val), 2, seed=3)] == \
        [list(range(len(y), len(y) + len(digits.val))), list(range(len(y)))]
    assert len(fold_positions(y, len(digits.val), 1, seed=3)) == 1
    with pytest.raises(UserError, match="validation split"):
        fold_positions(y, 0, 3, seed=3)


def test_fold_split_validates_on_the_fold_and_trains_on_the_rest(digits):
    both = TensorData.cat(digits.train, digits.val)
    pos = fold_positions(digits.train.y.numpy(), len(digits.val), 5, seed=3)[2]
    train, val = fold_split(digits.train, digits.val, 2, 5, seed=3)
    assert torch.equal(val.x, both.x[torch.as_tensor(pos)]) and torch.equal(val.y, both.y[torch.as_tensor(pos)])
    assert len(train) + len(val) == len(both)
    rest = np.setdiff1d(np.arange(len(both)), pos)
    assert torch.equal(train.x, both.x[torch.as_tensor(rest)])
    assert fold_split(digits.train, digits.val, 0, 5, seed=3) == (digits.train, digits.val)
    f = digits.fold(2, 5, seed=3)  # the Splits view: the same fold, the test split and normalization kept
    assert torch.equal(f.val.x, val.x) and f.test is digits.test and f.mean == digits.mean
    assert digits.fold(0, 5, seed=3) is digits
    with pytest.raises(ValueError):
        fold_split(digits.train, digits.val, 5, 5, seed=3)


def _trial(number: int, value: float | None, state=TrialState.COMPLETE, **attrs) -> optuna.trial.FrozenTrial:
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    t = create_trial(state=state, value=value, params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-3, 1e-1)},
                     user_attrs={"mflops": 0.01, **attrs})
    t.number = number
    return t


def test_a_confirmation_records_the_least_used_fold_of_its_candidate():
    trials = [_trial(0, 0.99), _trial(1, 0.5), _trial(2, 0.4), _trial(3, 0.98, **{CONFIRMS: 0, FOLD: 1})]
    assert next_fold(trials, 0, 5) == 2 and next_fold(trials, 1, 5) == 1 and next_fold(trials, 0, 1) == 0
    # a queued or running confirmation holds its fold; every fold used once: fold 0 again
    pending = [*trials, _trial(4, None, TrialState.RUNNING, **{CONFIRMS: 0, FOLD: 2})]
    assert next_fold(pending, 0, 3) == 0 and next_fold(pending, 0, 5) == 3
    study = optuna.create_study(direction="maximize")
    leader = enqueue_confirmation(study, trials, counted=9, running=0, n_trials=10, share=0.2, folds=5)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert leader.number == 1  # the once-run leaders first
    assert waiting[0].user_attrs == {CONFIRMS: 1, FOLD: 1}
    plain = optuna.create_study(direction="maximize")  # without --confirm-folds the attributes are as they were
    enqueue_confirmation(plain, trials, counted=9, running=0, n_trials=10, share=0.2)
    assert plain.get_trials(states=(TrialState.WAITING,))[0].user_attrs == {CONFIRMS: 1}


def test_a_retried_confirmation_keeps_its_fold():
    from search.storage import RetryLostTrial

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"lr": 0.01}, user_attrs={CONFIRMS: 3, FOLD: 2})
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1e-1)
    study.tell(trial, state=TrialState.FAIL)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        RetryLostTrial(max_retry=3)(study, study.trials[-1])
    assert study.trials[-1].user_attrs == {"retry_of": 0, CONFIRMS: 3, FOLD: 2}


def test_the_objective_trains_and_validates_a_confirmation_on_its_fold(digits, monkeypatch):
    import search.objective as objective_mod
    from search.objective import Objective
    from search.space import Budget, SearchSpace
    from training.loop import TrainConfig

    seen = []
    real_fit = objective_mod.fit

    def spy(model, train, val, cfg, **kw):
        seen.append((train, val))
        return real_fit(model, train, val, cfg, **kw)

    monkeypatch.setattr(objective_mod, "fit", spy)
    obj = Objective(digits, SearchSpace(blocks=("conv",)), Budget(mflops=0.05), ["accuracy"],
                    TrainConfig(epochs=1, seed=3), torch.device("cpu"), folds=5)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(obj, n_trials=1)
    first = study.trials[0]
    study.enqueue_trial(first.params, user_attrs={CONFIRMS: 0, FOLD: 3})
    study.optimize(obj, n_trials=1)
    (train0, val0), (train3, val3) = seen
    size = first.user_attrs["resolution"]
    assert len(val0) == len(digits.val) and torch.equal(val0.y, digits.val.y)
    want_train, want_val = fold_split(digits.train.resized(size), digits.val.resized(size), 3, 5, seed=3)
    assert torch.equal(val3.x, want_val.x) and torch.equal(train3.y, want_train.y)
    assert study.trials[1].user_attrs[FOLD] == 3 and study.trials[1].state == TrialState.COMPLETE


def test_a_search_confirms_on_other_folds_and_a_resume_keeps_them(tmp_path: Path):
    from search.study import STUDY_SETTINGS

    assert "confirm_folds" in STUDY_SETTINGS
    args = [*TINY, "--confirm", "0.5", "--confirm-folds", "3", "--study-name", "cv", "--out", str(tmp_path)]
    main([*args, "--trials", "4"])
    storage = f"sqlite:///{tmp_path / 'cv/study.db'}"
    trials = optuna.load_study(study_name="cv", storage=storage).trials
    conf = [t for t in trials if CONFIRMS in t.user_attrs]
    assert len(conf) == 2 and all(t.user_attrs[FOLD] in (1, 2) for t in conf)
    main([*args, "--trials", "8", "--resume"])  # the same folds: --confirm-folds is a study setting
    trials = optuna.load_study(study_name="cv", storage=storage).trials
    by_candidate: dict[int, list[int]] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE and not t.user_attrs.get("infeasible"):
            by_candidate.setdefault(int(t.user_attrs.get(CONFIRMS, t.number)), []).append(t.user_attrs.get(FOLD, 0))
    assert any(len(folds) > 1 for folds in by_candidate.values())
    for folds in by_candidate.values():  # each candidate's runs use every fold once before one repeats
        assert folds[0] == 0 and len(set(folds)) == min(len(folds), 3)
    with pytest.raises(UserError, match="--confirm-folds 3 \\(now 2\\)"):
        from search.run import build_parser, config_from_args
        from search.study import run_search

        run_search(config_from_args(build_parser().parse_args(
            [*TINY, "--confirm", "0.5", "--confirm-folds", "2", "--study-name", "cv", "--out", str(tmp_path),
             "--trials", "9", "--resume"])))


@pytest.mark.parametrize("value", ["0", "21"])
def test_bad_confirm_folds_is_a_one_line_error(tmp_path: Path, value: str):
    import subprocess

    r = subprocess.run([sys.executable, "-m", "search.run", *TINY, "--trials", "2", "--confirm-folds", value,
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--confirm-folds must be an integer from 1 to 20" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_benchmark_continues_a_shared_study_exactly_as_separate_studies_would_run(digits):
    """sampler_efficiency runs METHOD and METHOD-cv once up to the confirmations, then once per selection rule:
    each continuation must be the study that method would have run alone."""
    import argparse

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import sampler_efficiency as se
    from search.space import Budget

    args = argparse.Namespace(trials=5, epochs=1, confirm=0.4, batch_size=32, label_smoothing=0.1, screen_k=3,
                              confirm_folds=3)
    budget = Budget(mflops=0.02, params=1000)
    both = se.run_study("tpe", budget, (1.0,), digits, args, 3, folds=(1, 3))
    for k, method in ((1, "tpe"), (3, "tpe-cv")):
        alone = se.run_study(method, budget, (1.0,), digits, args, 3, folds=(se.method_folds(method, args),))[k]
        key = [(r["number"], r["val_acc"], r["confirms"], r["fold"]) for r in alone["trials"]]
        assert [(r["number"], r["val_acc"], r["confirms"], r["fold"]) for r in both[k]["trials"]] == key
        assert both[k]["pick"] == alone["pick"] and both[k]["epochs"] == alone["epochs"] == 5
    assert [r["fold"] for r in both[3]["trials"] if r["confirms"] is not None] == [1, 1]
