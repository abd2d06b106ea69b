"""What the README promises of search.run's options, each on a tiny search (2-4 trials, 1 epoch): latency budgets,
Pareto objectives and early stopping, pruners, storages, --timeout, --distill-from, the space's limits, failures."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState, create_trial

from archs import build, count
from archs.spec import POOL_BLOCKS, NetSpec
from search.run import main

FAST = ["--epochs", "1", "--final-epochs", "1", "--quiet", "--top-k", "1"]


def trained(d: Path) -> pd.DataFrame:
    df = pd.read_csv(d / "trials.csv")
    return df[df["val_acc"].notna()]


# ----- hard latency budget ---------------------------------------------------------------------------------------
def test_latency_budgeted_search_trains_no_trial_over_the_budget(tmp_path: Path):
    main(["--budget-latency-ms", "2", "--budget-mflops", "0.05", "--trials", "3", "--study-name", "lat",
          "--out", str(tmp_path), *FAST])
    df = pd.read_csv(tmp_path / "lat/trials.csv")
    ok = df[df["val_acc"].notna()]
    assert len(ok) == 3 and (ok["latency_ms"] <= 2.0).all() and (ok["mflops"] <= 0.05).all()
    over = df[df["fail_reason"].fillna("").str.contains("latency budget")]
    assert over["val_acc"].isna().all() and over["infeasible"].astype(bool).all()  # pruned before training
    assert (tmp_path / "lat/best/model.pt").is_file()


def test_a_network_over_the_latency_budget_on_its_confirmation_is_never_trained(tmp_path: Path, monkeypatch):
    import search.objective as objective

    budget = 1.0
    calls = []

    def fake_latency(model, *a, **k):  # trial 0: fits at fitting time, over budget on its confirmation
        calls.append(1)
        return 1.5 if len(calls) == 2 else 0.5

    fits_target = objective.latency_fit_target(budget)
    assert fits_target == pytest.approx(budget * (1 - objective.LATENCY_MARGIN)) and fits_target < budget
    monkeypatch.setattr(objective, "latency", fake_latency)
    main(["--budget-latency-ms", str(budget), "--trials", "1", "--study-name", "lc", "--out", str(tmp_path),
          "--no-warm-start", *FAST])
    df = pd.read_csv(tmp_path / "lc/trials.csv")
    first = df[df["number"] == 0].iloc[0]
    assert first["state"] == "PRUNED" and bool(first["infeasible"]) and pd.isna(first["val_acc"])
    assert "1.500 ms" in first["fail_reason"] and "over the 1 ms latency budget" in first["fail_reason"]
    ok = df[df["val_acc"].notna()]
    assert len(ok) == 1 and (ok["latency_ms"] == 0.5).all()


# ----- Pareto objectives and early stopping ---------------------------------------------------------------------
@pytest.mark.parametrize("objective, column", [("params", "params_count"), ("latency", "latency_ms")])
def test_pareto_search_on_params_or_latency_minimizes_that_cost(tmp_path: Path, objective: str, column: str):
    main(["--budget-mflops", "0.05", "--objectives", f"accuracy,{objective}", "--sampler", "nsga2", "--trials", "3",
          "--study-name", "p", "--out", str(tmp_path), *FAST])
    d = tmp_path / "p"
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{d / 'study.db'}")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    for t in done:  # the second objective is exactly the trial's recorded cost
        assert t.values[0] == t.user_attrs["val_acc"] and t.values[1] == t.user_attrs[column]
    saved = {json.loads((p / "metrics.json").read_text())["trial"] for p in (d / "pareto").iterdir()}
    assert saved == {t.number for t in study.best_trials}


def _curve_trial(curve: list[float], cost: float) -> optuna.trial.FrozenTrial:
    return create_trial(state=TrialState.COMPLETE, values=[curve[-1], cost],
                        user_attrs={"curve": curve, "mflops": cost})


def test_pareto_stopper_stops_a_trial_half_of_the_finished_ones_dominate():
    from search.objective import ParetoStopper

    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, cost in [(0.9, 1.0), (0.8, 1.0), (0.7, 2.0), (0.95, 0.5), (0.5, 3.0)]:
        study.add_trial(_curve_trial([acc - 0.1, acc], cost))
    stop = ParetoStopper("mflops", warmup=1)
    # at epoch 1 the curves read 0.8, 0.7, 0.6, 0.85, 0.4
    assert stop.should_stop(study, 1, acc=0.65, cost=2.0)      # 3 of 5 are as accurate and as cheap
    assert not stop.should_stop(study, 1, acc=0.65, cost=0.9)  # only 0.85 @ 0.5 is as cheap: 1 of 5
    assert not stop.should_stop(study, 1, acc=0.9, cost=5.0)   # nobody is as accurate
    assert not ParetoStopper("mflops", warmup=2).should_stop(study, 1, acc=0.0, cost=9.0)  # still warming up
    assert not ParetoStopper("mflops", warmup=1, min_trials=6).should_stop(study, 1, acc=0.0, cost=9.0)
    assert stop.should_stop(study, 2, acc=0.0, cost=9.0)


def test_a_pareto_search_stops_the_trials_its_stopper_finds_dominated(tmp_path: Path, monkeypatch):
    import search.objective as objective

    asked = []

    def dominated_once_one_trial_finished(self, study, epoch, acc, cost):  # the rule itself is tested above
        asked.append((self.cost_key, self.warmup, epoch))
        return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    monkeypatch.setattr(objective.ParetoStopper, "should_stop", dominated_once_one_trial_finished)
    main(["--budget-mflops", "0.05", "--objectives", "accuracy,params", "--trials", "2", "--epochs", "2",
          "--final-epochs", "0", "--quiet", "--study-name", "ps", "--out", str(tmp_path), "--no-warm-start"])
    df = pd.read_csv(tmp_path / "ps/trials.csv").set_index("number")
    assert df.loc[0, "state"] == "COMPLETE" and df.loc[0, "epochs_run"] == 2
    assert df.loc[1, "state"] == "PRUNED" and df.loc[1, "epochs_run"] == 1  # stopped after its first epoch of 2
    assert {(k, w) for k, w, _ in asked} == {("params_count", 1)}  # the cost objective, warm-up = half the epochs


# ----- pruners, storages, timeout -------------------------------------------------------------------------------
def test_hyperband_pruner_is_used(tmp_path: Path, monkeypatch):
    import search.study as study_mod

    made, real = [], study_mod.make_pruner
    monkeypatch.setattr(study_mod, "make_pruner", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    main(["--budget-mflops", "0.05", "--pruner", "hyperband", "--trials", "2", "--epochs", "2", "--final-epochs", "0",
          "--quiet", "--study-name", "hb", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "hb/config.json").read_text())["pruner"] == "hyperband"
    assert made and all(isinstance(p, optuna.pruners.HyperbandPruner) for p in made)
    assert made[0]._max_resource == 2  # one rung per epoch
    study = optuna.load_study(study_name="hb", storage=f"sqlite:///{tmp_path / 'hb/study.db'}")
    counted = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               and not t.user_attrs.get("infeasible")]
    assert len(counted) == 2 and all(len(t.intermediate_values) >= 1 for t in counted)


def test_journal_file_storage_holds_the_study(tmp_path: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = tmp_path / "s.journal"
    main(["--budget-mflops", "0.05", "--storage", str(journal), "--trials", "2", "--study-name", "j",
          "--out", str(tmp_path), *FAST])
    assert journal.is_file() and not (tmp_path / "j/study.db").exists()
    study = optuna.load_study(study_name="j", storage=JournalStorage(JournalFileBackend(str(journal))))
    df = pd.read_csv(tmp_path / "j/trials.csv")
    assert [t.number for t in study.trials] == df["number"].tolist()
    assert sum(t.state == TrialState.COMPLETE and not t.user_attrs.get("infeasible") for t in study.trials) == 2
    assert (tmp_path / "j/best/model.pt").is_file()


def test_timeout_stops_starting_trials_and_still_writes_the_winners(tmp_path: Path):
    main(["--budget-mflops", "0.05", "--timeout", "1", "--trials", "200", "--study-name", "t",
          "--out", str(tmp_path), *FAST])
    ok = trained(tmp_path / "t")
    assert 1 <= len(ok) < 200  # stopped long before --trials
    assert (tmp_path / "t/best/metrics.json").is_file()


# ----- distillation, the space's limits -------------------------------------------------------------------------
def test_search_distilled_from_a_teacher(tmp_path: Path, monkeypatch):
    import search.objective as objective

    main(["--budget-mflops", "0.05", "--trials", "1", "--study-name", "teacher", "--out", str(tmp_path),
          "--no-warm-start", *FAST])
    seen = []
    real_fit = objective.fit

    def spy(model, train, val, cfg, teacher=None, **kw):
        seen.append((teacher, kw.get("temperature"), kw.get("alpha")))
        return real_fit(model, train, val, cfg, teacher=teacher, **kw)

    monkeypatch.setattr(objective, "fit", spy)
    main(["--budget-mflops", "0.05", "--trials", "2", "--study-name", "student", "--out", str(tmp_path),
          "--distill-from", str(tmp_path / "teacher/best"), "--temperature", "3", *FAST])
    assert len(seen) >= 2 and all(t is not None and temp == 3.0 for t, temp, _ in seen)
    best = json.loads((tmp_path / "student/best/metrics.json").read_text())
    assert best["distilled_from"] == str(tmp_path / "teacher/best") and 0 < best["test_acc"] <= 1


def test_space_rho_and_max_stages_limit_every_sampled_trial(tmp_path: Path):
    main(["--budget-mflops", "0.2", "--space", "dws,fire", "--rho", "1.5", "--max-stages", "2", "--trials", "4",
          "--pruner", "none", "--study-name", "sp", "--out", str(tmp_path), *FAST])
    study = optuna.load_study(study_name="sp", storage=f"sqlite:///{tmp_path / 'sp/study.db'}")
    built = [t for t in study.trials if "spec_json" in t.user_attrs]
    assert len(built) >= 4
    for t in built:  # warm-start designs included
        spec = NetSpec.from_dict(t.user_attrs["spec_json"])
        blocks = {s.block for s in spec.stages if s.block not in POOL_BLOCKS}
        assert blocks <= {"dws", "fire"} and blocks, spec.to_string()
        assert spec.rho == 1.5 and spec.input_size == 12
        assert t.params["n_stages"] <= 2 and sum(1 for s in spec.stages if s.block not in POOL_BLOCKS) <= 2
        assert count(build(spec)).macs <= 0.2e6


# ----- failures ---------------------------------------------------------------------------------------------------
def test_out_of_memory_is_recorded_as_failed_and_the_study_goes_on(tmp_path: Path, monkeypatch):
    import search.objective as objective

    real_fit, calls = objective.fit, []

    def oom_once(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(*a, **k)

    monkeypatch.setattr(objective, "fit", oom_once)
    main(["--budget-mflops", "0.05", "--trials", "1", "--study-name", "oom", "--out", str(tmp_path),
          "--no-warm-start", *FAST])
    df = pd.read_csv(tmp_path / "oom/trials.csv")
    first = df[df["number"] == 0].iloc[0]
    assert first["state"] == "FAIL" and first["fail_reason"] == "out of memory"
    assert len(df[df["state"] == "COMPLETE"]) == 1  # a failed trial is not counted: another one ran


def test_a_trial_lost_more_often_than_the_retry_limit_is_not_queued_again():
    from search.storage import MAX_RETRY, RetryLostTrial

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"lr": 0.01})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # Optuna's callback, which it extends
        retry = RetryLostTrial(max_retry=MAX_RETRY)
        lost = 0
        while study.get_trials(states=(TrialState.WAITING,)) and lost <= MAX_RETRY + 1:
            trial = study.ask()
            trial.suggest_float("lr", 1e-3, 1e-1)
            study.tell(trial, state=TrialState.FAIL)  # its worker is lost
            lost += 1
            retry(study, study.trials[-1])
    assert MAX_RETRY == 3 and lost == MAX_RETRY + 1  # the original and 3 retries, then no more
    assert study.trials[-1].system_attrs["retry_history"] == list(range(MAX_RETRY))
    assert all(t.params == {"lr": 0.01} and t.state == TrialState.FAIL for t in study.trials)
