"""Bytes of the .tflite file `compress.tflite.shorten_names` writes, from the layout of its flatbuffer.

`shorten_names` re-packs the converter's model with the flatbuffers Python object API (`ModelT.Pack`): tensors
named "t<i>", no description / signature / metadata, weight data vectors 16-byte aligned. The file is then a
deterministic function of the object tree: every table, vector and string in packing order (the builder writes
back to front), each aligned as `flatbuffers.Builder.Prep` aligns it, and every table's vtable written once
(the builder reuses an identical one). `file_bytes` follows that arithmetic on a compact description of the
tree (no bytes are written); `describe` takes the description from a parsed model (the object API's `ModelT`),
so the layout arithmetic can be checked against real files. `archs.memory` builds the description from the
converted graph it models (`archs.tflite_graph.Graph`). Pure Python.

Description: `codes` the operator codes as (deprecated_builtin_code != 0, version != 1, builtin_code != 0);
`tensors` in file order as (rank, quantization channels, quantized_dimension != 0): channels 0 is an empty
quantization table (int32 shapes, pads, axes); every tensor has a type, a name "t<index>", has_rank and a buffer
(one per tensor after the empty buffer 0; a constant whose data equals an earlier one's points to that buffer and
leaves its own empty); `ops` as (opcode index, inputs, outputs, option fields or None), the option fields being
the (slot, bytes) of the options table's non-default scalars in the order its Pack adds them; `data` the data
bytes of every buffer, the empty buffer 0 first. For speed the tensors after the first op's can come as a `Run`
(sums kept while the graph is built) and the operators as `Ops` (their kinds): `file_bytes` then sums them in
closed form, with the same result.
"""
from __future__ import annotations

from bisect import bisect_left

__all__ = ["file_bytes", "describe", "option_fields", "op_tables", "Layout", "Run", "Ops"]

# (slot, bytes) of the fixed tables, in the order their Pack adds the fields
_TENSOR = ((0, 4), (1, 1), (2, 4), (3, 4), (4, 4), (8, 1))   # shape, type, buffer, name, quantization, has_rank
_QUANT = ((2, 4), (3, 4))                                       # scale, zero_point
_QUANT_DIM = ((2, 4), (3, 4), (6, 4))                           # ... and quantized_dimension
_SUBGRAPH = ((0, 4), (1, 4), (2, 4), (3, 4), (4, 4))           # tensors, inputs, outputs, operators, name
_MODEL = ((0, 4), (1, 4), (2, 4), (4, 4))                      # version, operator_codes, subgraphs, buffers
_BUFFER = ((0, 4),)                                             # data
_SUBGRAPH_NAME = 4                                              # "main"


_SHAPES: dict = {}  # (fields, offset % 4) -> (table bytes, vtable key, vtable bytes)
_OP_TABLES: dict = {}  # (opcode index != 0, option fields) -> op_tables
_CODES: dict = {}  # operator codes -> (bytes, vtables) of the file's start: the codes' tables and their vector


def _table_shape(fields: tuple, mis: int) -> tuple[int, tuple, int]:
    """(bytes, vtable key, vtable bytes) of a table with these (slot, bytes) fields (scalars up to 4 bytes and
    offsets) started at an offset of `mis` modulo 4, as `flatbuffers.Builder` lays it out: each field aligned to
    its size, the vtable offset last; the key is what the builder compares to reuse a vtable (the object size and
    each field's position from the object's start)."""
    known = _SHAPES.get((fields, mis))
    if known is None:
        o = mis
        at = []
        for slot, size in fields:
            o += (-o) % size + size
            at.append((slot, o))
        o += (-o) % 4 + 4
        key = (o - mis,) + tuple(sorted((s, o - p) for s, p in at))
        known = _SHAPES[(fields, mis)] = (o - mis, key, 2 * (2 + max((s for s, _ in at), default=-1) + 1))
    return known


class Layout:
    """The offset arithmetic of `flatbuffers.Builder` (bytes written so far, counted from the end of the file),
    the vtables already written and the largest alignment asked for; no bytes are kept."""

    __slots__ = ("off", "vtables", "minalign")

    def __init__(self):
        self.off = 0
        self.vtables: set = set()
        self.minalign = 4

    def vector(self, elem: int, n: int, align: int = 4) -> None:
        """A vector of n elements of `elem` bytes (data aligned to `align`) and its uint32 length."""
        nb = elem * n
        align = max(align, 4)  # the uint32 length before the data
        if align > self.minalign:
            self.minalign = align
        self.off += (-(self.off + nb)) % align + nb + 4

    def string(self, n: int) -> None:
        """A string of n bytes: NUL-terminated, its length before it, 4-byte aligned."""
        self.off += (-(self.off + n + 1)) % 4 + n + 5

    def table(self, fields: tuple) -> None:
        """A table with the given (slot, bytes) fields, and its vtable unless an identical one was written."""
        size, key, vt = _table_shape(fields, self.off & 3)
        self.off += size
        if key not in self.vtables:
            self.vtables.add(key)
            self.off += vt

    def finish(self) -> int:
        """Finish(root, file_identifier): pad to the largest alignment, identifier and root offset; the total."""
        self.off += (-(self.off + 8)) % self.minalign + 8
        return self.off


def op_tables(code: bool, fields: tuple | None) -> tuple:
    """(options table, op table at offset 0 mod 4, at 2 mod 4) shapes (`_table_shape`) of an operator whose opcode
    index is not 0 (`code`) with these option fields (None: no options table)."""
    key = (code, fields)
    known = _OP_TABLES.get(key)
    if known is None:
        op = ((0, 4),) * code + ((1, 4), (2, 4)) + ((3, 1), (4, 4)) * (fields is not None)
        known = _OP_TABLES[key] = (None if fields is None else _table_shape(fields, 0), _table_shape(op, 0),
                                   None, _table_shape(op, 2))
    return known


class Ops:
    """Operators as `file_bytes` can sum them: `kinds` one hashable kind per op in order, `info` each kind's
    `op_tables`, `inputs` the inputs of all ops (each has one output)."""

    __slots__ = ("kinds", "info", "inputs")

    def __init__(self, kinds: list, info: dict, inputs: int):
        self.kinds, self.info, self.inputs = kinds, info, inputs


class Run:
    """Tensors at the end of the tensor list (activations and conv weights in op order: every tensor quantized,
    the weights' data their buffers' only data) summed as they are added, so that `file_bytes` need not walk them:
    in steady state (every vtable already written) their bytes are sums of ranks and channels plus two kinds of
    alignment pad, which follow from each tensor and the one before it:
    - the int64 zero points are 8-aligned: 4 bytes of pad or none, by the parity of rank + channels + the words of
      the name's table entry + (1 when the tensor before has quantized_dimension 0): `pads` holds the positions
      of the tensors that get one while names take two words ("t0" ... "t99"; beyond, the others get one);
    - a weight's data is 16-aligned; the buffer table before it ends at 12 mod 16 after a data vector, and each
      empty buffer since adds 4: `data` sums the data bytes and these pads (the first weight's pad counted from
      12 mod 16 as well; `file_bytes` corrects it from the real offset)."""

    __slots__ = ("n", "ranks", "channels", "dw", "pads", "first_dw", "n_data", "data", "empties", "first", "last_q",
                 "prev_q")

    def __init__(self):
        self.n = 0            # tensors
        self.ranks = 0        # their ranks, summed
        self.channels = 0     # their quantization channels, summed
        self.dw = 0           # tensors with quantized_dimension != 0 (depthwise weights)
        self.pads: list[int] = []  # positions of the tensors with a zero-point pad (two-word names)
        self.first_dw = -1    # position of the first tensor with quantized_dimension != 0
        self.n_data = 0       # tensors with data
        self.data = 0         # their data bytes and data pads
        self.empties = 0      # empty buffers since the last data (or the start)
        self.first: tuple[int, int, int] | None = None  # the first data: (empty buffers before, bytes, pad counted)
        self.last_q = 0       # quantized_dimension != 0 of the last tensor
        self.prev_q = 0       # ... of the one before it

    def add(self, rank: int, ch: int, qdim: int = 0, nbytes: int = 0) -> None:
        """A quantized tensor (`ch` >= 1 channels) with `nbytes` of data (0: an activation) after the others."""
        n = self.n
        if not (rank + ch + self.last_q) & 1:  # offset before the zero points = 4 (1 - last_q + rank + ch) mod 8
            self.pads.append(n)
        self.n = n + 1
        self.ranks += rank
        self.channels += ch
        self.prev_q, self.last_q = self.last_q, qdim
        if qdim:
            self.dw += 1
            if self.first_dw < 0:
                self.first_dw = n
        if nbytes:
            pad = (-(12 + 4 * self.empties + nbytes)) & 15
            if self.first is None:
                self.first = (self.empties, nbytes, pad)
            self.data += nbytes + pad
            self.n_data += 1
            self.empties = 0
        else:
            self.empties += 1

    def add_before_last(self, rank: int, ch: int, qdim: int, nbytes: int, last_rank: int) -> None:
        """A weight put before the last tensor (an activation of rank `last_rank`: the PAD output its op reads)."""
        n = self.n - 1
        if self.pads and self.pads[-1] == n:
            self.pads.pop()
        self.n = n
        self.ranks -= last_rank
        self.channels -= 1
        self.empties -= 1
        self.last_q = self.prev_q
        self.add(rank, ch, qdim, nbytes)
        self.add(last_rank, 1)


def _ops_loop(ops: list, off: int, vt: set) -> int:
    """The operators' vectors and tables one by one (an op's tables are summed once their vtables exist)."""
    steady: dict = {}  # (code != 0, id(fields)) -> bytes of the tables of an op once their vtables exist
    for code, n_in, n_out, fields in ops:
        kind = (code != 0, id(fields))
        known = steady.get(kind)
        if known is not None and not off & 3:
            off += known + 4 * (n_in + n_out) + 8
            continue
        start = off = off + (-off & 3) + 4 * (n_in + n_out) + 8
        new = False
        if fields is not None:
            size, key, v = _table_shape(fields, 0)
            off += size
            if key not in vt:
                vt.add(key)
                off += v
                new = True
        size, key, v = _table_shape(((0, 4),) * kind[0] + ((1, 4), (2, 4)) + ((3, 1), (4, 4)) * (fields is not None),
                                    off & 3)
        off += size
        if key not in vt:
            vt.add(key)
            off += v
            new = True
        if not new:
            steady[kind] = off - start
    return off


def _ops_bytes(ops: Ops, mis: int, vt: set) -> int:
    """Bytes of the operators' vectors and tables from an offset of `mis` modulo 4: every op's inputs and output
    vectors, and its tables walked only while they write vtables or start unaligned (a kind in steady state costs
    the same every time)."""
    info, steady = ops.info, {}
    tables = 0
    for k in ops.kinds:
        if not mis:
            known = steady.get(k)
            if known is not None:
                tables += known
                continue
        shapes = info[k]
        at = 0  # offset after the op's vectors, modulo 4 (they realign it)
        new = False
        if shapes[0] is not None:
            size, key, v = shapes[0]
            at += size
            if key not in vt:
                vt.add(key)
                at += v
                new = True
        size, key, v = shapes[1 + (at & 3)]
        at += size
        if key not in vt:
            vt.add(key)
            at += v
            new = True
        tables += (-mis & 3) + at
        if not new and not mis:
            steady[k] = at
        mis = at & 3
    return 4 * (ops.inputs + len(ops.kinds)) + 8 * len(ops.kinds) + tables


def _run_tensors(run: Run, start: int, off: int, vt: set, steady: tuple) -> int:
    """Bytes of `run`'s tensors from tensor index `start` at offset `off` (4-aligned), vtables in `vt`."""
    n, pads = run.n, run.pads
    k = min(n, max(0, 100 - start))  # names "t0" ... "t99" take two words, the later ones three: pads swap
    a = bisect_left(pads, k)
    count = a + (n - k) - (len(pads) - a)
    flips = [0] if not off & 4 else []  # the run's first pad was counted after a tensor ending at 4 mod 8
    extra = 0
    if run.first_dw >= 0:  # the first depthwise weight writes the vtable of a quantization with a dimension,
        q = _table_shape(_QUANT_DIM, 0)  # which can leave its tensor table and the next shape unaligned
        if q[1] not in vt:
            vt.add(q[1])
            mis = q[2] & 3
            t = _table_shape(_TENSOR, mis)
            extra = q[2] + t[0] - steady[0]
            end = mis + t[0]
            if t[1] not in vt:
                vt.add(t[1])
                extra += t[2]
                end += t[2]
            extra += -end & 3
            if extra & 4:  # the offset moved by 4 mod 8: the next tensor's zero-point pad swaps
                flips.append(run.first_dw + 1)
    for p in flips:
        i = bisect_left(pads, p)
        has = i < len(pads) and pads[i] == p
        count += (-1 if has else 1) if p < k else (1 if has else -1)
    return 4 * run.ranks + 12 * run.channels + 52 * n + 4 * run.dw + 8 * k + 12 * (n - k) + 4 * count + extra


def _name_len(i: int) -> int:
    return 2 if i < 10 else 3 if i < 100 else 4 if i < 1000 else 5 if i < 10000 else len(str(i)) + 1


def file_bytes(codes: list, tensors: list, ops: list, data: list, run: Run | None = None, n_inputs: int = 1,
               n_outputs: int = 1) -> int | None:
    """Bytes of the flatbuffer `ModelT.Pack` writes for the described model (see the module docstring); `run`:
    more tensors after `tensors` (and their buffers after `data`), summed in closed form (None when they do not
    start in steady state: then describe them in `tensors`).

    The tables and vectors of tensors, operators and buffers are laid out inline (the same arithmetic as
    `Layout`, which does the rest): 4-byte aligned vectors and strings need no pad but after a vtable of 4k + 2
    bytes, a zero-point vector (int64) is 8-aligned, a buffer's data 16-aligned."""
    lay = Layout()
    table, vector, string = lay.table, lay.vector, lay.string
    key = tuple(codes)
    known = _CODES.get(key)
    if known is None:
        for dep, ver, code in codes:
            table(((0, 1),) * dep + ((2, 4),) * ver + ((3, 4),) * code)
        vector(4, len(codes))
        if len(_CODES) < 4096:
            _CODES[key] = (lay.off, frozenset(lay.vtables))
    else:
        lay.off, lay.vtables = known[0], set(known[1])
    vt = lay.vtables
    off = lay.off
    quant, quant_dim, empty = _table_shape(_QUANT, 0), _table_shape(_QUANT_DIM, 0), _table_shape((), 0)
    tensor = (_table_shape(_TENSOR, 0), None, _table_shape(_TENSOR, 2))
    for i, (rank, ch, qdim) in enumerate(tensors):
        # shape (int32), name "t<i>" (4-byte length, characters, NUL, padded to 4)
        off += (-off & 3) + 4 * rank + (12 if i < 100 else 16 if i < 1000000 else (_name_len(i) + 4 & ~3) + 8)
        if ch:  # scales (float32), zero points (int64, 8-aligned), then the table after them (4-aligned)
            off += 4 * ch + 4
            off += (off & 4) + 8 * ch + 4
            size, key, v = quant_dim if qdim else quant
        else:
            size, key, v = empty
        off += size
        if key not in vt:
            vt.add(key)
            off += v
        size, key, v = tensor[off & 3]
        off += size
        if key not in vt:
            vt.add(key)
            off += v
    n_tensors = len(tensors)
    if run is not None and run.n:
        if off & 3 or n_tensors + run.n >= 1000000 or tensor[0][1] not in vt or quant[1] not in vt:
            return None
        off += _run_tensors(run, n_tensors, off, vt, tensor[0])
        n_tensors += run.n
    # the tensors, inputs and outputs vectors
    off += (-off & 3) + 4 * n_tensors + 4 * n_inputs + 4 * n_outputs + 12
    if isinstance(ops, Ops):
        off += _ops_bytes(ops, off & 3, vt)
        ops = ops.kinds
    else:
        off = _ops_loop(ops, off, vt)
    lay.off = off
    vector(4, len(ops))
    string(_SUBGRAPH_NAME)
    table(_SUBGRAPH)
    vector(4, 1)
    off = lay.off
    buffer = _table_shape(_BUFFER, 0)
    empties = (_table_shape((), 0), None, _table_shape((), 2))
    for n in data:
        if n:  # the data (16-aligned) and its length, then the table
            off += (-(off + n) & 15) + n + 4
            size, key, v = buffer
        else:
            size, key, v = empties[off & 3]
        off += size
        if key not in vt:
            vt.add(key)
            off += v
    n_data = len(data)
    if run is not None and run.n:
        if off & 3 or buffer[1] not in vt or empties[0][1] not in vt:
            return None
        if run.first is not None:
            e, n, pad = run.first
            off += run.data - pad + (-(off + 4 * e + n) & 15)
        off += 12 * run.n_data + 4 * (run.n - run.n_data)
        n_data += run.n
    lay.off = off
    if any(data) or run is not None and run.n_data:
        lay.minalign = 16
    elif tensors:
        lay.minalign = 8
    vector(4, n_data)
    table(_MODEL)
    return lay.finish()


class _OptionFields:
    """Stands in for a flatbuffers builder while an options table packs itself: records its non-default scalar
    fields as (slot, bytes)."""

    def __init__(self):
        self.fields: list[tuple[int, int]] = []

    def StartObject(self, n):  # noqa: N802 - the builder's names
        pass

    def EndObject(self):  # noqa: N802
        return 0

    def _slot(size):  # noqa: N805
        def prepend(self, slot, x, default):
            if x != default:
                self.fields.append((slot, size))
        return prepend

    PrependBoolSlot = PrependUint8Slot = PrependInt8Slot = _slot(1)
    PrependInt16Slot = PrependUint16Slot = _slot(2)
    PrependInt32Slot = PrependUint32Slot = PrependFloat32Slot = _slot(4)
    PrependInt64Slot = PrependUint64Slot = PrependFloat64Slot = _slot(8)

    def PrependUOffsetTRelativeSlot(self, slot, x, default):  # noqa: N802
        raise ValueError("an options table with a vector or sub-table: not a layout archs.flash describes")


def option_fields(options) -> tuple | None:
    """The (slot, bytes) fields an object-API options table (e.g. `Conv2DOptionsT`) packs, None for none."""
    if options is None:
        return None
    rec = _OptionFields()
    options.Pack(rec)
    return tuple(rec.fields)


def describe(model) -> tuple[list, list, list, list]:
    """(codes, tensors, ops, data) of a parsed model (flatbuffers object API `ModelT`, one subgraph); a
    ValueError when it has parts this layout does not cover (names other than "t<i>", metadata, ...)."""
    if len(model.subgraphs) != 1 or model.description is not None or model.metadata or model.signatureDefs \
            or model.metadataBuffer is not None or not model.version:
        raise ValueError("not the layout compress.tflite.shorten_names writes (subgraphs, description, metadata)")
    sg = model.subgraphs[0]
    if len(sg.inputs) != 1 or len(sg.outputs) != 1 or sg.name != b"main" or sg.debugMetadataIndex != -1:
        raise ValueError("subgraph inputs / outputs / name other than one, one, 'main'")
    codes = [(bool(c.deprecatedBuiltinCode), c.version != 1, bool(c.builtinCode)) for c in model.operatorCodes]
    if any(c.customCode is not None for c in model.operatorCodes):
        raise ValueError("custom operator codes")
    tensors = []
    for i, t in enumerate(sg.tensors):
        q = t.quantization
        if t.name != f"t{i}".encode() or not t.buffer or not t.type or t.isVariable or not t.hasRank \
                or t.externalBuffer or t.sparsity is not None or t.shapeSignature is not None \
                or t.variantTensors is not None or q is None or q.min is not None or q.max is not None \
                or q.detailsType or (q.scale is None) != (q.zeroPoint is None) \
                or (q.scale is not None and len(q.scale) != len(q.zeroPoint)):
            raise ValueError(f"tensor {i}: fields other than the layout's")
        tensors.append((len(t.shape), 0 if q.scale is None else len(q.scale), bool(q.quantizedDimension)))
    ops = []
    for o in sg.operators:
        if o.customOptions is not None or o.mutatingVariableInputs is not None or o.intermediates is not None \
                or o.builtinOptions2 is not None or o.customOptionsFormat or o.largeCustomOptionsOffset \
                or o.largeCustomOptionsSize or o.builtinOptions2Type or o.debugMetadataIndex != -1 \
                or (o.builtinOptions is None) != (o.builtinOptionsType == 0):
            raise ValueError("operator fields other than the layout's")
        ops.append((int(o.opcodeIndex), len(o.inputs), len(o.outputs), option_fields(o.builtinOptions)))
    data = []
    for b in model.buffers:
        if b.offset or b.size:
            raise ValueError("buffers outside the flatbuffer")
        data.append(0 if b.data is None else len(b.data))
    if data[0] or len(data) != len(tensors) + 1:
        raise ValueError("buffers other than one per tensor after an empty one")
    return codes, tensors, ops, data
