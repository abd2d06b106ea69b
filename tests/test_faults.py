"""The faults real clusters produce, each produced for real (docs/reliability.md): a PostgreSQL server stopped for
seconds mid-study, SQLite locked beyond its busy timeout, SIGTERM to a worker and to an --n-workers parent, a
SIGKILLed parent, a full disk (a small tmpfs where the test may mount one, a simulated ENOSPC otherwise), a
read-only --out, an --out that is a file, a changed study on --resume and on a shared --storage, three workers
started together, a compress re-run into the same --out, and the smaller holes of issue 14.

After every fault: every trial exactly once, nothing RUNNING, trials.csv equal to the storage, one stderr line
and no traceback, and --resume (where the run stopped) finishes the study.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from postgres_helpers import OwnPostgres, cli, wait_for_running_trial

N = 4
TINY = ["--budget-mflops", "0.02", "--trials", str(N), "--epochs", "3", "--final-epochs", "1", "--top-k", "1",
        "--pruner", "none", "--quiet"]
FAST_HEARTBEAT = {"EDGENAS_HEARTBEAT_INTERVAL": "1", "EDGENAS_HEARTBEAT_GRACE": "4"}


# ----- the invariants ---------------------------------------------------------------------------------------------
def sqlite_storage(d: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{d / 'study.db'}")


def when_ready(d: Path):
    return lambda: sqlite_storage(d) if (d / "config.json").exists() else None


def study_trials(storage, name: str) -> list:
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def counted(ts) -> list:
    return [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not t.user_attrs.get("infeasible")]


def check_intact(ts, csv: Path, n: int = N, allow_interrupted: bool = False) -> None:
    """Every trial once (dense unique numbers), nothing RUNNING or queued, n counted, only expected failures, each
    failed trial re-run (interrupted trials are re-run by the sampler or re-queued), trials.csv = the storage."""
    numbers = [t.number for t in ts]
    assert numbers == list(range(len(ts))), numbers
    assert not [t.number for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)], \
        [(t.number, t.state.name) for t in ts]
    assert len(counted(ts)) == n, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in ts]
    for t in ts:
        if t.state == TrialState.FAIL:
            reason = t.user_attrs.get("fail_reason", "")
            assert (allow_interrupted and reason == "interrupted") or reason.startswith("worker lost"), reason
    df = pd.read_csv(csv)
    assert list(df["number"]) == numbers and list(df["state"]) == [t.state.name for t in ts]


def one_line(err: str, *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def no_partial_files(d: Path) -> None:
    left = [p for p in d.rglob("*") if p.name.endswith((".tmp", ".partial", ".old"))]
    assert not left, left


# ----- 1. database outages ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_postgres_stopped_mid_study_is_ridden_out(tmp_path: Path):
    """Two workers on a PostgreSQL server of our own that is stopped (immediate: connections cut) for 6 s, longer
    than the heartbeat grace period: they keep training, say once that the database is away and once that it is
    back, and finish with every trial exactly once."""
    with OwnPostgres() as pg:
        p = cli(*TINY, "--sampler", "random", "--storage", pg.url, "--study-name", "o", "--out", str(tmp_path),
                "--n-workers", "2", env=FAST_HEARTBEAT)
        storage = optuna.storages.RDBStorage(pg.url)
        try:
            deadline = time.monotonic() + 240
            while not [t for t in _running(storage, "o") if "spec" in t.user_attrs]:
                assert time.monotonic() < deadline and p.poll() is None, p.communicate()[1][-3000:]
                time.sleep(0.2)
            storage.engine.dispose()
            pg.stop("immediate")
            time.sleep(6)
            pg.start()
            out, err = p.communicate(timeout=400)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len([ln for ln in lines if "unreachable" in ln]) == 1, lines
        assert len([ln for ln in lines if "reachable again" in ln]) == 1, lines
        ts = study_trials(optuna.storages.RDBStorage(pg.url), "o")
        check_intact(ts, tmp_path / "o/trials.csv")
        failed = [(t.number, t.user_attrs.get("fail_reason")) for t in ts if t.state == TrialState.FAIL]
        assert not failed, f"a trial was failed during the outage: {failed}\n{err[-3000:]}"
        for t in counted(ts):  # the writes made while the database was away arrived
            assert {"spec", "mflops", "val_acc", "worker", "curve"} <= set(t.user_attrs), sorted(t.user_attrs)
        assert (tmp_path / "o/best/model.pt").is_file()


def _running(storage, name: str) -> list:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
    except KeyError:
        return []


@pytest.mark.slow
def test_sqlite_locked_beyond_the_busy_timeout_is_ridden_out(tmp_path: Path):
    """Another process holds SQLite's write lock for 5 s while the busy timeout is 1 s: the worker waits it out."""
    d = tmp_path / "l"
    p = cli(*TINY, "--study-name", "l", "--out", str(tmp_path), env={"EDGENAS_SQLITE_BUSY_TIMEOUT": "1"})
    try:
        wait_for_running_trial(when_ready(d), "l", p)
        con = sqlite3.connect(d / "study.db", timeout=30, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        time.sleep(5)
        con.execute("COMMIT")
        con.close()
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    check_intact(study_trials(sqlite_storage(d), "l"), d / "trials.csv")


@pytest.mark.slow
def test_storage_timeout_gives_up_with_one_line(tmp_path: Path):
    """A database that stays away longer than --storage-timeout: one line, exit 2; --resume then finishes."""
    d = tmp_path / "g"
    p = cli(*TINY, "--study-name", "g", "--out", str(tmp_path), "--storage-timeout", "2",
            env={"EDGENAS_SQLITE_BUSY_TIMEOUT": "0.5"})
    wait_for_running_trial(when_ready(d), "g", p)
    con = sqlite3.connect(d / "study.db", timeout=30, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    try:
        out, err = p.communicate(timeout=300)
    finally:
        con.execute("COMMIT")
        con.close()
    assert p.returncode == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and lines[-1].startswith("python -m search.run: error: storage sqlite:///"), lines
    assert "--storage-timeout" in lines[-1] and "--resume" in lines[-1]
    r = cli(*TINY, "--study-name", "g", "--out", str(tmp_path), "--resume")
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err[-3000:]
    check_intact(study_trials(sqlite_storage(d), "g"), d / "trials.csv")


# ----- 2. SIGTERM and dying parents -------------------------------------------------------------------------------
def test_sigterm_records_the_trial_exits_143_and_resume_finishes(tmp_path: Path):
    d = tmp_path / "t"
    p = cli(*TINY, "--study-name", "t", "--out", str(tmp_path))
    t = wait_for_running_trial(when_ready(d), "t", p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    one_line(err, "SIGTERM", "--resume")
    ts = study_trials(sqlite_storage(d), "t")
    assert not [x for x in ts if x.state == TrialState.RUNNING]
    assert next(x for x in ts if x.number == t.number).user_attrs["fail_reason"] == "interrupted"
    r = cli(*TINY, "--study-name", "t", "--out", str(tmp_path), "--resume")
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err[-3000:]
    check_intact(study_trials(sqlite_storage(d), "t"), d / "trials.csv", allow_interrupted=True)


@pytest.mark.parametrize("how,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stop_caught_inside_exec_still_exits_with_its_code(tmp_path: Path, how: str, code: int):
    """CPython's -m mode kills itself with SIGINT at exit (returncode -2) after a KeyboardInterrupt that passed
    through exec/eval of a string, even a caught one: the stop signal lands there at random (a lazy import's
    dataclass), which once made the SIGTERM test above fail in CI."""
    import sys

    (tmp_path / "stopped_in_exec.py").write_text(
        "import signal\n"
        "from archs.errors import note_stop_signal, run_cli\n"
        "def main(argv):\n"
        f"    note_stop_signal(signal.{how})\n"
        "    exec('raise KeyboardInterrupt')\n"
        "if __name__ == '__main__':\n"
        "    run_cli(main, prog='stopped', resume_hint=', rerun with --resume to continue')\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    r = subprocess.run([sys.executable, "-m", "stopped_in_exec"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == code, r.stderr
    assert r.stderr.strip().startswith("stopped: ") and "--resume" in r.stderr


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(proc.name))
    return found


def _wait_gone(pids: list[int], timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [q for q in alive if Path(f"/proc/{q}").exists()
                 and (Path(f"/proc/{q}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")]
        time.sleep(0.2)
    return alive


def _wait_for_workers_training(d: Path, name: str, p, k: int = 1) -> list:
    deadline = time.monotonic() + 240
    while True:
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()[1][-3000:]
        if (d / "config.json").exists():
            ts = [t for t in _running(sqlite_storage(d), name) if "spec" in t.user_attrs]
            if len(ts) >= k:
                return ts
        time.sleep(0.1)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)],
                         ids=["sigterm", "sigkill"])
def test_no_worker_outlives_its_parent(tmp_path: Path, sig: int):
    """SIGTERM (to the parent only, as `timeout` and systemd send it) or SIGKILL to an --n-workers parent: every
    worker process stops within seconds and records its trial as interrupted; --resume finishes the study."""
    d = tmp_path / "p"
    p = cli(*TINY, "--study-name", "p", "--out", str(tmp_path), "--n-workers", "2")
    try:
        _wait_for_workers_training(d, "p", p)
        kids = _children(p.pid)
        assert kids, "no worker processes"
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        assert _wait_gone(kids) == [], "a worker outlived its parent"
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    if sig == signal.SIGTERM:
        assert p.returncode == 143, err[-3000:]
        one_line(err, "SIGTERM", "--resume")
    else:
        assert p.returncode == -signal.SIGKILL
    ts = study_trials(sqlite_storage(d), "p")
    assert not [t for t in ts if t.state == TrialState.RUNNING], [(t.number, t.state.name) for t in ts]
    assert [t for t in ts if t.user_attrs.get("fail_reason") == "interrupted"]
    r = cli(*TINY, "--study-name", "p", "--out", str(tmp_path), "--resume")
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err[-3000:]
    check_intact(study_trials(sqlite_storage(d), "p"), d / "trials.csv", allow_interrupted=True)


# ----- 3. file-system errors --------------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """A small tmpfs at `path` (root only), or skip."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (test_full_disk_simulated covers ENOSPC)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("when", ["trial", "retrain"])
def test_full_disk_then_space_back_and_resume(tmp_path: Path, when: str):
    """--out on a 4 MB tmpfs that fills up while a trial trains, or while the winners are retrained: one line
    naming the file and 'No space left on device', no temporary or half-written file, no best/ folder; once space
    is back --resume finishes the study (the trial whose result could not be written is failed and re-run)."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        d = disk / "f"
        p = cli(*TINY, "--no-warm-start", "--study-name", "f", "--out", str(disk))
        try:
            deadline = time.monotonic() + 240
            while True:
                assert time.monotonic() < deadline and p.poll() is None, p.communicate()[1][-3000:]
                if (d / "config.json").exists():
                    ts = study_trials(sqlite_storage(d), "f")
                    if when == "trial" and [t for t in ts if t.state == TrialState.RUNNING and "spec" in t.user_attrs]:
                        break
                    if when == "retrain" and len(counted(ts)) >= N:
                        break
                time.sleep(0.05)
            filler = _fill(disk)
            out, err = p.communicate(timeout=300)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        assert p.returncode == 2, err[-3000:]
        one_line(err, str(disk), "No space left on device", "--resume")
        no_partial_files(disk)
        assert not (d / "best").exists()
        filler.unlink()
        r = cli(*TINY, "--no-warm-start", "--study-name", "f", "--out", str(disk), "--resume")
        out, err = r.communicate(timeout=300)
        assert r.returncode == 0, err[-3000:]
        check_intact(study_trials(sqlite_storage(d), "f"), d / "trials.csv")
        assert (d / "best/model.pt").is_file()
        no_partial_files(disk)


def test_full_disk_simulated(tmp_path: Path, monkeypatch, capsys):
    """ENOSPC while the winner is saved (every file write fails as on a full disk): one line naming the file, no
    temporary or partial file, no best/ folder; the next --resume writes it."""
    import archs.io
    from archs.errors import run_cli
    from search.run import main

    real = archs.io._atomic_write
    full = {"on": False}

    def write(path, data):
        if full["on"] and "best" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    import search.results

    real_export = search.results.export_onnx

    def export(model, path, *a, **k):
        full["on"] = True  # the disk fills up while the winner is written
        return real_export(model, path, *a, **k)

    monkeypatch.setattr(archs.io, "_atomic_write", write)
    monkeypatch.setattr(search.results, "export_onnx", export)
    args = [*TINY, "--trials", "2", "--epochs", "1", "--no-warm-start", "--study-name", "s", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        run_cli(main, args, prog="python -m search.run", resume_hint=", rerun with --resume to continue")
    assert e.value.code == 2
    line = one_line(capsys.readouterr().err, "No space left on device", "--resume")
    assert "spec.json" in line or "model.pt" in line, line
    no_partial_files(tmp_path)
    assert not (tmp_path / "s/best").exists()
    full["on"] = False
    monkeypatch.setattr(search.results, "export_onnx", real_export)
    with pytest.raises(SystemExit) as e:
        run_cli(main, [*args, "--resume"], prog="python -m search.run")
    assert e.value.code == 0
    assert (tmp_path / "s/best/model.pt").is_file()
    check_intact(study_trials(sqlite_storage(tmp_path / "s"), "s"), tmp_path / "s/trials.csv", n=2)


@pytest.mark.parametrize("kind", ["file", "under-file", "read-only"])
def test_unwritable_out_is_one_line(tmp_path: Path, kind: str):
    f = tmp_path / "afile"
    f.write_text("not a folder\n")
    if kind == "file":
        out, needle = f, "Not a directory"
    elif kind == "under-file":
        out, needle = f / "sub", "Not a directory"
    else:
        ro = tmp_path / "ro"
        if os.geteuid() == 0:
            stack = contextlib.ExitStack()
            stack.enter_context(tmpfs(ro, "1m", readonly=True))
            needle = "Read-only file system"
        else:
            ro.mkdir()
            ro.chmod(0o555)
            needle = "Permission denied"
        out = ro
    try:
        p = cli(*TINY, "--study-name", "x", "--out", str(out))
        _, err = p.communicate(timeout=120)
    finally:
        if kind == "read-only" and os.geteuid() == 0:
            stack.close()
    assert p.returncode == 2, err
    one_line(err, str(out), needle)
    assert f.read_text() == "not a folder\n"


# ----- 4. a study reused with other settings; workers joining at once ---------------------------------------------
def test_resume_with_other_settings_is_refused(tmp_path: Path):
    r = cli(*TINY, "--trials", "2", "--epochs", "1", "--study-name", "c", "--out", str(tmp_path))
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err[-3000:]
    d = tmp_path / "c"
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    tighter = [a if a != "0.02" else "0.005" for a in TINY]
    r = cli(*tighter, "--trials", "3", "--epochs", "2", "--study-name", "c", "--out", str(tmp_path), "--resume")
    _, err = r.communicate(timeout=120)
    assert r.returncode == 2
    one_line(err, "other settings", "--budget-mflops 0.02 (now 0.005)", "--epochs 1 (now 2)")
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before  # nothing changed


def test_every_budget_and_sampling_setting_defines_the_study():
    """The rule (docs/reliability.md): budgets, data, space, objectives, training and sampling settings and --seed
    define a study, so each SearchConfig budget and the sampler's width / screen settings are among them."""
    from dataclasses import fields

    from search.study import STUDY_SETTINGS, SearchConfig

    budgets = {f.name for f in fields(SearchConfig) if f.name.startswith("budget_")}
    assert budgets >= {"budget_sram_kb", "budget_flash_kb"}
    assert budgets | {"width", "screen", "screen_proxy", "sampler", "seed"} <= set(STUDY_SETTINGS)


def test_shared_storage_second_command_with_other_settings_is_refused(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    r = cli(*TINY, "--trials", "2", "--epochs", "1", "--storage", url, "--study-name", "s",
            "--out", str(tmp_path / "a"))
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err[-3000:]
    r = cli(*TINY, "--trials", "3", "--epochs", "1", "--dataset", "digits", "--space", "conv,dws",
            "--storage", url, "--study-name", "s", "--out", str(tmp_path / "b"))
    _, err = r.communicate(timeout=120)
    assert r.returncode == 2
    one_line(err, "other settings", "--space")
    assert not (tmp_path / "b").exists()
    assert len(study_trials(optuna.storages.RDBStorage(url), "s")) == 2 + 0  # nothing added


@pytest.mark.slow
def test_three_workers_started_together_never_duplicate_samples(tmp_path: Path):
    """Three identical commands started at the same moment on the default SQLite storage (same --seed): all are
    welcome, they share the study, and no two trials sample the same parameters; the first worker keeps --seed."""
    n = 9
    args = [*TINY, "--trials", str(n), "--epochs", "1", "--sampler", "random", "--no-warm-start", "--confirm", "0",
            "--study-name", "j", "--out", str(tmp_path)]
    procs = [cli(*args) for _ in range(3)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    d = tmp_path / "j"
    study = optuna.load_study(study_name="j", storage=sqlite_storage(d))
    ts = study.get_trials()
    assert len(counted(ts)) == n
    fresh = [t for t in ts if "retry_of" not in t.user_attrs]
    assert len({tuple(sorted(t.params.items())) for t in fresh}) == len(fresh), "two workers sampled the same trial"
    assert study.user_attrs["edgenas_workers"] == 3
    workers = {t.user_attrs["worker"]["pid"] for t in ts if "worker" in t.user_attrs}
    assert len(workers) >= 2, "the workers did not share the study"


def test_single_seeded_worker_samples_what_it_always_did(tmp_path: Path):
    """The first (or only) worker of a study samples with --seed itself: two studies with the same seed sample the
    same parameters, trial for trial, exactly as a plain Optuna study seeded with --seed would."""
    from search.study import make_sampler, sampler_seed, SearchConfig

    assert sampler_seed(SearchConfig(seed=7), 0) == 7 and sampler_seed(SearchConfig(seed=7), 2) == 9
    params = []
    for k in range(2):
        r = cli(*TINY, "--trials", "3", "--epochs", "1", "--sampler", "random", "--no-warm-start", "--confirm", "0",
                "--seed", "3", "--study-name", f"r{k}", "--out", str(tmp_path))
        _, err = r.communicate(timeout=300)
        assert r.returncode == 0, err[-3000:]
        params.append([t.params for t in study_trials(sqlite_storage(tmp_path / f"r{k}"), f"r{k}")])
    assert params[0] == params[1]
    ref = optuna.create_study(sampler=make_sampler("random", 3, False, 3))
    from search.space import DataShape, SearchSpace, sample_structure

    for expected in params[0]:
        t = ref.ask()
        sample_structure(t, SearchSpace(), DataShape(1, 8, 10))
        assert t.params == expected


# ----- 5. re-running compress into the same --out -----------------------------------------------------------------
# (in tests/test_compress_cli.py: test_run_cli_rerun_keeps_the_first_run)


# ----- 6. smaller holes -------------------------------------------------------------------------------------------
def test_zero_byte_checkpoint_is_one_line(tmp_path: Path):
    from archs import build
    from archs.errors import UserError
    from archs.io import load_model_dir, save_model_dir
    from archs.zoo import lenet5

    save_model_dir(tmp_path / "m", build(lenet5()))
    (tmp_path / "m/model.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"model\.pt is empty \(0 bytes\)"):
        load_model_dir(tmp_path / "m")


def test_unsafe_checkpoint_refusal_does_not_suggest_weights_only_false(tmp_path: Path):
    import torch

    from archs.errors import UserError
    from archs.io import load_state_dict

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError) as e:
        load_state_dict(tmp_path / "evil.pt")
    msg = str(e.value)
    assert "refused" in msg and "weights_only" not in msg and "\n" not in msg, msg


def test_non_utf8_trials_csv_is_one_line(tmp_path: Path):
    import analysis
    from archs.errors import UserError

    (tmp_path / "s").mkdir()
    (tmp_path / "s/trials.csv").write_bytes(b"number,state\n0,\xff\xfeCOMPLETE\n")
    with pytest.raises(UserError, match=r"trials\.csv: not UTF-8"):
        analysis.load(tmp_path / "s")
    r = subprocess.run([os.sys.executable, "-m", "analysis.report", str(tmp_path / "s")], capture_output=True,
                       text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 2
    one_line(r.stderr, "not UTF-8")


def test_absurd_resolution_is_a_spec_error():
    from archs.errors import SpecError
    from archs.spec import NetSpec
    from archs.zoo import lenet5

    d = lenet5().to_dict()
    d["resolution"] = 10**9
    with pytest.raises(SpecError, match="input size"):
        NetSpec.from_dict(d)


def test_threshold_quality_of_50_is_refused():
    from archs.errors import UserError
    from compress.prune import check_ratio

    with pytest.raises(UserError, match=r"q = 50 .*removes practically every weight"):
        check_ratio("threshold", 50)
    assert check_ratio("threshold", 3) == 3


def test_a_setting_added_later_counts_at_its_default_for_an_older_study():
    """A study recorded before --confirm-folds / --screen / the MCU budgets existed ran with their defaults: a
    --resume that asks for another value is refused, the default is accepted."""
    import contextlib

    from archs.errors import UserError
    from search.study import SETTINGS_ATTR, SearchConfig, check_settings, study_settings

    study = optuna.create_study()
    old = study_settings(SearchConfig(budget_mflops=0.02))
    for k in ("confirm_folds", "screen", "screen_proxy", "budget_sram_kb"):
        del old[k]
    study.set_user_attr(SETTINGS_ATTR, old)
    check_settings(study, SearchConfig(budget_mflops=0.02), contextlib.nullcontext, None)
    with pytest.raises(UserError, match=r"--confirm-folds 1 \(now 5\)"):
        check_settings(study, SearchConfig(budget_mflops=0.02, confirm_folds=5), contextlib.nullcontext, None)
    with pytest.raises(UserError, match=r"--budget-sram-kb None \(now 64\)"):
        check_settings(study, SearchConfig(budget_mflops=0.02, budget_sram_kb=64), contextlib.nullcontext, None)
