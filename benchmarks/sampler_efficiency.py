"""Sampler efficiency: anytime best-so-far validation accuracy of each search method, and the test accuracy of its pick.

For each budget, seed and method, a study of the search space (search.objective.Objective, the search's own
trial) runs until it has trained --trials x --epochs epochs (trained epochs are the deterministic compute unit on a
noisy machine; a trial pruned after e epochs costs e). Every method except successive halving therefore also gets
the same number of trials. Methods:
- tpe: the search's default sampler (search.study.make_sampler: TPE, multivariate, group, constant liar);
- tpe-univariate: Optuna's default TPE (independent per parameter; same start-up trials);
- random; gp: Optuna's GPSampler (it models only the parameters every trial has, i.e. the first stage, the head
  and the hyper-parameters; the conditional ones are sampled at random);
- hyperband: the default TPE with Optuna's HyperbandPruner (reduction factor 2): more, shorter trials;
- tpe-share: the default TPE with --width share (the sampler chooses the budget share alpha is fitted to);
- screen-<proxy>: each new trial trains the best of --screen-k random budget-fitted candidates by a zero-cost
  proxy, as `search.run --screen K --screen-proxy PROXY` does (screen--<proxy> trains the lowest-scoring one);
- lenet-style: the best hand design of benchmarks/search_quality.py fitted to the budget, its trials tuning
  learning rate and weight decay;
- METHOD-cv (e.g. tpe-cv, random-cv, lenet-style-cv): METHOD with a cross-validated selection, as
  `search.run --confirm-folds K` (--confirm-folds, default 5): its confirmation trials validate on other folds of
  train+val. A study's trials before its confirmations do not depend on them, so METHOD and METHOD-cv of a seed
  share those trials (run once, then continued once per selection rule; lenet-style-cv and hyperband-cv run alone).
Every method starts from the search's warm start (its classic designs) and selects as the search does (the last
--confirm share re-trains the leaders; best mean wins). The pick is retrained on train+val and tested.
Every trained network is also scored by the zero-cost proxies at its own initial weights, and each proxy's
Spearman rank correlation with trained validation accuracy is reported.

    python benchmarks/sampler_efficiency.py                              # development seeds: for any choice
    python benchmarks/sampler_efficiency.py --seeds report --shared-machine
    python benchmarks/sampler_efficiency.py --trials 32 --methods tpe tpe-cv random random-cv lenet-style \
        lenet-style-cv --json docs/benchmarks/sampler_efficiency_long_dev.json --shared-machine   # longer studies
    python benchmarks/sampler_efficiency.py --quick                      # smoke run, seconds
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from archs import NetSpec  # noqa: E402
from benchmarks._common import add_common_args, resolve_seeds, write_results  # noqa: E402
from search.confirm import CONFIRMS, FOLD, enqueue_confirmation, next_confirmation, rank_candidates  # noqa: E402
from search.objective import Objective, TrialFailed  # noqa: E402
from search.proxies import PROXIES, score_all  # noqa: E402
from search.space import Budget, DataShape, SearchSpace, sample  # noqa: E402
from search.study import (SearchConfig, enqueue_warm_start, make_sampler, make_screen, quiet_library_warnings,  # noqa: E402
                          train_config)
from search.workers import is_counted  # noqa: E402
from search_quality import baselines, final_tests, run_baseline  # noqa: E402
from training.data import load_data  # noqa: E402

@dataclass(frozen=True)
class BenchBudget:
    """One budget of the benchmark: the search's hard limits and the input resolution multipliers rho it allows."""

    budget: Budget
    rho: tuple[float, ...]

    def describe(self) -> str:
        b, parts = self.budget, []
        if b.mflops is not None:
            parts.append(f"{b.mflops:g} MFLOPs (fvcore MACs)")
        if b.params is not None:
            parts.append(f"{b.params:,.0f} params")
        if b.mcu:
            parts.append(f"TFLM arena {b.sram_kb:g} kB, flash {b.flash_kb:g} kB (1 kB = 1,024 bytes)")
        return ", ".join(parts) + f", rho {'/'.join(f'{r:g}' for r in self.rho)}"


#: the tight 8x8 budget of search_quality.py; a 12x12 one (rho 1.5) with a few thousand parameters; and a
#: microcontroller one: 8 kB of TFLM tensor arena and 16 kB of int8 flash, rho 1 / 1.5 / 2 / 3 (8 to 24 px) as in
#: benchmarks/mcu_search.py. Chosen before any training from `mcu_search.py --fits --budgets 8:16` (archs.memory):
#: it binds the LeNet-style design at every rho (alpha 2.87 at 8 px down to 1.11 at 24 px; flash binds at the
#: small inputs, the arena at the large ones), where mcu_search's 16:64 leaves it at its widest up to 16 px
BUDGETS = {"8x8": BenchBudget(Budget(mflops=0.02, params=1000), (1.0,)),
           "12x12": BenchBudget(Budget(mflops=0.1, params=4000), (1.5,)),
           "mcu": BenchBudget(Budget(sram_kb=8, flash_kb=16), (1.0, 1.5, 2.0, 3.0))}
METHODS = ("tpe", "tpe-univariate", "random", "gp", "hyperband", "tpe-share", "screen-naswot", "screen-params",
           "screen--naswot", "lenet-style")
#: what a run measures unless --methods says otherwise (screen-params and screen--naswot were added after the
#: first development run had measured each proxy's rank correlation; see docs/sampler_efficiency.md)
DEFAULT_METHODS = ("tpe", "tpe-univariate", "random", "gp", "hyperband", "tpe-share", "screen-naswot", "screen-params",
                   "screen--naswot", "lenet-style")
CPU = torch.device("cpu")
CV = "-cv"  # method suffix: the method with a cross-validated selection (--confirm-folds)


def base_method(method: str) -> str:
    """The method without its -cv suffix."""
    return method[:-len(CV)] if method.endswith(CV) else method


def method_folds(method: str, args) -> int:
    """The folds a method's confirmations validate on: --confirm-folds for a -cv method, else 1 (the val split)."""
    return int(getattr(args, "confirm_folds", 5)) if method.endswith(CV) else 1


def known_method(method: str) -> bool:
    m = base_method(method)
    return m in METHODS or (m.startswith("screen-") and m.split("-", 1)[1].lstrip("-") in PROXIES)


def ordered_methods(runs: list[dict]) -> list[str]:
    """METHODS first, each followed by its -cv variant, then any other method of `runs`, in first-seen order."""
    seen = list(dict.fromkeys(r["method"] for r in runs))
    out = [x for m in METHODS for x in (m, m + CV) if x in seen]
    return out + [m for m in seen if m not in out]


def make_method_sampler(method: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    if method == "random" or method.startswith("screen-"):  # a screen's trials are enqueued: the sampler is unused
        return optuna.samplers.RandomSampler(seed=seed)
    if method == "tpe-univariate":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(5, min(10, trials // 4)))
    if method == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return make_sampler("tpe", seed, False, trials)  # tpe, tpe-share, hyperband: the search's default


def run_study(method: str, budget: Budget, rho: tuple[float, ...], data, args, seed: int,
              folds: tuple[int, ...] = (1,)) -> dict[int, dict]:
    """One method's study until it has trained trials x epochs epochs: its trials, anytime curve and pick, per
    selection rule of `folds` (confirmations on that many folds of train+val, 1: the val split). The trials before
    the confirmations do not depend on the rule, so they run once and the study is then continued once per rule."""
    trials = args.trials
    method = base_method(method)
    space = SearchSpace(rho=rho, width="share" if method == "tpe-share" else "alpha")
    cfg = SearchConfig(budget_mflops=budget.mflops, budget_params=budget.params, budget_sram_kb=budget.sram_kb,
                       budget_flash_kb=budget.flash_kb, epochs=args.epochs,
                       batch_size=args.batch_size, label_smoothing=args.label_smoothing, seed=seed, device="cpu")

    def pruner() -> optuna.pruners.BasePruner:
        return (optuna.pruners.HyperbandPruner(min_resource=1, max_resource=args.epochs, reduction_factor=2)
                if method == "hyperband" else optuna.pruners.NopPruner())
    if method == "hyperband" and len(folds) > 1:
        raise ValueError("hyperband's pruner keeps state per study: run its selection rules one at a time")
    study = optuna.create_study(direction="maximize", sampler=make_method_sampler(method, seed, trials), pruner=pruner())
    enqueue_warm_start(study, space, contextlib.nullcontext, trials)

    def objective_for(k: int) -> Objective:
        return Objective(data, space, budget, ["accuracy"], train_config(cfg, CPU, data, args.epochs), CPU, folds=k)
    objective = objective_for(folds[0])
    screen = None
    if method.startswith("screen-"):  # as search.run --screen K --screen-proxy PROXY does it
        screen = make_screen(objective, replace(cfg, screen=args.screen_k, screen_proxy=method.split("-", 1)[1]), seed)
    t0 = time.perf_counter()
    shared: dict = {"spent": 0, "rows": []}
    if len(folds) > 1:
        _advance(study, objective, screen, args, shared, 1, until_confirmations=True)
    shared_seconds = time.perf_counter() - t0
    out = {}
    for k in folds:
        branch, obj = study, objective
        if len(folds) > 1:  # a copy of the study so far, its sampler's state included
            assert not any(t.state == optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))
            branch = optuna.create_study(direction="maximize", sampler=copy.deepcopy(study.sampler), pruner=pruner())
            branch.add_trials(study.get_trials(deepcopy=True))
            obj = objective_for(k)
        state = {"spent": shared["spent"], "rows": [dict(r) for r in shared["rows"]]}
        b0 = time.perf_counter()
        _advance(branch, obj, screen, args, state, k)
        out[k] = _result(branch, state, shared_seconds + time.perf_counter() - b0, screen)
    return out


def _advance(study: optuna.Study, objective: Objective, screen, args, state: dict, folds: int,
             until_confirmations: bool = False) -> None:
    """Run `study` until it has trained trials x epochs epochs (or, `until_confirmations`, until its next trial
    would be a confirmation), adding a row per counted trial to state["rows"] and its epochs to state["spent"]."""
    trials, total = args.trials, args.trials * args.epochs
    rows = state["rows"]
    for _ in range(50 * trials):  # infeasible samples cost no epochs; bounded all the same
        spent = state["spent"]
        if spent >= total:
            break
        if until_confirmations and next_confirmation(study.get_trials(deepcopy=False), spent // args.epochs, 0,
                                                     trials, args.confirm) is not None:
            break
        queued = enqueue_confirmation(study, study.get_trials(deepcopy=False), spent // args.epochs, 0, trials,
                                      args.confirm, folds)
        waiting = any(t.state == optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))
        if screen is not None and queued is None and not waiting:
            params = screen.propose()
            if params is not None:
                study.enqueue_trial(params)
        s0 = time.perf_counter()
        ran: list[optuna.trial.FrozenTrial] = []  # the trial this step ran (queued ones follow it in the list)
        study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[lambda _s, ft: ran.append(ft)])
        if not ran or not is_counted(t := ran[0]):
            continue
        a = t.user_attrs
        epochs = int(a.get("epochs_run", 0))
        state["spent"] += epochs
        rows.append({"number": t.number, "state": t.state.name, "epochs": epochs,
                     "seconds": time.perf_counter() - s0, "val_acc": a.get("val_acc"),
                     "confirms": a.get(CONFIRMS), "fold": a.get(FOLD, 0), "template": a.get("template"),
                     "spec": a.get("spec"),
                     "spec_json": a.get("spec_json"), "hparams": a.get("hparams"), "mflops": a.get("mflops"),
                     "params": a.get("params_count"), "budget_share": a.get("budget_share"),
                     "alpha": a.get("alpha"), "trial_seed": objective.train_cfg.seed + t.number})


def _result(study: optuna.Study, state: dict, seconds: float, screen) -> dict:
    """A finished study's rows (screen time spread over its screened trials), pick, epochs and seconds."""
    rows = state["rows"]
    if screen is not None:  # scoring time is compute too: spread over the screened trials
        n = sum(1 for r in rows if r["confirms"] is None and r["template"] is None) or 1
        for r in rows:
            if r["confirms"] is None and r["template"] is None:
                r["seconds"] += screen.seconds / n
    best = rank_candidates(study.get_trials(deepcopy=False))[0]
    return {"trials": rows, "pick": {"number": best.trial.number, "spec": best.trial.user_attrs["spec"],
                                     "spec_json": best.trial.user_attrs["spec_json"],
                                     "hparams": best.trial.user_attrs["hparams"], "val_acc": best.mean,
                                     "val_runs": best.evals},
            "epochs": state["spent"], "seconds": seconds, "screen_seconds": screen.seconds if screen else 0.0}


def anytime(rows: list[dict]) -> dict[str, list[float]]:
    """Best-so-far single-run validation accuracy after each counted trial, with cumulative epochs and seconds
    (trials pruned before their last epoch, and confirmations on another fold than the val split, count for
    compute, not for accuracy)."""
    best, out = float("nan"), {"trials": [], "epochs": [], "seconds": [], "best_val": []}
    e = s = 0.0
    for i, r in enumerate(rows, 1):
        e, s = e + r["epochs"], s + r["seconds"]
        if r["state"] == "COMPLETE" and r["val_acc"] is not None and not r.get("fold") and not (r["val_acc"] <= best):
            best = r["val_acc"]
        out["trials"].append(i)
        out["epochs"].append(e)
        out["seconds"].append(s)
        out["best_val"].append(best)
    return out


def proxy_scores(rows: list[dict], data, seed: int) -> None:
    """Add every proxy's score (at the trial's own initial weights, on a fixed batch of 64 training images) to
    the completed first runs of `rows`, in place."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train.y), generator=gen)[:64]
    cache: dict[int, tuple] = {}
    for r in rows:
        if r["state"] != "COMPLETE" or r["confirms"] is not None or not r["spec_json"]:
            continue
        spec = NetSpec.from_dict(r["spec_json"])
        size = spec.input_size
        if size not in cache:
            tr = data.train.resized(size)
            cache[size] = (tr.x[idx], tr.y[idx])
        r["proxies"] = score_all(spec, *cache[size], r["trial_seed"])


def run_one(budget_name: str, seed: int, methods: list[str], args) -> list[dict]:
    """One (budget, seed) and methods that differ only in their selection rule (e.g. tpe and tpe-cv): each one's
    study (or hand design), its pick's test accuracy and proxy scores."""
    budget, rho = BUDGETS[budget_name].budget, BUDGETS[budget_name].rho
    data = load_data("digits", seed=seed)
    base = {base_method(m) for m in methods}
    assert len(base) == 1, methods
    if base == {"lenet-style"}:
        out = []
        for method in methods:
            t0 = time.perf_counter()
            r = run_baseline(baselines(divisor=4)["lenet-style conv"], budget, data, args.trials, args.epochs,
                             args.final_epochs, seed, args.batch_size, args.retrains, args.label_smoothing,
                             args.confirm, rhos=rho, confirm_folds=method_folds(method, args))
            out.append({"method": method, "budget": budget_name, "seed": seed, "val_acc": r["best_val"],
                        "test": r["test"], "test_retrains": r["test_retrains"], "spec": r["spec"],
                        "epochs": args.trials * args.epochs, "seconds": time.perf_counter() - t0, "trials": [],
                        "curve": None, "confirm_folds": method_folds(method, args)})
        return out
    t0 = time.perf_counter()
    folds = tuple(method_folds(m, args) for m in methods)
    studies = run_study(methods[0], budget, rho, data, args, seed, folds)
    out = []
    for method, k in zip(methods, folds):
        res = studies[k]
        pick = res["pick"]
        spec = NetSpec.from_dict(pick["spec_json"])
        tests = final_tests(spec, pick["hparams"], data, args.final_epochs, args.batch_size, seed, args.retrains,
                            args.label_smoothing)  # at the pick's input size
        proxy_scores(res["trials"], data, seed)
        for r in res["trials"]:
            r.pop("spec_json", None)
        out.append({"method": method, "budget": budget_name, "seed": seed, "val_acc": pick["val_acc"],
                    "val_runs": pick["val_runs"], "test": statistics.mean(tests), "test_retrains": tests,
                    "spec": pick["spec"], "pick_trial": pick["number"], "epochs": res["epochs"],
                    "seconds": res["seconds"], "screen_seconds": res["screen_seconds"],
                    "n_trials": len(res["trials"]), "trials": res["trials"], "curve": anytime(res["trials"]),
                    "total_seconds": time.perf_counter() - t0, "confirm_folds": k,
                    "shared_with": [m for m in methods if m != method]})
    return out


def alpha_replaced(budget_name: str, draws: int = 1000, seed: int = 0) -> dict:
    """How often the bisection replaces the sampled alpha (default --width alpha), over random draws of the space:
    the share of feasible draws whose fitted alpha is below the sampled one, and the median fitted / sampled."""
    bb = BUDGETS[budget_name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    ratios = []
    for _ in range(draws):
        t = study.ask()
        c = sample(t, SearchSpace(rho=bb.rho), DataShape(1, 8, 10), bb.budget)
        if c is not None:
            ratios.append(c.spec.alpha / t.params["alpha"])
    return {"draws": draws, "feasible": len(ratios), "replaced_share": sum(r < 1 - 1e-9 for r in ratios) / len(ratios),
            "median_fitted_over_sampled": statistics.median(ratios)}


# ----- analysis ---------------------------------------------------------------------------------------------------
def spearman_table(runs: list[dict]) -> dict[str, dict]:
    """Spearman rank correlation of each proxy with trained validation accuracy, per budget, over the distinct
    trained networks of every method (first runs, not confirmations), and over random search's alone."""
    from scipy.stats import spearmanr

    out: dict[str, dict] = {}
    for b in BUDGETS:
        for which, keep in (("all methods", lambda m: True), ("random search", lambda m: m == "random")):
            seen, pts = set(), []
            for run in runs:
                if run["budget"] != b or not keep(run["method"]):
                    continue
                for r in run["trials"]:
                    if "proxies" not in r:
                        continue
                    key = (run["seed"], r["number"], r["spec"], json.dumps(r["hparams"], sort_keys=True))
                    if key not in seen:  # the warm start's designs recur in every method of a seed
                        seen.add(key)
                        pts.append((r["val_acc"], r["proxies"]))
            if len(pts) < 3:
                continue
            accs = [p[0] for p in pts]
            rho = {}
            for name in PROXIES:
                vals = [p[1][name] for p in pts]
                ok = [(a, v) for a, v in zip(accs, vals) if v is not None and math.isfinite(v)]
                rho[name] = float(spearmanr(*zip(*ok)).statistic) if len(ok) >= 3 else None
            ms = [p[1]["seconds"] * 1000 for p in pts]
            out[f"{b} / {which}"] = {"networks": len(pts), "spearman": rho, "median_ms_all_proxies": statistics.median(ms)}
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float | None]:
    """Mean of a - b over seeds and its standard error (paired: the same data split per seed)."""
    d = [x - y for x, y in zip(a, b)]
    return statistics.mean(d), (statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else None)


def summarize(runs: list[dict], args) -> dict:
    """Per budget and method: the pick's validation and test accuracy, compute, best-so-far at the common
    compute; differences from random search and from the hand design with the same selection rule (a -cv method
    against random-cv and lenet-style-cv), and from tpe (the default), paired over seeds; then each method minus
    tpe paired over every (budget, seed) pair ("pooled")."""
    summary: dict[str, dict] = {}
    order = ordered_methods(runs)
    pooled: dict[str, list[float]] = {}
    for b in BUDGETS:
        by: dict[str, list[dict]] = {}
        for r in runs:
            if r["budget"] == b:
                by.setdefault(r["method"], []).append(r)
        if not by:
            continue
        seeds_of = {m: [r["seed"] for r in rs] for m, rs in by.items()}
        rows, s = [], {}
        for m in order:
            if m not in by:
                continue
            rs = sorted(by[m], key=lambda r: r["seed"])
            test = [r["test"] for r in rs]
            entry = {"val_acc": statistics.mean(r["val_acc"] for r in rs), "test": statistics.mean(test),
                     "test_per_seed": test, "seeds": seeds_of[m], "epochs": statistics.mean(r["epochs"] for r in rs),
                     "seconds": statistics.median(r["seconds"] for r in rs),
                     "trials": statistics.mean(r.get("n_trials", args.trials) for r in rs),
                     "best_single_val": statistics.mean(r["curve"]["best_val"][-1] for r in rs) if rs[0]["curve"] else None}
            cv = CV if m.endswith(CV) else ""
            for key, ref in (("random", "random" + cv), ("lenet-style", "lenet-style" + cv), ("tpe", "tpe")):
                if ref in by and ref != m:
                    other = {r["seed"]: r["test"] for r in by[ref]}
                    common = [r for r in rs if r["seed"] in other]
                    if common:
                        d, se = paired([r["test"] for r in common], [other[r["seed"]] for r in common])
                        entry[f"minus_{key}"] = {"mean": d, "se": se, "seeds": len(common), "against": ref}
                        if key == "tpe":
                            pooled.setdefault(m, []).extend(r["test"] - other[r["seed"]] for r in common)
            s[m] = entry

            def diff(ref: str) -> str:
                x = entry.get(f"minus_{ref}")
                if not x:
                    return ""
                return f"{100 * x['mean']:+.2f}" + (f" ± {100 * x['se']:.2f}" if x["se"] is not None else "")
            rows.append([m, f"{100 * entry['val_acc']:.2f}",
                         "" if entry["best_single_val"] is None else f"{100 * entry['best_single_val']:.2f}",
                         f"{100 * entry['test']:.2f}", " / ".join(f"{100 * v:.1f}" for v in test), diff("random"),
                         diff("lenet-style"), diff("tpe"), f"{entry['trials']:.0f}", f"{entry['epochs']:.0f}",
                         f"{entry['seconds']:.0f}"])
        print(f"\nbudget {b}: {BUDGETS[b].describe()}; "
              f"{args.trials} trials x {args.epochs} epochs of compute per method; seeds {sorted(set(sum(seeds_of.values(), [])))}")
        print(tabulate(rows, headers=["method", "pick val % (mean of runs)", "best single val %", "test %",
                                      "test per seed %", "minus random[-cv] (points ± SE)", "minus lenet-style[-cv]",
                                      "minus tpe", "trials", "epochs", "median s"], tablefmt="github"))
        summary[b] = s
    if pooled:
        out = {}
        for m, d in pooled.items():
            se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else None
            out[m] = {"mean": statistics.mean(d), "se": se, "pairs": len(d)}
        print("\nminus tpe, paired over every (budget, seed) pair (test points ± SE):")
        print(tabulate([[m, f"{100 * v['mean']:+.2f}" + ("" if v["se"] is None else f" ± {100 * v['se']:.2f}"),
                         v["pairs"]] for m, v in out.items()], headers=["method", "test − tpe", "pairs"],
                       tablefmt="github", disable_numparse=True))
        summary["pooled_minus_tpe"] = out
    cv = cv_minus_holdout(runs)
    if cv:
        print("\nMETHOD-cv minus METHOD (the cross-validated selection's effect), paired over (budget, seed) pairs:")
        print(tabulate([[m, f"{100 * v['mean']:+.2f}" + ("" if v["se"] is None else f" ± {100 * v['se']:.2f}"),
                         " / ".join(f"{100 * x:+.2f}" for x in v["per_budget"].values()), v["pairs"]]
                        for m, v in cv.items()], headers=["method", "test: cv − hold-out", "per budget", "pairs"],
                       tablefmt="github", disable_numparse=True))
        summary["cv_minus_holdout"] = cv
    return summary


def cv_minus_holdout(runs: list[dict]) -> dict[str, dict]:
    """Test accuracy of METHOD-cv minus METHOD, paired over (budget, seed), per method and over all of them."""
    test = {(r["budget"], r["seed"], r["method"]): r["test"] for r in runs}
    pairs: dict[str, list[tuple[str, float]]] = {}
    for (b, seed, m), v in test.items():
        if m.endswith(CV) and (b, seed, base_method(m)) in test:
            pairs.setdefault(base_method(m), []).append((b, v - test[(b, seed, base_method(m))]))
    if pairs:
        pairs["all methods"] = [p for ps in list(pairs.values()) for p in ps]
    out = {}
    for m, ps in pairs.items():
        d = [x for _, x in ps]
        out[m] = {"mean": statistics.mean(d), "se": statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else None,
                  "pairs": len(d), "per_budget": {b: statistics.mean(x for bb, x in ps if bb == b)
                                                  for b in BUDGETS if any(bb == b for bb, _ in ps)}}
    return out


def plot(runs: list[dict], path_prefix: Path) -> list[str]:
    """Best-so-far validation accuracy vs trials, trained epochs and seconds; mean over seeds, band = min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    for b in BUDGETS:
        rs = [r for r in runs if r["budget"] == b and r["curve"]]
        if not rs:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for m in ordered_methods(rs):
            curves = [r["curve"] for r in rs if r["method"] == m]
            if not curves:
                continue
            for ax, xkey in zip(axes, ("trials", "epochs", "seconds")):
                top = min(c[xkey][-1] for c in curves)
                grid = np.linspace(0, top, 200)
                ys = []
                for c in curves:  # best-so-far as a step function of x
                    x, y = np.asarray(c[xkey], float), np.asarray(c["best_val"], float)
                    i = np.searchsorted(x, grid, side="right") - 1
                    ys.append(np.where(i >= 0, y[np.clip(i, 0, None)], np.nan) * 100)
                ys = np.asarray(ys)
                with np.errstate(all="ignore"), contextlib.suppress(RuntimeWarning):
                    import warnings

                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        mean, lo, hi = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
                line, = ax.plot(grid, mean, label=m, lw=1.5)
                ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.12)
        for ax, lab in zip(axes, ("trials", "trained epochs", "seconds (wall clock, shared machine)")):
            ax.set_xlabel(lab)
            ax.set_ylabel("best-so-far validation accuracy (%)")
            ax.grid(alpha=0.3)
        lows = [100 * v for r in rs for v in r["curve"]["best_val"][len(r["curve"]["best_val"]) // 4:]
                if v == v]
        if lows:
            for ax in axes:
                ax.set_ylim(max(50, min(lows) - 1), min(100, max(lows) + 0.5))
        seeds = sorted({r["seed"] for r in rs})
        fig.suptitle(f"digits, budget {b}: {BUDGETS[b].describe()}; "
                     f"mean over seeds {seeds}, band = min-max")
        axes[0].legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        out = Path(f"{path_prefix}_{b}.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=90)
        plt.close(fig)
        written.append(str(out))
    return written


def main() -> None:
    global METHODS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=16, help="trials per method; compute = trials x epochs epochs")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs per trial")
    ap.add_argument("--final-epochs", type=int, default=15)
    ap.add_argument("--retrains", type=int, default=1, help="retrains of each pick (different seeds); test = mean")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--label-smoothing", type=float, default=SearchConfig.label_smoothing)
    ap.add_argument("--confirm", type=float, default=SearchConfig.confirm)
    ap.add_argument("--screen-k", type=int, default=10, help="candidates a proxy screen scores per trial")
    ap.add_argument("--confirm-folds", type=int, default=5,
                    help=f"folds of train+val the confirmations of a METHOD{CV} validate on (search.run --confirm-folds)")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                    help=f"of {', '.join(METHODS)}, or screen-PROXY; each also as METHOD{CV} (--confirm-folds)")
    ap.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--json", default=str(ROOT / "results/benchmarks/sampler_efficiency.json"))
    ap.add_argument("--plots", default=None, help="PNG path prefix (default: the JSON's, plus _BUDGET.png)")
    ap.add_argument("--summarize", metavar="JSON", nargs="+", default=None,
                    help="tables and plots of saved runs (several: their runs together, e.g. one seed each), no training")
    add_common_args(ap)
    args = ap.parse_args()
    args.seeds = resolve_seeds(args.seeds)
    for m in args.methods:
        if not known_method(m):
            raise SystemExit(f"--methods: unknown method {m!r}; choose from {', '.join(METHODS)} or screen-PROXY "
                             f"({', '.join(PROXIES)}; screen--PROXY prefers low scores), each also as METHOD{CV}")
    if not 2 <= args.confirm_folds <= 20:
        raise SystemExit(f"--confirm-folds must be from 2 to 20, got {args.confirm_folds}")
    if args.quick:  # every method once, tiny: the code paths run, the figures mean nothing
        args.trials, args.epochs, args.final_epochs, args.seeds, args.screen_k = 4, 1, 1, args.seeds[:1], 3
        if args.methods == list(DEFAULT_METHODS):  # and the cross-validated selection of a search and a design
            args.methods += ["tpe" + CV, "lenet-style" + CV]
    prefix = Path(args.plots) if args.plots else Path(args.json).with_suffix("")
    if args.summarize:
        saved = [json.loads(Path(p).read_text()) for p in args.summarize]
        runs = [r for sv in saved for r in sv["runs"]]
        summarize(runs, argparse.Namespace(**saved[0]["config"]))
        print(json.dumps(spearman_table(runs), indent=1))
        print("\n".join(plot(runs, prefix)))
        return
    quiet_library_warnings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    METHODS = tuple(dict.fromkeys([*METHODS, *(base_method(m) for m in args.methods)]))
    tasks = [(b, s, m) for b in args.budgets for s in args.seeds for m in args.methods]
    runs: list[dict] = []
    t0 = time.time()

    def save(final: bool) -> dict:
        done = {(r["budget"], r["seed"], r["method"]) for r in runs}
        out = {"config": vars(args), "runs": runs, "missing": [f"{b} seed {s} {m}" for b, s, m in tasks
                                                               if (b, s, m) not in done],
               "seconds": time.time() - t0}
        if final:
            out["summary"] = summarize(runs, args)
            out["spearman"] = spearman_table(runs)
            out["alpha_replaced"] = {b: alpha_replaced(b, 50 if args.quick else 1000) for b in args.budgets}
            out["published"] = {"Abdelfattah et al. 2021, NAS-Bench-201 CIFAR-10, best single proxy (synflow)": 0.82}
        write_results(args.json, out, args, args.seeds)
        return out

    groups: dict[tuple, list[str]] = {}  # methods that share their trials up to the confirmations run together
    for b, s, m in tasks:
        key = (b, s, base_method(m), m if base_method(m) == "hyperband" else "")
        groups.setdefault(key, []).append(m)
    for (b, s, _, _), ms in groups.items():
        for r in run_one(b, s, ms, args):
            runs.append(r)
            print(f"{b} seed {s} {r['method']}: pick val {100 * r['val_acc']:.2f}% test {100 * r['test']:.2f}%  "
                  f"{r['epochs']} epochs, {r['seconds']:.0f} s  {r['spec']}  [{time.time() - t0:.0f} s]", flush=True)
        save(False)
    final = save(True)
    sp = final["spearman"]
    rows = [[k, v["networks"], *(("" if v["spearman"][p] is None else f"{v['spearman'][p]:+.2f}") for p in PROXIES),
             f"{v['median_ms_all_proxies']:.0f}"] for k, v in sp.items()]
    print("\nSpearman rank correlation with trained validation accuracy (Abdelfattah et al. 2021: best proxy 0.82 "
          "on NAS-Bench-201)")
    print(tabulate(rows, headers=["budget / networks of", "n", *PROXIES, "ms (all 5)"], tablefmt="github"))
    for b, a in final["alpha_replaced"].items():
        print(f"{b}: of {a['feasible']} feasible random draws (of {a['draws']}), the bisection replaced the sampled "
              f"alpha in {100 * a['replaced_share']:.1f} % (median fitted / sampled {a['median_fitted_over_sampled']:.3f})")
    print("\n".join(f"wrote {p}" for p in plot(runs, prefix)))
    print(f"wrote {args.json} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
