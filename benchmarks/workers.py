"""Throughput and reliability of several workers on one study.

For each worker count K (default 1, 2, 3) it runs a fresh tiny study of --trials trials (digits, --budget-mflops
0.02, two epochs, random sampler, no pruner, winners retrained for 0 epochs) with `python -m search.run
--n-workers K` on the default SQLite storage, and measures:
- trials/min over the trial phase (first trial start to last trial end, from the storage's timestamps) and over
  the whole command (start-up, data loading, winners and ONNX export included),
- kills survived and trials lost: for each K >= 2 a second study in which one worker process is SIGKILLed in
  the middle of its first trial (unless --no-kill); afterwards the study must hold exactly --trials complete
  trials, nothing RUNNING or WAITING, unique trial numbers, a trials.csv equal to the storage. Lost = --trials
  minus complete trials.
With --storage postgresql://... (or EDGENAS_PG_URL and --pg) the same is measured for K separately started
workers on one PostgreSQL study, as on K machines (the killed one found through its missing heartbeats).

Prints a table and writes JSON (default results/benchmarks/workers.json). Timings depend on the machine and its
load; the JSON records the CPU count and load average.

    python benchmarks/workers.py                  # 1, 2, 3 local workers, 30 trials each
    python benchmarks/workers.py --pg --workers 3 # also 3 workers on the PostgreSQL server in EDGENAS_PG_URL
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from tabulate import tabulate  # noqa: E402

from benchmarks._common import add_common_args, write_results  # noqa: E402
from search.storage import mask  # noqa: E402

HEARTBEAT = {"EDGENAS_HEARTBEAT_INTERVAL": "1", "EDGENAS_HEARTBEAT_GRACE": "8"}


def tiny_args(trials: int, epochs: int) -> list[str]:
    return ["--budget-mflops", "0.02", "--trials", str(trials), "--epochs", str(epochs), "--final-epochs", "0",
            "--top-k", "1", "--pruner", "none", "--sampler", "random", "--quiet"]


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **HEARTBEAT,
            **(extra or {})}


def start(args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=ROOT, env=env(extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_trials(storage: Any, name: str) -> list:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return []
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if "spec" in t.user_attrs and "worker" in t.user_attrs]


def kill_one_mid_trial(get_storage, name: str, pids: set[int] | None, procs: list[subprocess.Popen],
                       timeout: float = 300) -> int | None:
    """SIGKILL the worker of the first RUNNING trial that is training (a pid in `pids`, if given); its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs):
            return None
        storage = get_storage()
        for t in running_trials(storage, name) if storage is not None else []:
            pid = t.user_attrs["worker"]["pid"]
            if pids is None or pid in pids:
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.05)
    return None


def audit(storage: Any, name: str, trials: int, csv_paths: list[Path]) -> dict[str, Any]:
    """What the study ended with."""
    study = optuna.load_study(study_name=name, storage=storage)
    ts = study.get_trials(deepcopy=False)
    numbers = [t.number for t in ts]
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    starts = [t.datetime_start for t in complete if t.datetime_start]
    ends = [t.datetime_complete for t in complete if t.datetime_complete]
    phase_s = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    csv_ok = True
    for p in csv_paths:
        df = pd.read_csv(p)
        csv_ok &= list(df["number"]) == numbers and list(df["state"]) == [t.state.name for t in ts]
    return {
        "complete": len(complete),
        "trials_lost": trials - len(complete),
        "running_left": sum(t.state == TrialState.RUNNING for t in ts),
        "waiting_left": sum(t.state == TrialState.WAITING for t in ts),
        "failed": sum(t.state == TrialState.FAIL for t in ts),
        "retried": sum("retry_of" in t.user_attrs for t in ts),
        "duplicated_numbers": len(numbers) - len(set(numbers)),
        "infeasible_skipped": sum(bool(t.user_attrs.get("infeasible")) for t in ts),
        "trials_csv_matches_storage": bool(csv_ok),
        "trial_phase_s": phase_s,
    }


def run_local(k: int, trials: int, epochs: int, kill: bool, tmp: Path) -> dict[str, Any]:
    name = f"w{k}{'k' if kill else ''}"
    d = tmp / name
    t0 = time.perf_counter()
    p = start([*tiny_args(trials, epochs), "--n-workers", str(k), "--study-name", name, "--out", str(tmp)])
    url = f"sqlite:///{d / 'study.db'}"
    holder: dict[str, Any] = {}

    def get_storage():
        if "s" not in holder and (d / "config.json").exists():
            holder["s"] = optuna.storages.RDBStorage(url)
        return holder.get("s")

    killed = None
    if kill:
        # a worker process, not the parent (which only watches); with K = 1 that is the single worker
        killed = kill_one_mid_trial(get_storage, name, None, [p])
    out, err = p.communicate(timeout=1800)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"--n-workers {k} failed ({p.returncode}): {mask(err)[-2000:]}")
    res = audit(optuna.storages.RDBStorage(url), name, trials, [d / "trials.csv"])
    res.update(storage="sqlite", workers=k, trials=trials, kills=int(killed is not None),
               kills_survived=int(killed is not None and res["trials_lost"] == 0 and not res["running_left"]),
               wall_s=wall, best_saved=(d / "best" / "model.pt").is_file(),
               database_locked_errors=(out + err).count("database is locked"))
    return res


def run_postgres(url: str, k: int, trials: int, epochs: int, kill: bool, tmp: Path) -> dict[str, Any]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    storage = optuna.storages.RDBStorage(url)
    outs = [tmp / f"pg-m{i}" for i in range(k)]
    t0 = time.perf_counter()
    procs = [start([*tiny_args(trials, epochs), "--storage", url, "--study-name", name, "--out", str(outs[i])],
                   {"EDGENAS_HOST_ID": f"bench-machine-{i}"}) for i in range(k)]
    killed = None
    try:
        if kill:
            killed = kill_one_mid_trial(lambda: storage, name, {procs[-1].pid}, procs)
        results = [p.communicate(timeout=1800) for p in procs]
        wall = time.perf_counter() - t0
        survivors = [i for i, p in enumerate(procs) if p.pid != killed]
        for i in survivors:
            if procs[i].returncode != 0:
                raise SystemExit(f"postgres worker {i} failed ({procs[i].returncode}): {mask(results[i][1])[-2000:]}")
        res = audit(storage, name, trials, [outs[i] / name / "trials.csv" for i in survivors])
        res.update(storage="postgresql", workers=k, trials=trials, kills=int(killed is not None),
                   kills_survived=int(killed is not None and res["trials_lost"] == 0 and not res["running_left"]),
                   wall_s=wall, best_saved=sum((o / name / "best" / "model.pt").is_file() for o in outs) == 1)
        return res
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,3", help="comma-separated worker counts (default 1,2,3)")
    ap.add_argument("--trials", type=int, default=30, help="trials per study (default 30)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per trial (default 2)")
    ap.add_argument("--no-kill", action="store_true",
                    help="skip the reliability runs (for each K >= 2, one more study in which a worker is SIGKILLed)")
    ap.add_argument("--storage", default=None, help="also measure separately started workers on this "
                                                   "PostgreSQL URL (its password is never printed)")
    ap.add_argument("--pg", action="store_true", help="use EDGENAS_PG_URL as --storage")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "workers.json"))
    add_common_args(ap, seeds=False)
    a = ap.parse_args(argv)
    if a.quick:  # two workers, three trials, no kill (tests/test_crash.py kills workers): the rates mean nothing
        a.workers, a.trials, a.epochs, a.no_kill = "2", 3, 1, True
    ks = [int(x) for x in a.workers.split(",") if x.strip()]
    url = a.storage or (os.environ.get("EDGENAS_PG_URL") if a.pg else None)
    if a.pg and not url:
        raise SystemExit("--pg needs EDGENAS_PG_URL (see .ci/postgres.sh)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edgenas-bench-workers-") as tmp:
        plan = [("local", k, False) for k in ks]  # throughput: nothing killed
        if not a.no_kill:
            plan += [("local", k, True) for k in ks if k >= 2]  # reliability: one worker SIGKILLed
        if url:
            pg_ks = [k for k in ks if k >= 2] or [max(ks)]
            plan += [("postgresql", k, False) for k in pg_ks]
            if not a.no_kill:
                plan += [("postgresql", k, True) for k in pg_ks]
        for kind, k, kill in plan:
            what = f"--n-workers {k}" if kind == "local" else f"{k} separately started workers on PostgreSQL"
            print(f"{what}{' (one worker SIGKILLed mid-trial)' if kill else ''} ...", flush=True)
            rows.append(run_local(k, a.trials, a.epochs, kill, Path(tmp)) if kind == "local"
                        else run_postgres(url, k, a.trials, a.epochs, kill, Path(tmp)))
    for r in rows:
        r["trials_per_min_trial_phase"] = 60 * r["complete"] / r["trial_phase_s"] if r["trial_phase_s"] > 0 else None
        r["trials_per_min_wall"] = 60 * r["complete"] / r["wall_s"]
    table = [[r["storage"], r["workers"], r["trials"], r["kills"], r["kills_survived"], r["trials_lost"],
              r["running_left"], r["duplicated_numbers"], "yes" if r["trials_csv_matches_storage"] else "NO",
              f"{r['trials_per_min_trial_phase']:.1f}", f"{r['trials_per_min_wall']:.1f}", f"{r['wall_s']:.0f}"]
             for r in rows]
    print(tabulate(table, headers=["storage", "workers", "trials", "kills", "kills survived", "trials lost",
                                   "RUNNING left", "dup. numbers", "csv = storage", "trials/min (trials)",
                                   "trials/min (wall)", "wall s"], tablefmt="github"))
    info = {"cpu_count": os.cpu_count(), "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(), "python": platform.python_version(),
            "optuna": optuna.__version__, "heartbeat": HEARTBEAT, "epochs": a.epochs,
            "command": mask(" ".join(["python", "benchmarks/workers.py",
                                      *(argv if argv is not None else sys.argv[1:])]))}
    out = write_results(a.out, {"config": info, "runs": rows}, a)
    print(f"wrote {out}")
    bad = [r for r in rows if r["trials_lost"] or r["running_left"] or r["duplicated_numbers"]
           or not r["trials_csv_matches_storage"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
