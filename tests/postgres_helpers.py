"""The PostgreSQL server for tests: EDGENAS_PG_URL (see .ci/postgres.sh), plus helpers for worker processes.

Tests marked `postgres` skip when EDGENAS_PG_URL is unset on a developer machine, but FAIL in CI (CI=true), so
that CI can never pass by silently skipping them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def pg_url() -> str:
    """The test server's URL, or skip (developer machine) / fail (CI) when there is none."""
    url = os.environ.get("EDGENAS_PG_URL", "").strip()
    if not url:
        if in_ci():
            pytest.fail("EDGENAS_PG_URL is not set in CI: .ci/run must start PostgreSQL (.ci/postgres.sh)")
        pytest.skip("EDGENAS_PG_URL not set (start a local server: .ci/postgres.sh start)")
    return url


def pg_password(url: str) -> str | None:
    return urlsplit(url).password


def unique_study(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def cli_env(extra: dict | None = None) -> dict:
    """The environment of a CLI under test: one torch thread (tiny nets; several processes share 2 cores, and
    torch's thread pool on an oversubscribed machine makes them many times slower)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(extra or {})}


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """Start `python -m search.run ARGS` (stdout/stderr captured)."""
    return subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=ROOT, env=cli_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def running_trial_of(storage, study_name: str, pid: int):
    """The RUNNING trial worker `pid` is training, or None."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if (t.user_attrs.get("worker") or {}).get("pid") == pid and "spec" in t.user_attrs:
            return t
    return None


def wait_for_running_trial(storage, study_name: str, proc: subprocess.Popen, timeout: float = 120):
    """Poll until `proc` trains a trial (its spec is recorded, so it is past sampling); return that trial.

    `storage`: a storage, or a callable returning one (or None while the study does not exist yet).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"worker exited early ({proc.returncode}): {err[-2000:]}")
        st = storage() if callable(storage) else storage
        t = running_trial_of(st, study_name, proc.pid) if st is not None else None
        if t is not None:
            return t
        time.sleep(0.1)
    raise AssertionError("no RUNNING trial appeared")


def pg_bindir() -> Path | None:
    """The PostgreSQL server binaries (initdb, pg_ctl) of this machine, or None."""
    import shutil

    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


class OwnPostgres:
    """A PostgreSQL server of our own (own data folder and port, trust auth on loopback) that a test or benchmark
    stops and starts to produce a real database outage without disturbing the shared test server."""

    def __init__(self, root: Path | None = None):
        import socket
        import tempfile

        self.bin = pg_bindir()
        if self.bin is None:
            if in_ci():
                pytest.fail("PostgreSQL server binaries missing in CI (.ci/postgres.sh installs them)")
            pytest.skip("PostgreSQL server binaries not installed")
        # its own folder right under /tmp: the server's user must reach it (pytest's tmp_path is private to us)
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="edgenas-own-pg-"))
        self.data = self.root / "pgdata"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, *cmd: str) -> None:
        import pwd

        prefix: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            pwd.getpwnam("postgres")
            prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*prefix, *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def init(self) -> "OwnPostgres":
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            import shutil

            shutil.chown(self.root, "postgres")
        self._as_owner(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C",
                       "--auth=trust", "--no-sync")
        return self.start()

    def start(self) -> "OwnPostgres":
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                "-c full_page_writes=off -c max_connections=100")  # commits survive an immediate stop
        self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                       "-t", "60", "-o", opts, "start")
        return self

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; `immediate` is a crash as far as clients can tell (connections cut, no goodbye)."""
        self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        import shutil

        try:
            self.stop("immediate")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "OwnPostgres":
        return self.init()

    def __exit__(self, *exc) -> None:
        self.close()
