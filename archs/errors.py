"""User-facing errors and the CLI wrapper that turns them into one-line messages and a non-zero exit."""
from __future__ import annotations

import errno
import re
import signal
import sys
import threading
from typing import Callable


class UserError(Exception):
    """A mistake the user can fix (bad flag, impossible budget, missing data, corrupt file)."""


class SpecError(UserError, ValueError):
    """A `NetSpec` that cannot describe a network."""


# The password runs to the last '@' of the URL: an unencoded '@' in it must not leave its tail visible.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>\S*)@")


def mask_secrets(text: str) -> str:
    """Replace the password of every URL in `text` (scheme://user:password@host) with ***."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))


_STOPPED_BY: list[int] = []  # the signal (SIGINT or SIGTERM) that stopped this process, for the exit code


def note_stop_signal(signum: int) -> None:
    """Remember the first stop signal: a CLI stopped by SIGTERM exits 143, by Ctrl-C 130."""
    if not _STOPPED_BY:
        _STOPPED_BY.append(signum)


def stopped_by_sigterm() -> bool:
    return bool(_STOPPED_BY) and _STOPPED_BY[0] == signal.SIGTERM


def sigterm_like_ctrl_c() -> None:
    """SIGTERM (sent by `timeout`, systemd, `docker stop`, Kubernetes, Slurm) raises KeyboardInterrupt like Ctrl-C,
    so that the same code records the work in progress. Only where SIGTERM still has its default action."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum: int, frame: object) -> None:
        note_stop_signal(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


#: errno values that describe the user's environment (disk, permissions, paths), not a bug of ours
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                      errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.EFBIG, errno.EMFILE,
                      errno.ENFILE, errno.EIO, errno.ELOOP, errno.EXDEV}


def os_error_line(e: OSError, again: str = ", then run the command again") -> str:
    """`PATH: No space left on device; free some space, ...`: the path and the cause of an OSError, on one line."""
    cause = e.strerror or str(e) or type(e).__name__
    where = "" if e.filename is None else f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "") + ": "
    hint = f"; free some space{again}" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{where}{cause}{hint}"


def forget_caught_keyboard_interrupt() -> None:
    """Make the exit code we choose stick after a Ctrl-C / SIGTERM we handled.

    Under `python -m` (and `-c`, which runs spawned workers), a KeyboardInterrupt that passed through code run by
    `exec`/`eval` of a string (dataclasses, namedtuple, lazily imported modules) sets CPython's "unhandled
    KeyboardInterrupt" flag even though we caught it, and the interpreter then kills itself with SIGINT at exit
    instead of exiting 143/130. Each `exec` of a string clears that flag when it starts, so an empty one does.
    """
    exec("pass")  # noqa: S102 - a constant string: clears _PyRuntime.signals.unhandled_keyboard_interrupt


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None, prog: str = "edgenas",
            resume_hint: str = "") -> None:
    """Run a CLI `main`; user mistakes and file-system errors of the user's environment (full disk, read-only or
    missing folder) print `prog: error: ...` on one line and exit 2; Ctrl-C exits 130 and SIGTERM 143."""
    sigterm_like_ctrl_c()
    try:
        rc = main(argv)
    except UserError as e:
        print(f"{prog}: error: {mask_secrets(str(e))}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        line = os_error_line(e, resume_hint) if resume_hint else os_error_line(e)
        print(f"{prog}: error: {mask_secrets(line)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        how = "terminated (SIGTERM)" if stopped_by_sigterm() else "interrupted"
        print(f"{prog}: {how}; finished work is saved{resume_hint}", file=sys.stderr)
        forget_caught_keyboard_interrupt()
        sys.exit(143 if stopped_by_sigterm() else 130)
    sys.exit(rc or 0)
