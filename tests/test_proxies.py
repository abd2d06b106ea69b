"""Zero-cost proxies and their screen (search.proxies), and --width share (the sampler picks the budget share)."""
from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from archs import HeadSpec, NetSpec, StageSpec, StemSpec, build
from search.proxies import PROXIES, Screen, grad_norm, naswot, score, score_all, synflow
from search.run import main
from search.space import Budget, DataShape, SearchSpace, analytic_fits, sample, trial_budget, warm_start_trials

SHAPE = DataShape(1, 8, 10)


def _spec(width: int = 8, stages: int = 1) -> NetSpec:
    return NetSpec(num_classes=10, in_chans=1, resolution=8, stem=StemSpec(8, 3, 1),
                   stages=[StageSpec("conv", width, kernel=3) for _ in range(stages)], head=HeadSpec("pool"))


def _batch(n: int = 32, size: int = 8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_naswot_is_the_log_determinant_of_the_activation_code_kernel():
    x, _ = _batch()
    torch.manual_seed(0)
    model = build(_spec())
    s = naswot(model, x)
    assert s == pytest.approx(naswot(model, x))  # no state changes
    # every code identical (a constant batch): the kernel is rank one, far below distinct inputs' score
    assert naswot(model, x[:1].repeat(32, 1, 1, 1)) < s - 10


def test_synflow_leaves_the_weights_as_they_were_and_grows_with_width():
    x, _ = _batch()
    torch.manual_seed(0)
    model = build(_spec())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = synflow(model, x)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)
    torch.manual_seed(0)
    assert synflow(build(_spec(width=32)), x) > s  # more paths, more synaptic flow


def test_grad_norm_and_every_proxy_score_a_network_in_milliseconds():
    x, y = _batch()
    torch.manual_seed(0)
    assert grad_norm(build(_spec()), x, y) > 0
    s = score_all(_spec(), x, y, seed=3)
    assert set(PROXIES) <= set(s) and s["seconds"] < 5  # generous: shared CI machines
    assert s["params"] == score(_spec(), "params", x, y, 3) and s["naswot"] == pytest.approx(score(_spec(), "naswot", x, y, 3))
    with pytest.raises(ValueError, match="unknown proxy"):
        score(_spec(), "zico", x, y, 0)


def test_a_screen_proposes_the_best_scoring_feasible_candidate():
    budget = Budget(mflops=0.02, params=1000)
    x, y = _batch(64)
    screen = Screen(SearchSpace(rho=(1.0,)), SHAPE, budget, k=5, proxy="params", batch=lambda size: (x, y), seed=1)
    params = screen.propose()
    assert params is not None and screen.seconds > 0
    cand = sample(optuna.trial.FixedTrial(params), SearchSpace(rho=(1.0,)), SHAPE, budget)
    assert cand is not None and budget.fits(cand.cost)
    # the proposal has the most parameters of the draws it scored (the same seed draws the same five)
    again = Screen(SearchSpace(rho=(1.0,)), SHAPE, budget, k=5, proxy="params", batch=lambda size: (x, y), seed=1)
    draws = []
    for _ in range(50):
        if len(draws) == 5:
            break
        t = again._draws.ask()
        c = sample(t, again.space, SHAPE, budget)
        if c is not None:
            draws.append(c.cost.params)
    assert cand.cost.params == max(draws)


def test_width_share_fits_alpha_to_the_sampled_share_of_the_budget(tmp_path: Path):
    budget = Budget(mflops=0.02, params=1000)
    assert trial_budget(budget, {"alpha": 1.0}) is budget
    half = trial_budget(budget, {"budget_share": 0.5})
    assert half.mflops == pytest.approx(0.01) and half.params == pytest.approx(500)
    space = SearchSpace(rho=(1.0,), width="share")
    assert all("budget_share" in p and "alpha" not in p for _, p in warm_start_trials(space))
    main(["--budget-mflops", "0.02", "--budget-params", "1000", "--trials", "3", "--width", "share", "--rho", "1",
          "--no-warm-start", "--study-name", "share", "--out", str(tmp_path), "--epochs", "1", "--final-epochs", "1",
          "--quiet", "--top-k", "1", "--confirm", "0"])
    df = pd.read_csv(tmp_path / "share/trials.csv")
    ok = df[df["val_acc"].notna()]
    assert len(ok) == 3 and "param_alpha" not in df.columns
    assert (ok["budget_share"] <= ok["param_budget_share"] + 1e-9).all()
    assert ((0.5 <= ok["param_budget_share"]) & (ok["param_budget_share"] <= 1)).all()


def test_the_default_width_still_samples_alpha_as_an_upper_bound():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    t = study.ask()
    cand = sample(t, SearchSpace(), SHAPE, Budget(mflops=0.02, params=1000))
    assert "alpha" in t.params and "budget_share" not in t.params
    assert cand is None or cand.spec.alpha <= t.params["alpha"] and analytic_fits(Budget(0.02, 1000))(cand.spec)


def test_search_run_screen_trains_the_best_candidate_by_the_proxy(tmp_path: Path):
    main(["--budget-mflops", "0.02", "--budget-params", "1000", "--trials", "3", "--screen", "4", "--rho", "1",
          "--screen-proxy", "params", "--no-warm-start", "--confirm", "0", "--study-name", "scr", "--out",
          str(tmp_path), "--epochs", "1", "--final-epochs", "1", "--quiet", "--top-k", "1"])
    study = optuna.load_study(study_name="scr", storage=f"sqlite:///{tmp_path / 'scr/study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and all(t.user_attrs.get("screened") == "best of 4 by params" for t in done)
    assert all(t.user_attrs["params_count"] <= 1000 and t.user_attrs["mflops"] <= 0.02 for t in done)

