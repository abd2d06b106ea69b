"""Search quality on digits under a tight budget: TPE vs random search vs hand-designed baselines fitted to the budget.

Every method gets the same number of trials and epochs per trial, on the same data split, for each seed:
- TPE / random: the full architecture search (`search.run_search`) at the native 8x8 resolution (rho = 1).
- Baselines: a fixed hand-designed architecture (LeNet-style, MobileNetV1-style, SqueezeNet-style) whose width
  multiplier alpha is fitted to the budget by the same bisection the search uses; its trials tune learning rate
  and weight decay with TPE (the search samples these too), so trial budgets are equal.
Every method selects the same way, as search.run does (search.confirm): the last --confirm share of its trials
re-train its 3 leading candidates with new seeds, and its pick is the candidate with the best mean validation
accuracy (the "val" column); --confirm 0 picks the best single trial. The pick is retrained on train+val for
--final-epochs, --retrains times with different seeds (the same function for every method), and tested; its
test accuracy is the mean.
The search runs twice with TPE: as search.run does by default, whose warm start queues classic designs, the
LeNet-style baseline's among them, as the first trials; and with --no-warm-start.
(seed, method) runs are independent and run in --jobs parallel processes.

    python benchmarks/search_quality.py --seeds report --shared-machine    # the README's figures
    python benchmarks/search_quality.py                                     # development seeds, for any choice
    python benchmarks/search_quality.py --quick                             # smoke run, seconds
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import statistics
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import optuna
import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archs import HeadSpec, NetSpec, StageSpec, StemSpec, build, count, estimate  # noqa: E402
from benchmarks._common import add_common_args, resolve_seeds, write_results  # noqa: E402
from search.confirm import enqueue_confirmation, rank_candidates  # noqa: E402
from search.space import Budget, SearchSpace, analytic_fits, fit_alpha  # noqa: E402
from search.study import SearchConfig, quiet_library_warnings, run_search  # noqa: E402
from training.data import load_data  # noqa: E402
from training.loop import TrainConfig, evaluate, fit, set_seed  # noqa: E402


SPACE = SearchSpace()


def baselines(divisor: int) -> dict[str, NetSpec]:
    """Hand-designed 8x8 networks before width fitting (alpha = 1)."""
    common = dict(num_classes=10, in_chans=1, resolution=8, divisor=divisor)
    return {
        "lenet-style conv": NetSpec(**common, norm=True, stem=StemSpec(8, 3, 1),
                                    stages=[StageSpec("maxpool", kernel=2, stride=2), StageSpec("conv", 16, kernel=3),
                                            StageSpec("maxpool", kernel=2, stride=2)],
                                    head=HeadSpec("flatten")),
        "mobilenetv1-style (alpha fitted)": NetSpec(**common, stem=StemSpec(32, 3, 1),
                                                    stages=[StageSpec("dws", 64), StageSpec("dws", 128, stride=2),
                                                            StageSpec("dws", 128), StageSpec("dws", 256, stride=2),
                                                            StageSpec("dws", 256)], head=HeadSpec("pool")),
        "squeezenet-style fire (alpha fitted)": NetSpec(**common, stem=StemSpec(64, 3, 1),
                                                        stages=[StageSpec("fire", 128, 2),
                                                                StageSpec("maxpool", kernel=3, stride=2,
                                                                          args={"ceil_mode": True}),
                                                                StageSpec("fire", 256, 2)],
                                                        head=HeadSpec("conv")),
    }


def final_tests(spec: NetSpec, hp: dict, data, final_epochs: int, batch_size: int, seed: int,
                retrains: int, label_smoothing: float) -> list[float]:
    """Test accuracy of `spec` retrained `retrains` times (seeds differ) on train+val; the same for every method,
    so the comparison is not decided by one lucky or unlucky initialisation on a 360-image test set."""
    accs = []
    for r in range(retrains):
        cfg = TrainConfig(epochs=final_epochs, batch_size=batch_size, augment=data.augment, seed=1000 * (r + 1) + seed,
                          label_smoothing=label_smoothing, **hp)
        set_seed(cfg.seed)
        model = build(spec)
        fit(model, data.trainval(), None, cfg)
        accs.append(evaluate(model, data.test))
    return accs


def run_baseline(spec: NetSpec, budget: Budget, data, trials: int, epochs: int, final_epochs: int, seed: int,
                 batch_size: int, retrains: int, label_smoothing: float, confirm: float) -> dict:
    fitted = fit_alpha(spec, 4.0, analytic_fits(budget), alpha_min=0.02)
    if fitted is None:
        return {"feasible": False}
    cost = estimate(fitted)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *SPACE.lr, log=True)  # the search's own ranges
        wd = trial.suggest_float("weight_decay", *SPACE.weight_decay, log=True)
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=wd, augment=data.augment,
                          seed=seed + trial.number, label_smoothing=label_smoothing)
        set_seed(cfg.seed)
        model = build(fitted)
        return fit(model, data.train, data.val, cfg).val_acc

    for done in range(trials):  # the search's own selection: confirmations of the leaders, then the best mean
        enqueue_confirmation(study, study.get_trials(deepcopy=False), done, 0, trials, confirm)
        study.optimize(objective, n_trials=1)
    best = rank_candidates(study.get_trials(deepcopy=False))[0]
    hp = best.trial.params
    tests = final_tests(fitted, hp, data, final_epochs, batch_size, seed, retrains, label_smoothing)
    fv = count(build(fitted))
    return {"feasible": True, "spec": fitted.to_string(), "best_val": best.mean, "val_runs": best.evals,
            "test": statistics.mean(tests), "test_retrains": tests, "hparams": hp,
            "over_budget_share": 0.0 if budget.fits(cost) else 1.0,
            "mean_budget_use": budget.share(cost),
            "fvcore_macs": fv.macs, "params": fv.params}


SEARCHES = {"search (tpe)": ("tpe", True), "search (random)": ("random", True),
            "search (tpe, --no-warm-start)": ("tpe", False)}  # method -> (sampler, warm start)
PRIORITY = ["search (tpe)", "lenet-style conv", "search (tpe, --no-warm-start)", "search (random)",
            "mobilenetv1-style (alpha fitted)", "squeezenet-style fire (alpha fitted)"]  # the order runs start in


def run_searcher(sampler: str, budget: Budget, data, trials: int, epochs: int, final_epochs: int, seed: int,
                 batch_size: int, out: str, threads: int, retrains: int, label_smoothing: float,
                 confirm: float, warm_start: bool = True) -> dict:
    cfg = SearchConfig(budget_mflops=budget.mflops, budget_params=budget.params, dataset="digits", trials=trials,
                       epochs=epochs, final_epochs=final_epochs, batch_size=batch_size, sampler=sampler,
                       pruner="none", rho=[1.0], top_k=1, seed=seed, quiet=True, out=out,
                       study_name=f"{sampler}{'' if warm_start else '-nowarm'}-seed{seed}", device="cpu",
                       threads=threads, label_smoothing=label_smoothing, confirm=confirm, warm_start=warm_start)
    res = run_search(cfg, data=data)
    df = res["trials"]
    trained = df[df["val_acc"].notna()]
    w = res["winners"][0]
    row = df[df["number"] == w["trial"]].iloc[0]
    hp = {"lr": float(row["param_lr"]), "weight_decay": float(row["param_weight_decay"])}
    tests = final_tests(NetSpec.from_string(w["spec"]), hp, data, final_epochs, batch_size, seed, retrains,
                        label_smoothing)
    over = (trained["mflops"] * 1e6 > budget.mflops * 1e6 + 0.5) | (trained["params_count"] > budget.params)
    return {"feasible": True, "spec": w["spec"], "best_val": w["val_acc"], "val_runs": w["val_evals"],
            "test": statistics.mean(tests),
            "test_retrains": tests, "hparams": hp, "test_search_retrain": w["test_acc"],
            "over_budget_share": float(over.mean()), "mean_budget_use": float(trained["budget_share"].mean()),
            "fvcore_macs": w["macs"], "params": w["params"],
            "infeasible_samples": int((df["fail_reason"].fillna("").str.startswith("infeasible")).sum())}


def run_task(seed: int, method: str, args: argparse.Namespace, budget: Budget) -> dict:
    """One method on one seed, in a worker process."""
    quiet_library_warnings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    data = load_data("digits", seed=seed)
    if method in SEARCHES:
        sampler, warm = SEARCHES[method]
        return run_searcher(sampler, budget, data, args.trials, args.epochs, args.final_epochs,
                            seed, args.batch_size, args.out, args.threads, args.retrains, args.label_smoothing,
                            args.confirm, warm_start=warm)
    return run_baseline(baselines(divisor=4)[method], budget, data, args.trials, args.epochs, args.final_epochs,
                        seed, args.batch_size, args.retrains, args.label_smoothing, args.confirm)


def report(runs: dict[str, list[dict]], cfg: dict) -> dict:
    """Print the comparison table and TPE's margin over every other method; returns the per-method summary."""
    rows, summary = [], {}
    for name, rs in runs.items():
        ok = [r for r in rs if r["feasible"]]
        if not ok:
            rows.append([name, "infeasible", "", "", "", ""])
            continue
        s = {k: statistics.mean(r[k] for r in ok) for k in ("best_val", "test", "over_budget_share", "mean_budget_use")}
        s["test_per_seed"] = [r["test"] for r in ok]
        s["val_per_seed"] = [r["best_val"] for r in ok]
        summary[name] = s
        rows.append([name, f"{100 * s['best_val']:.2f}", f"{100 * s['test']:.2f}",
                     " / ".join(f"{100 * v:.1f}" for v in s["test_per_seed"]),
                     f"{100 * s['over_budget_share']:.0f}%", f"{100 * s['mean_budget_use']:.0f}%"])
    print(f"\nDigits 8x8, budget {cfg['budget_mflops']:g} MFLOPs (million multiply-adds, fvcore) and "
          f"{cfg['budget_params']:g} params; {cfg['trials']} trials x {cfg['epochs']} epochs per method, final retrain "
          f"{cfg['final_epochs']} epochs; mean over seeds {cfg['seeds']}")
    print(tabulate(rows, headers=["method", "val acc % (pick)", "test acc %", "test per seed %",
                                  "trials over budget", "mean budget use"], tablefmt="github"))
    tpe = [x for r in runs.get("search (tpe)", []) if r["feasible"] for x in r["test_retrains"]]
    for name, rs in runs.items():
        other = [x for r in rs if r["feasible"] for x in r["test_retrains"]]
        if name == "search (tpe)" or len(tpe) < 2 or len(other) < 2:
            continue
        diff = statistics.mean(tpe) - statistics.mean(other)
        se = math.sqrt(statistics.variance(tpe) / len(tpe) + statistics.variance(other) / len(other))
        print(f"TPE minus {name}: {100 * diff:+.2f} test points, standard error {100 * se:.2f} "
              f"({len(tpe)} and {len(other)} retrains)")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-mflops", type=float, default=0.02, help="million multiply-adds (fvcore)")
    ap.add_argument("--budget-params", type=float, default=1000)
    ap.add_argument("--trials", type=int, default=40, help="trials per method (each trains one network)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--final-epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--retrains", type=int, default=3,
                    help="retrain each method's chosen network this many times (different seeds); test = their mean")
    ap.add_argument("--label-smoothing", type=float, default=SearchConfig.label_smoothing,
                    help="for every method, as in search.run (default: the search's default)")
    ap.add_argument("--confirm", type=float, default=SearchConfig.confirm,
                    help="share of every method's trials re-training its 3 leading candidates with new seeds; each "
                         "method picks the best mean (as search.run; 0 = off: the best single trial)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (1 is fastest for tiny nets)")
    ap.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                    help="(seed, method) runs in parallel processes (default: CPU cores, at most 4)")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="run only the methods with a word starting with one of these (tpe, random, lenet, mobilenet, ...)")
    ap.add_argument("--summarize", metavar="JSON", default=None,
                    help="print the table of a saved run's JSON again, without training")
    ap.add_argument("--json", default=str(ROOT / "results/benchmarks/search_quality.json"))
    ap.add_argument("--out", default=str(ROOT / "results/benchmarks/search_quality"),
                    help="where the TPE and random studies are kept (python -m analysis.report OUT/tpe-seed0 "
                         "OUT/random-seed0 compares them); an existing folder is replaced")
    add_common_args(ap)
    args = ap.parse_args()
    args.seeds = resolve_seeds(args.seeds)
    if args.quick:  # every method once, tiny: the code paths run, the figures mean nothing
        args.trials, args.epochs, args.final_epochs, args.retrains, args.seeds = 3, 1, 1, 1, args.seeds[:1]
    if args.summarize:
        saved = json.loads(Path(args.summarize).read_text())
        report(saved["runs"], saved["config"])
        if saved.get("missing"):
            print(f"not measured (the run was cut short): {', '.join(saved['missing'])}")
        return
    quiet_library_warnings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = Budget(mflops=args.budget_mflops, params=args.budget_params)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    methods = [m for m in [*SEARCHES, *baselines(divisor=4)]
               if not args.methods or any(w.startswith(k.lower()) for k in args.methods
                                          for w in re.findall(r"[a-z0-9]+", m))]
    # method by method (the search with TPE and LeNet-style first), every seed of one before the next method
    tasks = [(seed, m) for m in sorted(methods, key=PRIORITY.index) for seed in args.seeds]
    results: dict[tuple[int, str], dict] = {}
    t0 = time.time()

    def save() -> dict:
        """The JSON holds every finished (seed, method), rewritten after each: a run cut short keeps them."""
        runs = {m: [results[seed, m] for seed in args.seeds if (seed, m) in results] for m in methods}
        runs = {m: rs for m, rs in runs.items() if rs}
        missing = [f"{m} seed {seed}" for seed, m in tasks if (seed, m) not in results]
        write_results(args.json, {"config": vars(args), "runs": runs, "missing": missing,
                                  "seconds": time.time() - t0}, args, args.seeds)
        return runs

    # every (seed, method) is independent and seeded, so running them in parallel processes changes no figure
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_task, seed, m, args, budget): (seed, m) for seed, m in tasks}
        for fut in as_completed(futures):
            seed, m = futures[fut]
            r = results[seed, m] = {"seed": seed, **fut.result()}
            msg = "infeasible" if not r["feasible"] else \
                f"val {100 * r['best_val']:.2f}% test {100 * r['test']:.2f}%  {r['spec']}"
            print(f"seed {seed} {m}: {msg}  [{time.time() - t0:.0f}s]", flush=True)
            save()
    runs = save()
    summary = report(runs, vars(args))
    write_results(args.json, {"config": vars(args), "summary": summary, "runs": runs, "missing": [],
                              "seconds": time.time() - t0}, args, args.seeds)
    print(f"\nwrote {args.json} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
