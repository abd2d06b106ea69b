"""Search quality on digits under a tight budget: TPE vs random search vs hand-designed baselines fitted to the budget.

Every method gets the same number of trials and epochs per trial, on the same data split, for each seed:
- TPE / random: the full architecture search (`search.run_search`) at the native 8x8 resolution (rho = 1).
- Baselines: a fixed hand-designed architecture (LeNet-style, MobileNetV1-style, MobileNetV2-style,
  SqueezeNet-style) whose width multiplier alpha is fitted to the budget by the same bisection the search uses;
  its trials tune learning rate and weight decay with TPE (the search samples these too), so trial budgets are
  equal. benchmarks/mcu_search.py runs these same functions under microcontroller budgets.
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
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import optuna
import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archs import HeadSpec, NetSpec, StageSpec, StemSpec, build, count, estimate  # noqa: E402
from archs.memory import memory  # noqa: E402
from benchmarks._common import add_common_args, resolve_seeds, write_results  # noqa: E402
from search.confirm import enqueue_confirmation, fold_of, rank_candidates  # noqa: E402
from search.space import Budget, SearchSpace, analytic_fits, fit_alpha  # noqa: E402
from search.study import SearchConfig, quiet_library_warnings, run_search  # noqa: E402
from training.data import Splits, load_data  # noqa: E402
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
        # MobileNetV2's inverted residuals (expand 1, then 6; residual where the shape stays) and its final 1x1
        # feature conv, scaled to an 8x8 input: two stride-2 stages instead of five
        "mobilenetv2-style (alpha fitted)": NetSpec(**common, stem=StemSpec(32, 3, 1),
                                                    stages=[StageSpec("ir", 16, args={"expand": 1}),
                                                            StageSpec("ir", 24, 2, stride=2, args={"expand": 6}),
                                                            StageSpec("ir", 32, 2, stride=2, args={"expand": 6}),
                                                            StageSpec("conv", 128, kernel=1)],
                                                    head=HeadSpec("pool")),
        "squeezenet-style fire (alpha fitted)": NetSpec(**common, stem=StemSpec(64, 3, 1),
                                                        stages=[StageSpec("fire", 128, 2),
                                                                StageSpec("maxpool", kernel=3, stride=2,
                                                                          args={"ceil_mode": True}),
                                                                StageSpec("fire", 256, 2)],
                                                        head=HeadSpec("conv")),
    }


def retrained(spec: NetSpec, hp: dict, data: Splits, final_epochs: int, batch_size: int, seed: int,
              retrains: int, label_smoothing: float) -> Iterator[tuple[torch.nn.Module, Splits]]:
    """`spec` retrained `retrains` times (seeds differ) on train+val, with the data at its input size; the same
    for every method, so the comparison is not decided by one lucky or unlucky initialisation on a 360-image
    test set."""
    data = data.resized(spec.input_size)  # the data itself when rho = 1
    for r in range(retrains):
        cfg = TrainConfig(epochs=final_epochs, batch_size=batch_size, augment=data.augment, seed=1000 * (r + 1) + seed,
                          label_smoothing=label_smoothing, **hp)
        set_seed(cfg.seed)
        model = build(spec)
        fit(model, data.trainval(), None, cfg)
        yield model, data


def final_tests(spec: NetSpec, hp: dict, data: Splits, final_epochs: int, batch_size: int, seed: int,
                retrains: int, label_smoothing: float) -> list[float]:
    """fp32 test accuracy of every retrain of `spec` (`retrained`)."""
    return [evaluate(model, d.test) for model, d in retrained(spec, hp, data, final_epochs, batch_size, seed,
                                                               retrains, label_smoothing)]


def fp32_tester(final_epochs: int, batch_size: int, seed: int, retrains: int,
                label_smoothing: float) -> Callable[[NetSpec, dict, Splits], dict]:
    """The default final measurement of a pick: "test" = the mean fp32 test accuracy of its retrains."""
    def test(spec: NetSpec, hp: dict, data: Splits) -> dict:
        tests = final_tests(spec, hp, data, final_epochs, batch_size, seed, retrains, label_smoothing)
        return {"test": statistics.mean(tests), "test_retrains": tests}
    return test


def fits_budget(budget: Budget, spec: NetSpec) -> bool:
    """The analytic budget check the bisection uses (MFLOPs, params and, under MCU budgets, arena and flash)."""
    return analytic_fits(budget)(spec)


def budget_use(budget: Budget, spec: NetSpec) -> float:
    """Largest share of any budget `spec` uses (arena and flash by `archs.memory` under MCU budgets)."""
    return budget.share(estimate(spec), mem=memory(spec) if budget.mcu else None)


def run_baseline(spec: NetSpec, budget: Budget, data, trials: int, epochs: int, final_epochs: int, seed: int,
                 batch_size: int, retrains: int, label_smoothing: float, confirm: float,
                 rhos: Sequence[float] = (1.0,), tester: Callable[[NetSpec, dict, Splits], dict] | None = None,
                 confirm_folds: int = 1) -> dict:
    """A hand design, its width fitted to the budget, trials tuning learning rate and weight decay (and, when
    several `rhos` are given, the input resolution: alpha is then fitted per rho), picked and tested like a
    search (`tester`: fp32 retrains by default; `confirm_folds`: as search.run --confirm-folds)."""
    fitted_at = {rho: fit_alpha(replace(spec, rho=rho), 4.0, analytic_fits(budget), alpha_min=0.02) for rho in rhos}
    fitted_at = {rho: f for rho, f in fitted_at.items() if f is not None}
    if not fitted_at:
        return {"feasible": False}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))

    def design(params: dict) -> NetSpec:
        return fitted_at[params["rho"]] if "rho" in params else next(iter(fitted_at.values()))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *SPACE.lr, log=True)  # the search's own ranges
        wd = trial.suggest_float("weight_decay", *SPACE.weight_decay, log=True)
        if len(fitted_at) > 1:  # a single resolution samples nothing more (the sampler's draws stay the same)
            trial.suggest_categorical("rho", list(fitted_at))
        fitted = design(trial.params)
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=wd, augment=data.augment,
                          seed=seed + trial.number, label_smoothing=label_smoothing)
        set_seed(cfg.seed)
        model = build(fitted)
        d = data.fold(fold_of(trial), confirm_folds, seed).resized(fitted.input_size)
        return fit(model, d.train, d.val, cfg).val_acc

    for done in range(trials):  # the search's own selection: confirmations of the leaders, then the best mean
        enqueue_confirmation(study, study.get_trials(deepcopy=False), done, 0, trials, confirm, confirm_folds)
        study.optimize(objective, n_trials=1)
    best = rank_candidates(study.get_trials(deepcopy=False))[0]
    hp = {k: v for k, v in best.trial.params.items() if k != "rho"}
    fitted = design(best.trial.params)
    tester = tester or fp32_tester(final_epochs, batch_size, seed, retrains, label_smoothing)
    fv = count(build(fitted))
    return {"feasible": True, "spec": fitted.to_string(), "best_val": best.mean, "val_runs": best.evals,
            **tester(fitted, hp, data), "hparams": hp,
            "over_budget_share": 0.0 if fits_budget(budget, fitted) else 1.0,
            "mean_budget_use": budget_use(budget, fitted),
            "fvcore_macs": fv.macs, "params": fv.params}


SEARCHES = {"search (tpe)": ("tpe", True), "search (random)": ("random", True),
            "search (tpe, --no-warm-start)": ("tpe", False)}  # method -> (sampler, warm start)
PRIORITY = ["search (tpe)", "lenet-style conv", "search (tpe, --no-warm-start)", "search (random)",
            "mobilenetv1-style (alpha fitted)", "squeezenet-style fire (alpha fitted)",
            "mobilenetv2-style (alpha fitted)"]  # the order runs start in


def over_budget(budget: Budget, trials) -> "pandas.Series":  # noqa: F821
    """Per row of trials.csv: over any budget by the recorded cost (arena and flash in kB, 1 kB = 1,024 bytes)?"""
    over = trials["val_acc"] != trials["val_acc"]  # all False
    for limit, column, scale, slack in ((budget.mflops, "mflops", 1e6, 0.5), (budget.params, "params_count", 1, 0),
                                        (budget.sram_kb, "sram_kb", 1, 0), (budget.flash_kb, "flash_kb", 1, 0)):
        if limit is not None:
            over |= trials[column] * scale > limit * scale + slack
    return over


def run_searcher(sampler: str, budget: Budget, data, trials: int, epochs: int, final_epochs: int, seed: int,
                 batch_size: int, out: str, threads: int, retrains: int, label_smoothing: float,
                 confirm: float, warm_start: bool = True, rhos: Sequence[float] = (1.0,),
                 tester: Callable[[NetSpec, dict, Splits], dict] | None = None,
                 search_final_epochs: int | None = None, study_name: str | None = None) -> dict:
    """The search (`search.run_search`) under `budget` at the given resolution multipliers; its winner is tested
    by `tester` (fp32 retrains by default). `search_final_epochs`: the search's own retrain of the winner
    (default `final_epochs`; its test accuracy is kept as test_search_retrain; 0 skips it)."""
    cfg = SearchConfig(budget_mflops=budget.mflops, budget_params=budget.params, budget_sram_kb=budget.sram_kb,
                       budget_flash_kb=budget.flash_kb, dataset="digits", trials=trials,
                       epochs=epochs, final_epochs=final_epochs if search_final_epochs is None else search_final_epochs,
                       batch_size=batch_size, sampler=sampler,
                       pruner="none", rho=list(rhos), top_k=1, seed=seed, quiet=True, out=out,
                       study_name=study_name or f"{sampler}{'' if warm_start else '-nowarm'}-seed{seed}", device="cpu",
                       threads=threads, label_smoothing=label_smoothing, confirm=confirm, warm_start=warm_start)
    res = run_search(cfg, data=data)
    df = res["trials"]
    trained = df[df["val_acc"].notna()]
    w = res["winners"][0]
    row = df[df["number"] == w["trial"]].iloc[0]
    hp = {"lr": float(row["param_lr"]), "weight_decay": float(row["param_weight_decay"])}
    tester = tester or fp32_tester(final_epochs, batch_size, seed, retrains, label_smoothing)
    tested = tester(NetSpec.from_string(w["spec"]), hp, data)
    over = over_budget(budget, trained)
    return {"feasible": True, "spec": w["spec"], "best_val": w["val_acc"], "val_runs": w["val_evals"],
            **tested, "hparams": hp, **({"test_search_retrain": w["test_acc"]} if cfg.final_epochs else {}),
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


def difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of `a` minus mean of `b`, and its rough standard error (every value taken as independent)."""
    return (statistics.mean(a) - statistics.mean(b),
            math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b)))


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
        diff, se = difference(tpe, other)
        print(f"TPE minus {name}: {100 * diff:+.2f} test points, standard error {100 * se:.2f} "
              f"({len(tpe)} and {len(other)} retrains)")
    return summary


def run_tasks(tasks: Sequence[tuple], fn: Callable[..., dict], jobs: int,
              done: Callable[[tuple, dict], None]) -> None:
    """fn(*task) for every task in `jobs` spawned processes (in this one when jobs = 1), `done(task, result)` as
    each finishes. Every task is independent and seeded, so running them in parallel changes no figure."""
    if jobs <= 1:
        for task in tasks:
            done(task, fn(*task))
        return
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fn, *task): task for task in tasks}
        for fut in as_completed(futures):
            done(futures[fut], fut.result())


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

    def done(task: tuple[int, str], r: dict) -> None:
        seed, m = task
        results[seed, m] = r = {"seed": seed, **r}
        msg = "infeasible" if not r["feasible"] else \
            f"val {100 * r['best_val']:.2f}% test {100 * r['test']:.2f}%  {r['spec']}"
        print(f"seed {seed} {m}: {msg}  [{time.time() - t0:.0f}s]", flush=True)
        save()

    run_tasks(tasks, partial(run_task, args=args, budget=budget), args.jobs, done)
    runs = save()
    summary = report(runs, vars(args))
    write_results(args.json, {"config": vars(args), "summary": summary, "runs": runs, "missing": [],
                              "seconds": time.time() - t0}, args, args.seeds)
    print(f"\nwrote {args.json} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
