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
quantization table (int32 shapes, pads, axes), every tensor has a buffer (one per tensor after the empty buffer 0;
a constant whose data equals an earlier one's points to that buffer and leaves its own empty), a type, a name "t<index>" and has_rank; `ops` as (opcode index, inputs, outputs, option fields or None), the option fields being
the (slot, bytes) of the options table's non-default scalars in the order its Pack adds them; `data` the data
bytes of every buffer, the empty buffer 0 first.
"""
from __future__ import annotations

__all__ = ["file_bytes", "describe", "option_fields", "Layout"]

# (slot, bytes) of the fixed tables, in the order their Pack adds the fields
_TENSOR = ((0, 4), (1, 1), (2, 4), (3, 4), (4, 4), (8, 1))   # shape, type, buffer, name, quantization, has_rank
_QUANT = ((2, 4), (3, 4))                                       # scale, zero_point
_QUANT_DIM = ((2, 4), (3, 4), (6, 4))                           # ... and quantized_dimension
_SUBGRAPH = ((0, 4), (1, 4), (2, 4), (3, 4), (4, 4))           # tensors, inputs, outputs, operators, name
_MODEL = ((0, 4), (1, 4), (2, 4), (4, 4))                      # version, operator_codes, subgraphs, buffers
_BUFFER = ((0, 4),)                                             # data
_SUBGRAPH_NAME = 4                                              # "main"


_SHAPES: dict = {}  # (fields, offset % 4) -> (table bytes, vtable key, vtable bytes)


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


def _name_len(i: int) -> int:
    return 2 if i < 10 else 3 if i < 100 else 4 if i < 1000 else 5 if i < 10000 else len(str(i)) + 1


def file_bytes(codes: list, tensors: list, ops: list, data: list, n_inputs: int = 1, n_outputs: int = 1) -> int:
    """Bytes of the flatbuffer `ModelT.Pack` writes for the described model (see the module docstring).

    The tables and vectors of tensors, operators and buffers are laid out inline (the same arithmetic as
    `Layout`, which does the rest): 4-byte aligned vectors and strings need no pad but after a vtable of 4k + 2
    bytes, a zero-point vector (int64) is 8-aligned, a buffer's data 16-aligned."""
    lay = Layout()
    table, vector, string = lay.table, lay.vector, lay.string
    for dep, ver, code in codes:
        table(((0, 1),) * dep + ((2, 4),) * ver + ((3, 4),) * code)
    vector(4, len(codes))
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
    # the tensors, inputs and outputs vectors
    off += (-off & 3) + 4 * len(tensors) + 4 * n_inputs + 4 * n_outputs + 12
    op_tables = {}
    for code, n_in, n_out, fields in ops:
        off += (-off & 3) + 4 * (n_in + n_out) + 8
        if fields is not None:
            size, key, v = _table_shape(fields, 0)
            off += size
            if key not in vt:
                vt.add(key)
                off += v
        kind = (code != 0, fields is not None, off & 3)
        shape = op_tables.get(kind)
        if shape is None:
            shape = op_tables[kind] = _table_shape(((0, 4),) * kind[0] + ((1, 4), (2, 4))
                                                   + ((3, 1), (4, 4)) * kind[1], kind[2])
        size, key, v = shape
        off += size
        if key not in vt:
            vt.add(key)
            off += v
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
    lay.off = off
    if any(data):
        lay.minalign = 16
    elif tensors:
        lay.minalign = 8
    vector(4, len(data))
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
