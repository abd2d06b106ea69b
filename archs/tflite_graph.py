"""The blocks' toolkit for describing their int8 TFLite graph: `Graph` and the converter's patterns.

Each block kind's record (`BlockKind.tflite_graph`, in its archs/blocks/<kind>.py) is a function
`(graph, block, spec, input tensor) -> output tensor` that adds the operators the int8 export
(`compress.tflite`, litert-torch) really produces for that block: BN folded, ReLU / ReLU6 fused, explicit PADs
where PyTorch's padding is not TensorFlow's, depthwise convs, squeeze-excite. `archs.memory` walks these graphs
to place the tensors as TensorFlow Lite Micro does. Pure Python, no torch.
"""
from __future__ import annotations

__all__ = ["Graph", "ALIGN", "same_pad", "pad", "conv", "squeeze_excite", "hard_sigmoid_gate", "align"]

ALIGN = 16  # TFLM rounds every tensor (and the file its weights) to 16 bytes
#: reference kernels that ask TFLM for a scratch buffer in the planned arena, live while the op runs
_SCRATCH_OPS = frozenset(("MEAN", "SUM"))


def align(n: int) -> int:
    """`n` bytes rounded up to TFLM's 16-byte alignment."""
    return -(-n // ALIGN) * ALIGN


class Graph:
    """Tensors (bytes) and operators (name, input tensor ids, output tensor id, block label) of the converted
    graph, plus the counts the overhead and flash models need."""

    __slots__ = ("size", "ops", "block", "n_const", "const_bytes", "channels", "small", "opts", "act", "pc",
                 "pc_fc", "counts", "scratch", "max_channels")

    def __init__(self, act: str):
        self.size: list[int] = []
        self.ops: list[tuple[str, tuple[int, ...], int, str]] = []
        self.block = ""
        self.n_const = 0        # constant tensors (weights, biases, pad / axis / shape / perm arrays)
        self.const_bytes = 0    # their data bytes (each rounded up to 16)
        self.channels = 0       # per-channel quantized output channels (conv, depthwise, fully connected)
        self.small: set = set()  # distinct small constant arrays (the converter stores each value once)
        self.opts: dict[str, int] = {}  # features that are not op counts (SE, FC4D, FUSED, SAME) -> count
        self.act = act
        self.pc = 0              # per-channel int32 arrays of convolutions, each rounded up to 16 bytes
        self.pc_fc = 0           # the same for fully-connected layers
        self.counts: dict[str, int] = {}  # operator name -> how many
        self.scratch: list[tuple[int, int]] = []  # (op number, bytes): kernel scratch buffers TFLM plans too
        self.max_channels = 0    # the most output channels of one weighted op (per-channel quantization)

    def tensor(self, nbytes: int) -> int:
        self.size.append(nbytes)
        return len(self.size) - 1

    def op(self, name: str, inputs: tuple[int, ...], out_bytes: int) -> int:
        self.size.append(out_bytes)
        t = len(self.size) - 1
        self.ops.append((name, inputs, t, self.block))
        c = self.counts
        c[name] = c.get(name, 0) + 1
        if name in _SCRATCH_OPS:  # int8 MEAN / SUM ask for an int32 sum per output element and two index
            i = len(self.ops)     # arrays (4-D input dims, 2 axes): three scratch buffers (micro/kernels/reduce)
            self.scratch += ((i, 4 * out_bytes), (i, 16), (i, 8))
        return t

    def opt(self, name: str) -> None:
        """Count a feature that is not an operator (a non-default option field, a special form of an op)."""
        self.opts[name] = self.opts.get(name, 0) + 1

    def const(self, nbytes: int) -> None:
        self.n_const += 1
        self.const_bytes += -(-nbytes // ALIGN) * ALIGN

    def small_const(self, key: tuple, nbytes: int) -> None:
        """A small constant array (pads, axes, shapes, scalars): the converter stores each value once."""
        if key not in self.small:
            self.small.add(key)
            self.const(nbytes)

    def weighted(self, name: str, x: int, out_bytes: int, out_ch: int, weight_bytes: int, bias: bool = True) -> int:
        """A conv / depthwise / fully-connected op with int8 weights (per-channel) and an int32 bias."""
        arr = -(-4 * out_ch // ALIGN) * ALIGN  # one int32 per channel, rounded to 16 bytes
        self.n_const += 2 if bias else 1
        self.const_bytes += -(-weight_bytes // ALIGN) * ALIGN + (arr if bias else 0)
        self.channels += out_ch
        if out_ch > self.max_channels:
            self.max_channels = out_ch
        if name == "FULLY_CONNECTED":
            self.pc_fc += arr
        else:
            self.pc += arr
        return self.op(name, (x,), out_bytes)

    def activation(self, x: int, nbytes: int, act: str | None) -> int:
        """The activation after an op: fused for ReLU / ReLU6 (nothing to add), its own op(s) otherwise."""
        if act is None:
            return x
        if act in ("relu", "relu6"):
            self.opt("FUSED")  # a non-default option field in the flatbuffer
            return x
        if act == "hardswish":
            return self.op("HARD_SWISH", (x,), nbytes)
        gate = self.op("LOGISTIC", (x,), nbytes)  # silu = x * sigmoid(x)
        return self.op("MUL", (x, gate), nbytes)


def same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) of one dimension."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def pad(g: Graph, x: int, h: int, w: int, c: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
        name: str = "PAD") -> int:
    """The explicit PAD the converter adds before a conv whose symmetric padding is neither VALID nor SAME."""
    if ph == 0 and pw == 0:
        return x
    if same_pad(h, kh, sh) == (ph, ph) and same_pad(w, kw, sw) == (pw, pw):
        return x
    g.small_const(("pad", ph, ph, pw, pw), 32)
    return g.op(name, (x,), (h + 2 * ph) * (w + 2 * pw) * c)


def conv(g: Graph, x: int, cin: int, cout: int, k: int, s: int, p: int, h: int, w: int, groups: int,
         act: str | None, bias: bool = True, kw: int | None = None, sw: int | None = None,
         pw: int | None = None) -> tuple[int, int, int]:
    """PAD? + CONV_2D / DEPTHWISE_CONV_2D + activation; returns (tensor, h_out, w_out)."""
    if kw is None:
        kw, sw, pw = k, s, p
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * pw - kw) // sw + 1
    if p or pw:
        padded = pad(g, x, h, w, cin, k, kw, s, sw, p, pw)
        if padded == x:
            g.opt("SAME")  # SAME padding: the option field keeps its default
        x = padded
    out = cout * ho * wo
    if groups == cin and (groups > 1 or cin == 1) and cout % cin == 0:
        t = g.weighted("DEPTHWISE_CONV_2D", x, out, cout, cout * k * kw, bias)
    else:
        t = g.weighted("CONV_2D", x, out, cout, cout * k * kw * (cin // groups), bias)
    return g.activation(t, out, act), ho, wo


def hard_sigmoid_gate(g: Graph, m: int, ch: int) -> int:
    """relu6(x + 3) / 6 on a 1x1xch tensor as the converter writes it (compress.tflite's `_HardSigmoid`): RESHAPE
    to NCHW, ADD of the constant 3 (ReLU6 fused), MUL by the constant 1/6, RESHAPE back."""
    g.small_const(("shape_nchw", ch), 16)
    g.small_const(("shape_nhwc", ch), 16)
    g.small_const(("hsig_three",), 1)
    g.small_const(("hsig_sixth",), 1)
    m = g.op("RESHAPE", (m,), ch)
    m = g.op("ADD", (m,), ch)
    g.opt("FUSED")
    m = g.op("MUL", (m,), ch)
    return g.op("RESHAPE", (m,), ch)


def squeeze_excite(g: Graph, t: int, ch: int, reduced: int, hw: int, gate: str = "sigmoid") -> int:
    """Squeeze-excite on a ch-channel map of hw pixels: MEAN (the converter drops the pooling of a 1x1 map),
    1x1 reduce conv (ReLU fused), 1x1 expand conv, the gate (LOGISTIC, or the hard sigmoid's ops), MUL."""
    g.small_const(("axis",), 8)
    m = t
    if hw > 1:
        m = g.op("MEAN", (t,), ch)
        g.opt("SE")  # a reduce that keeps its 4-D shape: its own runtime cost
    m = conv(g, m, ch, reduced, 1, 1, 0, 1, 1, 1, "relu")[0]
    m = conv(g, m, reduced, ch, 1, 1, 0, 1, 1, 1, None)[0]
    m = g.op("LOGISTIC", (m,), ch) if gate == "sigmoid" else hard_sigmoid_gate(g, m, ch)
    return g.op("MUL", (t, m), ch * hw)
