"""Faults real clusters produce, each produced for real against tiny studies, and what is left afterwards.

Every scenario runs fresh tiny studies (digits, --budget-mflops 0.02, --trials N, random sampler, no pruner) with
`python -m search.run` and checks the study at the end: trials lost (N minus the trials that count), trials
duplicated (two sampled trials with the same parameters, or more than N counted), trials RUNNING or queued,
whether trials.csv equals the storage, whether `--resume` (where the fault stopped the run) completed, and the
seconds to recover (outages: from the database being back to the workers' "reachable again" line; stop
signals: from the signal to the exit of the last process; full disk: the --resume run once space is back).

Faults: a PostgreSQL server of our own (tests/postgres_helpers.OwnPostgres: own data folder and port, so a shared
test server is never touched) stopped for --outage-s seconds (default 60) under two --n-workers workers, and
restarted in under a second under two separately started workers; SQLite locked by another process for 20 s
with a 5 s busy timeout; SIGTERM to a single worker and to an --n-workers parent; SIGKILL to an --n-workers parent;
a full tmpfs --out while a trial trains and while the winners are retrained; --resume with a tighter budget;
three identical commands started together on the default SQLite storage; a read-only --out, an --out that is a
file; a second compress.run into the same --out.

    python benchmarks/faults.py                   # everything (about 10-15 min on 2 busy cores)
    python benchmarks/faults.py --outage-s 10     # a shorter outage
Prints a table and writes JSON (default results/benchmarks/faults.json). Needs root for the tmpfs rows (skipped
otherwise) and PostgreSQL's server binaries for the PostgreSQL rows.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from tabulate import tabulate  # noqa: E402

from benchmarks._common import add_common_args, write_results  # noqa: E402

HEARTBEAT = {"EDGENAS_HEARTBEAT_INTERVAL": "2", "EDGENAS_HEARTBEAT_GRACE": "15"}  # grace < the outage


def tiny(trials: int, *extra: str) -> list[str]:
    return ["--budget-mflops", "0.02", "--trials", str(trials), "--epochs", "3", "--final-epochs", "1", "--top-k",
            "1", "--pruner", "none", "--sampler", "random", "--quiet", *extra]


class Run:
    """`python -m search.run ARGS` with stderr lines time-stamped as they arrive."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, module: str = "search.run"):
        self.p = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                       "PYTHONPATH": str(ROOT), **HEARTBEAT, **(env or {})},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait(self, timeout: float = 900) -> int:
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self._reader.join(timeout=10)
        return self.p.returncode

    def first(self, text: str) -> float | None:
        return next((t for t, ln in self.lines if text in ln), None)


def sqlite_url(d: Path) -> str:
    return f"sqlite:///{d / 'study.db'}"


def trials_of(url: str, name: str) -> list:
    st = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name=name, storage=st).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        st.engine.dispose()


def wait_training(url_ready: Callable[[], str | None], name: str, runs: list[Run], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r.p.poll() is not None for r in runs):
            last = " | ".join(ln for r in runs for _, ln in r.lines[-3:])
            raise RuntimeError(f"a worker ended before the fault: {last}")
        url = url_ready()
        if url and [t for t in trials_of(url, name) if t.state == TrialState.RUNNING and "spec" in t.user_attrs]:
            return
        time.sleep(0.1)
    raise RuntimeError("no trial started")


def wait_counted(url: str, name: str, k: int, runs: list[Run], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(counted(trials_of(url, name))) >= k:
            return
        if all(r.p.poll() is not None for r in runs):
            return
        time.sleep(0.05)


def counted(ts) -> list:
    return [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not t.user_attrs.get("infeasible")]


def verdict(url: str, name: str, n: int, csv: Path | None) -> dict[str, Any]:
    ts = trials_of(url, name)
    c = counted(ts)
    sampled = [tuple(sorted(t.params.items())) for t in ts
               if "retry_of" not in t.user_attrs and "confirms" not in t.user_attrs and "template" not in t.user_attrs]
    dup = (len(sampled) - len(set(sampled))) + max(0, len(c) - n)
    same = None
    if csv is not None:
        try:
            df = pd.read_csv(csv)
            same = list(df["number"]) == [t.number for t in ts] and list(df["state"]) == [t.state.name for t in ts]
        except (OSError, KeyError, pd.errors.EmptyDataError):
            same = False
    return {"lost": max(0, n - len(c)), "duplicated": dup,
            "running": sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in ts), "csv_equal": same,
            "running_only": sum(t.state == TrialState.RUNNING for t in ts),
            "failed": sum(t.state == TrialState.FAIL for t in ts)}


def children(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(proc.name))
    return out


def alive(pids: list[int]) -> list[int]:
    out = []
    for q in pids:
        with contextlib.suppress(OSError, IndexError):
            if Path(f"/proc/{q}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(q)
    return out


def resume(args: list[str]) -> tuple[int, float]:
    t0 = time.monotonic()
    r = Run([*args, "--resume"])
    return r.wait(), time.monotonic() - t0


# ----- scenarios: each returns a row ------------------------------------------------------------------------------
def pg_outage(tmp: Path, n: int, seconds: float, restart: bool) -> dict[str, Any]:
    from postgres_helpers import OwnPostgres

    with OwnPostgres() as pg:
        name = "outage"
        if restart:  # two separately started workers, as on two machines
            runs = [Run(tiny(n, "--storage", pg.url, "--study-name", name, "--out", str(tmp / f"m{i}")),
                        env={"EDGENAS_HOST_ID": f"machine-{i}"}) for i in range(2)]
        else:
            runs = [Run(tiny(n, "--storage", pg.url, "--study-name", name, "--out", str(tmp), "--n-workers", "2"))]
        wait_training(lambda: pg.url, name, runs)
        if restart:
            pg.stop("fast")
            pg.start()
        else:
            pg.stop("immediate")
            time.sleep(seconds)
            pg.start()
        back = time.monotonic()
        codes = [r.wait() for r in runs]
        seen = [r.first("reachable again") for r in runs]
        recover = max((t - back for t in seen if t is not None), default=None)
        csv = (tmp / "m0" if restart else tmp) / name / "trials.csv"
        v = verdict(pg.url, name, n, csv)
        said = all(r.first("unreachable") is not None for r in runs) or restart
    fault = "PostgreSQL restart (< 1 s)" if restart else f"PostgreSQL down {seconds:g} s"
    return {"fault": fault, "workers": "2 separate" if restart else "2 (--n-workers)", "exit": codes, **v,
            "resumed": None, "recover_s": recover, "orphans": 0,
            "note": "unreachable/back lines seen" if said and all(s is not None for s in seen) else "no outage seen"}


def sqlite_locked(tmp: Path, n: int, hold_s: float = 20.0, busy_s: float = 5.0) -> dict[str, Any]:
    d, name = tmp / "locked", "locked"
    runs = [Run(tiny(n, "--study-name", name, "--out", str(tmp), "--n-workers", "2"),
                env={"EDGENAS_SQLITE_BUSY_TIMEOUT": str(busy_s)})]
    wait_training(lambda: sqlite_url(d) if (d / "config.json").exists() else None, name, runs)
    con = sqlite3.connect(d / "study.db", timeout=60, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    time.sleep(hold_s)
    con.execute("COMMIT")
    con.close()
    back = time.monotonic()
    codes = [r.wait() for r in runs]
    seen = runs[0].first("reachable again")
    return {"fault": f"SQLite locked {hold_s:g} s (busy timeout {busy_s:g} s)", "workers": "2 (--n-workers)",
            "exit": codes, **verdict(sqlite_url(d), name, n, d / "trials.csv"), "resumed": None,
            "recover_s": None if seen is None else seen - back, "orphans": 0, "note": ""}


def stop_signal(tmp: Path, n: int, sig: int, workers: int) -> dict[str, Any]:
    name = f"sig{sig}w{workers}"
    d = tmp / name
    args = tiny(n, "--study-name", name, "--out", str(tmp), *(["--n-workers", str(workers)] if workers > 1 else []))
    r = Run(args)
    wait_training(lambda: sqlite_url(d) if (d / "config.json").exists() else None, name, [r])
    kids = children(r.p.pid)
    t0 = time.monotonic()
    r.p.send_signal(sig)
    code = r.wait()
    deadline = time.monotonic() + 60
    while alive(kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = time.monotonic() - t0
    orphans = len(alive(kids))
    before = verdict(sqlite_url(d), name, n, d / "trials.csv")
    rc, _ = resume(args)
    v = verdict(sqlite_url(d), name, n, d / "trials.csv")
    return {"fault": f"{signal.Signals(sig).name} to {'the --n-workers parent' if workers > 1 else 'a single worker'}",
            "workers": f"{workers} (--n-workers)" if workers > 1 else "1", "exit": [code, rc], **v,
            "resumed": rc == 0, "recover_s": stopped, "orphans": orphans,
            "note": f"RUNNING after the stop: {before['running_only']}"}


def full_disk(tmp: Path, n: int, when: str) -> dict[str, Any]:
    disk = tmp / f"disk-{when}"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        return {"fault": f"full disk ({when})", "skipped": "cannot mount a tmpfs (needs root)"}
    try:
        name = "full"
        d = disk / name
        args = tiny(n, "--no-warm-start", "--study-name", name, "--out", str(disk))
        r = Run(args)
        ready = lambda: sqlite_url(d) if (d / "config.json").exists() else None  # noqa: E731
        if when == "trial":
            wait_training(ready, name, [r])
        else:
            while ready() is None:
                time.sleep(0.05)
            wait_counted(sqlite_url(d), name, n, [r])
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=64k"], capture_output=True)
        code = r.wait()
        line = r.lines[-1][1] if r.lines else ""
        partial = [str(p) for p in disk.rglob("*") if p.name.endswith((".tmp", ".partial"))]
        before = verdict(sqlite_url(d), name, n, None)
        (disk / "filler").unlink()
        rc, took = resume(args)
        v = verdict(sqlite_url(d), name, n, d / "trials.csv")
        ok_line = "No space left on device" in line and "Traceback" not in "".join(ln for _, ln in r.lines)
        return {"fault": f"full disk ({'while a trial trains' if when == 'trial' else 'while the winners retrain'})",
                "workers": "1", "exit": [code, rc], **v, "resumed": rc == 0, "recover_s": took, "orphans": 0,
                "note": (f"one-line ENOSPC error; partial files: {len(partial)}; RUNNING after the stop: "
                         f"{before['running_only']}") if ok_line else f"unexpected stderr: {line[:80]}"}
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def changed_budget(tmp: Path, n: int) -> dict[str, Any]:
    name = "changed"
    d = tmp / name
    first = Run(tiny(n, "--study-name", name, "--out", str(tmp)))
    c1 = first.wait()
    before = (d / "config.json").read_bytes()
    tighter = [a if a != "0.02" else "0.005" for a in tiny(n + 4, "--study-name", name, "--out", str(tmp))]
    r = Run([*tighter, "--resume"])
    c2 = r.wait()
    line = r.lines[-1][1] if r.lines else ""
    v = verdict(sqlite_url(d), name, n, d / "trials.csv")
    return {"fault": "--resume with a tighter budget", "workers": "1", "exit": [c1, c2], **v, "resumed": None,
            "recover_s": None, "orphans": 0,
            "note": ("refused in one line, config.json unchanged" if c2 == 2 and "--budget-mflops" in line
                     and (d / "config.json").read_bytes() == before else f"unexpected: {line[:80]}")}


def started_together(tmp: Path, n: int) -> dict[str, Any]:
    name = "together"
    d = tmp / name
    runs = [Run(tiny(n, "--no-warm-start", "--confirm", "0", "--study-name", name, "--out", str(tmp)))
            for _ in range(3)]
    codes = [r.wait() for r in runs]
    v = verdict(sqlite_url(d), name, n, d / "trials.csv")
    pids = {t.user_attrs.get("worker", {}).get("pid") for t in trials_of(sqlite_url(d), name)}
    return {"fault": "3 identical commands started together", "workers": "3 separate", "exit": codes, **v,
            "resumed": None, "recover_s": None, "orphans": 0, "note": f"{len(pids - {None})} workers shared the study"}


def bad_out(tmp: Path, n: int, kind: str) -> dict[str, Any]:
    f = tmp / f"afile-{kind}"
    f.write_text("x\n")
    out, stack = f, contextlib.ExitStack()
    if kind == "read-only":
        out = tmp / "ro"
        out.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out)],
                                               capture_output=True).returncode != 0:
            out.chmod(0o555)
        else:
            stack.callback(lambda: subprocess.run(["umount", "-l", str(out)], capture_output=True))
    with stack:
        r = Run(tiny(n, "--study-name", "x", "--out", str(out)))
        code = r.wait()
    lines = [ln for _, ln in r.lines if ln.strip()]
    return {"fault": {"file": "--out is an existing file", "read-only": "--out read-only"}[kind], "workers": "1",
            "exit": [code], "lost": None, "duplicated": None, "running": 0, "csv_equal": None, "resumed": None,
            "recover_s": None, "orphans": 0,
            "note": f"one line: {lines[0][:90]}" if len(lines) == 1 else f"{len(lines)} lines"}


def compress_rerun(tmp: Path) -> dict[str, Any]:
    r = Run(tiny(2, "--epochs", "2", "--study-name", "base", "--out", str(tmp)))
    r.wait()
    best, out = tmp / "base" / "best", tmp / "cmp"
    a = Run([str(best), "--prune", "0.5", "--finetune-epochs", "0", "--no-latency", "--quiet", "--out", str(out)],
            module="compress.run")
    c1 = a.wait()
    before = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    b = Run([str(best), "--quantize", "dynamic", "--no-latency", "--quiet", "--out", str(out)], module="compress.run")
    c2 = b.wait()
    after = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file() and "run-2" not in str(p)}
    kept = sum(1 for k, v in before.items() if after.get(k) == v)
    return {"fault": "compress.run twice into one --out", "workers": "1", "exit": [c1, c2],
            "lost": len(before) - kept, "duplicated": None, "running": None, "csv_equal": None, "resumed": None,
            "recover_s": None, "orphans": 0,
            "note": f"first run's {kept}/{len(before)} files unchanged; second in run-2: "
                    f"{(out / 'run-2' / 'stages.csv').is_file()}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=6, help="trials per study (default 6)")
    ap.add_argument("--outage-s", type=float, default=60.0, help="length of the PostgreSQL outage (default 60 s)")
    ap.add_argument("--only", default="", help="comma-separated scenario names to run (default: all)")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "faults.json"))
    add_common_args(ap, seeds=False)
    a = ap.parse_args(argv)
    if a.quick:  # a smoke run: SIGTERM and an unwritable --out on 2-trial studies
        a.only, a.trials = a.only or "sigterm-1,out-file", 2
    n = a.trials
    scenarios: dict[str, Callable[[Path], dict[str, Any]]] = {
        "pg-outage": lambda t: pg_outage(t, n, a.outage_s, restart=False),
        "pg-restart": lambda t: pg_outage(t, n, 0, restart=True),
        "sqlite-locked": lambda t: sqlite_locked(t, n),
        "sigterm-1": lambda t: stop_signal(t, n, signal.SIGTERM, 1),
        "sigterm-parent": lambda t: stop_signal(t, n, signal.SIGTERM, 2),
        "sigkill-parent": lambda t: stop_signal(t, n, signal.SIGKILL, 2),
        "disk-trial": lambda t: full_disk(t, n, "trial"),
        "disk-retrain": lambda t: full_disk(t, n, "retrain"),
        "changed-budget": lambda t: changed_budget(t, n),
        "together": lambda t: started_together(t, n + 3),
        "out-file": lambda t: bad_out(t, n, "file"),
        "out-read-only": lambda t: bad_out(t, n, "read-only"),
        "compress-rerun": compress_rerun,
    }
    only = [s for s in a.only.split(",") if s]
    rows = []
    for key, fn in scenarios.items():
        if only and key not in only:
            continue
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"edgenas-faults-{key}-") as tmp:
            try:
                row = fn(Path(tmp))
            except BaseException as e:  # noqa: BLE001 - a scenario that could not run is reported, not hidden
                if type(e).__name__ == "Skipped":
                    row = {"fault": key, "skipped": str(e)}
                else:
                    row = {"fault": key, "error": f"{type(e).__name__}: {e}"}
        row["scenario"], row["seconds"] = key, round(time.monotonic() - t0, 1)
        rows.append(row)
        print(f"{key}: {row}", file=sys.stderr, flush=True)

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        if isinstance(v, float):
            return f"{v:.1f}"
        if isinstance(v, list):
            return ",".join(str(x) for x in v)
        return str(v)

    table = [[r["fault"], cell(r.get("workers")), cell(r.get("exit")), cell(r.get("lost")), cell(r.get("duplicated")),
              cell(r.get("running")), cell(r.get("csv_equal")), cell(r.get("resumed")), cell(r.get("recover_s")),
              cell(r.get("orphans")), r.get("note") or r.get("skipped") or r.get("error", "")] for r in rows]
    print(tabulate(table, headers=["fault", "workers", "exit codes", "trials lost", "duplicated", "RUNNING left",
                                   "trials.csv = storage", "--resume completed", "recover s", "orphans", "note"],
                   tablefmt="github"))
    config = {"optuna": optuna.__version__, "trials": n, "outage_s": a.outage_s, "heartbeat": HEARTBEAT}
    out = write_results(a.out, {"config": config, "rows": json.loads(json.dumps(rows, default=str))}, a)
    print(f"\nwrote {out}")
    bad = [r for r in rows if r.get("error") or r.get("lost") or r.get("duplicated") or r.get("running")
           or r.get("csv_equal") is False or r.get("resumed") is False or r.get("orphans")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
