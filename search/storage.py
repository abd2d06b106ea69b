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
``EDGENAS_HEARTBEAT_GRACE`` (s, default 30); tests use 1-2 s / 6-8 s.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from archs.errors import UserError, mask_secrets

DEFAULT_HEARTBEAT_INTERVAL = 10
DEFAULT_GRACE_PERIOD = 30
MAX_RETRY = 3  # a trial whose worker died is re-queued at most this many times
SQLITE_BUSY_TIMEOUT_S = 60

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
    says why the trial was queued: its warm-start template, or the trial it confirms (search.confirm).
    """

    KEEP = ("template", "confirms")

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


# ----- opening storages -------------------------------------------------------------------------------------------
def _tune_sqlite(storage: optuna.storages.RDBStorage) -> None:
    """WAL + busy timeout + BEGIN IMMEDIATE on every connection of the storage's engine."""
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made while Optuna created the tables get the settings too


def is_journal(url: str) -> bool:
    return "://" not in url


def open_storage(url: str, heartbeat: bool = True) -> BaseStorage:
    """Optuna storage for a URL (sqlite/postgresql/mysql: RDB with heartbeats) or a journal file path.

    Connection or authentication problems become a UserError whose message never shows the password.
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
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True
        if url.startswith("postgres"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    last: Exception | None = None
    for attempt in range(5):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            if sqlite:
                _tune_sqlite(storage)
            return storage
        except Exception as e:  # noqa: BLE001 - driver/connection errors of any kind are a user-facing problem
            last = e
            if not _creation_race(e):
                break
            time.sleep(0.2 + random.random())
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


def url_of(storage: BaseStorage) -> str | None:
    inner = getattr(storage, "_backend", storage)
    return getattr(inner, "url", None)


def rdb_of(storage: BaseStorage) -> optuna.storages.RDBStorage | None:
    inner = getattr(storage, "_backend", storage)
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


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
            with rdb.engine.connect() as conn:
                with conn.begin():
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.key})
                    yield
        else:
            yield
