"""Search vs hand designs under microcontroller budgets, judged on the int8 model run by TensorFlow Lite Micro.

Digits (load_digits, 8x8) with the input resolution multiplier rho searched (--rho, default 1 1.5 2 3: 8, 12,
16 and 24 px), under a tensor-arena (SRAM) and a flash budget (--budgets SRAM_KB:FLASH_KB ...; kB = 1,024 bytes).
Methods, each with the same trials and epochs per trial on the same data split, for every seed:
- the search (`search.run_search`, its default TPE sampler and warm start) with --budget-sram-kb/--budget-flash-kb;
- hand designs (LeNet-style, MobileNetV2-style; --methods adds MobileNetV1- and SqueezeNet-style), the same
  networks benchmarks/search_quality.py uses, their width multiplier fitted to the same budgets by the same
  bisection (`search.space.analytic_fits`: `archs.memory`) at every rho; their trials tune learning rate, weight
  decay and rho with TPE (the search samples all three too).
Every method picks as search.run does (confirmation trials, best mean validation accuracy: search_quality's own
functions). The pick is retrained --retrains times on train+val for --final-epochs; each retrain is exported to
full-integer int8 TFLite (`compress.tflite.export_stage`, what `compress.run --export tflite` runs) and the whole
test set is run through the TFLM C++ runtime. Test accuracy = the mean of the TFLM int8 retrains; the fp32
accuracy, the fp32 -> int8 change, the arena TFLM used and the .tflite size are measured beside it, and every
pick's TFLM arena and flash are checked against the budget.

Why 16 kB of arena and 64 kB of flash (the default): on digits the space's smallest networks need 2.6 kB of arena
(TFLM's runtime structs alone are over 2 kB) and 3.2 kB of flash, so a budget must be well above that to leave a
choice. At 8 kB the MobileNetV2-style design does not fit at any width (its 23 operators cost 7.6 kB of TFLM
overhead before any activation), so there the comparison is settled before training. At 16 kB architecture
matters: LeNet-style fits at its widest (alpha 4) up to 16x16 input, MobileNetV2-style only at alpha 0.28 (8x8)
or 0.14 (12x12) and not at 16x16, MobileNetV1-style at alpha 0.14-0.51 (its flash binds at 8x8). 32 kB
(`--budgets 16:64 32:64`) leaves LeNet-style unconstrained up to 24x24. These figures are `archs.memory`'s, read
before any training (python benchmarks/mcu_search.py --fits prints them).

Trials and epochs (16 x 8 per method, final 30 epochs x 2 retrains) are scaled so that all three methods on
three seeds stay well under half an hour on one core of the shared 2-core machine (23 min on development seeds,
15 min on report seeds, 2026-12-02); the search's own retrain of its winner is skipped (--final-epochs applies to
the retrains here, the same for every method).

    python benchmarks/mcu_search.py --seeds report --shared-machine   # the figures in docs/mcu.md
    python benchmarks/mcu_search.py                                   # development seeds, for any choice
    python benchmarks/mcu_search.py --quick                           # smoke run (needs the .[mcu] extra)
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import optuna
import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archs import NetSpec, estimate  # noqa: E402
from archs.errors import UserError, run_cli  # noqa: E402
from archs.memory import memory  # noqa: E402
from benchmarks._common import add_common_args, resolve_seeds, write_results  # noqa: E402
from benchmarks.search_quality import (baselines, difference, retrained, run_baseline, run_searcher,  # noqa: E402
                                       run_tasks)
from search.space import Budget, analytic_fits, fit_alpha  # noqa: E402
from search.study import SearchConfig, quiet_library_warnings  # noqa: E402
from training.data import Splits, load_data  # noqa: E402

SEARCH = "search (tpe)"
DEFAULT_METHODS = [SEARCH, "lenet-style conv", "mobilenetv2-style (alpha fitted)"]
KB = 1024


def parse_budget(text: str) -> tuple[float, float]:
    """'SRAM_KB:FLASH_KB' -> (arena kB, flash kB)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*:\s*([0-9.]+)\s*", text)
    if not m or float(m[1]) <= 0 or float(m[2]) <= 0:
        raise UserError(f"--budgets: expected SRAM_KB:FLASH_KB with positive numbers (e.g. 16:64), got {text!r}")
    return float(m[1]), float(m[2])


def tflm_tester(out: Path, budget: Budget, final_epochs: int, batch_size: int, seed: int, retrains: int,
                label_smoothing: float, calib_images: int):
    """The final measurement of a pick: every retrain exported to int8 TFLite and its test set run by TFLM."""
    from compress.stages import accuracy
    from compress.tflite import export_stage

    def test(spec: NetSpec, hp: dict, data: Splits) -> dict:
        runs = []
        for r, (model, d) in enumerate(retrained(spec, hp, data, final_epochs, batch_size, seed, retrains,
                                                 label_smoothing)):
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(d.train), generator=g)[:min(calib_images, len(d.train))]
            where = out / f"retrain{r}"
            where.mkdir(parents=True, exist_ok=True)
            tm, row, details, art = export_stage(model.cpu().eval(), spec, d.train.x.cpu()[idx], d.test, where)
            runs.append({"int8": accuracy(tm, d.test), "fp32": details["fp32_test_acc"],
                         "arena_bytes": row["arena_bytes"], "arena_head_bytes": row["arena_head_bytes"],
                         "arena_run_bytes": details["arena_size_run"], "flash_bytes": row["flash_bytes"],
                         "arena_bytes_est": row["arena_bytes_est"], "flash_bytes_est": row["flash_bytes_est"],
                         "arena_note": details["arena_note"], "tflite": str(art)})
        # what TFLM used, the arena it ran in (kTensorArenaSize: archs.memory's figure unless TFLM needed more)
        used, ran = max(r["arena_bytes"] for r in runs), max(r["arena_run_bytes"] for r in runs)
        flash = max(r["flash_bytes"] for r in runs)
        return {"test": statistics.mean(r["int8"] for r in runs), "test_retrains": [r["int8"] for r in runs],
                "fp32_test": statistics.mean(r["fp32"] for r in runs), "fp32_retrains": [r["fp32"] for r in runs],
                "int8_change": statistics.mean(r["int8"] - r["fp32"] for r in runs),
                "tflm_arena_bytes": used, "tflm_arena_run_bytes": ran, "tflm_flash_bytes": flash,
                "fits": max(used, ran) <= budget.sram_kb * KB and flash <= budget.flash_kb * KB, "tflm_runs": runs}
    return test


def run_task(budget_kb: tuple[float, float], seed: int, method: str, args: argparse.Namespace) -> dict:
    """One method on one seed under one budget."""
    quiet_library_warnings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    budget = Budget(sram_kb=budget_kb[0], flash_kb=budget_kb[1])
    tag = f"{budget_kb[0]:g}kB-{budget_kb[1]:g}kB"
    out = Path(args.out) / tag / f"{re.sub(r'[^a-z0-9]+', '-', method).strip('-')}-seed{seed}"
    data = load_data("digits", seed=seed)
    common = dict(budget=budget, data=data, trials=args.trials, epochs=args.epochs, final_epochs=args.final_epochs,
                  seed=seed, batch_size=args.batch_size, retrains=args.retrains,
                  label_smoothing=args.label_smoothing, confirm=args.confirm, rhos=args.rho,
                  tester=tflm_tester(out, budget, args.final_epochs, args.batch_size, seed, args.retrains,
                                     args.label_smoothing, args.calib_images))
    t0 = time.time()
    if method == SEARCH:
        r = run_searcher("tpe", out=str(Path(args.out) / tag), threads=args.threads, search_final_epochs=0,
                         study_name=f"tpe-seed{seed}", **common)
    else:
        r = run_baseline(baselines(divisor=4)[method], **common)
    return {**r, "seconds": time.time() - t0}


def fits_table(budgets: list[tuple[float, float]], rhos: list[float], methods: list[str]) -> str:
    """What each hand design becomes under each budget at each rho (alpha, arena, flash by archs.memory)."""
    rows = []
    for sram, flash in budgets:
        budget = Budget(sram_kb=sram, flash_kb=flash)
        for name, spec in baselines(divisor=4).items():
            if name not in methods:
                continue
            for rho in rhos:
                f = fit_alpha(replace(spec, rho=rho), 4.0, analytic_fits(budget), alpha_min=0.02)
                if f is None:
                    rows.append([f"{sram:g} / {flash:g}", name, f"{rho:g} ({replace(spec, rho=rho).input_size} px)",
                                 "does not fit", "", "", ""])
                    continue
                m, c = memory(f), estimate(f)
                rows.append([f"{sram:g} / {flash:g}", name, f"{rho:g} ({f.input_size} px)", f"{f.alpha:g}",
                             f"{m.arena_bytes / KB:.1f}", f"{m.flash_bytes / KB:.1f}", f"{c.params:,}"])
    return tabulate(rows, headers=["budget kB arena / flash", "design", "rho", "alpha fitted", "arena kB",
                                   "flash kB", "params"], tablefmt="github") + "\n(archs.memory; kB = 1,024 bytes)"


def pick_summary(spec: NetSpec) -> str:
    """A pick in a few words: input size, width multiplier, its blocks in order."""
    blocks = " > ".join(f"{st.block}{'x' + str(st.repeats) if st.repeats > 1 else ''}" for st in spec.stages)
    return f"{spec.input_size} px, alpha {spec.alpha:.3g}: {blocks} > {spec.head.kind}"


def report(runs: dict[str, dict[str, list[dict]]], cfg: dict) -> dict:
    """Print one table per budget and the search's margin over every hand design; returns the summary."""
    summary: dict[str, dict] = {}
    for tag, by_method in runs.items():
        sram, flash = parse_budget(tag)
        rows, summary[tag] = [], {}
        for name, rs in by_method.items():
            ok = [r for r in rs if r["feasible"]]
            if not ok:
                rows.append([name, "does not fit at any width", "", "", "", "", "", "", ""])
                summary[tag][name] = {"feasible": False}
                continue
            s = {k: statistics.mean(r[k] for r in ok) for k in ("best_val", "test", "fp32_test", "int8_change")}
            s.update(feasible=True, test_per_seed=[r["test"] for r in ok], specs=[r["spec"] for r in ok],
                     max_arena_bytes=max(r["tflm_arena_bytes"] for r in ok),
                     max_arena_run_bytes=max(r.get("tflm_arena_run_bytes", r["tflm_arena_bytes"]) for r in ok),
                     max_flash_bytes=max(r["tflm_flash_bytes"] for r in ok), all_fit=all(r["fits"] for r in ok),
                     over_budget_share=statistics.mean(r["over_budget_share"] for r in ok))
            summary[tag][name] = s
            rows.append([name, f"{100 * s['best_val']:.2f}", f"{100 * s['test']:.2f}",
                         " / ".join(f"{100 * v:.1f}" for v in s["test_per_seed"]), f"{100 * s['fp32_test']:.2f}",
                         f"{100 * s['int8_change']:+.2f}", f"{s['max_arena_bytes'] / KB:.1f} / {sram:g}",
                         f"{s['max_flash_bytes'] / KB:.1f} / {flash:g}",
                         ("yes" if s["all_fit"] else "NO") + f", {100 * s['over_budget_share']:.0f} %"])
        print(f"\nDigits, budget {sram:g} kB tensor arena and {flash:g} kB flash (kB = 1,024 bytes); rho "
              f"{' '.join(f'{r:g}' for r in cfg['rho'])}; {cfg['trials']} trials x {cfg['epochs']} epochs per method, "
              f"picks retrained {cfg['retrains']}x {cfg['final_epochs']} epochs; mean over seeds {cfg['seeds']}")
        print(tabulate(rows, headers=["method", "val acc % (pick)", "TFLM int8 test acc %", "int8 per seed %",
                                      "fp32 test acc %", "int8 - fp32 points", "TFLM arena used kB (max) / budget",
                                      "flash kB (max) / budget", "picks fit; trials over budget"],
                       tablefmt="github"))
        picks = [[name, r["seed"], pick_summary(NetSpec.from_string(r["spec"])), f"{r['params']:,}",
                  f"{r['tflm_arena_bytes'] / KB:.2f}", f"{r.get('tflm_arena_run_bytes', r['tflm_arena_bytes']) / KB:.2f}",
                  f"{r['tflm_flash_bytes'] / KB:.2f}", f"{100 * r['test']:.2f}"]
                 for name, rs in by_method.items() for r in rs if r["feasible"]]
        print(tabulate(picks, headers=["method", "seed", "pick", "params", "TFLM arena used kB", "arena run in kB",
                                       "flash kB", "TFLM int8 test %"], tablefmt="github"))
        mine = [x for r in by_method.get(SEARCH, []) if r["feasible"] for x in r["test_retrains"]]
        for name, rs in by_method.items():
            other = [x for r in rs if r["feasible"] for x in r["test_retrains"]]
            if name == SEARCH or len(mine) < 2 or len(other) < 2:
                continue
            diff, se = difference(mine, other)
            summary[tag][name]["search_minus_this"] = diff
            print(f"search minus {name}: {100 * diff:+.2f} TFLM int8 test points, standard error {100 * se:.2f} "
                  f"({len(mine)} and {len(other)} retrains)")
        if summary[tag].get(SEARCH, {}).get("feasible"):
            ch = summary[tag][SEARCH]["int8_change"]
            print(f"search winners, fp32 -> int8 in TFLM: {100 * ch:+.2f} points (mean of seeds; target: lose at most 1)")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", nargs="+", default=["16:64"], metavar="SRAM_KB:FLASH_KB",
                    help="tensor-arena and flash budgets, kB (1 kB = 1,024 bytes); default 16:64")
    ap.add_argument("--rho", nargs="+", type=float, default=[1.0, 1.5, 2.0, 3.0],
                    help="resolution multipliers every method may choose (8x8 digits: 1 = 8 px, 2 = 16 px)")
    ap.add_argument("--trials", type=int, default=16, help="trials per method (each trains one network)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--final-epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--retrains", type=int, default=2,
                    help="retrain each pick this many times (different seeds), each exported and run in TFLM")
    ap.add_argument("--calib-images", type=int, default=256, help="training images calibrating the int8 export")
    ap.add_argument("--label-smoothing", type=float, default=SearchConfig.label_smoothing)
    ap.add_argument("--confirm", type=float, default=SearchConfig.confirm,
                    help="share of every method's trials confirming its leaders (as search.run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="(budget, seed, method) runs in parallel processes")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="methods with a word starting with one of these (tpe, lenet, mobilenetv2, mobilenetv1, "
                         "squeezenet); default: the search, LeNet-style and MobileNetV2-style")
    ap.add_argument("--fits", action="store_true",
                    help="print what every hand design becomes under the budgets (no training) and exit")
    ap.add_argument("--summarize", metavar="JSON", default=None, help="print a saved run's tables again")
    ap.add_argument("--json", default=str(ROOT / "results/benchmarks/mcu_search.json"))
    ap.add_argument("--out", default=str(ROOT / "results/benchmarks/mcu_search"),
                    help="studies and exported .tflite files; an existing folder is replaced")
    add_common_args(ap)
    args = ap.parse_args(argv)
    args.seeds = resolve_seeds(args.seeds)
    budgets = [parse_budget(b) for b in args.budgets]
    args.budgets = [f"{s:g}:{f:g}" for s, f in budgets]
    names = [SEARCH, *baselines(divisor=4)]
    methods = [m for m in names if any(w.startswith(k.lower()) for k in args.methods
                                       for w in re.findall(r"[a-z0-9]+", m))] if args.methods else DEFAULT_METHODS
    if not methods:
        raise UserError(f"--methods: none of {' '.join(args.methods)} names a method ({'; '.join(names)})")
    if args.quick:  # every method once, tiny: the code paths run, the figures mean nothing
        args.trials, args.epochs, args.final_epochs, args.retrains, args.seeds = 3, 1, 1, 1, args.seeds[:1]
        args.calib_images = 32
    if args.summarize:
        saved = json.loads(Path(args.summarize).read_text())
        report(saved["runs"], saved["config"])
        return
    if args.fits:
        print(fits_table(budgets, args.rho, methods))
        return
    from compress.tflite import require_mcu

    require_mcu()
    quiet_library_warnings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tasks = [(b, seed, m) for b in budgets for m in methods for seed in args.seeds]
    results: dict[tuple, dict] = {}
    t0 = time.time()

    def save(final: bool = False) -> dict:
        """The JSON holds every finished run, rewritten after each: a run cut short keeps them."""
        runs: dict[str, dict[str, list[dict]]] = {}
        for b, seed, m in tasks:
            if (b, seed, m) in results:
                runs.setdefault(f"{b[0]:g}:{b[1]:g}", {}).setdefault(m, []).append(results[b, seed, m])
        missing = [f"{b[0]:g}:{b[1]:g} {m} seed {seed}" for b, seed, m in tasks if (b, seed, m) not in results]
        extra = {"summary": report(runs, vars(args))} if final else {}
        write_results(args.json, {"config": vars(args), **extra, "runs": runs, "missing": missing,
                                  "seconds": time.time() - t0}, args, args.seeds)
        return runs

    def done(task: tuple, r: dict) -> None:
        b, seed, m = task
        results[task] = r = {"seed": seed, **r}
        msg = "does not fit at any width" if not r["feasible"] else (
            f"val {100 * r['best_val']:.2f}% TFLM int8 test {100 * r['test']:.2f}% (fp32 {100 * r['fp32_test']:.2f}%)"
            f" arena {r['tflm_arena_bytes'] / KB:.1f} kB flash {r['tflm_flash_bytes'] / KB:.1f} kB  {r['spec']}")
        print(f"{b[0]:g} kB / {b[1]:g} kB seed {seed} {m}: {msg}  [{time.time() - t0:.0f} s]", flush=True)
        save()

    run_tasks(tasks, partial(run_task, args=args), args.jobs, done)
    save(final=True)
    print(f"\nwrote {args.json} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    run_cli(main, prog="mcu_search.py")
