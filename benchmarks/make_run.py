"""Time the default search that `make run` starts, and report its winner's test accuracy.

Runs exactly `python -m search.run --budget-mflops 50` (the Makefile's command, default flags) in a fresh
process, with its own study folder under results/benchmarks/, and writes wall-clock seconds, CPU seconds, the
trials' states and the winners' metrics to JSON. The issue's targets: <= 10 minutes on the 2-core CPU machine,
winner test accuracy >= 99% on digits.

    python benchmarks/make_run.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results/benchmarks/make_run"), help="study folder parent")
    ap.add_argument("--json", default=str(ROOT / "results/benchmarks/make_run.json"))
    ap.add_argument("extra", nargs="*", help="extra search.run flags (none: the Makefile's command as is)")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "search.run", "--budget-mflops", "50", "--out", str(out), "--study-name", "default",
           "--quiet", *args.extra]
    print("running:", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"search failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    print(proc.stdout)
    study = out / "default"
    best = json.loads((study / "best/metrics.json").read_text())
    winners = []
    for m in sorted(study.glob("top/*/metrics.json")):
        winners.append(json.loads(m.read_text()))
    import pandas as pd

    df = pd.read_csv(study / "trials.csv")
    res = {"command": "python -m search.run --budget-mflops 50", "wall_seconds": wall,
           "cpu_seconds": cpu.ru_utime + cpu.ru_stime, "cpus": os.cpu_count(), "machine": platform.processor(),
           "trials_by_state": df["state"].value_counts().to_dict(),
           "best": {k: best.get(k) for k in ("spec", "macs", "params", "latency_ms", "val_acc", "test_acc",
                                             "retrain_seconds")},
           "others": [{k: w.get(k) for k in ("macs", "params", "val_acc", "test_acc")} for w in winners]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))
    print(f"make run equivalent: {wall / 60:.2f} min wall, {res['cpu_seconds'] / 60:.2f} min CPU on {os.cpu_count()} "
          f"cores; winner {best['macs'] / 1e6:.3f} MFLOPs, {best['params']:,} params, val "
          f"{100 * best['val_acc']:.2f}%, test {100 * best['test_acc']:.2f}%")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
