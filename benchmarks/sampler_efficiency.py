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
  learning rate and weight decay.
Every method starts from the search's warm start (its classic designs) and selects as the search does (the last
--confirm share re-trains the leaders; best mean wins). The pick is retrained on train+val and tested.
Every trained network is also scored by the zero-cost proxies at its own initial weights, and each proxy's
Spearman rank correlation with trained validation accuracy is reported.

    python benchmarks/sampler_efficiency.py                              # development seeds: for any choice
    python benchmarks/sampler_efficiency.py --seeds report --shared-machine
    python benchmarks/sampler_efficiency.py --quick                      # smoke run, seconds
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from archs import NetSpec  # noqa: E402
from benchmarks._common import add_common_args, resolve_seeds, write_results  # noqa: E402
from search.confirm import CONFIRMS, enqueue_confirmation, rank_candidates  # noqa: E402
from search.objective import Objective, TrialFailed  # noqa: E402
from search.proxies import PROXIES, score_all  # noqa: E402
from search.space import Budget, DataShape, SearchSpace, sample  # noqa: E402
from search.study import (SearchConfig, enqueue_warm_start, make_sampler, make_screen, quiet_library_warnings,  # noqa: E402
                          train_config)
from search.workers import is_counted  # noqa: E402
from search_quality import baselines, final_tests, run_baseline  # noqa: E402
from training.data import load_data  # noqa: E402

#: name -> (MFLOPs, params, rho choices): the tight 8x8 budget of search_quality.py, and a 12x12 one (rho 1.5)
#: with a few thousand parameters
BUDGETS = {"8x8": (0.02, 1000, (1.0,)), "12x12": (0.1, 4000, (1.5,))}
METHODS = ("tpe", "tpe-univariate", "random", "gp", "hyperband", "tpe-share", "screen-naswot", "screen-params",
           "screen--naswot", "lenet-style")
#: what a run measures unless --methods says otherwise (screen-params and screen--naswot were added after the
#: first development run had measured each proxy's rank correlation; see docs/sampler_efficiency.md)
DEFAULT_METHODS = ("tpe", "tpe-univariate", "random", "gp", "hyperband", "tpe-share", "screen-naswot", "screen-params",
                   "screen--naswot", "lenet-style")
CPU = torch.device("cpu")


def make_method_sampler(method: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    if method == "random" or method.startswith("screen-"):  # a screen's trials are enqueued: the sampler is unused
        return optuna.samplers.RandomSampler(seed=seed)
    if method == "tpe-univariate":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(5, min(10, trials // 4)))
    if method == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return make_sampler("tpe", seed, False, trials)  # tpe, tpe-share, hyperband: the search's default


def run_study(method: str, budget: Budget, rho: tuple[float, ...], data, args, seed: int) -> dict:
    """One method's study until it has trained trials x epochs epochs; its trials, anytime curve and pick."""
    trials = args.trials
    space = SearchSpace(rho=rho, width="share" if method == "tpe-share" else "alpha")
    cfg = SearchConfig(budget_mflops=budget.mflops, budget_params=budget.params, epochs=args.epochs,
                       batch_size=args.batch_size, label_smoothing=args.label_smoothing, seed=seed, device="cpu")
    pruner = (optuna.pruners.HyperbandPruner(min_resource=1, max_resource=args.epochs, reduction_factor=2)
              if method == "hyperband" else optuna.pruners.NopPruner())
    study = optuna.create_study(direction="maximize", sampler=make_method_sampler(method, seed, trials), pruner=pruner)
    enqueue_warm_start(study, space, contextlib.nullcontext, trials)
    objective = Objective(data, space, budget, ["accuracy"], train_config(cfg, CPU, data, args.epochs), CPU)
    screen = None
    if method.startswith("screen-"):  # as search.run --screen K --screen-proxy PROXY does it
        screen = make_screen(objective, replace(cfg, screen=args.screen_k, screen_proxy=method.split("-", 1)[1]), seed)
    total = trials * args.epochs
    spent, rows, t0 = 0, [], time.perf_counter()
    for _ in range(50 * trials):  # infeasible samples cost no epochs; bounded all the same
        if spent >= total:
            break
        queued = enqueue_confirmation(study, study.get_trials(deepcopy=False), spent // args.epochs, 0, trials,
                                      args.confirm)
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
        spent += epochs
        rows.append({"number": t.number, "state": t.state.name, "epochs": epochs,
                     "seconds": time.perf_counter() - s0, "val_acc": a.get("val_acc"),
                     "confirms": a.get(CONFIRMS), "template": a.get("template"), "spec": a.get("spec"),
                     "spec_json": a.get("spec_json"), "hparams": a.get("hparams"), "mflops": a.get("mflops"),
                     "params": a.get("params_count"), "budget_share": a.get("budget_share"),
                     "alpha": a.get("alpha"), "trial_seed": seed + t.number})
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
            "epochs": spent, "seconds": time.perf_counter() - t0, "screen_seconds": screen.seconds if screen else 0.0}


def anytime(rows: list[dict]) -> dict[str, list[float]]:
    """Best-so-far single-run validation accuracy after each counted trial, with cumulative epochs and seconds
    (trials pruned before their last epoch count for compute, not for accuracy)."""
    best, out = float("nan"), {"trials": [], "epochs": [], "seconds": [], "best_val": []}
    e = s = 0.0
    for i, r in enumerate(rows, 1):
        e, s = e + r["epochs"], s + r["seconds"]
        if r["state"] == "COMPLETE" and r["val_acc"] is not None and not (r["val_acc"] <= best):
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


def run_one(budget_name: str, seed: int, method: str, args) -> dict:
    """One (budget, seed, method): the study (or the hand design), the pick's test accuracy, proxy scores."""
    mflops, params, rho = BUDGETS[budget_name]
    budget = Budget(mflops=mflops, params=params)
    data = load_data("digits", seed=seed)
    t0 = time.perf_counter()
    if method == "lenet-style":
        r = run_baseline(baselines(divisor=4)["lenet-style conv"], budget, data, args.trials, args.epochs,
                         args.final_epochs, seed, args.batch_size, args.retrains, args.label_smoothing, args.confirm,
                         rhos=rho)
        return {"method": method, "budget": budget_name, "seed": seed, "val_acc": r["best_val"], "test": r["test"],
                "test_retrains": r["test_retrains"], "spec": r["spec"], "epochs": args.trials * args.epochs,
                "seconds": time.perf_counter() - t0, "trials": [], "curve": None}
    res = run_study(method, budget, rho, data, args, seed)
    pick = res["pick"]
    spec = NetSpec.from_dict(pick["spec_json"])
    tests = final_tests(spec, pick["hparams"], data, args.final_epochs, args.batch_size, seed, args.retrains,
                        args.label_smoothing)  # at the pick's input size
    proxy_scores(res["trials"], data, seed)
    for r in res["trials"]:
        r.pop("spec_json", None)
    return {"method": method, "budget": budget_name, "seed": seed, "val_acc": pick["val_acc"],
            "val_runs": pick["val_runs"], "test": statistics.mean(tests), "test_retrains": tests, "spec": pick["spec"],
            "pick_trial": pick["number"], "epochs": res["epochs"], "seconds": res["seconds"],
            "screen_seconds": res["screen_seconds"], "n_trials": len(res["trials"]), "trials": res["trials"],
            "curve": anytime(res["trials"]), "total_seconds": time.perf_counter() - t0}


def alpha_replaced(budget_name: str, draws: int = 1000, seed: int = 0) -> dict:
    """How often the bisection replaces the sampled alpha (default --width alpha), over random draws of the space:
    the share of feasible draws whose fitted alpha is below the sampled one, and the median fitted / sampled."""
    mflops, params, rho = BUDGETS[budget_name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    ratios = []
    for _ in range(draws):
        t = study.ask()
        c = sample(t, SearchSpace(rho=rho), DataShape(1, 8, 10), Budget(mflops, params))
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
    compute; differences from random search and from the hand design, paired over seeds."""
    summary: dict[str, dict] = {}
    for b in BUDGETS:
        by: dict[str, list[dict]] = {}
        for r in runs:
            if r["budget"] == b:
                by.setdefault(r["method"], []).append(r)
        if not by:
            continue
        seeds_of = {m: [r["seed"] for r in rs] for m, rs in by.items()}
        rows, s = [], {}
        for m in METHODS:
            if m not in by:
                continue
            rs = sorted(by[m], key=lambda r: r["seed"])
            test = [r["test"] for r in rs]
            entry = {"val_acc": statistics.mean(r["val_acc"] for r in rs), "test": statistics.mean(test),
                     "test_per_seed": test, "seeds": seeds_of[m], "epochs": statistics.mean(r["epochs"] for r in rs),
                     "seconds": statistics.median(r["seconds"] for r in rs),
                     "trials": statistics.mean(r.get("n_trials", args.trials) for r in rs),
                     "best_single_val": statistics.mean(r["curve"]["best_val"][-1] for r in rs) if rs[0]["curve"] else None}
            for ref in ("random", "lenet-style"):
                if ref in by and ref != m:
                    other = {r["seed"]: r["test"] for r in by[ref]}
                    common = [r for r in rs if r["seed"] in other]
                    if common:
                        d, se = paired([r["test"] for r in common], [other[r["seed"]] for r in common])
                        entry[f"minus_{ref}"] = {"mean": d, "se": se, "seeds": len(common)}
            s[m] = entry

            def diff(ref: str) -> str:
                x = entry.get(f"minus_{ref}")
                if not x:
                    return ""
                return f"{100 * x['mean']:+.2f}" + (f" ± {100 * x['se']:.2f}" if x["se"] is not None else "")
            rows.append([m, f"{100 * entry['val_acc']:.2f}",
                         "" if entry["best_single_val"] is None else f"{100 * entry['best_single_val']:.2f}",
                         f"{100 * entry['test']:.2f}", " / ".join(f"{100 * v:.1f}" for v in test), diff("random"),
                         diff("lenet-style"), f"{entry['trials']:.0f}", f"{entry['epochs']:.0f}",
                         f"{entry['seconds']:.0f}"])
        mflops, params, rho = BUDGETS[b]
        print(f"\nbudget {b}: {mflops:g} MFLOPs (fvcore MACs), {params:,} params, rho {rho}; "
              f"{args.trials} trials x {args.epochs} epochs of compute per method; seeds {sorted(set(sum(seeds_of.values(), [])))}")
        print(tabulate(rows, headers=["method", "pick val % (mean of runs)", "best single val %", "test %",
                                      "test per seed %", "minus random (points ± SE)", "minus lenet-style",
                                      "trials", "epochs", "median s"], tablefmt="github"))
        summary[b] = s
    return summary


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
        for m in METHODS:
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
        mflops, params, rho = BUDGETS[b]
        seeds = sorted({r["seed"] for r in rs})
        fig.suptitle(f"digits, budget {b}: {mflops:g} MFLOPs, {params:,} params, rho {rho[0]:g}; "
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
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help=f"of {', '.join(METHODS)}, or screen-PROXY")
    ap.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--json", default=str(ROOT / "results/benchmarks/sampler_efficiency.json"))
    ap.add_argument("--plots", default=None, help="PNG path prefix (default: the JSON's, plus _BUDGET.png)")
    ap.add_argument("--summarize", metavar="JSON", nargs="+", default=None,
                    help="tables and plots of saved runs (several: their runs together, e.g. one seed each), no training")
    add_common_args(ap)
    args = ap.parse_args()
    args.seeds = resolve_seeds(args.seeds)
    for m in args.methods:
        if m not in METHODS and not (m.startswith("screen-") and m.split("-", 1)[1].lstrip("-") in PROXIES):
            raise SystemExit(f"--methods: unknown method {m!r}; choose from {', '.join(METHODS)} or screen-PROXY "
                             f"({', '.join(PROXIES)}; screen--PROXY prefers low scores)")
    if args.quick:  # every method once, tiny: the code paths run, the figures mean nothing
        args.trials, args.epochs, args.final_epochs, args.seeds, args.screen_k = 4, 1, 1, args.seeds[:1], 3
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
    METHODS = tuple(dict.fromkeys([*METHODS, *args.methods]))
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

    for b, s, m in tasks:
        r = run_one(b, s, m, args)
        runs.append(r)
        print(f"{b} seed {s} {m}: pick val {100 * r['val_acc']:.2f}% test {100 * r['test']:.2f}%  "
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
