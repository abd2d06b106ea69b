"""End-to-end search on the embedded digits data: files, hard budgets, resume, winners, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from archs import build, count, estimate
from archs.errors import UserError
from archs.io import load_model_dir, load_state_dict
from archs.spec import NetSpec
from search.run import main
from search.space import Budget, DataShape, SearchSpace, check_feasible, fit_alpha, analytic_fits, sample
from training.data import load_data
from training.loop import evaluate

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--final-epochs", "1", "--quiet", "--top-k", "2"]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("results")
    main(["--budget-mflops", "0.05", "--budget-params", "5k", "--trials", "3", "--study-name", "s1", "--out", str(out),
          *FAST])
    return out / "s1"


def test_search_writes_files(study_dir: Path):
    for f in ("config.json", "trials.csv", "study.db", "best/spec.json", "best/model.pt", "best/metrics.json",
              "best/model.onnx", "top/2/spec.json"):
        assert (study_dir / f).is_file(), f
    cfg = json.loads((study_dir / "config.json").read_text())
    assert cfg["budget_mflops"] == 0.05 and cfg["budget_params"] == 5000 and cfg["trials"] == 3
    df = pd.read_csv(study_dir / "trials.csv")
    trained = df[df["fail_reason"].isna()]
    assert len(trained) == 3 and set(trained["state"]) == {"COMPLETE"}
    skipped = df[df["fail_reason"].notna()]  # infeasible samples: pruned before training, not counted
    assert set(skipped["state"]) <= {"PRUNED"} and skipped["fail_reason"].astype(str).str.startswith("infeasible").all()
    assert skipped["infeasible"].astype(bool).all() and not trained["infeasible"].astype(bool).any()
    assert (trained["last_val_acc"] == trained["val_acc"]).all()  # full curves: the last epoch is the final accuracy
    assert (study_dir / "trials.csv").stat().st_mode & 0o777 == 0o666 & ~_umask()
    for col in ("number", "mflops", "params_count", "latency_ms", "budget_share", "val_acc", "spec", "param_alpha"):
        assert col in df.columns
    assert (trained["budget_share"] <= 1.0).all() and (trained["val_acc"].between(0, 1)).all()
    metrics = json.loads((study_dir / "best/metrics.json").read_text())
    assert metrics["onnx_max_abs_diff"] < 1e-4


def test_every_trained_trial_is_within_budget_by_fvcore(study_dir: Path):
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{study_dir / 'study.db'}")
    trained = [t for t in study.trials if "spec_json" in t.user_attrs]
    assert len(trained) == 3
    for t in trained:
        spec = NetSpec.from_dict(t.user_attrs["spec_json"])
        c = count(build(spec))
        assert c.macs <= 0.05e6 and c.params <= 5000
        assert c.macs == round(t.user_attrs["mflops"] * 1e6) and c.params == t.user_attrs["params_count"]


def test_winner_reloads_and_reproduces_test_accuracy(study_dir: Path):
    model, spec, metrics = load_model_dir(study_dir / "best")
    data = load_data("digits", seed=0)
    acc = evaluate(model, data.test.resized(spec.input_size))
    assert acc == pytest.approx(metrics["test_acc"], abs=1e-9)
    state = load_state_dict(study_dir / "best/model.pt")  # weights_only=True inside
    assert set(state) == set(model.state_dict())


def test_resume_adds_trials_to_same_study(study_dir: Path, tmp_path: Path):
    import shutil

    out = tmp_path / "copy"  # a copy: the module's study keeps its 3 trials whatever order the tests run in
    shutil.copytree(study_dir, out / "s1")
    before = pd.read_csv(out / "s1/trials.csv")
    main(["--budget-mflops", "0.05", "--budget-params", "5k", "--trials", "5", "--study-name", "s1", "--out", str(out),
          "--resume", *FAST])
    df = pd.read_csv(out / "s1/trials.csv")
    trained = df[df["fail_reason"].isna()]
    assert len(trained) == 5 and df["number"].is_unique
    assert df.head(len(before))[["number", "spec"]].equals(before[["number", "spec"]])  # the same study, continued


def test_resume_of_a_finished_study_points_at_its_winner_files(study_dir: Path, capsys):
    out = study_dir.parent
    args = ["--budget-mflops", "0.05", "--budget-params", "5k", "--trials", "3", "--study-name", "s1", "--out",
            str(out), "--resume", *FAST]
    main(args)  # the fixture's study holds its 3 trials and its winners: nothing left to do
    text = capsys.readouterr().out
    assert "on that machine" not in text
    assert "already finished" in text and str(study_dir) in text
    header = [c.strip() for c in next(ln for ln in text.splitlines() if "saved to" in ln).split("|")[1:-1]]
    assert header[2:5] == ["MFLOPs", "params", "latency ms"] and "SRAM kB" not in text  # no MCU budget: no kB columns
    assert (study_dir / "best/model.pt").is_file()


def test_winner_folder_records_its_input_contract(study_dir: Path):
    from archs.io import load_preprocessing

    metrics = json.loads((study_dir / "best/metrics.json").read_text())
    prep = load_preprocessing(study_dir / "best")
    spec = NetSpec.from_json((study_dir / "best/spec.json").read_text())
    data = load_data("digits", seed=0)
    assert (prep.in_chans, prep.input_size, prep.rho, prep.data_resolution) == (1, spec.input_size, spec.rho, 8)
    assert prep.value_max == 16 and prep.classes == [str(i) for i in range(10)]
    assert prep.mean == pytest.approx(data.mean) and prep.std == pytest.approx(data.std)
    assert metrics["io"]["input"] == {"name": "input", "dtype": "float32"}
    for sub in ("best", "top/2"):  # every winner folder has it
        assert "preprocessing" in json.loads((study_dir / sub / "metrics.json").read_text())


def test_existing_study_without_resume_is_refused(study_dir: Path):
    with pytest.raises(UserError, match="already exists"):
        main(["--budget-mflops", "0.05", "--trials", "1", "--study-name", "s1", "--out", str(study_dir.parent), *FAST])


def test_pareto_search_saves_pareto_set(tmp_path: Path):
    main(["--budget-mflops", "0.05", "--objectives", "accuracy,mflops", "--sampler", "nsga2", "--trials", "3",
          "--study-name", "p", "--out", str(tmp_path), *FAST])
    d = tmp_path / "p"
    assert (d / "pareto/1/model.pt").is_file() and not (d / "best").exists()
    df = pd.read_csv(d / "trials.csv")
    assert {"value_0", "value_1"} <= set(df.columns)


def test_diverging_trials_are_recorded_failed_and_study_goes_on(tmp_path: Path):
    main(["--budget-mflops", "0.05", "--trials", "2", "--lr", "1e12", "--study-name", "nan", "--out", str(tmp_path),
          *FAST])
    df = pd.read_csv(tmp_path / "nan/trials.csv")
    failed = df[df["state"] == "FAIL"]
    assert len(failed) >= 1 and failed["fail_reason"].str.contains("diverged").all()


def test_new_study_starts_from_the_classic_designs_fitted_to_the_budget(study_dir: Path):
    from search.space import TEMPLATES, warm_start_trials

    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{study_dir / 'study.db'}")
    first = [t for t in study.trials if "template" in t.user_attrs]
    names = [t.user_attrs["template"] for t in sorted(first, key=lambda t: t.number)]
    assert names[0] == list(TEMPLATES)[0]  # at most a quarter of --trials 3, rounded up: one classic design
    for t in first:
        if "spec_json" in t.user_attrs:  # the template's structure, with alpha shrunk to the budget
            params = dict(warm_start_trials(SearchSpace()))[t.user_attrs["template"]]
            assert all(t.params[k] == v for k, v in params.items() if k != "alpha")
            assert t.user_attrs["alpha"] <= params["alpha"] and t.user_attrs["mflops"] <= 0.05


def test_warm_start_respects_the_space_and_can_be_turned_off(tmp_path: Path):
    from search.space import warm_start_trials

    names = [n for n, _ in warm_start_trials(SearchSpace(blocks=("dws", "fire"), heads=("pool",)))]
    assert names == ["mobilenet-like", "squeezenet-like"]
    assert [n for n, _ in warm_start_trials(SearchSpace(max_stages=1))] == ["lenet-like"]  # the one-stage design
    assert warm_start_trials(SearchSpace(blocks=("ir", "fire"), max_stages=1)) == []
    main(["--budget-mflops", "0.05", "--trials", "1", "--study-name", "cold", "--out", str(tmp_path),
          "--no-warm-start", "--final-epochs", "0", *FAST[2:]])
    study = optuna.load_study(study_name="cold", storage=f"sqlite:///{tmp_path / 'cold/study.db'}")
    assert not any("template" in t.user_attrs for t in study.trials)


def test_classic_designs_are_judged_at_the_centre_of_the_lr_and_weight_decay_ranges():
    from search.space import warm_start_trials

    space = SearchSpace(lr=(1e-3, 1e-1), weight_decay=(1e-6, 1e-2))
    for _, params in warm_start_trials(space):
        assert params["lr"] == pytest.approx(1e-2) and params["weight_decay"] == pytest.approx(1e-4)
    space.search_lr = False  # --lr / --weight-decay fixed: nothing to enqueue for them
    assert all("lr" not in p and "weight_decay" not in p for _, p in warm_start_trials(space))


def test_lenet_like_design_pools_before_its_flatten_head():
    from search.space import TEMPLATES, sample_structure

    params = {**TEMPLATES["lenet-like"], "rho": 1.0, "alpha": 1.0, "lr": 1e-2, "weight_decay": 1e-4}
    spec, _, _ = sample_structure(optuna.trial.FixedTrial(params), SearchSpace(), DataShape(1, 8, 10))
    # conv stem -> pool -> conv -> pool -> flatten, as LeNet
    assert [s.block for s in spec.stages] == ["maxpool", "conv", "maxpool"] and spec.head.kind == "flatten"
    assert build(spec)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    # a map already at the smallest side length is flattened as it is
    spec, _, _ = sample_structure(optuna.trial.FixedTrial(params), SearchSpace(min_feature=4), DataShape(1, 8, 10))
    assert [s.block for s in spec.stages] == ["maxpool", "conv"] and spec.head.kind == "flatten"


def test_augment_flag_overrides_what_suits_the_data_set():
    from search.study import SearchConfig, train_config

    data = load_data("digits", seed=0)
    assert data.augment == "none"  # digits fill their 8x8 box: shifting them cuts strokes (README)
    cfg = SearchConfig(budget_mflops=1.0)
    assert train_config(cfg, torch.device("cpu"), data, 1).augment == "none"
    cfg.augment = "crop"
    assert train_config(cfg, torch.device("cpu"), data, 1).augment == "crop"
    cfg.augment = "blur"
    with pytest.raises(UserError, match="--augment"):
        cfg.validate()


def test_label_smoothing_reaches_trials_and_retrains_and_can_be_turned_off():
    from search.run import build_parser, config_from_args
    from search.study import train_config

    data = load_data("digits", seed=0)
    cfg = config_from_args(build_parser().parse_args(["--budget-mflops", "1"]))
    assert cfg.label_smoothing == 0.1 and train_config(cfg, torch.device("cpu"), data, 1).label_smoothing == 0.1
    cfg = config_from_args(build_parser().parse_args(["--budget-mflops", "1", "--label-smoothing", "0"]))
    assert train_config(cfg.validate(), torch.device("cpu"), data, 1).label_smoothing == 0.0


def _finished(number: int, value: float | None, confirms: int | None = None, state=None) -> optuna.trial.FrozenTrial:
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    attrs = {"mflops": 0.01, **({"confirms": confirms} if confirms is not None else {})}
    t = create_trial(state=TrialState.COMPLETE if state is None else state, value=value, params={"lr": 0.01},
                     distributions={"lr": FloatDistribution(1e-3, 1e-1)}, user_attrs=attrs)
    t.number = number
    return t


def test_confirmations_rerun_a_lucky_leader_first_and_rank_candidates_by_their_mean():
    from optuna.trial import TrialState
    from search.confirm import next_confirmation, rank_candidates

    trials = [_finished(0, 0.95), _finished(1, 0.99), _finished(2, 0.97), _finished(3, 0.96),
              _finished(4, 0.96, confirms=2)]
    # exploring: 5 of 10 trials done, 2 (= 0.2 x 10) are kept for confirmations
    assert next_confirmation(trials, counted=5, running=0, n_trials=10, share=0.2) is None
    assert next_confirmation(trials, counted=7, running=0, n_trials=10, share=0.0) is None
    # confirming: of the three leaders (1, 2 and 3), the once-run ones come first, the better one on a tie
    assert next_confirmation(trials, counted=8, running=0, n_trials=10, share=0.2).number == 1
    # the lucky 99 % re-runs at 93 %: trial 2 (97 %, 96 %) now leads, trial 3 is the least evaluated leader
    trials.append(_finished(5, 0.93, confirms=1))
    assert [(s.trial.number, round(s.mean, 3), s.evals) for s in rank_candidates(trials)][:3] == \
        [(2, 0.965, 2), (1, 0.96, 2), (3, 0.96, 1)]
    assert next_confirmation(trials, counted=9, running=0, n_trials=10, share=0.2).number == 3
    # a confirmation already queued or running counts as an evaluation; a queued trial (a retry) goes first
    running = [*trials, _finished(6, None, confirms=3, state=TrialState.RUNNING)]
    assert next_confirmation(running, counted=9, running=1, n_trials=12, share=0.5).number == 2
    assert next_confirmation([*trials, _finished(6, None, state=TrialState.WAITING)], 9, 0, 10, 0.2) is None


def test_a_lost_confirmation_trial_is_retried_as_a_confirmation():
    from optuna.trial import TrialState
    from search.storage import RetryLostTrial

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"lr": 0.01}, user_attrs={"confirms": 3})
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1e-1)
    trial.set_user_attr("curve", [0.5])
    study.tell(trial, state=TrialState.FAIL)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):  # Optuna's retry callback, which it extends
        RetryLostTrial(max_retry=3)(study, study.trials[-1])
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry.params == {"lr": 0.01}
    assert retry.user_attrs == {"retry_of": 0, "confirms": 3}  # still a confirmation, without the lost curve


def test_confirmation_trials_rerun_the_leaders_and_winners_are_ranked_by_the_mean(tmp_path: Path):
    main(["--budget-mflops", "0.05", "--trials", "5", "--confirm", "0.4", "--epochs", "2", "--final-epochs", "1",
          "--quiet", "--top-k", "2", "--study-name", "c", "--out", str(tmp_path), "--pruner", "median"])
    df = pd.read_csv(tmp_path / "c/trials.csv")
    trained = df[df["val_acc"].notna()]
    confirming = trained[trained["confirms"].notna()]
    assert len(trained) == 5 and len(confirming) == 2  # 0.4 x 5 trials re-train leaders
    assert (confirming["number"] >= 3).all() and (confirming["epochs_run"] == 2).all()  # never pruned
    for r in confirming.itertuples():
        orig = trained[trained["number"] == int(r.confirms)].iloc[0]
        assert orig["spec"] == r.spec and orig["param_lr"] == r.param_lr  # the same candidate, another seed
        runs = trained[(trained["number"] == orig["number"]) | (trained["confirms"] == orig["number"])]
        assert r.candidate_val_acc == pytest.approx(runs["val_acc"].mean()) and r.candidate_evals == len(runs)
    best = json.loads((tmp_path / "c/best/metrics.json").read_text())
    row = trained[trained["number"] == best["trial"]].iloc[0]
    assert best["val_acc"] == pytest.approx(row["candidate_val_acc"]) and best["val_evals"] == row["candidate_evals"]
    assert best["val_acc"] == pytest.approx(trained[trained["confirms"].isna()]["candidate_val_acc"].max())
    from search.study import trial_line

    study = optuna.load_study(study_name="c", storage=f"sqlite:///{tmp_path / 'c/study.db'}")
    r = confirming.iloc[0]
    assert f"re-run of trial {int(r.confirms)} (confirmation)" in trial_line(study.trials[int(r.number)])
    import analysis  # users see the same columns in the analysis frame

    tidy = analysis.load(tmp_path / "c")
    assert tidy["confirms"].notna().sum() == 2
    assert tidy.set_index("number")["candidate_val_acc"].dropna().to_dict() == \
        pytest.approx(df.set_index("number")["candidate_val_acc"].dropna().to_dict())


def test_a_seeded_search_repeats_exactly_whatever_ran_before_in_the_process(tmp_path: Path):
    args = ["--budget-mflops", "0.05", "--trials", "2", "--out", str(tmp_path), "--no-warm-start", *FAST[:4]]
    main([*args, "--study-name", "a"])
    torch.rand(1000), torch.nn.Linear(50, 50)  # use the global RNG, as a previous job in the process would
    main([*args, "--study-name", "b"])
    a, b = (pd.read_csv(tmp_path / n / "trials.csv") for n in "ab")
    assert a["val_acc"].notna().any()
    assert a["val_acc"].tolist() == b["val_acc"].tolist() and a["spec"].tolist() == b["spec"].tolist()
    wa, wb = (json.loads((tmp_path / n / "best/metrics.json").read_text()) for n in "ab")
    assert wa["test_acc"] == wb["test_acc"]


def _next_wider(spec: NetSpec, alpha_max: float) -> NetSpec | None:
    """The first network wider than `spec` on a 1e-4 grid of alpha up to alpha_max (None: none is wider)."""
    from dataclasses import replace

    here = estimate(spec)
    a = spec.alpha
    while a < alpha_max:
        a = min(alpha_max, round(a + 1e-4, 4))
        wider = replace(spec, alpha=a)
        if estimate(wider) != here:
            return wider
    return None


def test_alpha_is_fitted_to_the_budget_and_is_the_largest_that_fits():
    space, shape = SearchSpace(), DataShape(1, 8, 10)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    budget = Budget(mflops=0.02, params=1000)
    fits, checked, shrunk = analytic_fits(budget), 0, 0
    for _ in range(40):
        cand = sample(study.ask(), space, shape, budget)
        if cand is None:
            continue
        checked += 1
        assert cand.cost.macs <= 20_000 and cand.cost.params <= 1000
        assert cand.cost == estimate(cand.spec)
        wider = _next_wider(cand.spec, cand.alpha_sampled)
        if cand.spec.alpha < cand.alpha_sampled:  # shrunk: the next wider network breaks the budget
            shrunk += 1
            assert wider is not None and not fits(wider), cand.spec.to_string()
    assert checked >= 10 and shrunk >= 5, (checked, shrunk)  # the loop really checked something
    # a network with nothing but a head: the largest alpha within 2,000 parameters
    spec = NetSpec(num_classes=10, in_chans=1, resolution=8, divisor=4,
                   stages=[], head=NetSpec().head)
    fitted = fit_alpha(spec, 4.0, analytic_fits(Budget(params=2000)))
    assert estimate(fitted).params <= 2000 < estimate(_next_wider(fitted, 4.0)).params


def test_the_bisection_checks_each_alpha_once_and_keeps_the_largest_that_fits():
    """Once the interval is narrower than the 4 decimals a spec keeps of alpha, a midpoint repeats an end whose
    answer is known: it is not checked again (under an MCU budget each check is an `archs.memory` call)."""
    spec = NetSpec(num_classes=10, in_chans=1, resolution=8, divisor=4, stages=[], head=NetSpec().head)
    for limit in (0.5, 0.0731, 1.2345, 3.99):
        checked = []

        def fits(s: NetSpec) -> bool:
            checked.append(s.alpha)
            return s.alpha <= limit

        fitted = fit_alpha(spec, 4.0, fits, alpha_min=0.02)
        assert len(checked) == len(set(checked)), sorted(checked)
        assert len(checked) < 2 + 24  # the two ends and fewer than the 24 steps
        assert fitted.alpha == max(a for a in checked if a <= limit)
        assert limit - fitted.alpha <= 2e-4 * limit + 1e-4, (limit, fitted.alpha)  # bisected to the last decimals


def test_impossible_budget_fails_before_training():
    with pytest.raises(UserError, match="smallest network"):
        check_feasible(SearchSpace(), DataShape(1, 8, 10), Budget(mflops=1e-6))


@pytest.mark.parametrize("args, needle", [
    (["--budget-mflops", "0.000001"], "smallest network"),
    (["--budget-mflops", "abc"], "not a number"),
    (["--budget-params", "1.2Q"], "not a number"),
    (["--budget-mflops", "-1"], "must be positive"),
    (["--budget-mflops", "nan"], "finite"),
    (["--budget-params", "0"], "must be positive"),
    ([], "at least one budget"),
    (["--budget-mflops", "1", "--trials", "0"], "--trials"),
    (["--budget-mflops", "1", "--epochs", "-1"], "--epochs"),
    (["--budget-mflops", "1", "--dataset", "imagenet22k"], "imagenet22k"),
    (["--budget-mflops", "1", "--study-name", "../escape"], "study-name"),
    (["--budget-mflops", "1", "--objectives", "accuracy,speed"], "objectives"),
    (["--budget-mflops", "1", "--space", "fire,transformer"], "transformer"),
    (["--budget-mflops", "1", "--augment", "blur"], "--augment"),
    (["--budget-mflops", "1", "--label-smoothing", "1"], "--label-smoothing"),
    (["--budget-mflops", "1", "--label-smoothing", "x"], "--label-smoothing"),
    (["--budget-mflops", "1", "--confirm", "0.9"], "--confirm"),
    (["--budget-mflops", "1", "--confirm", "x"], "--confirm"),
])
def test_user_mistakes_give_one_line_errors(tmp_path: Path, args, needle):
    r = run_cli(*args, "--out", str(tmp_path), "--quiet")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in lines[0]
    assert not any(tmp_path.iterdir()), "a rejected command must not create results"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
