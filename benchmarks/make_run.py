"""Time the default search that `make run` starts, and report its winner's test accuracy.

Runs exactly `python -m search.run --budget-mflops 50` (the Makefile's command, default flags) in a fresh
process, with its own study folder under results/benchmarks/, and writes wall-clock seconds, CPU seconds, the
trials' states and the winners' metrics to JSON. With --seeds it runs the command once per seed (`--seed N`
added; the seed also draws the data split), one after the other. The issue's targets: <= 10 minutes on the
2-core CPU machine, winner test accuracy >= 99% on digits.

    python benchmarks/make_run.py                                   # the Makefile's command (seed 0: development)
    python benchmarks/make_run.py --seeds report --shared-machine   # the README's figures
    python benchmarks/make_run.py --quick                           # smoke run, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import DEV_SEEDS, add_common_args, resolve_seeds, write_results  # noqa: E402

QUICK_FLAGS = ["--trials", "2", "--epochs", "1", "--final-epochs", "1", "--top-k", "1", "--no-warm-start"]


def run_once(out: Path, flags: list[str]) -> dict:
    """One `search.run --budget-mflops 50` in a fresh process: wall and CPU seconds, trial states, winners."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "search.run", "--budget-mflops", "50", "--out", str(out), "--study-name", "default",
           "--quiet", *flags]
    print("running:", " ".join(cmd[1:]), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"search failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    print(proc.stdout)
    study = out / "default"
    best = json.loads((study / "best/metrics.json").read_text())
    winners = [json.loads(m.read_text()) for m in sorted(study.glob("top/*/metrics.json"))]
    import pandas as pd

    df = pd.read_csv(study / "trials.csv")
    res = {"command": " ".join(["python -m search.run --budget-mflops 50", *flags]), "wall_seconds": wall,
           "cpu_seconds": (cpu.ru_utime - before.ru_utime) + (cpu.ru_stime - before.ru_stime),
           "trials_by_state": df["state"].value_counts().to_dict(),
           "confirmation_trials": int(df["confirms"].notna().sum()) if "confirms" in df else None,
           "best": {k: best.get(k) for k in ("trial", "spec", "macs", "params", "latency_ms", "val_acc", "val_evals",
                                             "test_acc", "retrain_seconds")},
           "others": [{k: w.get(k) for k in ("trial", "macs", "params", "val_acc", "test_acc")} for w in winners]}
    print(f"make run equivalent: {wall / 60:.2f} min wall, {res['cpu_seconds'] / 60:.2f} min CPU on {os.cpu_count()} "
          f"cores; winner {best['macs'] / 1e6:.3f} MFLOPs, {best['params']:,} params, val "
          f"{100 * best['val_acc']:.2f}%, test {100 * best['test_acc']:.2f}%", flush=True)
    return res


def summarize(runs: dict[str, dict]) -> dict:
    """Wall clock and the winners' test accuracy over the seeds of `runs`."""
    walls = [r["wall_seconds"] for r in runs.values()]
    tests = [r["best"]["test_acc"] for r in runs.values()]
    return {"wall_minutes_median": statistics.median(walls) / 60, "wall_minutes_max": max(walls) / 60,
            "winner_test_acc_per_seed": tests, "winner_test_acc_mean": statistics.mean(tests),
            "winner_test_acc_min": min(tests)}


def merge(paths: list[str], out: str, args: argparse.Namespace) -> None:
    """One JSON from runs of different seeds made separately (in parallel); each part keeps its own `meta`."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    runs = {k: v for part in parts for k, v in part["runs"].items()}
    seeds = sorted(int(k) for k in runs)
    path = write_results(out, {"benchmark": "make_run", "summary": summarize(runs), "runs": runs,
                               "parts": [{"file": Path(p).name, "meta": part["meta"]} for p, part in zip(paths, parts)]},
                         args, seeds)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results/benchmarks/make_run"), help="study folder parent")
    ap.add_argument("--json", default=str(ROOT / "results/benchmarks/make_run.json"))
    ap.add_argument("--seeds", nargs="+", default=None,
                    help="run once per seed ('dev', 'report' or integers); default: the Makefile's command as is "
                         f"(seed {DEV_SEEDS[0]}, a development seed)")
    add_common_args(ap, seeds=False)
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="write one JSON (--json) from these runs of different seeds, made separately; runs nothing")
    ap.add_argument("extra", nargs="*", help="extra search.run flags (none: the Makefile's command as is)")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.json, args)
        return
    extra = [*args.extra, *(QUICK_FLAGS if args.quick else [])]
    seeds = resolve_seeds(args.seeds) if args.seeds else None
    plan = [(DEV_SEEDS[0], Path(args.out), extra)] if seeds is None else \
        [(s, Path(args.out) / f"seed{s}", [*extra, "--seed", str(s)]) for s in seeds]
    runs: dict[str, dict] = {}
    for seed, out, flags in plan:  # the JSON is rewritten after every seed: a run cut short keeps what it measured
        runs[str(seed)] = run_once(out, flags)
        summary = summarize(runs)
        tests = summary["winner_test_acc_per_seed"]
        path = write_results(args.json, {"benchmark": "make_run", "summary": summary, "runs": runs}, args,
                             [int(k) for k in runs])
    print(f"winner test accuracy per seed: {' / '.join(f'{100 * t:.2f}' for t in tests)} %; wall clock median "
          f"{summary['wall_minutes_median']:.2f} min (max {summary['wall_minutes_max']:.2f})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
