"""Budget quantities with suffixes: '50', '2.5', '100k', '1.2M', '3G'."""
from __future__ import annotations

import math
import re

from .errors import UserError

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_RE = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*([kKmMgG]?)\s*$")


def parse_quantity(text: str | float | int, name: str = "value", positive: bool = True) -> float:
    """Parse '100k' -> 100000.0; reject NaN, infinities, and (if `positive`) zero or negative values."""
    pre = f"{name}: " if name else ""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        v = float(text)
    else:
        m = _RE.match(str(text))
        if not m:
            what = "not a finite number" if str(text).strip().lower().lstrip("+-") in ("nan", "inf", "infinity") \
                else "not a number (examples: 50, 2.5, 100k, 1.2M)"
            raise UserError(f"{pre}{text!r} is {what}")
        v = float(m[1]) * _SUFFIX[m[2].lower()]
    if not math.isfinite(v):
        raise UserError(f"{pre}{text!r} is not a finite number")
    if positive and v <= 0:
        raise UserError(f"{pre}must be positive, got {text!r}")
    return v


def format_quantity(v: float, digits: int = 3) -> str:
    """Short human form: 1234567 -> '1.23M'."""
    for s, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= f:
            return f"{v / f:.{digits}g}{s}"
    return f"{v:.{digits}g}"
