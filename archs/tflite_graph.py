"""The blocks' toolkit for describing their int8 TFLite graph: `Graph` and the converter's patterns.

Each block kind's record (`BlockKind.tflite_graph`, in its archs/blocks/<kind>.py) is a function
`(graph, block, spec, input tensor) -> output tensor` that adds the operators the int8 export
(`compress.tflite`, litert-torch) really produces for that block: BN folded, ReLU / ReLU6 fused, explicit PADs
where PyTorch's padding is not TensorFlow's, depthwise convs, squeeze-excite. `archs.memory` walks these graphs
to place the tensors as TensorFlow Lite Micro does. Pure Python, no torch.
"""
from __future__ import annotations

from .flash import Run

__all__ = ["Graph", "ALIGN", "same_pad", "pad", "conv", "squeeze_excite", "hard_sigmoid_gate", "align",
           "option_fields"]

ALIGN = 16  # TFLM rounds every tensor (and the file its weights) to 16 bytes
#: reference kernels that ask TFLM for a scratch buffer in the planned arena, live while the op runs
_SCRATCH_OPS = frozenset(("MEAN", "SUM"))


def align(n: int) -> int:
    """`n` bytes rounded up to TFLM's 16-byte alignment."""
    return -(-n // ALIGN) * ALIGN


class Graph:
    """Tensors (bytes) and operators (name, input tensor ids, output tensor id, block label) of the converted
    graph, plus the counts the overhead model needs and what the file's layout needs (archs.flash)."""

    __slots__ = ("size", "ops", "block", "n_const", "small", "opts", "act", "pc", "pc_fc", "counts", "scratch",
                 "max_channels", "files", "consts", "biases", "op_keys", "op_inputs", "_same", "_pending", "run")

    def __init__(self, act: str):
        self.size: list[int] = []
        self.ops: list[tuple[str, tuple[int, ...], int, str]] = []
        self.block = ""
        self.n_const = 0        # constant tensors (weights, biases, pad / axis / shape / perm arrays)
        self.small: set = set()  # distinct small constant arrays (the converter stores each value once)
        self.opts: dict[str, int] = {}  # features that are not op counts (SE, FC4D, FUSED, SAME) -> count
        self.act = act
        self.pc = 0              # per-channel int32 arrays of convolutions, each rounded up to 16 bytes
        self.pc_fc = 0           # the same for fully-connected layers
        self.counts: dict[str, int] = {}  # operator name -> how many
        self.scratch: list[tuple[int, int]] = []  # (op number, bytes): kernel scratch buffers TFLM plans too
        self.max_channels = 0    # the most output channels of one weighted op (per-channel quantization)
        # the .tflite file's tensors (archs.flash), each (rank, quantization channels, quantized_dimension != 0,
        # data bytes): `files` the input, then the activations in op order, each conv's weights before its output
        # (and before the PAD it reads); the converter puts the other constants between the input and the rest
        # (archs.memory orders them): `consts` as (group, tensor), `biases` in op order (data -1: all-zero)
        self.files: list = []  # an activation as its rank alone
        self.consts: list[tuple[int, tuple[int, int, int, int]]] = []
        self.biases: list[tuple[int, int, int, int]] = []
        self._pending: list[int] = []  # small constants (bytes) whose op comes next
        self.run = Run()  # files[1:] summed as they come (archs.flash)
        # per op: (name, VALID padding, keep dims, fused activation): option_fields' arguments; its inputs in the file
        self.op_keys: list[tuple[str, bool, bool, bool]] = []
        self.op_inputs: list[int] = []
        self._same = False  # the next op keeps TensorFlow's SAME padding (its padding field at the default)

    def tensor(self, nbytes: int, rank: int = 4) -> int:
        """A non-constant tensor no op of the graph writes (the input; a requantized constant)."""
        self.size.append(nbytes)
        if self.files:
            self.run.add(rank, 1)
        self.files.append(rank)
        return len(self.size) - 1

    def op(self, name: str, inputs: tuple[int, ...], out_bytes: int, rank: int = 4, consts: int | None = None) -> int:
        """Operator `name` reading tensors `inputs` (and `consts` constant tensors: by default what the converter
        gives that op) and writing a new tensor of `out_bytes` bytes and shape rank `rank` (a MEAN / SUM of rank
        4 keeps its dims)."""
        self.size.append(out_bytes)
        t = len(self.size) - 1
        self.ops.append((name, inputs, t, self.block))
        self.files.append(rank)
        run = self.run  # Run.add(rank, 1) inline: an even rank's zero points are padded only after a depthwise weight
        if run.last_q or rank & 1:
            run.add(rank, 1)
        else:
            run.n += 1
            run.ranks += rank
            run.channels += 1
            run.empties += 1
            run.prev_q = 0
        n_in = len(inputs) + (_CONST_INPUTS.get(name, 0) if consts is None else consts)
        if name in _ONE_CONST and len(inputs) == 1:  # ADD / MUL with a constant operand
            n_in += 1
        self.op_keys.append((name, not self._same, rank == 4, False))
        self.op_inputs.append(n_in)
        self._same = False
        if self._pending:
            self._place_consts(name)
        c = self.counts
        c[name] = c.get(name, 0) + 1
        if name in _SCRATCH_OPS:  # int8 MEAN / SUM ask for an int32 sum per output element and two index
            i = len(self.ops)     # arrays (4-D input dims, 2 axes): three scratch buffers (micro/kernels/reduce)
            self.scratch += ((i, 4 * out_bytes), (i, 16), (i, 8))
        return t

    def opt(self, name: str) -> None:
        """Count a feature that is not an operator (a non-default option field, a special form of an op)."""
        self.opts[name] = self.opts.get(name, 0) + 1
        if name == "SAME":  # the next op pads as TensorFlow's SAME: its padding field keeps the default
            self._same = True

    def small_const(self, key: tuple, nbytes: int) -> None:
        """A small constant array (pads, axes, shapes, scalars): the converter stores each value once. 32 bytes
        is a [4, 2] int32 pad array, 8 or 16 a 1-D int32 array, 1 an int8 scalar (quantized by itself, hence
        always the same byte: the converter keeps the data of the first one only)."""
        if key not in self.small:
            self.small.add(key)
            self.n_const += 1
            self._pending.append(nbytes)

    def _place_consts(self, name: str) -> None:
        """The small constants read by op `name`, in the converter's groups (`_SHAPES` ... `_SCALAR`)."""
        for nbytes in self._pending:
            if nbytes == 1:
                self.consts.append((_PAD_VALUE if name == "PADV2" else _SCALAR, (0, 1, 0, 1)))
            elif nbytes == 32:
                self.consts.append((_PADV2_PADS if name == "PADV2" else _PADS, (2, 0, 0, 32)))
            else:
                group = _AXES if nbytes == 8 else _SLICES if name in ("SLICE", "STRIDED_SLICE") else _SHAPES
                self.consts.append((group, (1, 0, 0, nbytes)))
        self._pending.clear()

    def weighted(self, name: str, x: int, out_bytes: int, out_ch: int, weight_bytes: int, bias: bool = True,
                 zero_bias: bool = False) -> int:
        """A conv / depthwise / fully-connected op with int8 weights (per-channel) and an int32 bias; `zero_bias`:
        the converter's all-zero bias of a conv without one (stored once per channel count)."""
        arr = -(-4 * out_ch // ALIGN) * ALIGN  # one int32 per channel, rounded to 16 bytes
        self.n_const += 2 if bias else 1
        if out_ch > self.max_channels:
            self.max_channels = out_ch
        if bias:  # a zero bias's data as -1: the file keeps one per channel count (archs.memory)
            self.biases.append((1, out_ch, 0, -1 if zero_bias else 4 * out_ch))
        if name == "FULLY_CONNECTED":
            self.pc_fc += arr
            self.consts.append((_FC_WEIGHTS, (2, out_ch, 0, weight_bytes)))
        else:
            self.pc += arr
            dw = name == "DEPTHWISE_CONV_2D" and out_ch > 1  # one channel: quantized_dimension stays 0
            w = (4, out_ch, dw, weight_bytes)
            ops, files = self.ops, self.files
            if ops and ops[-1][0] == "PAD" and ops[-1][2] == x:  # the weights come before the PAD's output
                files.insert(len(files) - 1, w)
                self.run.add_before_last(4, out_ch, dw, weight_bytes, files[-1])
            else:
                files.append(w)
                self.run.add(4, out_ch, dw, weight_bytes)
        return self.op(name, (x,), out_bytes, 2 if name == "FULLY_CONNECTED" else 4, 1 + bias)

    def activation(self, x: int, nbytes: int, act: str | None, rank: int = 4) -> int:
        """The activation after an op: fused for ReLU / ReLU6 (nothing to add), its own op(s) otherwise."""
        if act is None:
            return x
        if act in ("relu", "relu6"):
            self.opt("FUSED")  # a non-default option field in the flatbuffer
            self._fuse(x)
            return x
        if act == "hardswish":
            return self.op("HARD_SWISH", (x,), nbytes, rank)
        gate = self.op("LOGISTIC", (x,), nbytes, rank)  # silu = x * sigmoid(x)
        return self.op("MUL", (x, gate), nbytes, rank)

    def _fuse(self, x: int) -> None:
        """The op that wrote `x` gets a fused activation: its option field for it is no longer the default."""
        if self.ops and self.ops[-1][2] == x:
            self.op_keys[-1] = self.op_keys[-1][:3] + (True,)


#: where the converter puts the constants it does not keep beside their op (between the input and the first
#: op's tensors), by group in this order: shapes / permutations (16 bytes), PAD arrays, SLICE arrays, axes (8
#: bytes), PADV2 arrays, biases (last op first; all-zero ones after the others), PADV2 pad values,
#: fully-connected weights, other int8 scalars. Seen on development networks; the order inside a group,
#: and the groups of biases, are not always the file's (a few bytes of padding: see docs/mcu.md)
_SHAPES, _PADS, _SLICES, _AXES, _PADV2_PADS, _BIASES, _PAD_VALUE, _FC_WEIGHTS, _SCALAR = range(9)

#: constant inputs the converter gives an op besides its activations (weighted ops: weights and bias)
_CONST_INPUTS = {"PAD": 1, "PADV2": 2, "MEAN": 1, "SUM": 1, "RESHAPE": 1, "TRANSPOSE": 1, "SLICE": 2,
                 "STRIDED_SLICE": 3}
_ONE_CONST = frozenset(("ADD", "MUL"))
_OPTION_FIELDS: dict = {}


def option_fields(name: str, valid: bool = True, keep_dims: bool = False, fused: bool = False) -> tuple | None:
    """The (slot, bytes) of the non-default fields of op `name`'s options table as the converter writes it
    (archs.flash), or None when it writes none: VALID padding, strides, filter, depth multiplier, a fused
    activation, keep_dims, a concatenation's axis. `valid`: padding VALID rather than SAME (the default)."""
    key = (name, valid, keep_dims, fused)
    f = _OPTION_FIELDS.get(key, False)
    if f is False:
        pad = ((0, 1),) if valid else ()
        f = {"CONV_2D": pad + ((1, 4), (2, 4)) + ((3, 1),) * fused,
             "DEPTHWISE_CONV_2D": pad + ((1, 4), (2, 4), (3, 4)) + ((4, 1),) * fused,
             "FULLY_CONNECTED": ((0, 1),) * fused + ((2, 1),),
             "ADD": ((0, 1),) * fused, "MUL": ((0, 1),) * fused,
             "MAX_POOL_2D": pad + ((1, 4), (2, 4), (3, 4), (4, 4)) + ((5, 1),) * fused,
             "AVERAGE_POOL_2D": pad + ((1, 4), (2, 4), (3, 4), (4, 4)) + ((5, 1),) * fused,
             "MEAN": ((0, 1),) * keep_dims, "SUM": ((0, 1),) * keep_dims,
             "CONCATENATION": ((0, 4),) + ((1, 1),) * fused,
             "PAD": (), "PADV2": (), "STRIDED_SLICE": (), "QUANTIZE": ()}.get(name)
        _OPTION_FIELDS[key] = f
    return f


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
         pw: int | None = None, zero_bias: bool = False) -> tuple[int, int, int]:
    """PAD? + CONV_2D / DEPTHWISE_CONV_2D + activation; returns (tensor, h_out, w_out). `zero_bias`: a PyTorch conv
    without bias and without a norm after it, to which the converter gives an all-zero bias."""
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
        t = g.weighted("DEPTHWISE_CONV_2D", x, out, cout, cout * k * kw, bias, zero_bias)
    else:
        t = g.weighted("CONV_2D", x, out, cout, cout * k * kw * (cin // groups), bias, zero_bias)
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
    g._fuse(m)
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
