"""Where `archs.memory`'s time goes: each of its parts timed alone on N seeded random specs, beside `estimate`.

`memory(spec)` = the plan (`resolve`, shared with `estimate`) + the converted graph built op by op + tensor
lifetimes + TFLM's greedy planner + the planning room + the runtime-overhead (tail) model + the file's layout
(flash). Each part is timed on inputs prepared beforehand (best of 5 rounds, as `benchmarks/memory_model.py`
times `memory` and `estimate`); the JSON keeps the median and the mean per spec of every part, in microseconds.
For whoever works on the issue's "a few times `estimate`" target: it says which part to work on.

It also measures what `memory` costs the search itself: N candidates drawn from the default space (digits, 8 px,
rho 1-3) and fitted by `search.space.sample` to the microcontroller budgets of benchmarks/mcu_search.py (16 kB
arena, 64 kB flash): how many times the bisection calls `memory` per candidate and the time that takes, beside
the whole sample (means: a draw that fits at the top alpha costs one call, one that is bisected a dozen or more).

    python benchmarks/memory_parts.py --n 200 --seed 51
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import archs.memory as M  # noqa: E402
from archs import estimate  # noqa: E402
from archs.plan import resolve  # noqa: E402
from benchmarks._common import add_common_args, write_results  # noqa: E402
from memory_model import _time  # noqa: E402
from specgen import random_specs  # noqa: E402


def in_search(n: int, seed: int, sram_kb: float = 16, flash_kb: float = 64) -> dict:
    """`memory`'s calls and time per candidate while `search.space.sample` fits N random draws (seeded random
    sampler) to an arena and a flash budget: the median and mean per candidate of the calls, of their time and of
    the whole sample's (milliseconds), and memory's share of the sampling time."""
    import optuna

    import search.space as S

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    calls, spent = [0], [0.0]

    def timed(spec):
        t = time.perf_counter()
        try:
            return M.memory(spec)
        finally:
            spent[0] += time.perf_counter() - t
            calls[0] += 1

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    space, shape, budget = S.SearchSpace(rho=(1.0, 1.5, 2.0, 3.0)), S.DataShape(1, 8, 10), \
        S.Budget(sram_kb=sram_kb, flash_kb=flash_kb)
    rows = []
    original, S.memory = S.memory, timed  # the name analytic_fits calls
    try:
        for _ in range(n):
            trial = study.ask()
            calls[0], spent[0] = 0, 0.0
            t = time.perf_counter()
            cand = S.sample(trial, space, shape, budget)
            rows.append((time.perf_counter() - t, calls[0], spent[0], cand is not None))
    finally:
        S.memory = original
    per = {"sample_ms": [1e3 * r[0] for r in rows], "memory_calls": [r[1] for r in rows],
           "memory_ms": [1e3 * r[2] for r in rows]}
    out = {k: {"median": statistics.median(v), "mean": statistics.mean(v)} for k, v in per.items()}
    out["memory_share_of_sample"] = sum(r[2] for r in rows) / sum(r[0] for r in rows)
    out.update({"candidates": n, "fitted": sum(r[3] for r in rows), "budget_kb": [sram_kb, flash_kb],
                "rho": list(space.rho)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="number of random specs (default 200)")
    ap.add_argument("--seed", type=int, default=51)
    ap.add_argument("--repeats", type=int, default=100, help="calls per part and spec (best of 5 rounds)")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "memory_parts.json"))
    add_common_args(ap, seeds=False)
    args = ap.parse_args(argv)
    if args.quick:  # five specs of a development seed: the code paths run, the figures mean nothing
        args.n, args.repeats, args.seed = 5, 5, 1
    from tabulate import tabulate

    specs = random_specs(args.n, args.seed)
    graphs = [M._build(s) for s in specs]
    buffers = [M._lifetimes(g) for g in graphs]
    parts = {  # name -> (function, its input per spec)
        "memory (all)": (M.memory, specs),
        "estimate": (estimate, specs),
        "plan (resolve)": (resolve, specs),
        "plan + graph": (M._build, specs),
        "lifetimes": (M._lifetimes, graphs),
        "greedy planner": (M.greedy_arena, buffers),
        "planning room": (M.planning_room, graphs),
        "tail model": (lambda g: M._linear(M.features(g), M.TAIL_COST, M.TAIL_SCALE), graphs),
        "flash layout": (M.flash_bytes, graphs),
    }
    us = {name: [1e6 * _time(fn, x, args.repeats) for x in xs] for name, (fn, xs) in parts.items()}
    summary = {name: {"median_us": statistics.median(v), "mean_us": statistics.mean(v)} for name, v in us.items()}
    summary["graph alone"] = {k: summary["plan + graph"][k] - summary["plan (resolve)"][k] for k in ("median_us", "mean_us")}
    summary["memory / estimate (medians)"] = summary["memory (all)"]["median_us"] / summary["estimate"]["median_us"]
    search = in_search(args.n, args.seed)
    out = write_results(args.out, {"specs": len(specs), "summary": summary, "in_search": search}, args, [args.seed])
    rows = [[k, f"{v['median_us']:.1f}", f"{v['mean_us']:.1f}"] for k, v in summary.items() if isinstance(v, dict)]
    print(tabulate(rows, headers=["part", "median us", "mean us"], tablefmt="github"))
    print(f"memory / estimate (medians): {summary['memory / estimate (medians)']:.1f}x.")
    print(f"In the search ({search['candidates']} candidates fitted by search.space.sample to "
          f"{search['budget_kb'][0]:g} kB arena / {search['budget_kb'][1]:g} kB flash, 1 kB = 1,024 bytes; "
          f"{search['fitted']} fit): memory called {search['memory_calls']['mean']:.1f} times per candidate "
          f"(mean), {search['memory_ms']['mean']:.2f} ms of the {search['sample_ms']['mean']:.2f} ms a "
          f"sample takes ({100 * search['memory_share_of_sample']:.0f} % of the sampling time). JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
