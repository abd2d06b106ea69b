"""Deep Compression's storage format: sparse relative indices + shared-weight indices, both Huffman-coded.

    n = encode(model, shared_info, "model.huff")    # bytes written
    state = decode("model.huff")                     # state_dict; torch.equal to the model's, tensor by tensor
    size_report(model, shared_info)                  # bytes by part: indices, gaps, codebooks, other, header

Every compressed weight tensor (the Conv2d / Linear weights that `compress.share.share_weights` shared, or, with
no shared_info, every float weight tensor whose coded form is smaller than its raw bytes) is stored as

- entries: one per non-zero weight, in C order of the flattened tensor, each with a RELATIVE index (the gap to
  the previous entry's position, 1..2**b) and a cluster index (1..K into the codebook). A gap larger than 2**b
  is bridged by FILLER entries (gap 2**b, cluster index 0 = the weight 0), as in Han et al. 2016. The gap
  width b is chosen per tensor (1..8 bits) to minimise the coded size, or fixed with `gap_bits`;
- the gap stream and the cluster-index stream, each Huffman-coded with its own canonical code (code lengths
  stored; codes rebuilt from them: frequencies -> lengths by Huffman's algorithm -> canonical codes);
- the codebook: the K distinct non-zero values, in the tensor's dtype (float32 as in the paper).

Everything else in the state_dict (biases, BatchNorm parameters and buffers, unshared tensors) is stored raw in
its own dtype, so decoding is exact. Pruned zeros decode as +0.0 (torch.equal treats -0.0 as equal).

File layout (little-endian; version 1):

    header   magic b"EDGENASH" | version u16 | flags u16 (0) | n_tensors u32 | body_len u64 | crc32(body) u32
    body     n_tensors records in state_dict order:
      name_len u16 | name utf-8 | kind u8 (0 raw, 1 sparse shared) | dtype u8 (see DTYPES) | ndim u8 | dims u32*ndim
      raw:     the tensor's bytes (numel * itemsize)
      shared:  gap_bits u8 | K u32 | codebook K*itemsize | n_entries u32 | gap stream | index stream
      stream:  n_lengths u16 | code lengths u8*n_lengths (symbol s has length[s]; 0 = unused; symbols past
               n_lengths unused) | n_bits u64 | ceil(n_bits/8) bytes, codewords MSB first

A truncated or corrupt file (size, magic, version, checksum, inconsistent streams) raises `archs.errors.UserError`.

Speed: encoding is numpy throughout (symbol -> code lookup tables, bits expanded with np.repeat and packed with
np.packbits). Decoding is table-driven and vectorized: for every bit position the next max-length bits are read
at once and the canonical code's per-length limit table gives the codeword length and symbol that would start
there; the chain of actual codeword starts (0 -> 0 + len -> ...) is then followed by pointer doubling, in
O(bits * log(symbols)) numpy work with no Python loop over symbols.
"""
from __future__ import annotations

import heapq
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from archs.errors import UserError
from archs.io import atomic_write_bytes

__all__ = ["MAGIC", "VERSION", "DTYPES", "encode", "decode", "size_report", "encode_bytes", "decode_bytes",
           "code_lengths", "canonical_codes", "huffman_encode", "huffman_decode", "sparse_entries"]

MAGIC = b"EDGENASH"
VERSION = 1
_HEADER = struct.Struct("<8sHHIQI")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]
_DTYPE_CODE = {d: i for i, d in enumerate(DTYPES)}
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}
MAX_CODE_LEN = 48        # decode reads 64-bit windows at byte offsets: lengths up to 57 bits would fit
GAP_BITS_CHOICES = range(1, 9)
RAW, SHARED = 0, 1
MAX_CLUSTERS = 65534   # index alphabet K + 1 must fit the u16 code-length count
MAX_GAP_BITS = 15


# --------------------------------------------------------------------------------------------------------------------
# Canonical Huffman code
# --------------------------------------------------------------------------------------------------------------------
def code_lengths(freqs, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Huffman code lengths (uint8) for symbol frequencies; 0 for unused symbols, 1 for a lone used symbol.

    Huffman's algorithm (a heap, ties broken by node creation order: deterministic). In the (astronomically
    rare) case that a length exceeds `max_len`, frequencies are halved (used symbols kept >= 1) and the code
    rebuilt.
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    lengths = np.zeros(freqs.size, dtype=np.uint8)
    used = np.flatnonzero(freqs > 0)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    f = freqs[used].copy()
    while True:
        n = f.size
        heap = [(int(v), i) for i, v in enumerate(f)]
        heapq.heapify(heap)
        parent = np.zeros(2 * n - 1, dtype=np.int64)
        nxt = n
        while len(heap) > 1:
            fa, a = heapq.heappop(heap)
            fb, b = heapq.heappop(heap)
            parent[a] = parent[b] = nxt
            heapq.heappush(heap, (fa + fb, nxt))
            nxt += 1
        depth = np.zeros(2 * n - 1, dtype=np.int64)
        for node in range(2 * n - 3, -1, -1):  # parents are created after their children: walk down from the root
            depth[node] = depth[parent[node]] + 1
        if depth[:n].max() <= max_len:
            lengths[used] = depth[:n]
            return lengths
        f = np.maximum(f >> 1, 1)


def canonical_codes(lengths) -> np.ndarray:
    """Canonical codes (uint64) for code lengths: symbols sorted by (length, symbol) get consecutive codes,
    shifted left whenever the length grows. Unused symbols (length 0) get 0."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.uint64)
    used = np.flatnonzero(lengths > 0)
    if used.size == 0:
        return codes
    order = used[np.lexsort((used, lengths[used]))]
    code, prev = 0, int(lengths[order[0]])
    for s in order:
        ln = int(lengths[s])
        code <<= ln - prev
        prev = ln
        codes[s] = code
        code += 1
    if code > (1 << prev):
        raise UserError("invalid Huffman code lengths (they violate the Kraft inequality)")
    return codes


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Bit-pack `symbols` with the canonical code of `lengths`: (bytes, number of bits), MSB first."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size == 0:
        return b"", 0
    codes = canonical_codes(lengths)
    lens = np.asarray(lengths, dtype=np.int64)[symbols]
    if (lens == 0).any():
        raise ValueError("a symbol without a code")
    vals = codes[symbols]
    total = int(lens.sum())
    starts = np.cumsum(lens) - lens
    # bit j of codeword i (MSB first) = (code >> (len - 1 - j)) & 1
    rep_len = np.repeat(lens, lens)
    within = np.arange(total, dtype=np.int64) - np.repeat(starts, lens)
    bits = (np.repeat(vals, lens) >> (rep_len - 1 - within).astype(np.uint64)) & np.uint64(1)
    return np.packbits(bits.astype(np.uint8)).tobytes(), total


def huffman_decode(data: bytes, n_bits: int, lengths: np.ndarray, n_symbols: int) -> np.ndarray:
    """Decode exactly `n_symbols` codewords that must fill exactly `n_bits` bits (ValueError otherwise)."""
    if n_symbols == 0:
        if n_bits != 0:
            raise ValueError("bits left over in an empty stream")
        return np.zeros(0, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = canonical_codes(lengths)
    used = np.flatnonzero(lengths > 0)
    if used.size == 0:
        raise ValueError("no code for a non-empty stream")
    if len(data) * 8 < n_bits:
        raise ValueError("stream shorter than its bit count")
    lmax = int(lengths.max())
    if lmax > 57:
        raise ValueError(f"code length {lmax} too large")
    # canonical decode tables: per used length l, first code, count and the left-justified upper bound
    order = used[np.lexsort((used, lengths[used]))]
    sorted_len = lengths[order]
    uniq_len, first_pos, counts = np.unique(sorted_len, return_index=True, return_counts=True)
    first_code = codes[order[first_pos]].astype(np.uint64)
    shift = (lmax - uniq_len).astype(np.uint64)
    upper = (first_code + counts.astype(np.uint64)) << shift

    # the lmax-bit window starting at every bit position
    n = int(n_bits)
    nbytes = (n + 7) // 8
    buf = np.frombuffer(bytes(data[:nbytes]) + b"\0" * 8, dtype=np.uint8)
    pos = np.arange(n, dtype=np.int64)
    words = np.ndarray(shape=(nbytes,), dtype=">u8", buffer=buf, strides=(1,)).astype(np.uint64)
    win = (words[pos >> 3] << (pos & 7).astype(np.uint64)) >> np.uint64(64 - lmax)
    li = np.searchsorted(upper, win, side="right")          # index into uniq_len; == len(uniq_len): invalid
    valid = li < uniq_len.size
    li_c = np.minimum(li, uniq_len.size - 1)
    clen = uniq_len[li_c]
    rank = first_pos[li_c] + ((win >> shift[li_c]) - first_code[li_c]).astype(np.int64)
    sym = order[np.clip(rank, 0, order.size - 1)]
    # next codeword start from every position; n (the end) and invalid positions lead to the sink n + 1
    nxt = np.where(valid, pos + clen, n + 1)
    nxt = np.minimum(nxt, n + 1)
    jump = np.concatenate([nxt, [n + 1, n + 1]])             # jump[n] (end) and jump[n+1] (sink) -> sink
    # pointer doubling: starts[0] = 0, starts[m] = jump^m(0)
    starts = np.zeros(n_symbols + 1, dtype=np.int64)
    have = 1
    while have < n_symbols + 1:
        take = min(have, n_symbols + 1 - have)
        starts[have:have + take] = jump[starts[:take]]
        have += take
        if have < n_symbols + 1:
            jump = jump[jump]
    if starts[-1] != n or (starts[:-1] >= n).any():
        raise ValueError("the codewords do not fill the stream exactly (corrupt data)")
    return sym[starts[:-1]].astype(np.int64)


# --------------------------------------------------------------------------------------------------------------------
# Sparse entries with relative indices
# --------------------------------------------------------------------------------------------------------------------
def sparse_entries(positions: np.ndarray, labels: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gap symbols, index symbols) of the entries for non-zero `positions` (ascending, in the flattened tensor)
    with cluster `labels` (0-based). A gap d (1..) is stored as d - 1 in [0, 2**gap_bits); longer gaps get filler
    entries of gap 2**gap_bits and index symbol 0; real entries have index symbol label + 1."""
    positions = np.asarray(positions, dtype=np.int64)
    g = 1 << int(gap_bits)
    d = np.diff(positions, prepend=-1)
    per = (d - 1) // g + 1                                    # entries per non-zero (fillers + itself)
    total = int(per.sum())
    last = np.cumsum(per) - 1
    gaps = np.full(total, g - 1, dtype=np.int64)
    gaps[last] = (d - 1) - (per - 1) * g
    idx = np.zeros(total, dtype=np.int64)
    idx[last] = np.asarray(labels, dtype=np.int64) + 1
    return gaps, idx


def _stream_cost(freqs: np.ndarray) -> int:
    """Bits of a Huffman-coded stream with these symbol frequencies, plus its code-length table."""
    ln = code_lengths(freqs)
    used = np.flatnonzero(ln)
    table = 8 * (2 + (int(used.max()) + 1 if used.size else 0)) + 64
    return int((freqs * ln.astype(np.int64)).sum()) + table


def _best_gap_bits(positions: np.ndarray, labels: np.ndarray, n_clusters: int) -> int:
    d = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1)
    best, best_cost = 1, None
    lab_freq = np.bincount(np.asarray(labels, dtype=np.int64) + 1, minlength=n_clusters + 1)
    for b in GAP_BITS_CHOICES:
        g = 1 << b
        fillers = int(((d - 1) // g).sum())
        gap_freq = np.bincount((d - 1) % g, minlength=g)
        gap_freq[g - 1] += fillers
        idx_freq = lab_freq.copy()
        idx_freq[0] += fillers
        cost = _stream_cost(gap_freq) + _stream_cost(idx_freq)
        if best_cost is None or cost < best_cost:
            best, best_cost = b, cost
        if fillers == 0:
            break  # wider gaps cannot remove more fillers, only widen the alphabet
    return best


# --------------------------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------------------------
def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _state_of(model_or_state) -> dict[str, torch.Tensor]:
    if isinstance(model_or_state, nn.Module):
        state = model_or_state.state_dict()
    elif isinstance(model_or_state, Mapping):
        state = model_or_state
    else:
        raise UserError(f"encode needs an nn.Module or a state_dict, got {type(model_or_state).__name__}")
    out = {}
    for k, v in state.items():
        t = torch.as_tensor(v)
        if t.dtype not in _DTYPE_CODE:
            raise UserError(f"cannot store tensor {k!r} of dtype {t.dtype} (supported: {', '.join(map(str, DTYPES))})")
        out[str(k)] = t.detach().cpu()
    return out


def _shared_keys(shared_info, state: dict[str, torch.Tensor]) -> list[str] | None:
    """State keys to encode as sparse shared tensors; None = choose automatically."""
    if shared_info is None:
        return None
    layers = getattr(shared_info, "layers", shared_info)
    if isinstance(layers, Mapping):
        keys = list(layers.keys())
    elif isinstance(layers, Iterable) and not isinstance(layers, (str, bytes)):
        keys = [getattr(x, "key", x) for x in layers]
    else:
        raise UserError(f"shared_info must be a SharedInfo, a dict of layers or a list of keys, got "
                        f"{type(shared_info).__name__}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise UserError(f"shared layers not in the model's state_dict: {', '.join(missing[:5])}")
    bad = [k for k in keys if not state[k].is_floating_point()]
    if bad:
        raise UserError(f"shared layers must be float tensors: {', '.join(bad[:5])}")
    return keys


def _gap_bits_for(key: str, t: torch.Tensor, gap_bits) -> int | None:
    if gap_bits is None:
        return None
    if isinstance(gap_bits, Mapping):
        v = gap_bits.get(key, gap_bits.get("conv" if t.dim() == 4 else "fc"))
        if v is None:
            return None
    else:
        v = gap_bits
    if isinstance(v, bool) or int(v) != v or not 1 <= int(v) <= MAX_GAP_BITS:
        raise UserError(f"gap bits must be an integer in 1..{MAX_GAP_BITS}, got {v!r}")
    return int(v)


def _encode_stream(symbols: np.ndarray, alphabet: int) -> tuple[bytes, dict]:
    freqs = np.bincount(symbols, minlength=alphabet) if symbols.size else np.zeros(alphabet, dtype=np.int64)
    lengths = code_lengths(freqs)
    used = np.flatnonzero(lengths)
    n_len = int(used.max()) + 1 if used.size else 0
    payload, n_bits = huffman_encode(symbols, lengths)
    blob = struct.pack("<H", n_len) + lengths[:n_len].astype(np.uint8).tobytes() + struct.pack("<Q", n_bits) + payload
    return blob, {"bits": n_bits, "table_bytes": 2 + n_len + 8, "bytes": len(blob),
                  "bits_per_symbol": n_bits / symbols.size if symbols.size else 0.0}


def _encode_shared(t: torch.Tensor, gap_bits: int | None) -> tuple[bytes, dict]:
    """The shared record body (after the common tensor header) and its size breakdown."""
    flat = t.reshape(-1).contiguous()
    nz = np.flatnonzero((flat != 0).numpy())
    ibits = _INT_VIEW[flat.element_size()]
    raw_bits = flat.view(ibits).numpy()[nz]
    uniq, labels = np.unique(raw_bits, return_inverse=True)     # exact: distinct bit patterns
    codebook = torch.from_numpy(np.ascontiguousarray(uniq)).view(t.dtype)
    k = int(uniq.size)
    if k > MAX_CLUSTERS:
        raise ValueError("too many distinct values")
    labels = labels.astype(np.int64).ravel()
    b = gap_bits if gap_bits is not None else _best_gap_bits(nz, labels, k)
    gaps, idx = sparse_entries(nz, labels, b)
    gap_blob, gap_rep = _encode_stream(gaps, 1 << b)
    idx_blob, idx_rep = _encode_stream(idx, k + 1)
    cb = _tensor_bytes(codebook)
    body = (struct.pack("<BI", b, k) + cb + struct.pack("<I", gaps.size) + gap_blob + idx_blob)
    rep = {"gap_bits": b, "clusters": k, "nonzero": int(nz.size), "entries": int(gaps.size),
           "fillers": int(gaps.size - nz.size), "codebook_bytes": len(cb), "gap_bytes": gap_rep["bytes"],
           "index_bytes": idx_rep["bytes"], "gap_bits_per_entry": gap_rep["bits_per_symbol"],
           "index_bits_per_entry": idx_rep["bits_per_symbol"], "meta_bytes": 1 + 4 + 4}
    return body, rep


def encode_bytes(model_or_state, shared_info=None, gap_bits=None) -> tuple[bytes, dict]:
    """The file's bytes and its size report (see `size_report`), without writing anything."""
    state = _state_of(model_or_state)
    keys = _shared_keys(shared_info, state)
    body = io.BytesIO()
    layers, totals = [], {"indices": 0, "gaps": 0, "codebooks": 0, "other": 0, "header": _HEADER.size}
    for key, t in state.items():
        name = key.encode("utf-8")
        if len(name) > 65535 or t.dim() > 255:
            raise UserError(f"cannot store tensor {key!r}: name or rank too large")
        head = struct.pack("<H", len(name)) + name
        dims = struct.pack("<B", t.dim()) + struct.pack(f"<{t.dim()}I", *t.shape)
        raw = _tensor_bytes(t)
        want_shared = (key in keys) if keys is not None else (
            t.is_floating_point() and t.dim() >= 2 and key.endswith("weight"))
        rec = None
        if want_shared and t.is_floating_point() and t.numel():
            try:
                rec = _encode_shared(t, _gap_bits_for(key, t, gap_bits))
            except ValueError:
                rec = None  # more than MAX_CLUSTERS distinct values: raw
            if rec is not None and keys is None and len(rec[0]) >= len(raw):
                rec = None  # automatic choice: keep whichever is smaller
        meta = len(head) + 2 + len(dims)
        if rec is None:
            body.write(head + struct.pack("<BB", RAW, _DTYPE_CODE[t.dtype]) + dims + raw)
            totals["other"] += len(raw)
            totals["header"] += meta
            continue
        blob, rep = rec
        body.write(head + struct.pack("<BB", SHARED, _DTYPE_CODE[t.dtype]) + dims + blob)
        totals["indices"] += rep["index_bytes"]
        totals["gaps"] += rep["gap_bytes"]
        totals["codebooks"] += rep["codebook_bytes"]
        totals["header"] += meta + rep["meta_bytes"]
        layers.append({"key": key, "shape": list(t.shape), "numel": t.numel(), "bytes": meta + len(blob),
                       "dense_bytes": len(raw), **rep})
    payload = body.getvalue()
    header = _HEADER.pack(MAGIC, VERSION, 0, len(state), len(payload), zlib.crc32(payload))
    data = header + payload
    dense = sum(t.numel() * t.element_size() for t in state.values())
    nonzero_shared = sum(l["nonzero"] for l in layers)
    report = {"total_bytes": len(data), "indices_bytes": totals["indices"], "gaps_bytes": totals["gaps"],
              "codebooks_bytes": totals["codebooks"], "other_bytes": totals["other"], "header_bytes": totals["header"],
              "dense_bytes": dense, "ratio_vs_dense": dense / len(data),
              "shared_nonzero": nonzero_shared,
              "bits_per_shared_nonzero": 8 * (totals["indices"] + totals["gaps"]) / nonzero_shared
              if nonzero_shared else None,
              "layers": layers}
    assert sum(totals.values()) == len(data)
    return data, report


def encode(model_or_state, shared_info=None, path: str | os.PathLike = "model.huff", gap_bits=None) -> int:
    """Write the compressed file (atomically) and return its size in bytes.

    `shared_info`: the `SharedInfo` of `share_weights` (its layers are the tensors coded sparse + Huffman), a
    dict/list of state_dict keys, or None (every float weight tensor of rank >= 2 whose coded form is smaller).
    `gap_bits`: None (best width per tensor, 1..8 bits), an int, or {"conv": 5, "fc": 4} / {key: bits}.
    """
    data, _ = encode_bytes(model_or_state, shared_info, gap_bits)
    atomic_write_bytes(path, data)
    return len(data)


# --------------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("record runs past the end of the body")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))


def _decode_stream(r: _Reader, n_symbols: int, alphabet: int) -> np.ndarray:
    (n_len,) = r.unpack("H")
    if n_len > alphabet:
        raise ValueError("code-length table larger than the alphabet")
    lengths = np.frombuffer(r.take(n_len), dtype=np.uint8).astype(np.int64)
    (n_bits,) = r.unpack("Q")
    payload = r.take((n_bits + 7) // 8)
    if n_symbols and (lengths.size == 0 or not lengths.any()):
        raise ValueError("missing code lengths")
    return huffman_decode(payload, n_bits, lengths, n_symbols)


def decode_bytes(data: bytes, source: str = "<bytes>") -> dict[str, torch.Tensor]:
    """The state_dict stored in `data` (see `decode`)."""
    if len(data) < _HEADER.size:
        raise UserError(f"{source}: truncated Huffman file ({len(data)} bytes, shorter than its {_HEADER.size}-byte "
                        f"header)")
    magic, version, _flags, n_tensors, body_len, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise UserError(f"{source}: not an edgenas Huffman file (bad magic {magic!r})")
    if version != VERSION:
        raise UserError(f"{source}: unsupported Huffman file version {version} (this edgenas reads {VERSION})")
    body = data[_HEADER.size:]
    if len(body) != body_len:
        what = "truncated" if len(body) < body_len else "has trailing bytes"
        raise UserError(f"{source}: Huffman file {what}: header says {_HEADER.size + body_len} bytes, file has "
                        f"{len(data)}")
    if zlib.crc32(body) != crc:
        raise UserError(f"{source}: corrupt Huffman file (checksum mismatch)")
    r = _Reader(body)
    state: dict[str, torch.Tensor] = {}
    try:
        for _ in range(n_tensors):
            (n_name,) = r.unpack("H")
            key = r.take(n_name).decode("utf-8")
            kind, dcode, ndim = r.unpack("BBB")
            if dcode >= len(DTYPES):
                raise ValueError(f"unknown dtype code {dcode}")
            dtype = DTYPES[dcode]
            shape = r.unpack(f"{ndim}I") if ndim else ()
            numel = int(np.prod(shape, dtype=np.int64)) if ndim else 1
            itemsize = torch.empty((), dtype=dtype).element_size()
            if kind == RAW:
                raw = r.take(numel * itemsize)
                t = torch.frombuffer(bytearray(raw), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
                state[key] = t.reshape(shape).clone()
            elif kind == SHARED:
                b, k = r.unpack("BI")
                if not 1 <= b <= MAX_GAP_BITS:
                    raise ValueError(f"gap width {b} out of range")
                cb_bytes = r.take(k * itemsize)
                codebook = (torch.frombuffer(bytearray(cb_bytes), dtype=dtype) if k else torch.empty(0, dtype=dtype))
                (n_entries,) = r.unpack("I")
                gaps = _decode_stream(r, n_entries, 1 << b)
                idx = _decode_stream(r, n_entries, k + 1)
                positions = np.cumsum(gaps + 1) - 1
                if n_entries and positions[-1] >= numel:
                    raise ValueError("an index points past the end of the tensor")
                real = idx > 0
                flat = torch.zeros(numel, dtype=dtype)
                if real.any():
                    flat[torch.from_numpy(positions[real])] = codebook[torch.from_numpy(idx[real] - 1)]
                state[key] = flat.reshape(shape)
            else:
                raise ValueError(f"unknown record kind {kind}")
        if r.pos != len(body):
            raise ValueError("bytes left after the last tensor")
    except (ValueError, UnicodeDecodeError, struct.error, RuntimeError, IndexError, UserError) as e:
        raise UserError(f"{source}: corrupt Huffman file: {e}") from None
    return state


def decode(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a file written by `encode` back into a state_dict (exactly the same tensors: torch.equal on each).
    A missing, truncated or corrupt file raises UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Huffman file not found: {path}")
    return decode_bytes(path.read_bytes(), str(path))


# --------------------------------------------------------------------------------------------------------------------
# Size report
# --------------------------------------------------------------------------------------------------------------------
def size_report(model_or_state, shared_info=None, gap_bits=None) -> dict[str, Any]:
    """Bytes by part of the compressed file of `model_or_state` (encoded in memory, nothing written):
    total_bytes = indices_bytes + gaps_bytes + codebooks_bytes + other_bytes (raw tensors: biases, BN...)
    + header_bytes (file header, names, shapes, per-layer fields). Also dense_bytes (every tensor raw),
    ratio_vs_dense, bits_per_shared_nonzero (index + gap bits per stored non-zero weight) and one dict per coded
    layer (gap_bits, clusters, nonzero, entries, fillers, bits per entry of each stream, bytes)."""
    return encode_bytes(model_or_state, shared_info, gap_bits)[1]
