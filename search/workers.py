"""The trial loop every worker runs, and local worker processes (`--n-workers`).

One study, any number of workers (processes, on one machine or many). Each worker repeats:

1. Under the study lock (`StudyLock`): fail the trials whose worker is gone (a dead process on this machine,
   no heartbeat for the grace period on any machine, or a trial asked by a worker that died before recording
   itself) and re-queue them (`RetryLostTrial`, at most 3 times); count the study's trials; if the counted ones
   (COMPLETE, or PRUNED after training) reach --trials, stop; if counted + running trials reach --trials, wait
   for the running ones; otherwise `ask` a trial (a queued retry first), record its first heartbeat and who runs
   it. Counting and asking under one lock means the study never holds more than --trials counted trials, however
   many workers share it.
2. Outside the lock: run the objective with a heartbeat thread, then `tell` the result. Ctrl-C (and SIGTERM,
   which behaves the same) records the trial as FAIL "interrupted" before the KeyboardInterrupt goes on; a stop
   signal between the ask and the start of the objective, or during the bookkeeping after it, is held back
   (`SigintDeferral`) so that no trial is left RUNNING. A worker of --n-workers stops when its parent dies
   (`die_with_parent`).

After the loop one worker retrains the winners: the first to claim them in the study's user attributes
(`winners_claim`, set under the same lock); a claim whose worker died is taken over.
"""
from __future__ import annotations

import contextlib
import datetime
import multiprocessing as mp
import os
import queue as queue_mod
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from archs.errors import UserError, note_stop_signal, stopped_by_sigterm

from .storage import (MAX_RETRY, PROBE_S, RetryLostTrial, StudyLock, WorkerId, _LIVE_TOKENS,
                      heartbeat_enabled, heartbeat_settings, mask, resilient_of, worker_dead)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what schedulers send: both stop a worker the same way

COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
UNCLAIMED_SLACK_S = 60  # clocks of different machines may disagree by this much (trial start times are local)
CLAIM_ATTR = "winners_claim"


def is_counted(t: FrozenTrial) -> bool:
    """A trial that counts towards --trials: trained to the end or pruned while training (not an infeasible sample)."""
    return t.state in COUNTED_STATES and not t.user_attrs.get("infeasible")


def finished_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=COUNTED_STATES) if is_counted(t))


# ----- lost trials ------------------------------------------------------------------------------------------------
def sweep_lost_trials(study: optuna.Study, log: Callable[[str], None] | None = None) -> list[int]:
    """Fail RUNNING trials whose worker is gone and re-queue them; returns the failed trial numbers.

    Gone = a process on this machine that no longer exists (found at once), no heartbeat for the grace period
    (any machine; RDB storages only), or no "worker" record 2 x grace + 60 s after the trial started (its worker
    died between the ask and recording itself; any storage). Call it under the study lock.
    """
    storage = study._storage
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    lost: dict[int, tuple[FrozenTrial, str]] = {}
    interval, grace = heartbeat_settings()
    now = datetime.datetime.now()
    # right after a database outage nobody's heartbeats or records could arrive: judge only dead processes here.
    # Another worker finds the database back at its next probe (`PROBE_S` apart) and beats at its next interval,
    # so its heartbeats may resume that much after ours: the window adds it to the grace period
    res = resilient_of(storage)
    outage = res is not None and res.in_outage_window(grace + PROBE_S + interval)
    for t in running:
        info = t.user_attrs.get("worker")
        if worker_dead(info):
            lost[t._trial_id] = (t, f"worker lost: process {info['pid']} on {info['host']} died")
        elif info is None and not outage and t.datetime_start is not None \
                and (now - t.datetime_start).total_seconds() > 2 * grace + UNCLAIMED_SLACK_S:
            # asked, but its worker died before recording itself (or a first heartbeat): nobody will finish it
            lost[t._trial_id] = (t, "worker lost: died right after asking for the trial")
    if heartbeat_enabled(storage) and not outage:
        stale = set(storage._get_stale_trial_ids(study._study_id))  # the query fail_stale_trials uses
        for t in running:
            if t._trial_id in stale and t._trial_id not in lost:
                who = t.user_attrs.get("worker") or {}
                lost[t._trial_id] = (t, f"worker lost: no heartbeat from {who.get('host', '?')}:{who.get('pid', '?')} "
                                        f"for {grace} s")
    failed = []
    for trial_id, (t, reason) in lost.items():
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except UpdateFinishedTrialError:  # its worker finished it after all, or another worker failed it
            pass
    retry = storage.get_heartbeat_stale_trial_callback() if heartbeat_enabled(storage) else None
    retry = retry or RetryLostTrial(max_retry=MAX_RETRY)
    numbers = []
    for trial_id in failed:
        frozen = storage.get_trial(trial_id)
        retry(study, frozen)
        numbers.append(frozen.number)
        if log:
            log(f"trial {frozen.number:>3} fail     {frozen.user_attrs.get('fail_reason')} (re-queued)")
    # No call of Optuna's own fail_stale_trials here: it re-reads the stale set, so a trial whose grace period ran
    # out since the query above was failed by it without a fail_reason (a CI failure). The next sweep finds it.
    return numbers


# ----- heartbeats -------------------------------------------------------------------------------------------------
class Heartbeat:
    """Records the trial's heartbeat every interval in a daemon thread (the first one is recorded at start)."""

    def __init__(self, storage: Any, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.interval = storage.get_heartbeat_interval()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """No more heartbeats (idempotent): the trial's result is recorded."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - a transient database error; the next beat tries again
                pass


# ----- the loop ---------------------------------------------------------------------------------------------------
@dataclass
class LoopStats:
    ran: int = 0           # trials this worker asked and ran
    lost: int = 0          # trials of this worker that another worker failed (missed heartbeats)
    swept: list[int] = field(default_factory=list)  # trials of dead workers this worker failed and re-queued
    waited_s: float = 0.0  # time spent waiting for other workers' trials


class TrialLoop:
    """Run trials until the study holds `n_trials` counted trials (or `timeout` seconds pass)."""

    def __init__(self, study: optuna.Study, objective: Callable[[optuna.Trial], Any], *, n_trials: int,
                 lock: StudyLock, worker: WorkerId, timeout: float | None = None,
                 after_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                 log: Callable[[str], None] | None = None, catch: tuple[type[BaseException], ...] = (),
                 max_asks: int | None = None, poll_s: float = 0.5,
                 before_ask: Callable[[list[FrozenTrial], int, int], None] | None = None):
        self.study, self.objective, self.n_trials, self.lock, self.worker = study, objective, n_trials, lock, worker
        self.before_ask = before_ask  # (trials, counted, running), under the lock: may enqueue the next trial
        self.timeout, self.after_trial, self.catch = timeout, after_trial, catch
        self.log = log or (lambda s: None)
        self.max_asks = max_asks if max_asks is not None else 20 * n_trials + 100
        self.poll_s = poll_s
        self.stats = LoopStats()

    def run(self) -> LoopStats:
        _LIVE_TOKENS.add(self.worker.token)
        start = time.monotonic()
        try:
            while self.stats.ran < self.max_asks:
                if self.timeout is not None and time.monotonic() - start >= self.timeout:
                    break
                check_interrupt()
                # Ctrl-C is held back from the moment a trial is asked until the objective runs: an interrupt
                # then always finds a trial either not asked yet or inside _run_one, never stuck RUNNING.
                guard = SigintDeferral().defer()
                try:
                    trial, done = self._next_trial()
                except BaseException:
                    guard.release(raise_pending=False)
                    raise
                if done or trial is None:
                    guard.release()  # an interrupt that came meanwhile is raised here, no trial is open
                    if done:
                        break
                    nap = self.poll_s * (0.5 + random.random())  # every slot is taken by a running trial
                    time.sleep(nap)
                    self.stats.waited_s += nap
                    continue
                self.stats.ran += 1
                self._run_one(trial, guard)
        finally:
            _LIVE_TOKENS.discard(self.worker.token)
        return self.stats

    def _next_trial(self) -> tuple[optuna.Trial | None, bool]:
        """(trial to run, study finished?) -- counted and asked under the study lock.

        Invariant: finished + running + queued trials never exceed --trials (a re-queued lost trial takes the
        slot its failed original held), so the study ends with exactly --trials counted trials.
        """
        with self.lock():
            self.stats.swept += sweep_lost_trials(self.study, self.log)
            trials = self.study.get_trials(deepcopy=False)
            counted = sum(1 for t in trials if is_counted(t))
            if counted >= self.n_trials:
                return None, True
            running = sum(1 for t in trials if t.state == TrialState.RUNNING)
            if counted + running >= self.n_trials:
                return None, False
            if self.before_ask is not None:
                self.before_ask(trials, counted, running)
            trial = self.study.ask()  # pops a queued (retried, confirming) trial first
            if heartbeat_enabled(self.study._storage):
                # heartbeat first: a trial without one is only found lost by its missing "worker" attribute
                self.study._storage.record_heartbeat(trial._trial_id)
            trial.set_user_attr("worker", self.worker.to_dict())
            return trial, False

    def _run_one(self, trial: optuna.Trial, guard: "SigintDeferral") -> None:
        values: Any = None
        state: TrialState = TrialState.FAIL
        reason: str | None = None
        interrupted = False
        error: BaseException | None = None
        lost = False
        hb = Heartbeat(self.study._storage, trial._trial_id) if heartbeat_enabled(self.study._storage) else None
        # the heartbeat goes on until the result is recorded: a `tell` that waits out a database outage (backing
        # off up to 5 s between tries) must not leave its trial looking dead to the other workers
        with hb if hb is not None else contextlib.nullcontext():
            try:
                guard.release()  # a Ctrl-C held back since the ask is raised here and recorded below
                values = self.objective(trial)
                guard.defer()
                state = TrialState.COMPLETE
            except optuna.TrialPruned:
                guard.defer()
                state = TrialState.PRUNED
            except UpdateFinishedTrialError:  # another worker failed this trial (our heartbeats did not arrive)
                guard.defer()
                state, lost = TrialState.FAIL, True
            except KeyboardInterrupt:
                interrupt_seen()
                guard.defer()  # a second Ctrl-C must not interrupt the bookkeeping below
                state, reason, interrupted = TrialState.FAIL, "interrupted", True
            except self.catch:  # the objective recorded its own fail_reason
                guard.defer()
                state = TrialState.FAIL
            except Exception as e:  # noqa: BLE001 - recorded, then raised again below
                guard.defer()
                state, error = TrialState.FAIL, e
                reason = f"error: {type(e).__name__}: {mask(str(e)).splitlines()[0] if str(e) else ''}"[:500]
            try:
                if reason is not None and not lost:
                    with contextlib.suppress(UpdateFinishedTrialError):
                        trial.set_user_attr("fail_reason", reason)
                frozen = self.study.tell(trial, values if state == TrialState.COMPLETE else None, state=state,
                                         skip_if_finished=True)
                if hb is not None:
                    hb.stop()
                if lost or (frozen.state != state
                            and str(frozen.user_attrs.get("fail_reason", "")).startswith("worker lost")):
                    self.stats.lost += 1
                    self.log(f"trial {trial.number:>3} had been failed by another worker (heartbeat missed): its "
                             "result is dropped, a retry is queued")
                if self.after_trial is not None:
                    self.after_trial(self.study, frozen)
            finally:
                # a Ctrl-C during the bookkeeping is raised now that the trial is recorded (once, however many came)
                guard.release(raise_pending=not interrupted and error is None)
        if interrupted:
            raise KeyboardInterrupt
        if error is not None:
            raise error


class SigintDeferral:
    """Holds back Ctrl-C (SIGINT) and SIGTERM between `defer()` and `release()`.

    `release()` puts the previous handlers back and, if a stop signal came meanwhile, hands it to its handler
    (Python's default raises KeyboardInterrupt; `sigint_once` also ignores later ones); `release(raise_pending=False)`
    drops it. Only the main thread receives signals: elsewhere, and for a signal that is ignored, this does nothing.
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self._saved: dict[int, Any] = {}
        self._active = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.pending is None:
            self.pending = signum

    def defer(self) -> "SigintDeferral":
        if self._active or threading.current_thread() is not threading.main_thread():
            return self
        if _SIGINT["requested"] and _SIGINT["seen"]:
            return self  # already stopping (sigint_once ignores more signals)
        for sig in STOP_SIGNALS:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN or current is None or (sig == signal.SIGTERM and current is signal.SIG_DFL):
                continue  # ignored, or SIGTERM still kills at once (nothing would record the trial anyway)
            self._saved[sig] = current
            signal.signal(sig, self._handler)
        self._active = bool(self._saved)
        return self

    def release(self, raise_pending: bool = True) -> None:
        saved = dict(self._saved)
        if self._active:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            self._active, self._saved = False, {}
        if self.pending is not None:
            signum, self.pending = self.pending, None
            if raise_pending:
                handler = saved.get(signum)
                if callable(handler):
                    handler(signum, None)
                raise KeyboardInterrupt


_SIGINT = {"requested": False, "seen": False}  # the stop signal sigint_once took, and whether our code saw it


def sigint_once() -> None:
    """The first Ctrl-C or SIGTERM raises KeyboardInterrupt, later ones are ignored: a CLI process that is already
    stopping finishes recording its trial and tables (and a worker process is stopped once, though both the
    terminal and its parent send SIGINT). SIGTERM behaves exactly like Ctrl-C (the exit code says which it was)."""
    def handler(signum: int, frame: Any) -> None:
        if _SIGINT["requested"]:
            return
        _SIGINT["requested"] = True
        note_stop_signal(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, handler)
        sys.unraisablehook = _unraisable


def stop_exit_code() -> int:
    """Exit code of a process stopped by a stop signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return 143 if stopped_by_sigterm() else 130


def die_with_parent(parent_pid: int) -> None:
    """A worker process stops (SIGTERM: its trial is recorded as interrupted) when its parent dies, however the
    parent died, SIGKILL included: Linux's PR_SET_PDEATHSIG, and a watchdog thread comparing the parent's pid
    (other systems, and a parent gone before the prctl call)."""
    with contextlib.suppress(Exception):
        import ctypes
        import ctypes.util

        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _unraisable(unraisable: Any) -> None:
    """Python's hook for exceptions it must drop (in finalizers, weakref callbacks): a dropped Ctrl-C is not an
    error to print (check_interrupt raises it at the next epoch); anything else goes to the default hook."""
    if unraisable.exc_type is KeyboardInterrupt and _SIGINT["requested"]:
        return
    sys.__unraisablehook__(unraisable)


def interrupt_seen() -> None:
    """Our code caught the KeyboardInterrupt of the Ctrl-C (see `check_interrupt`)."""
    _SIGINT["seen"] = True


def check_interrupt() -> None:
    """Raise the KeyboardInterrupt of a Ctrl-C that never reached our code, once.

    A signal handler runs wherever the main thread is, finalizers and weakref callbacks included, and Python drops
    ("Exception ignored in ...") an exception raised there; the trial loop and every training epoch call this, so
    such a Ctrl-C still stops the search at the next epoch.
    """
    if _SIGINT["requested"] and not _SIGINT["seen"]:
        _SIGINT["seen"] = True
        raise KeyboardInterrupt


# ----- who retrains the winners -----------------------------------------------------------------------------------
def claim_winners(study: optuna.Study, lock: StudyLock, worker: WorkerId, count: int) -> tuple[str, dict | None]:
    """Decide atomically whether this worker retrains the winners of a study with `count` finished trials.

    Returns ("mine", claim), ("busy", claim held by a live worker) or ("done", claim of a worker that finished).
    """
    with lock():
        claim = study.user_attrs.get(CLAIM_ATTR)
        if isinstance(claim, dict) and claim.get("count") == count:
            if claim.get("done"):
                return "done", claim
            if not claim_lost(claim):
                return "busy", claim
        claim = {"worker": worker.to_dict(), "count": count, "time": time.time(), "done": False}
        study.set_user_attr(CLAIM_ATTR, claim)
        return "mine", claim


def claim_lost(claim: dict) -> bool:
    """The claiming worker died (this machine) or stopped refreshing its claim for twice the grace period."""
    if worker_dead(claim.get("worker")):
        return True
    _, grace = heartbeat_settings()
    return time.time() - float(claim.get("time", 0)) > 2 * grace


class ClaimKeeper:
    """Refreshes a winners claim every heartbeat interval while this worker retrains, marks it done at the end."""

    def __init__(self, study: optuna.Study, claim: dict):
        self.study, self.claim = study, dict(claim)
        self.interval, _ = heartbeat_settings()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="winners-claim", daemon=True)

    def __enter__(self) -> "ClaimKeeper":
        _LIVE_TOKENS.add(self.claim["worker"]["token"])
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        _LIVE_TOKENS.discard(self.claim["worker"]["token"])
        if exc_type is None:
            self.study.set_user_attr(CLAIM_ATTR, {**self.claim, "time": time.time(), "done": True})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.study.set_user_attr(CLAIM_ATTR, {**self.claim, "time": time.time()})


# ----- local worker processes -------------------------------------------------------------------------------------
def worker_device(device: str, index: int) -> str:
    """Worker `index`'s device: with `auto`/`cuda` and several GPUs, GPU index % count; otherwise `device`."""
    d = device.strip().lower()
    if d in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return f"cuda:{index % torch.cuda.device_count()}"
    return device


class LocalWorkers:
    """K worker processes (multiprocessing, spawn) running `target(*args, index, results)`.

    Ctrl-C in a terminal reaches every process of the group; `interrupt()` forwards SIGINT as well for a parent
    interrupted on its own. Each child reports ("ok" | "error", message) on the results queue.
    """

    def __init__(self, target: Callable[..., None], args: Sequence[Any], n: int):
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=target, args=(*args, i, self.results), name=f"edgenas-worker-{i}")
                      for i in range(n)]
        self.reports: dict[int, tuple[str, str]] = {}
        self.announced: set[int] = set()

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.procs)

    def drain(self) -> None:
        while True:
            try:
                i, status, msg = self.results.get_nowait()
            except (queue_mod.Empty, EOFError, OSError):
                return
            self.reports[i] = (status, msg)

    def first_error(self) -> str | None:
        self.drain()
        for i in sorted(self.reports):
            status, msg = self.reports[i]
            if status == "error":
                return msg
        return None

    def deaths(self) -> list[tuple[int, int]]:
        """(index, exit code) of workers that ended since the last call."""
        out = []
        for i, p in enumerate(self.procs):
            if i not in self.announced and not p.is_alive() and p.exitcode is not None:
                self.announced.add(i)
                out.append((i, p.exitcode))
        return out

    def wait(self, poll: Callable[[], None], every_s: float = 1.0) -> None:
        while self.alive():
            for p in self.procs:
                p.join(timeout=every_s / len(self.procs))
            poll()
            if self.first_error() is not None:
                self.interrupt()
                break
        poll()

    def interrupt(self, timeout_s: float = 60.0) -> None:
        """SIGINT every live worker (each records its trial as interrupted), then wait; terminate stragglers (their
        SIGTERM records the trial the same way)."""
        time.sleep(0.2)
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)

    def exit_codes(self) -> list[int | None]:
        return [p.exitcode for p in self.procs]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return {0: "finished", 2: "stopped with an error", 130: "interrupted", 143: "terminated (SIGTERM)"}.get(
        code, f"exited with code {code}")


__all__ = ["TrialLoop", "LoopStats", "LocalWorkers", "claim_winners", "ClaimKeeper", "finished_count", "is_counted",
           "sweep_lost_trials", "worker_device", "describe_exit", "die_with_parent", "stop_exit_code", "UserError"]
