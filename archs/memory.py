"""Int8 inference memory on a microcontroller, from a spec alone: `memory(spec) -> Memory`.

Follows the graph that the int8 TFLite export (`compress.tflite`, litert-torch) really produces for batch 1 and
places it as TensorFlow Lite Micro does. Pure Python over the resolved plan (`archs.plan.resolve`), no torch.

- Converted graph: each block kind's registry record gives its operators (`BlockKind.tflite_graph`, in
  archs/blocks/<kind>.py, built with the toolkit `archs.tflite_graph`); this module adds the head. NHWC int8
  tensors; batch norm folded and ReLU / ReLU6 fused; explicit PADs where PyTorch's padding is not TensorFlow's;
  residual adds keep their input alive; squeeze-excite, Fire and Ghost concatenations; see docs/mcu.md.
- Activation arena (TFLM's "head"): every non-constant tensor lives from the op that writes it (graph input:
  from the start) to the last op that reads it (graph output: to the end), and the scratch buffers kernels ask
  for (int8 MEAN / SUM) live while their op runs; sizes are rounded up to 16 bytes and placed by TFLM's greedy
  planner (`micro/memory_planner/greedy_memory_planner.cc`: largest first, first gap that fits among the
  buffers live at the same time), which can pack worse than the largest live sum.
- Planning room: the temporary bytes TFLM needs at the head while kernels prepare and the planner runs (its
  per-tensor and per-buffer arrays), which exceed the activations on tiny networks with many tensors.
- Runtime overhead (TFLM's "tail"): per-tensor and per-node structs, per-op kernel data and per-channel
  requantization (multiplier + shift) arrays, from a cost per item measured on the recording allocator of
  tflite-micro (see docs/mcu.md); `arena_bytes` = overhead + max(activations, planning room) = the
  `tensor_arena` a firmware reserves.
- Flash: bytes of the .tflite file the export writes, computed from its flatbuffer layout (`archs.flash`: every
  table, vector, string and alignment pad of the tensors, operators and buffers of the graph above), plus a
  16-byte margin for the converter's order of hoisted constants, so that it is never below.

Bytes everywhere; `Memory.table()` prints kB (1 kB = 1,024 bytes).
"""
from __future__ import annotations

import math
from itertools import accumulate
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .errors import SpecError
from .plan import Block, resolve
from .registry import kinds
from .spec import NetSpec
from .flash import Ops, file_bytes, op_tables
from .tflite_graph import ALIGN as _ALIGN, _BIASES, _SCALAR, Graph, conv as _conv, option_fields

_REGISTRY = kinds()

__all__ = ["Memory", "Layer", "memory", "supported", "greedy_arena", "BLOCK_GRAPH", "features", "OPS"]


@dataclass(slots=True)
class Layer:
    """One operator of the converted graph: TFLite op name, the block it belongs to, its output tensor bytes,
    the activation bytes live while it runs (its inputs, its output and everything kept for later ops)."""

    op: str
    block: str
    out_bytes: int
    live_bytes: int


@dataclass(slots=True)
class Memory:
    """Int8 TFLM memory of one network, in bytes: activation arena (head), runtime overhead (tail), their sum
    (the tensor arena to reserve) and the .tflite flash size; `layers` is the per-operator table, `peak` the
    index of the operator with the most live activation bytes."""

    activation_bytes: int
    overhead_bytes: int
    flash_bytes: int
    peak: int = 0
    live_bound: int = 0  # the largest sum of live (16-byte rounded) tensors: a lower bound of the arena
    planning_bytes: int = 0  # room TFLM needs at the head while it prepares kernels and plans (see planning_room)
    _ops: list = field(default_factory=list, repr=False, compare=False)   # (op, inputs, output, block)
    _sizes: list = field(default_factory=list, repr=False, compare=False)  # tensor bytes
    _live: list = field(default_factory=list, repr=False, compare=False)   # live bytes at each op (1-based)

    @property
    def layers(self) -> list[Layer]:
        """The per-operator table (built on demand: the search only needs the totals)."""
        size, live = self._sizes, self._live
        return [Layer(name, block, size[out], live[i]) for i, (name, _, out, block) in enumerate(self._ops, 1)]

    @property
    def arena_bytes(self) -> int:
        """The tensor arena TFLM accepts: overhead plus the larger of the planned activations and the
        temporary room it needs at the head before they are planned (tiny networks with many tensors)."""
        return max(self.activation_bytes, self.planning_bytes) + self.overhead_bytes

    @property
    def sram_kb(self) -> float:
        return self.arena_bytes / 1024

    @property
    def flash_kb(self) -> float:
        return self.flash_bytes / 1024

    def to_dict(self) -> dict:
        return {"activation_bytes": self.activation_bytes, "overhead_bytes": self.overhead_bytes,
                "arena_bytes": self.arena_bytes, "flash_bytes": self.flash_bytes, "live_bound": self.live_bound,
                "planning_bytes": self.planning_bytes,
                "peak_op": self.peak, "layers": [[x.op, x.block, x.out_bytes, x.live_bytes] for x in self.layers]}

    def table(self) -> str:
        """Per-operator table in kB (1 kB = 1,024 bytes), the peak marked."""
        lines = [f"{'#':>3}  {'op':<18} {'block':<16} {'out kB':>8} {'live kB':>8}"]
        for i, x in enumerate(self.layers):
            mark = "  <- peak" if i == self.peak else ""
            lines.append(f"{i:>3}  {x.op:<18} {x.block:<16} {x.out_bytes / 1024:>8.2f} {x.live_bytes / 1024:>8.2f}{mark}")
        lines.append(f"activation arena {self.activation_bytes / 1024:.2f} kB + runtime overhead "
                     f"{self.overhead_bytes / 1024:.2f} kB = tensor arena {self.arena_bytes / 1024:.2f} kB; "
                     f"flash {self.flash_bytes / 1024:.2f} kB (1 kB = 1,024 bytes)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The converted graph: each block kind's record gives its part (`BlockKind.tflite_graph`, archs/blocks/<kind>.py)
# ----------------------------------------------------------------------------------------------------------------
class _BlockGraphs(Mapping):
    """Block kind -> its converted-graph function (`BlockKind.tflite_graph`), read live from the registry."""

    def __getitem__(self, kind: str) -> Callable[[Graph, Block, NetSpec, int], int]:
        k = _REGISTRY.get(kind)
        if k is None or k.tflite_graph is None:
            raise KeyError(kind)
        return k.tflite_graph

    def __iter__(self) -> Iterator[str]:
        return (n for n, k in _REGISTRY.items() if k.tflite_graph is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: block kind -> its part of the converted graph (a view of the registry's `tflite_graph` records)
BLOCK_GRAPH: Mapping[str, Callable[[Graph, Block, NetSpec, int], int]] = _BlockGraphs()


def _head(g: Graph, spec: NetSpec, plan, x: int) -> int:
    c, h, w = plan.feat_ch, plan.feat_h, plan.feat_w
    g.block = "head"
    hd = spec.head
    if hd.kind == "conv":
        t = _conv(g, x, c, spec.num_classes, 1, 1, 0, h, w, 1, spec.act)[0]
        g.small_const(("axis",), 8)
        return g.op("MEAN" if h * w > 1 else "SUM", (t,), spec.num_classes, 2)
    if hd.kind == "pool":
        g.small_const(("axis",), 8)
        t, n = g.op("MEAN" if h * w > 1 else "SUM", (x,), c, 2), c
        if c == 1 and h * w > 1:  # one channel: the converter reshapes the pooled [1, 1] (seen for MEAN only)
            g.small_const(("shape", 1), 8)
            t = g.op("RESHAPE", (t,), 1, 2)
    else:
        n = c * h * w
        t = x
        if h * w > 1:  # back to PyTorch's NCHW order before flattening; a 1x1 map goes to FULLY_CONNECTED as it is
            if c > 1:
                g.small_const(("perm",), 16)
                t = g.op("TRANSPOSE", (t,), n)
            g.small_const(("shape", n), 8)
            t = g.op("RESHAPE", (t,), n, 2)
    fcs = [f for f in plan.head if f[0] == "fc"]
    if hd.kind == "flatten" and h * w == 1:
        g.opts["FC4D"] = 1  # the first FULLY_CONNECTED reads the 4-D map itself: its own runtime cost
    for i, (_, cin, cout) in enumerate(fcs):
        t = g.weighted("FULLY_CONNECTED", t, cout, cout, cin * cout)
        if i < len(fcs) - 1:
            t = g.activation(t, cout, spec.act, 2)
    return t


def supported(kind: str) -> bool:
    """True when the memory model knows the converted graph of block kind `kind` (its record's `tflite_graph`)."""
    k = _REGISTRY.get(kind)
    return k is not None and k.tflite_graph is not None


def _build(spec: NetSpec) -> Graph:
    plan = resolve(spec)
    fns = []
    for b in plan.blocks:
        k = _REGISTRY[b.kind]
        if k.tflite_graph is None:
            raise SpecError(f"archs.memory has no TFLM graph for block kind {b.kind!r} (its registry record has no "
                            f"tflite_graph); it models {', '.join(BLOCK_GRAPH)}")
        fns.append(k.tflite_graph)
    g = Graph(spec.act)
    x = g.tensor(spec.in_chans * spec.input_size * spec.input_size)
    for i, (b, fn) in enumerate(zip(plan.blocks, fns)):
        g.block = f"{i}:{b.kind}"
        x = fn(g, b, spec, x)
    _head(g, spec, plan, x)
    _requantize_pad_values(g)
    return g


def _requantize_pad_values(g: Graph) -> None:
    """Padded max pools (PADV2) share one pad-value constant; the converter quantizes it for the last PADV2 and
    adds, at the start of the graph, an int8 -> int8 QUANTIZE of it (a 1-byte tensor) for each other input scale:
    PADV2s whose inputs come from one tensor through max pools, PADV2s and unpadded average pools only (which
    keep their input's scale) share one, as the files show (PADV2, MAX_POOL_2D, PADV2 has no QUANTIZE)."""
    padv2 = [i for i, o in enumerate(g.ops) if o[0] == "PADV2"]
    if len(padv2) < 2:
        return
    writer = {o[2]: i for i, o in enumerate(g.ops)}

    def scale_of(j: int) -> int:  # the tensor whose quantization PADV2 j's input keeps
        t = g.ops[j][1][0]
        while t in writer:
            op, ins = g.ops[writer[t]][0], g.ops[writer[t]][1]
            if not (op in _SAME_SCALE or op == "AVERAGE_POOL_2D" and not (ins[0] in writer and
                                                                       g.ops[writer[ins[0]]][0] == "PAD")):
                break
            t = ins[0]
        return t

    direct = scale_of(padv2[-1])
    requantized: dict[int, int] = {}
    extra = []
    for j in padv2[:-1]:
        key = scale_of(j)
        if key == direct:
            continue
        if key not in requantized:
            requantized[key] = g.tensor(1, rank=0)
            extra.append(("QUANTIZE", (), requantized[key], "const"))
        name, ins, out, block = g.ops[j]
        g.ops[j] = (name, ins + (requantized[key],), out, block)  # it replaces the constant pad value
    if not extra:
        return
    g.ops[:0] = extra
    g.op_keys[:0] = [("QUANTIZE", True, False, False)] * len(extra)
    g.op_inputs[:0] = [1] * len(extra)
    g.scratch = [(i + len(extra), b) for i, b in g.scratch]
    g.counts["QUANTIZE"] = len(extra)


#: ops whose output keeps its input's quantization (seen in files: a max pool, a PADV2; also an unpadded average
#: pool; a padded one, PAD + AVERAGE_POOL_2D, has its own observer, whose scale may come out equal or not with the
#: calibration data, so it is not followed); an unknown case counts one QUANTIZE too many (16 bytes), never too few
_SAME_SCALE = frozenset(("MAX_POOL_2D", "PADV2"))


# ----------------------------------------------------------------------------------------------------------------
# TFLM's planner
# ----------------------------------------------------------------------------------------------------------------
def greedy_arena(buffers: list[tuple[int, int, int]]) -> int:
    """Bytes TFLM's GreedyMemoryPlanner needs for `buffers` = [(aligned size, first op, last op)] in the order
    the allocator adds them: sorted by size, largest first (ties: the later-added first, as its stable sort over
    a reversed list gives), each at the lowest offset where it overlaps no placed buffer live at the same time.
    Only the placed buffers live during a buffer's lifetime are looked at (kept per op; the order of equal
    offsets does not change the gap found), which makes it about linear for the short lifetimes of a CNN."""
    n = len(buffers)
    if not n:
        return 0
    sizes = [b[0] for b in buffers]
    order = sorted(range(n - 1, -1, -1), key=sizes.__getitem__, reverse=True)  # stable: ties keep that order
    alive: list[list[tuple[int, int]]] = [[] for _ in range(max(b[2] for b in buffers) + 1)]
    top = 0
    for i in order:
        size, first, last = buffers[i]
        if first == last:
            near = sorted(alive[first])
        else:
            near = alive[first] + alive[last] if last == first + 1 else \
                [x for t in range(first, last + 1) for x in alive[t]]
            near.sort()
        cand = 0
        for off, end in near:
            if off - cand >= size:
                break
            if end > cand:
                cand = end
        placed = (cand, cand + size)
        for t in range(first, last + 1):
            alive[t].append(placed)
        if cand + size > top:
            top = cand + size
    return top


def _lifetimes(g: Graph) -> list[tuple[int, int, int]]:
    """[(aligned bytes, first, last)] of the non-constant tensors in tensor order, then the kernels' scratch
    buffers in op order (TFLM's allocation order)."""
    n_ops = len(g.ops)
    first = [0] * len(g.size)
    last = [0] * len(g.size)
    for i, (_, ins, out, _) in enumerate(g.ops, 1):
        first[out] = last[out] = i
        for t in ins:
            last[t] = i
    last[g.ops[-1][2]] = n_ops  # the graph output lives to the end
    return [(-(-s // _ALIGN) * _ALIGN, first[t], last[t]) for t, s in enumerate(g.size)] + \
        [(-(-s // _ALIGN) * _ALIGN, i, i) for i, s in g.scratch]


def memory(spec: NetSpec) -> Memory:
    """Int8 TFLM memory of `spec`'s exported model: activation arena, runtime overhead, tensor arena, flash."""
    g = _build(spec)
    bufs = _lifetimes(g)
    n_ops = len(g.ops)
    delta = [0] * (n_ops + 2)
    for size, f, l in bufs:
        delta[f] += size
        delta[l + 1] -= size
    live = list(accumulate(delta[:n_ops + 1]))
    bound = max(live)
    peak = live.index(bound, 1) - 1 if n_ops else 0
    return Memory(greedy_arena(bufs), _linear(features(g), TAIL_COST, TAIL_SCALE) + TAIL_PAD,
                  flash_bytes(g) + FLASH_MARGIN,
                  peak, bound, planning_room(g), g.ops, g.size, live)


#: sizes (bytes) of what TFLM (host build of tflite-micro, 64-bit) allocates for planning, as the C++ structs are:
#: `internal::ScratchBufferRequest` (size_t bytes, int node, int subgraph), `AllocationInfo` (size, output pointer,
#: first / last use, offline offset, needs_allocating: 8-aligned), the 8-byte subgraph offset array, the greedy
#: planner's arrays per planned buffer (`BufferRequirements` 16 + sorted size, sorted id, `ListEntry` 12, offset)
_REQUEST, _ALLOC_INFO, _SUBGRAPH_OFFSETS, _PLANNER_BUFFER = 16, 32, 8, 40
_MAX_REQUESTS_PER_OP = 12  # kMaxScratchBuffersPerOp: the head always keeps room for that many more requests
#: a temporary TfLiteTensor (64 bytes, 8-aligned), its TfLiteAffineQuantization (24: scale and zero-point
#: pointers, quantized dimension) and its zero-point TfLiteIntArray (4 bytes + 4 per channel; scales are not
#: copied): 96 bytes for a per-tensor quantized one; a scratch-buffer handle (a pointer)
_TEMP_TENSOR, _TEMP_QUANT, _INT_ARRAY, _HANDLE = 64, 24, 4, 8
_TEMP_SCALAR = 96
_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
#: what the interpreter adds to the tail after planning, which the arena need not hold while planning: for the
#: input and for the output a pointer array (8 bytes, 16-aligned) and a persistent TfLiteTensor with its
#: quantization (64 + 24 + 8): 224 bytes, or 208 when the tail is 8 mod 16 there (an odd number of scratch-buffer
#: handles), the smaller taken
_AFTER_PLAN = 208


def planning_room(g: Graph) -> int:
    """Head bytes TFLM needs before the plan exists, beyond the final tail less what is added to it later:
    - while planning (micro_allocator.cc CommitStaticMemoryPlan; the tail lacks only `_AFTER_PLAN`): the
      scratch-buffer requests with room for 12 more (16-aligned), then temporarily the subgraph offsets and one
      AllocationInfo per tensor and request, and, from the next 16-byte boundary, the greedy planner's arrays for
      every planned buffer (activations and requests): `GreedyMemoryPlanner` refuses "Too many buffers" when the
      rest of the arena holds fewer;
    - while a conv / depthwise kernel prepares (kernels/conv_common.cc ConvPrepare, then CalculateOpDataConv):
      the requests of the ops before it (with 12 spare) and seven temporary tensors, as the temp section is only
      reset once the kernel is done (output, input, weights, then input, weights, bias, output again; weights and
      bias with one zero point per output channel); the tail then lacks `_AFTER_PLAN`, the scratch-buffer handles
      (8 bytes per request) and the two per-channel int32 arrays (16-aligned) of every later weighted op. A fully
      connected kernel (kernels/fully_connected.cc FullyConnectedPrepare) holds four: input, weights, bias,
      output; other kernels hold fewer.
    The arena must hold the tail and the larger of this and the planned activations (`Memory.arena_bytes`)."""
    n_req = len(g.scratch)
    requests = _REQUEST * (n_req + _MAX_REQUESTS_PER_OP)
    infos = _ALLOC_INFO * (len(g.size) + g.n_const + n_req)
    plan = _align16(requests + _SUBGRAPH_OFFSETS + infos) + _PLANNER_BUFFER * (len(g.size) + n_req)
    return max(plan, _prepare_room(g)) - _AFTER_PLAN


def _prepare_room(g: Graph) -> int:
    """The most head bytes a weighted kernel's preparation needs, less the tail it does not see yet (see planning_room)."""
    scratch = g.scratch
    n_req = len(scratch)
    weighted = [(i, op[0] == "FULLY_CONNECTED") for i, op in enumerate(g.ops, 1) if op[0] in _WEIGHTED]
    channels = [b[1] for b in g.biases]  # one bias per weighted op, in op order
    if len(channels) != len(weighted):  # a weighted op without a bias: the bound over the whole network
        weighted, channels = [(len(g.ops) + 1, False)], [g.max_channels]
    # one pass from the last weighted op back (the search screens with this: no per-op scans of the requests);
    # scratch requests are in op order, so the count of those before an op only falls on the way back
    later = 0    # per-channel arrays of the weighted ops after this one
    room = 0
    before = n_req
    for (op, fc), ch in zip(reversed(weighted), reversed(channels)):
        while before and scratch[before - 1][0] >= op:
            before -= 1
        per_channel = _align8(_TEMP_TENSOR + _TEMP_QUANT + _INT_ARRAY * (ch + 1))
        temps = 2 * _TEMP_SCALAR + 2 * per_channel if fc else 4 * _TEMP_SCALAR + 3 * per_channel
        room = max(room, _REQUEST * (before + _MAX_REQUESTS_PER_OP) + temps - later)
        later += 2 * _align16(4 * ch)
    return room - _HANDLE * n_req


def _align16(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _align8(n: int) -> int:
    return -(-n // 8) * 8


# ----------------------------------------------------------------------------------------------------------------
# Runtime overhead (per-item costs measured on tflite-micro's recording allocator) and flash (the file's layout)
# ----------------------------------------------------------------------------------------------------------------
#: operators whose count is a feature of the overhead model
OPS = ("ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "HARD_SWISH",
       "LOGISTIC", "MAX_POOL_2D", "MEAN", "MUL", "PAD", "PADV2", "QUANTIZE", "RESHAPE", "SLICE", "STRIDED_SLICE",
       "SUM", "TRANSPOSE", "SE", "FC4D", "FUSED", "SAME")


def features(g: Graph) -> dict[str, float]:
    """The counts the overhead (tail) model is linear in."""
    n_act = len(g.size)
    counts = dict(g.counts)
    for k, v in g.opts.items():
        counts[k] = counts.get(k, 0) + v
    f = {op: float(counts.get(op, 0)) for op in OPS}
    f.update({"one": 1.0, "tensors": float(n_act + g.n_const), "ops": float(len(g.ops)),
              "reduce": float(bool(counts.get("MEAN") or counts.get("SUM"))),
              "op_types": float(len(counts) - len(g.opts)),
              "channel_arrays": float(g.pc + g.pc_fc)})        # per-channel int32 arrays (bytes, 16-rounded)
    return f


#: TFLM's tail in bytes = sum(cost * feature) x scale + pad. Fixed by TFLM's structs: 24 bytes per TfLiteEvalTensor,
#: 64 per NodeAndRegistration, two int32 arrays per output channel; per-op kernel data and the constant fitted
#: by least squares (relative errors) on tflite-micro's recording allocator (benchmarks/memory_model.py --fit, on
#: development specs only, see docs/mcu.md); the scale is 1 + the largest relative under-estimate of that fit, so
#: the figure is never below TFLM's there. QUANTIZE (the pad-value requantization of a second padded max pool) is
#: in no development network: 48 bytes of kernel data covers the one case measured (6 bytes short without it).
TAIL_COST: dict[str, float] = {
    "tensors": 24, "ops": 64, "channel_arrays": 2, "QUANTIZE": 48, "ADD": 72.34, "AVERAGE_POOL_2D": 73.44, "CONCATENATION": 87.4,
    "CONV_2D": 108.68, "DEPTHWISE_CONV_2D": 108.18, "FULLY_CONNECTED": 109.22, "HARD_SWISH": 31.67,
    "LOGISTIC": 5.4, "MAX_POOL_2D": 71.71, "MEAN": 69.86, "MUL": 62.3, "PAD": 62.67, "PADV2": 65.27,
    "RESHAPE": 26.67, "SLICE": -0.11, "STRIDED_SLICE": 154.83, "SUM": 70.28, "TRANSPOSE": 3, "SE": 5.98,
    "FUSED": -0.36, "SAME": -0.42, "one": 722.45, "reduce": -6, "op_types": 0.17,
}
TAIL_SCALE = 1.00309
#: bytes added after scaling: TFLM rounds allocations to 16 bytes, which the fit sees only on average
TAIL_PAD = 16
#: bytes added to the file's layout (archs.flash): inside its groups (`tflite_graph._SHAPES` ... `_SCALAR`) the
#: converter's order of the constants it hoists is not always the model's, which moves a few alignment pads and,
#: through the file's final 16-byte alignment, the total by 16 bytes either way on some networks; the largest
#: under-estimate on the development networks (docs/mcu.md)
FLASH_MARGIN = 16


def _linear(f: dict[str, float], cost: dict[str, float], scale: float) -> int:
    get = f.get
    return math.ceil(sum([c * get(k, 0.0) for k, c in cost.items()]) * scale)


#: operators whose code the converter writes with version 1 (the field's default, left out of the file)
_VERSION_1 = frozenset(("HARD_SWISH", "RESHAPE"))


def flash_bytes(g: Graph) -> int:
    """Bytes of the .tflite file of graph `g` (`archs.flash.file_bytes`; the activations and conv weights summed
    as the graph was built, `Graph.run`)."""
    codes, head, ops, data = _flash_description(g, False)
    n = file_bytes(codes, head, ops, data, g.run)
    return n if n is not None else file_bytes(*_flash_description(g))  # (not seen: the run starts unaligned)


def _flash_description(g: Graph, body: bool = True) -> tuple[list, list, list, list]:
    """(codes, tensors, ops, data) of the .tflite file of graph `g`, as `archs.flash.file_bytes` takes them:
    operator codes in order of first use, tensors in the converter's order (see `Graph.files`); without `body`,
    the tensors up to the first op's (the rest is `g.run`) and the ops as an `archs.flash.Ops`."""
    keys = g.op_keys
    kinds = dict.fromkeys(keys)
    names = list(dict.fromkeys([k[0] for k in kinds]))
    codes = [(name != "ADD", name not in _VERSION_1, name != "ADD") for name in names]
    first = names[0] if names else None  # only code index 0 is left out of an op
    if body:
        ops = [(k[0] != first, n_in, 1, option_fields(*k)) for k, n_in in zip(keys, g.op_inputs)]
    else:
        ops = Ops(keys, {k: op_tables(k[0] != first, option_fields(*k)) for k in kinds}, sum(g.op_inputs))
    files, biases = g.files, g.biases[::-1]
    consts = sorted(g.consts, key=_group)
    cut = next((i for i, c in enumerate(consts) if c[0] > _BIASES), len(consts))
    scalar = False
    tail = []
    for group, t in consts[cut:]:
        if group == _SCALAR:  # int8 scalars quantized by themselves: the same byte, kept once
            t, scalar = (t if not scalar else t[:3] + (0,)), True
        tail.append(t)
    tensors = [(files[0], 1, 0, 0)] + [c[1] for c in consts[:cut]] + [b for b in biases if b[3] > 0] \
        + _zero_biases(biases) + tail + ([(t, 1, 0, 0) if type(t) is int else t for t in files[1:]] if body else [])
    return codes, [t[:3] for t in tensors], ops, [0] + [t[3] for t in tensors]


def _group(c: tuple) -> int:
    return c[0]


def _zero_biases(biases: list) -> list:
    """The converter's all-zero biases, after the others: equal ones share the data of the first in the file."""
    seen, out = set(), []
    for r, ch, q, n in biases:
        if n <= 0:
            out.append((r, ch, q, 0 if ch in seen else 4 * ch))
            seen.add(ch)
    return out


