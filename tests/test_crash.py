"""Crash safety: Ctrl-C and SIGKILL in the middle of a trial lose nothing, and --resume finishes the study.

After Ctrl-C the interrupted trial is FAIL ("interrupted"), trials.csv matches the storage, the CLI prints one
line and exits 130. After SIGKILL the dead process's RUNNING trial is failed at once on --resume (its process is
gone), re-queued, and the study still ends with exactly --trials finished trials.
"""
from __future__ import annotations

import os
import signal
import sys
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from postgres_helpers import cli, wait_for_running_trial

N = 4
ARGS = ["--budget-mflops", "0.02", "--trials", str(N), "--epochs", "3", "--final-epochs", "1", "--top-k", "1",
        "--pruner", "none", "--quiet"]


def storage(d: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{d / 'study.db'}")


def storage_when_ready(d: Path):
    """For polling a run that is starting: None until its study exists (never create the database ourselves)."""
    def get():
        return storage(d) if (d / "config.json").exists() else None
    return get


def trials(d: Path, name: str):
    return optuna.load_study(study_name=name, storage=storage(d)).get_trials(deepcopy=False)


def assert_csv_matches_storage(d: Path, name: str) -> pd.DataFrame:
    df = pd.read_csv(d / "trials.csv")
    ts = trials(d, name)
    assert list(df["number"]) == [t.number for t in ts]
    assert list(df["state"]) == [t.state.name for t in ts]
    assert df["number"].is_unique
    return df


def counted(ts) -> list:
    return [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not t.user_attrs.get("infeasible")]


def no_temp_files(d: Path) -> None:
    assert not [p for p in d.rglob("*.tmp")], "an atomic write left a temporary file"


def test_ctrl_c_records_the_trial_and_resume_finishes(tmp_path: Path):
    d = tmp_path / "c"
    p = cli(*ARGS, "--study-name", "c", "--out", str(tmp_path))
    t = wait_for_running_trial(storage_when_ready(d), "c", p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0] and "Traceback" not in err, err
    ts = trials(d, "c")
    assert not [x for x in ts if x.state == TrialState.RUNNING]
    hit = next(x for x in ts if x.number == t.number)
    assert hit.state == TrialState.FAIL and hit.user_attrs["fail_reason"] == "interrupted"
    df = assert_csv_matches_storage(d, "c")
    assert df.loc[df["number"] == t.number, "fail_reason"].item() == "interrupted"
    assert not (d / "best").exists()
    no_temp_files(d)

    r = cli(*ARGS, "--study-name", "c", "--out", str(tmp_path), "--resume")
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    ts = trials(d, "c")
    assert len(counted(ts)) == N and not [x for x in ts if x.state == TrialState.RUNNING]
    assert_csv_matches_storage(d, "c")
    assert (d / "best/model.pt").is_file()
    no_temp_files(d)


def test_sigkill_then_resume_fails_the_stale_trial_and_retries_it(tmp_path: Path):
    d = tmp_path / "k"
    p = cli(*ARGS, "--study-name", "k", "--out", str(tmp_path))
    t = wait_for_running_trial(storage_when_ready(d), "k", p)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    stuck = [x for x in trials(d, "k") if x.state == TrialState.RUNNING]
    assert [x.number for x in stuck] == [t.number]  # what a kill leaves behind
    pd.read_csv(d / "trials.csv")  # whatever was written before the kill is a complete file

    start = time.monotonic()
    r = cli(*ARGS, "--study-name", "k", "--out", str(tmp_path), "--resume")
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    ts = trials(d, "k")
    killed = next(x for x in ts if x.number == t.number)
    assert killed.state == TrialState.FAIL and "died" in killed.user_attrs["fail_reason"]
    retry = [x for x in ts if x.user_attrs.get("retry_of") == t.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == killed.params  # the same architecture was trained again
    assert len(counted(ts)) == N and not [x for x in ts if x.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert_csv_matches_storage(d, "k")
    assert (d / "best/model.pt").is_file()
    no_temp_files(d)
    # no waiting for a heartbeat grace period: the dead process was recognised at once
    assert time.monotonic() - start < 120


def test_ctrl_c_with_local_workers(tmp_path: Path):
    """Ctrl-C in a terminal reaches the whole process group: every worker records its trial, the CLI exits 130."""
    d = tmp_path / "w"
    args = [*ARGS, "--epochs", "15"]  # trials of seconds: both workers are surely mid-trial when Ctrl-C comes
    p = cli(*args, "--study-name", "w", "--out", str(tmp_path), "--n-workers", "2", start_new_session=True)
    running = wait_for_running_trial_any(d, "w", p, workers=2)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in err, err
    ts = trials(d, "w")
    assert not [x for x in ts if x.state == TrialState.RUNNING]
    interrupted = [x for x in ts if x.state == TrialState.FAIL and x.user_attrs.get("fail_reason") == "interrupted"]
    assert sorted(x.number for x in interrupted) == sorted(running)  # every worker's trial, not just one
    assert len({x.user_attrs["worker"]["pid"] for x in interrupted}) == 2
    assert_csv_matches_storage(d, "w")

    r = cli(*args, "--study-name", "w", "--out", str(tmp_path), "--resume", "--n-workers", "2")
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    ts = trials(d, "w")
    assert len(counted(ts)) == N and not [x for x in ts if x.state == TrialState.RUNNING]
    assert_csv_matches_storage(d, "w")


def wait_for_running_trial_any(d: Path, name: str, proc, timeout: float = 120, workers: int = 1) -> list[int]:
    """Until `workers` different workers (children of `proc`) train a trial each; returns those trials' numbers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if (d / "config.json").exists():
            try:
                ts = trials(d, name)
            except KeyError:
                ts = []
            busy = {(t.user_attrs.get("worker") or {}).get("pid"): t.number for t in ts
                    if t.state == TrialState.RUNNING and "spec" in t.user_attrs}
            if len(busy) >= workers:
                return list(busy.values())
        time.sleep(0.1)
    pytest.fail("no RUNNING trial appeared")


def test_sigint_is_held_back_and_raised_once():
    """SigintDeferral: Ctrl-C presses between defer() and release() become one KeyboardInterrupt at release()."""
    from search.workers import SigintDeferral

    before = signal.getsignal(signal.SIGINT)
    guard = SigintDeferral().defer()
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    assert guard.pending
    with pytest.raises(KeyboardInterrupt):
        guard.release()
    assert signal.getsignal(signal.SIGINT) is before
    guard = SigintDeferral().defer()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    guard.release(raise_pending=False)  # dropped: the caller raises its own KeyboardInterrupt
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception, on purpose
def test_ctrl_c_dropped_by_python_still_stops_the_search(monkeypatch):
    """A Ctrl-C whose KeyboardInterrupt is raised inside a finalizer is dropped by Python ("Exception ignored");
    check_interrupt() raises it at the next epoch or trial instead, once, and later presses stay ignored."""
    import search.workers as W

    monkeypatch.setattr(W, "_SIGINT", {"requested": False, "seen": False})
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    before = signal.getsignal(signal.SIGINT)
    try:
        W.sigint_once()

        class Finalized:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # the handler runs here, inside the finalizer: its exception is dropped

        dropped = []
        sys.unraisablehook = lambda u: dropped.append(u.exc_type)  # what sigint_once's hook would hide
        obj = Finalized()
        del obj
        assert dropped == [KeyboardInterrupt] and W._SIGINT == {"requested": True, "seen": False}
        W.sigint_once()  # installs the hook that keeps Python from printing the dropped Ctrl-C as an error
        assert sys.unraisablehook is W._unraisable
        with pytest.raises(KeyboardInterrupt):
            W.check_interrupt()
        W.check_interrupt()  # raised once only
        os.kill(os.getpid(), signal.SIGINT)  # a second press is ignored
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, before)


def test_dead_workers_are_recognised_on_this_machine(monkeypatch):
    """A trial's worker is dead if its pid is gone here, or it ran here before a reboot (another boot id)."""
    from search.storage import _host_id, worker_dead

    monkeypatch.delenv("EDGENAS_HOST_ID", raising=False)
    here = _host_id()
    gone = _finished_pid()
    assert worker_dead({"host": here, "pid": gone})
    assert not worker_dead({"host": here, "pid": os.getppid()})
    assert not worker_dead({"host": "another-machine/12345678", "pid": gone})  # only heartbeats tell there
    name, _, boot = here.rpartition("/")
    if boot:
        assert worker_dead({"host": f"{name}/{'0' * len(boot)}", "pid": os.getppid()})  # before a reboot
    monkeypatch.setenv("EDGENAS_HOST_ID", "box-a/1")
    assert not worker_dead({"host": "box-a/2", "pid": gone})  # explicit host ids are compared whole


def _finished_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid
