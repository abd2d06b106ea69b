"""Channel and feature-map arithmetic shared by the spec, the plan and the blocks. Pure Python, no torch."""
from __future__ import annotations

from .errors import SpecError


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNet's channel rounding: nearest multiple of `divisor`, never more than 10% below `v`."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def ir_hidden(in_ch: int, expand: float) -> int:
    """Hidden width of an inverted residual (torchvision: int(round(in * expand)))."""
    return int(round(in_ch * expand))


def se_channels(ch: int, ratio: float) -> int:
    """Reduced width of a squeeze-excite layer."""
    return max(1, int(round(ch * ratio)))


def conv_out(n: int, k: int, s: int, p: int) -> int:
    """Output length of a convolution (floor mode)."""
    return (n + 2 * p - k) // s + 1


def pool_out(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """Output length of max/avg pooling with PyTorch's ceil-mode rule."""
    if not ceil_mode:
        return (n + 2 * p - k) // s + 1
    out = -(-(n + 2 * p - k) // s) + 1
    if (out - 1) * s >= n + p:
        out -= 1
    return out


def check_spatial(where: str, h: int, w: int, k: int, s: int, p: int) -> tuple[int, int]:
    """Output size of a conv; SpecError when the feature map vanishes."""
    ho, wo = conv_out(h, k, s, p), conv_out(w, k, s, p)
    if ho < 1 or wo < 1:
        raise SpecError(f"{where}: a {h}x{w} feature map is too small for kernel {k} stride {s} padding {p}; "
                        "use a larger input resolution or fewer downsampling steps")
    return ho, wo
