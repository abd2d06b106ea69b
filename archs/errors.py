"""User-facing errors and the CLI wrapper that turns them into one-line messages and a non-zero exit."""
from __future__ import annotations

import re
import sys
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


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None, prog: str = "edgenas") -> None:
    """Run a CLI `main`; user mistakes print `prog: error: ...` on one line and exit 2, Ctrl-C exits 130."""
    try:
        rc = main(argv)
    except UserError as e:
        print(f"{prog}: error: {mask_secrets(str(e))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished work is saved, rerun with --resume to continue", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc or 0)
