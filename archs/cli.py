"""What every edgenas command line shares: one-line argparse errors, --help that states each default once, and
progress bars that become periodic lines when stderr is not a terminal (a log file, CI, a batch scheduler)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["Parser", "HelpFormatter", "progress", "add_distill_weights", "DEFAULT_DEVICE", "DEFAULT_BATCH_SIZE"]

#: training device of every CLI: a GPU when there is one, else the CPU
DEFAULT_DEVICE = "auto"
#: training and fine-tuning batch size of every CLI: the benchmarks' figures were measured at 32, and the small
#: data sets (1,437 digits training images) give 45 steps an epoch at 32
DEFAULT_BATCH_SIZE = 32


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" once: not when the help already says its default, not for on/off switches or
    unset (None) defaults, and lists as the user would type them (``conv,dws,ir``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if ("default" in text.lower() or d is None or d is argparse.SUPPRESS or isinstance(d, bool) or d == []
                or action.nargs == 0 or not action.option_strings):
            return text
        if isinstance(d, (list, tuple)):
            return f"{text} (default: {','.join(str(v) for v in d)})".replace("%", "%%").replace("%%(", "%(")
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse that reports errors on one line and exits 2, with `HelpFormatter` by default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return v


def add_distill_weights(group, old_alpha: bool = False) -> None:
    """--temperature and --kd-alpha, the same in every CLI that distils; `old_alpha` keeps compress.run's
    former spelling --alpha working (hidden: alpha is the width multiplier elsewhere)."""
    group.add_argument("--temperature", type=_positive, default=4.0, help="distillation temperature T")
    group.add_argument("--kd-alpha", dest="kd_alpha", type=float, default=0.9,
                       help="weight of the soft-target loss, 0..1 (the hard-label loss gets 1 - it)")
    if old_alpha:
        group.add_argument("--alpha", dest="kd_alpha", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def progress(iterable=None, **kwargs: Any):
    """A tqdm bar on a terminal; elsewhere (stderr redirected) a plain line at most every 10 s instead of
    thousands of redrawn bars. Takes tqdm's arguments."""
    from tqdm.auto import tqdm

    if not kwargs.get("disable") and kwargs.get("file") is None and not _stderr_is_tty():
        kwargs.update(file=_Lines(sys.stderr), dynamic_ncols=False, ncols=100, ascii=True)
        kwargs.setdefault("mininterval", 10.0)
        kwargs.setdefault("maxinterval", 60.0)
    return tqdm(iterable, **kwargs)


class _Lines:
    """A file for tqdm that turns each redraw ("\r" + bar) into one line of its own."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.last = ""

    def write(self, s: str) -> None:
        text = s.replace("\r", "").rstrip()
        if text and text != self.last:
            self.stream.write(text + "\n")
            self.last = text

    def flush(self) -> None:
        self.stream.flush()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
