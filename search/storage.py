"""Optuna storages that many processes can share safely, a cross-process study lock, and worker identities.

Storage choice (see README, "Parallel and distributed search"):

- Default local storage: Optuna's RDBStorage on ``OUT/STUDY/study.db`` (SQLite), tuned for several processes:
  WAL journal (readers such as progress polling and trials.csv writers never block a writer), a 60 s busy timeout,
  and ``BEGIN IMMEDIATE`` for every transaction so that Optuna's read-then-write steps (popping a WAITING trial,
  failing a stale one) are atomic across processes. With SQLite's default deferred transactions two processes
  can pop the same retried trial and both run it (measured in benchmarks/workers.py). RDBStorage keeps Optuna's
  heartbeats, which the journal file storage lacks in Optuna 5 (JournalStorage is no BaseHeartbeat).
- ``--storage postgresql://...`` (or mysql): RDBStorage with heartbeats, pre-ping and a connect timeout.
- ``--storage PATH`` (no ``://``): JournalStorage on a file; no heartbeats, so only dead workers on this machine
  are detected (by process id).

Heartbeat interval and grace period come from ``EDGENAS_HEARTBEAT_INTERVAL`` (s, default 10) and
``EDGENAS_HEARTBEAT_GRACE`` (s, default 30); tests use 1-2 s / 6-8 s. SQLite's busy timeout: 60 s
(``EDGENAS_SQLITE_BUSY_TIMEOUT``).

Every RDB storage is wrapped in `ResilientStorage`: the one place where a database outage (a server restart, a
failover, SQLite "database is locked" beyond the busy timeout) is ridden out. See docs/reliability.md.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from archs.errors import UserError, mask_secrets

DEFAULT_HEARTBEAT_INTERVAL = 10
DEFAULT_GRACE_PERIOD = 30
MAX_RETRY = 3  # a trial whose worker died is re-queued at most this many times
SQLITE_BUSY_TIMEOUT_S = 60
DEFAULT_STORAGE_TIMEOUT_S = 300.0  # s a database may stay unreachable before a worker gives up (--storage-timeout)

_QUERY_PASSWORD = re.compile(r"(?i)(password\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&;]+)")


def mask(text: Any) -> str:
    """Hide passwords in URLs (scheme://user:pw@) and in key=value connection strings (password=...)."""
    return _QUERY_PASSWORD.sub(r"\1***", mask_secrets(str(text)))


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in whole seconds, from the environment or the defaults."""
    out = []
    for var, default in (("EDGENAS_HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL),
                         ("EDGENAS_HEARTBEAT_GRACE", DEFAULT_GRACE_PERIOD)):
        raw = os.environ.get(var, "").strip()
        if not raw:
            out.append(default)
            continue
        try:
            v = int(raw)
        except ValueError:
            raise UserError(f"{var} must be a whole number of seconds, got {raw!r}") from None
        if v <= 0:
            raise UserError(f"{var} must be positive, got {v}")
        out.append(v)
    interval, grace = out
    if grace <= interval:
        raise UserError(f"EDGENAS_HEARTBEAT_GRACE ({grace} s) must exceed EDGENAS_HEARTBEAT_INTERVAL ({interval} s)")
    return interval, grace


def sqlite_busy_timeout() -> float:
    """SQLite's busy timeout (s): EDGENAS_SQLITE_BUSY_TIMEOUT (tests make it short) or 60. A lock held longer than
    this is an outage that `ResilientStorage` rides out like any other."""
    raw = os.environ.get("EDGENAS_SQLITE_BUSY_TIMEOUT", "").strip()
    try:
        return float(raw) if raw and float(raw) > 0 else float(SQLITE_BUSY_TIMEOUT_S)
    except ValueError:
        raise UserError(f"EDGENAS_SQLITE_BUSY_TIMEOUT must be seconds, got {raw!r}") from None


# ----- who runs a trial -------------------------------------------------------------------------------------------
def _host_id() -> str:
    """This machine: EDGENAS_HOST_ID if set (tests simulate several machines), else hostname + boot id."""
    env = os.environ.get("EDGENAS_HOST_ID")
    if env:
        return env
    boot = ""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


@dataclass(frozen=True)
class WorkerId:
    """A worker process: host, pid and a random token (a pid can be reused; the token cannot)."""

    host: str
    pid: int
    token: str
    index: int | None = None

    @classmethod
    def current(cls, index: int | None = None) -> "WorkerId":
        return cls(_host_id(), os.getpid(), uuid.uuid4().hex[:12], index)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}" + (f" (worker {self.index})" if self.index is not None else "")


_LIVE_TOKENS: set[str] = set()  # workers alive in this process


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    # a zombie (exited, not yet reaped by its parent) is dead for our purposes
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def worker_dead(info: Any) -> bool:
    """True when `info` (a WorkerId dict) names a process on this machine that no longer runs, or one that ran on
    this machine before it rebooted (same host name, another boot id)."""
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or not isinstance(info.get("host"), str):
        return False
    here = _host_id()
    if info["host"] != here:
        if os.environ.get("EDGENAS_HOST_ID"):
            return False
        name, _, boot = info["host"].rpartition("/")  # hostname/boot id (see _host_id)
        here_name, _, here_boot = here.rpartition("/")
        return bool(name and boot and here_boot and name == here_name and boot != here_boot)
    if info["pid"] == os.getpid():
        return info.get("token") not in _LIVE_TOKENS
    return not pid_alive(info["pid"])


# ----- retrying trials whose worker died --------------------------------------------------------------------------
class RetryLostTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's RetryHeartbeatStaleTrialCallback, re-queuing the trial's parameters only.

    The stock callback copies the lost trial's user attributes (partial learning curve, fail reason) into the
    retry; this one starts the retry clean, records `retry_of` (the number of the lost trial) and keeps only what
    says why the trial was queued: its warm-start template, or the trial it confirms and the fold it validates on
    (search.confirm).
    """

    KEEP = ("template", "confirms", "fold")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if self._max_retry is not None and len(history) > self._max_retry:
            return
        system_attrs = {**trial.system_attrs, "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                        "retry_history": history}
        study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params,
                                            distributions=trial.distributions,
                                            user_attrs={"retry_of": trial.number,
                                                        **{k: trial.user_attrs[k] for k in self.KEEP
                                                           if k in trial.user_attrs}},
                                            system_attrs=system_attrs))


# ----- riding out database outages --------------------------------------------------------------------------------
class StorageUnavailable(Exception):
    """The database cannot be reached right now (raised only inside `fail_fast()`; elsewhere calls wait)."""


class StorageGaveUp(UserError):
    """The database stayed unreachable for longer than --storage-timeout."""


_NOT_TRANSIENT = ("password authentication failed", "authentication failed", "does not exist", "no such table",
                  "disk is full", "disk i/o error", "readonly database", "permission denied",
                  "no pg_hba.conf entry", "unable to open database file")
_TRANSIENT = ("database is locked", "connection refused", "could not connect", "server closed the connection",
              "terminating connection", "connection reset", "connection timed out", "timeout expired",
              "the database system is starting up", "the database system is shutting down",
              "the database system is in recovery mode", "connection is closed", "ssl syscall error", "broken pipe",
              "connection to server", "consuming input failed", "lost connection", "gone away", "no route to host",
              "name or service not known", "temporary failure in name resolution", "cannot operate on a closed")


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack += [getattr(x, "orig", None), x.__cause__, x.__context__]


def is_transient(e: BaseException) -> bool:
    """A database error that goes away by itself: the server is down, restarting or unreachable, or (SQLite) the
    database is locked beyond the busy timeout. A full disk, a wrong password or a missing database are not."""
    try:
        from sqlalchemy import exc as sa_exc
    except ImportError:  # pragma: no cover - sqlalchemy comes with optuna
        return False
    transient = False
    for x in _chain(e):
        text = str(x).lower()
        if any(s in text for s in _NOT_TRANSIENT):
            return False
        if isinstance(x, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
                          sa_exc.TimeoutError)) or any(s in text for s in _TRANSIENT):
            transient = True
    return transient


_LOCAL = threading.local()


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Storage calls in this block raise `StorageUnavailable` at once during an outage instead of waiting for the
    database: the objective keeps training and only skips the pruning check of that epoch."""
    before = getattr(_LOCAL, "fail_fast", False)
    _LOCAL.fail_fast = True
    try:
        yield
    finally:
        _LOCAL.fail_fast = before


#: trial writes that may be written later: a trial keeps training while they wait for the database
_DEFERRABLE = ("set_trial_user_attr", "set_trial_system_attr", "set_trial_intermediate_value")
PROBE_S = 2.0  # during an outage, deferred writes and fail-fast reads try the database at most this often
_MAX_BACKOFF_S = 4.0  # longest wait between two tries: a database that is back is found within seconds


class ResilientStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage that rides out database outages; every storage call of edgenas goes through it.

    - A transient error (see `is_transient`) is retried with exponential backoff (0.5 s doubling to 4 s) until
      the database has been unreachable for `timeout_s`; then `StorageGaveUp`, a one-line UserError.
    - Attribute and intermediate-value writes of a trial do not wait: they are kept, in order, and written before
      the next call that reaches the database (at the latest before the trial's result). Heartbeats are dropped.
    - One stderr line when the database becomes unreachable and one when it is back (`announce`).
    - `outage_ended`: monotonic time the last outage this process saw ended; heartbeats of other workers could
      not arrive meanwhile, so stale-heartbeat sweeps wait a grace period after it (search.workers).
    """

    def __init__(self, backend: BaseStorage, url: str, timeout_s: float = DEFAULT_STORAGE_TIMEOUT_S,
                 announce: bool = True):
        self._backend, self.url, self.timeout_s, self.announce = backend, url, float(timeout_s), announce
        self._pending: list[tuple[str, tuple]] = []
        self._lock = threading.RLock()
        self.down_since: float | None = None
        self.outage_ended: float | None = None
        self._last_try = 0.0
        self.outages = 0

    # --- state of the connection ---
    def _say(self, text: str) -> None:
        if self.announce:
            print(f"edgenas: storage {mask(self.url)}: {text}", file=sys.stderr, flush=True)

    def _failed(self, e: BaseException) -> None:
        with self._lock:
            self._last_try = time.monotonic()
            if self.down_since is None:
                self.down_since = self._last_try
                self.outages += 1
                self._say(f"unreachable ({_first_line(e)}); retrying for up to {self.timeout_s:g} s "
                          "(--storage-timeout), training goes on")

    def _reached(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is None:
                return
            seconds = time.monotonic() - self.down_since
            self.down_since, self.outage_ended = None, time.monotonic()
        self._say(f"reachable again after {seconds:.1f} s")

    def in_outage_window(self, grace_s: float) -> bool:
        """The database is unreachable now, or was less than `grace_s` seconds ago."""
        if self.down_since is not None:
            return True
        return self.outage_ended is not None and time.monotonic() - self.outage_ended < grace_s

    def _probe_due(self) -> bool:
        return self.down_since is None or time.monotonic() - self._last_try >= PROBE_S

    # --- calls ---
    def _flush(self) -> None:
        """Write the deferred trial writes, oldest first (raises on the first transient error)."""
        with self._lock:
            while self._pending:
                name, args = self._pending[0]
                try:
                    getattr(self._backend, name)(*args)
                except UpdateFinishedTrialError:
                    pass  # the trial was finished meanwhile (failed by another worker): nothing to add to it
                self._pending.pop(0)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._retry(lambda: getattr(self._backend, name)(*args, **kwargs),
                           (args, kwargs) if name == "set_trial_state_values" else None)

    def run(self, fn: Any) -> Any:
        """Call `fn()` (which talks to the same database, e.g. a lock) with the retries of a storage call."""
        return self._retry(fn, None)

    def _retry(self, fn: Any, state_call: tuple | None) -> Any:
        delay, retried = 0.5, False
        while True:
            if getattr(_LOCAL, "fail_fast", False) and not self._probe_due():
                raise StorageUnavailable(f"storage {mask(self.url)} is unreachable")
            try:
                self._flush()
                result = fn()
            except UpdateFinishedTrialError:
                if retried and state_call is not None and self._state_is(*state_call):
                    return True  # the attempt that seemed to fail had been committed
                raise
            except Exception as e:  # noqa: BLE001 - sorted by is_transient, the rest raised unchanged
                if not is_transient(e):
                    self._raise_disk_full(e)
                    raise
                self._failed(e)
                if getattr(_LOCAL, "fail_fast", False):
                    raise StorageUnavailable(f"storage {mask(self.url)} is unreachable") from None
                assert self.down_since is not None
                left = self.timeout_s - (time.monotonic() - self.down_since)
                if left <= 0:
                    raise StorageGaveUp(f"storage {mask(self.url)} unreachable for {self.timeout_s:g} s "
                                        f"(--storage-timeout): {_first_line(e)}; rerun with --resume once it is "
                                        "back") from None
                time.sleep(min(delay * (0.75 + random.random() / 2), left))
                delay, retried = min(2 * delay, _MAX_BACKOFF_S), True
                continue
            self._reached()
            return result

    def _raise_disk_full(self, e: BaseException) -> None:
        """A database on a full disk (SQLite: "database or disk is full") is the OSError it is, naming the file."""
        if any("disk is full" in str(x).lower() or "no space left" in str(x).lower() for x in _chain(e)):
            rdb = rdb_of(self)
            where = (rdb.engine.url.database if rdb is not None and rdb.engine.name == "sqlite" else None) \
                or mask(self.url)
            raise OSError(errno.ENOSPC, "No space left on device (the study's database cannot grow)", where) from None

    def _state_is(self, args: tuple, kwargs: dict) -> bool:
        trial_id = args[0] if args else kwargs.get("trial_id")
        state = args[1] if len(args) > 1 else kwargs.get("state")
        with contextlib.suppress(Exception):
            return self._backend.get_trial(trial_id).state == state
        return False

    def _deferrable(self, name: str, *args: Any) -> None:
        if self.down_since is not None and not self._probe_due():
            with self._lock:
                self._pending.append((name, args))
            return
        try:
            self._flush()
            getattr(self._backend, name)(*args)
        except Exception as e:  # noqa: BLE001
            if not is_transient(e):
                self._raise_disk_full(e)
                raise
            self._failed(e)
            with self._lock:
                self._pending.append((name, args))
            return
        self._reached()

    def record_heartbeat(self, trial_id: int) -> None:
        if not self._probe_due():
            return
        try:
            self._flush()
            self._backend.record_heartbeat(trial_id)
        except Exception as e:  # noqa: BLE001
            if not is_transient(e):
                raise
            self._failed(e)
            return
        self._reached()

    def pending_writes(self) -> int:
        return len(self._pending)

    def remove_session(self) -> None:
        self._backend.remove_session()

    # plain delegation for what is not a storage call (engine, url, caches of the backend)
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_backend":
            raise AttributeError(name)
        return getattr(self._backend, name)

    def get_heartbeat_interval(self) -> int | None:
        return self._backend.get_heartbeat_interval() if isinstance(self._backend, BaseHeartbeat) else None

    def get_heartbeat_stale_trial_callback(self):  # noqa: ANN201
        return self._backend.get_heartbeat_stale_trial_callback()


def _retried(name: str):  # noqa: ANN202
    def method(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)
    method.__name__ = name
    return method


def _deferred(name: str):  # noqa: ANN202
    def method(self: ResilientStorage, *args: Any) -> None:
        self._deferrable(name, *args)
    method.__name__ = name
    return method


for _name in (*BaseStorage.__abstractmethods__, "get_trial_id_from_study_id_trial_number", "get_n_trials",
              "get_best_trial", "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs",
              "get_trial_number_from_id", "get_trial_param", "check_trial_is_updatable", "_get_stale_trial_ids"):
    if _name not in _DEFERRABLE:
        setattr(ResilientStorage, _name, _retried(_name))
for _name in _DEFERRABLE:
    setattr(ResilientStorage, _name, _deferred(_name))
ResilientStorage.__abstractmethods__ = frozenset()


# ----- opening storages -------------------------------------------------------------------------------------------
def _tune_sqlite(storage: optuna.storages.RDBStorage) -> None:
    """WAL + busy timeout + BEGIN IMMEDIATE on every connection of the storage's engine."""
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(sqlite_busy_timeout() * 1000)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made while Optuna created the tables get the settings too


def is_journal(url: str) -> bool:
    return "://" not in url


def open_storage(url: str, heartbeat: bool = True, timeout_s: float = DEFAULT_STORAGE_TIMEOUT_S,
                 announce: bool = True, wait_s: float = 0.0) -> BaseStorage:
    """Optuna storage for a URL (sqlite/postgresql/mysql: RDB with heartbeats, in a `ResilientStorage` that rides
    out outages of up to `timeout_s` seconds) or a journal file path.

    Connection or authentication problems at opening become a UserError whose message never shows the password;
    an unreachable server is waited for `wait_s` seconds first (workers joining a study that exists: a new
    command with a wrong host or port should hear so at once).
    Several workers opening a fresh database at the same moment race to create Optuna's tables; that is retried.
    """
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url))
        except OSError as e:
            raise UserError(f"cannot open journal storage {url}: {e.strerror or e}") from None
    kwargs: dict[str, Any] = {}
    if heartbeat:
        interval, grace = heartbeat_settings()
        kwargs = dict(heartbeat_interval=interval, grace_period=grace,
                      heartbeat_stale_trial_callback=RetryLostTrial(max_retry=MAX_RETRY))
    sqlite = url.startswith("sqlite")
    engine_kwargs: dict[str, Any] = {}
    if sqlite:
        engine_kwargs["connect_args"] = {"timeout": sqlite_busy_timeout()}
    else:
        engine_kwargs["pool_pre_ping"] = True
        if url.startswith("postgres"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    last: Exception | None = None
    races, start, said = 0, time.monotonic(), False
    while True:
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            if sqlite:
                _tune_sqlite(storage)
            from optuna.storages._cached_storage import _CachedStorage

            return ResilientStorage(_CachedStorage(storage), url, timeout_s, announce)
        except Exception as e:  # noqa: BLE001 - driver/connection errors of any kind are a user-facing problem
            last = e
            if _creation_race(e) and races < 5:
                races += 1
                time.sleep(0.2 + random.random())
                continue
            if wait_s > 0 and is_transient(e) and time.monotonic() - start < wait_s:
                if announce and not said:
                    print(f"edgenas: storage {mask(url)}: unreachable ({_first_line(e)}); retrying for up to "
                          f"{wait_s:g} s (--storage-timeout)", file=sys.stderr, flush=True)
                    said = True
                time.sleep(1.0 + random.random())
                continue
            break
    assert last is not None
    raise UserError(f"cannot open storage {mask(url)}: {_first_line(last)}") from None


def _creation_race(e: Exception) -> bool:
    """Another worker created Optuna's tables or version row at the same moment (duplicate key / already exists)."""
    text = f"{e!r} {getattr(e, '__cause__', '')!r}".lower()
    return any(s in text for s in ("already exists", "duplicate key", "unique constraint", "integrityerror",
                                   "database is locked"))


def _first_line(e: BaseException) -> str:
    """The driver's own message (SQLAlchemy wraps it), one line, masked."""
    inner = getattr(e, "orig", None) or e.__cause__ or e
    text = str(inner).strip() or type(inner).__name__
    if isinstance(e, ImportError) or isinstance(inner, ImportError) or isinstance(inner, ModuleNotFoundError):
        text = f"database driver missing ({text}); for PostgreSQL install psycopg[binary]"
    line = " ".join(text.split())
    line = re.sub(r"\s*\(Background on this error at: \S+\)", "", line)
    return mask(line)[:300]


def _innermost(storage: BaseStorage) -> BaseStorage:
    while not isinstance(storage, optuna.storages.RDBStorage) and getattr(storage, "_backend", None) is not None:
        storage = storage._backend
    return storage


def url_of(storage: BaseStorage) -> str | None:
    return getattr(_innermost(storage), "url", None)


def rdb_of(storage: BaseStorage) -> optuna.storages.RDBStorage | None:
    inner = _innermost(storage)
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


def resilient_of(storage: BaseStorage) -> "ResilientStorage | None":
    return storage if isinstance(storage, ResilientStorage) else None


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """The storage records heartbeats (RDBStorage with heartbeat_interval; not JournalStorage in Optuna 5)."""
    from optuna.storages._heartbeat import BaseHeartbeat

    return isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None


# ----- a lock around "count the study's trials, then ask for a new one" --------------------------------------------
@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing); the kernel releases it if the process dies."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class StudyLock:
    """A lock shared by every worker of a study, wherever it runs.

    PostgreSQL: a transaction-level advisory lock (released by the server if the worker dies). SQLite and journal
    files: an flock on a file next to the storage. Other databases: no lock (at most the trials asked at the same
    instant overshoot --trials).
    """

    def __init__(self, storage: BaseStorage, url: str, study_name: str):
        self.storage, self.url, self.study_name = storage, url, study_name
        self.key = int.from_bytes(hashlib.sha256(f"edgenas:{study_name}".encode()).digest()[:8], "big", signed=True)
        self.kind = "none"
        self.path: Path | None = None
        rdb = rdb_of(storage)
        if is_journal(url):
            self.kind, self.path = "file", Path(url + ".edgenas-lock")
        elif rdb is not None and rdb.engine.name == "sqlite":
            db = rdb.engine.url.database
            if db and db != ":memory:":
                self.kind, self.path = "file", Path(db + ".edgenas-lock")
        elif rdb is not None and rdb.engine.name == "postgresql":
            self.kind = "postgresql"

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self.kind == "file":
            assert self.path is not None
            with file_lock(self.path):
                yield
        elif self.kind == "postgresql":
            from sqlalchemy import text

            rdb = rdb_of(self.storage)
            assert rdb is not None

            def acquire() -> tuple[Any, Any]:
                conn = rdb.engine.connect()
                try:
                    trans = conn.begin()
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.key})
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.close()
                    raise
                return conn, trans

            res = resilient_of(self.storage)
            conn, trans = res.run(acquire) if res is not None else acquire()
            try:
                yield
            finally:  # a connection the server dropped meanwhile has released the lock with it
                with contextlib.suppress(Exception):
                    trans.commit()
                with contextlib.suppress(Exception):
                    conn.close()
        else:
            yield
