"""Deep Compression's weight sharing (k-means + centroid fine-tuning) and the Huffman-coded file, on digits."""
from __future__ import annotations

import copy
import heapq
import io
import itertools
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from torch import nn

import archs
from archs import HeadSpec, NetSpec, StageSpec, StemSpec
from archs.errors import UserError
from compress.huffman import (MAGIC, canonical_codes, code_lengths, decode, decode_bytes, encode, encode_bytes,
                              huffman_decode, huffman_encode, size_report, sparse_entries)
from compress.prune import make_permanent, prune_masks
from compress.share import SharedInfo, _SharedWeight, kmeans_codebook, share_weights
from training import TrainConfig, evaluate, fit, load_data


def _lenet(resolution=8):
    return archs.build(archs.zoo.get("lenet300_100", num_classes=10, in_chans=1, resolution=resolution))


def _prune(model: nn.Module, keep: float) -> dict[str, torch.Tensor]:
    """Per-layer magnitude pruning in place (plain zeros); returns the zero masks."""
    masks = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w = m.weight
                k = max(1, int(round(keep * w.numel())))
                thr = w.abs().flatten().topk(k).values[-1]
                w.mul_(w.abs() >= thr)
                masks[f"{name}.weight"] = w == 0
    return masks


def _distinct_nonzero(t: torch.Tensor) -> int:
    return int(torch.unique(t[t != 0]).numel())


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0)


@pytest.fixture(scope="module")
def trained_lenet(digits):
    torch.manual_seed(0)
    m = _lenet()
    fit(m, digits.train, digits.val, TrainConfig(epochs=10, lr=3e-3, batch_size=64, seed=0))
    return m.eval()


@pytest.fixture(scope="module")
def pruned_lenet(trained_lenet, digits):
    """75 % of every layer pruned (masks kept during fine-tuning), folded into plain zeros."""
    m = copy.deepcopy(trained_lenet)
    prune_masks(m, 0.75, "magnitude")
    fit(m, digits.train, digits.val, TrainConfig(epochs=3, lr=1e-3, batch_size=64, seed=0))
    make_permanent(m)
    masks = {f"{n}.weight": mod.weight.detach() == 0 for n, mod in m.named_modules() if isinstance(mod, nn.Linear)}
    return m.eval(), masks


@pytest.fixture(scope="module")
def shared_finetuned(pruned_lenet, digits):
    m = copy.deepcopy(pruned_lenet[0])
    info = share_weights(m, 4, train=digits.train, val=digits.val,
                         cfg=TrainConfig(epochs=3, lr=1e-3, batch_size=64, seed=0))
    return m, info


# ------------------------------------------------------------------------------------------------------------------
# weight sharing
# ------------------------------------------------------------------------------------------------------------------
def test_kmeans_linear_init_and_few_values():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(-1, 0.01, 500), rng.normal(0.5, 0.01, 300), rng.normal(2, 0.01, 5)])
    cb, lab = kmeans_codebook(v, 3)
    # linear init between min and max keeps the rare large weights as their own cluster (Han et al.)
    assert np.allclose(cb, [-1, 0.5, 2], atol=0.02)
    assert np.all(np.diff(cb) > 0) and lab.min() == 0 and lab.max() == 2
    assert np.bincount(lab).tolist() == [500, 300, 5]
    cb, lab = kmeans_codebook(np.array([0.25, -1.0, 0.25, 3.0]), 8)  # fewer distinct values than clusters: exact
    assert cb.tolist() == [-1.0, 0.25, 3.0] and cb[lab].tolist() == [0.25, -1.0, 0.25, 3.0]


def test_share_without_finetuning(pruned_lenet):
    base, masks = pruned_lenet
    m = copy.deepcopy(base)
    info = share_weights(m, 3)
    assert isinstance(info, SharedInfo) and info.model is m and info.bits == 3
    state, before = m.state_dict(), base.state_dict()
    assert set(info.layers) == set(masks)
    for key, layer in info.layers.items():
        w = state[key]
        assert _distinct_nonzero(w) <= 8 and layer.clusters <= 8
        assert torch.equal(w == 0, masks[key])  # zeros stay zeros, nothing else becomes zero
        assert torch.equal(w, layer.weight())
        assert torch.equal(layer.index < 0, masks[key])
    for key in state:
        if key.endswith("bias"):
            assert torch.equal(state[key], before[key])  # biases are not shared


def test_centroid_finetuning_keeps_assignment_and_zeros(shared_finetuned, pruned_lenet, digits):
    m, info = shared_finetuned
    masks = pruned_lenet[1]
    state = m.state_dict()
    assert not any("parametrizations" in k for k in state)  # plain weights written back
    changed = 0
    for key, layer in info.layers.items():
        w = state[key]
        assert _distinct_nonzero(w) <= 16
        assert torch.equal(w == 0, masks[key])
        # the assignment is the k-means one; every weight is its cluster's (fine-tuned) centroid
        assert torch.equal(w, torch.where(layer.index >= 0, layer.codebook[layer.index.long().clamp_min(0)],
                                          torch.zeros(())))
        for c in range(layer.clusters):
            vals = w[layer.index == c]
            assert torch.all(vals == vals[0])
        changed += int(not torch.equal(layer.codebook, layer.codebook_init))
    assert changed == len(info.layers)  # fine-tuning moved the centroids
    assert info.finetune_epochs == 3 and len(info.finetune_history) == 3
    # sharing 4 bits + centroid fine-tuning costs (almost) nothing against the pruned model
    assert info.val_acc >= info.val_acc_before_finetune - 0.01
    assert evaluate(m, digits.test) >= evaluate(pruned_lenet[0], digits.test) - 0.02


def test_centroid_gradient_is_the_sum_over_its_cluster():
    torch.manual_seed(0)
    index = torch.tensor([[0, 1, -1], [1, 1, 0]])
    p = _SharedWeight(index, 2)
    cb = torch.tensor([0.5, -0.25], requires_grad=True)
    w = p(cb)
    g = torch.randn(2, 3)
    (w * g).sum().backward()
    assert torch.allclose(cb.grad, torch.tensor([g[0, 0] + g[1, 2], g[0, 1] + g[1, 0] + g[1, 1]]))
    assert w[0, 2].item() == 0.0


def test_share_rejects_bad_arguments(trained_lenet):
    m = copy.deepcopy(trained_lenet)
    with pytest.raises(UserError, match="bits"):
        share_weights(m, 0)
    with pytest.raises(UserError, match="bits"):
        share_weights(m, 17)
    with pytest.raises(UserError, match="not Conv2d/Linear"):
        share_weights(m, 4, layers=["head.2"])
    info = share_weights(m, 2, layers=["head.5.weight"])
    assert list(info.layers) == ["head.5.weight"] and _distinct_nonzero(m.head[1].weight) > 4


# ------------------------------------------------------------------------------------------------------------------
# canonical Huffman code
# ------------------------------------------------------------------------------------------------------------------
def _is_prefix_free(lengths, codes) -> bool:
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths) if n]
    return not any(a != b and b.startswith(a) for a, b in itertools.permutations(words, 2))


def _optimal_cost(freqs) -> int:
    """Total bits of an optimal prefix code: the sum of all merge weights of Huffman's algorithm."""
    h = [int(f) for f in freqs if f]
    heapq.heapify(h)
    cost = 0
    while len(h) > 1:
        a, b = heapq.heappop(h), heapq.heappop(h)
        cost += a + b
        heapq.heappush(h, a + b)
    return cost


def test_canonical_code_is_prefix_free_and_optimal():
    freqs = np.array([45, 13, 12, 16, 9, 5])  # CLRS: optimal cost 224 bits per 100 symbols
    ln = code_lengths(freqs)
    assert ln.tolist() == [1, 3, 3, 3, 4, 4]
    assert int((freqs * ln).sum()) == 224
    codes = canonical_codes(ln)
    assert [format(int(c), f"0{int(n)}b") for c, n in zip(codes, ln)] == ["0", "100", "101", "110", "1110", "1111"]
    assert _is_prefix_free(ln, codes)
    assert code_lengths([8, 4, 2, 1, 1]).tolist() == [1, 2, 3, 4, 4]  # dyadic: length = -log2 p
    assert code_lengths([0, 7, 0]).tolist() == [0, 1, 0]
    rng = np.random.default_rng(1)
    for _ in range(20):
        f = rng.integers(0, 1000, size=int(rng.integers(2, 40)))
        f[rng.integers(0, f.size)] += 1
        ln = code_lengths(f)
        assert int((f * ln).sum()) == _optimal_cost(f) or (f > 0).sum() == 1
        assert np.all((ln > 0) == (f > 0))
        used = ln[ln > 0].astype(float)
        assert used.size < 2 or np.isclose((2.0 ** -used).sum(), 1.0)  # complete code (Kraft equality)
        assert _is_prefix_free(ln, canonical_codes(ln))


def test_huffman_stream_round_trip():
    rng = np.random.default_rng(2)
    for alphabet, n in ((33, 5000), (256, 20000), (3, 1), (1, 100)):
        sym = rng.integers(0, alphabet, size=n) if alphabet > 1 else np.zeros(n, dtype=np.int64)
        ln = code_lengths(np.bincount(sym, minlength=alphabet))
        data, nbits = huffman_encode(sym, ln)
        assert nbits == int(ln[sym].sum()) and len(data) == (nbits + 7) // 8
        assert np.array_equal(huffman_decode(data, nbits, ln, n), sym)
    assert huffman_encode(np.zeros(0, dtype=np.int64), np.zeros(4))[1] == 0
    with pytest.raises(ValueError):  # one symbol too many for the bits
        huffman_decode(data, nbits, ln, n + 1)


def test_relative_indices_with_fillers():
    gaps, idx = sparse_entries(np.array([0, 3, 20]), np.array([4, 0, 2]), gap_bits=3)
    # gaps 1, 3, 17 with at most 8 per entry: 17 = 8 + 8 + 1 -> two fillers (cluster symbol 0)
    assert gaps.tolist() == [0, 2, 7, 7, 0]
    assert idx.tolist() == [5, 1, 0, 0, 3]
    assert (np.cumsum(gaps + 1) - 1).tolist() == [0, 3, 11, 19, 20]


# ------------------------------------------------------------------------------------------------------------------
# the compressed file
# ------------------------------------------------------------------------------------------------------------------
def _assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_pruned_shared_lenet_round_trips_exactly(shared_finetuned, tmp_path):
    m, info = shared_finetuned
    path = tmp_path / "lenet.huff"
    n = encode(m, info, path)
    assert n == path.stat().st_size
    state = decode(path)
    _assert_same_state(m.state_dict(), state)
    m2 = _lenet()
    m2.load_state_dict(state)
    x = torch.randn(7, 1, 8, 8)
    assert torch.equal(m.eval()(x), m2.eval()(x))
    rep = size_report(m, info)
    assert rep["total_bytes"] == n
    assert rep["indices_bytes"] + rep["gaps_bytes"] + rep["codebooks_bytes"] + rep["other_bytes"] + \
        rep["header_bytes"] == n
    assert rep["other_bytes"] == 4 * (300 + 100 + 10)  # the biases, raw float32
    assert {l["key"] for l in rep["layers"]} == set(info.layers)
    assert all(l["clusters"] <= 16 for l in rep["layers"])
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    assert len(buf.getvalue()) / n > 10  # 25 % of the weights, 4-bit clusters, Huffman


def test_fixed_gap_bits_insert_fillers(shared_finetuned):
    m, info = shared_finetuned
    data, rep = encode_bytes(m, info, gap_bits={"fc": 2})
    assert all(l["gap_bits"] == 2 for l in rep["layers"]) and sum(l["fillers"] for l in rep["layers"]) > 0
    _assert_same_state(m.state_dict(), decode_bytes(data))
    auto = size_report(m, info)
    assert auto["total_bytes"] <= rep["total_bytes"]  # the per-layer choice is at least as good


def test_unshared_state_with_buffers_round_trips(tmp_path):
    spec = NetSpec(num_classes=10, in_chans=1, resolution=8, stem=StemSpec(8),
                   stages=[StageSpec("dws", 16, 1, 2)], head=HeadSpec("pool"))
    torch.manual_seed(0)
    m = archs.build(spec).train()
    m(torch.randn(4, 1, 8, 8))  # BN running stats and num_batches_tracked (int64)
    _prune(m, 0.3)
    with torch.no_grad():  # negative zeros from masking stay equal under torch.equal
        m.head[-1].weight[0, :3] = -0.0
    state = dict(m.state_dict())
    state["extra.half"] = torch.randn(5, 3).half()
    state["extra.bf16"] = torch.randn(2, 2, 3, 3).bfloat16()
    state["extra.bool"] = torch.tensor([True, False])
    state["extra.scalar"] = torch.tensor(3.5)
    state["extra.empty"] = torch.zeros(0, 4)
    n = encode(state, None, tmp_path / "a.huff")
    assert n == (tmp_path / "a.huff").stat().st_size
    _assert_same_state(state, decode(tmp_path / "a.huff"))
    rep = size_report(state)
    assert rep["total_bytes"] == n and rep["layers"]  # some weights were coded sparse


def test_corrupt_or_truncated_file_is_a_user_error(shared_finetuned, tmp_path):
    m, info = shared_finetuned
    path = tmp_path / "m.huff"
    encode(m, info, path)
    data = path.read_bytes()
    cases = {
        "truncated": data[: len(data) - 100],
        "truncated ": data[:10],
        "checksum": data[:200] + bytes([data[200] ^ 0x10]) + data[201:],
        "not an edgenas Huffman file": b"PK\x03\x04" + data[4:],
        "version": data[:8] + struct.pack("<H", 99) + data[10:],
        "trailing": data + b"\0",
    }
    for what, bad in cases.items():
        p = tmp_path / "bad.huff"
        p.write_bytes(bad)
        with pytest.raises(UserError, match=what.strip()):
            decode(p)
    # a corrupt stream behind a valid checksum: caught by the decoder's own checks
    body = bytearray(data[28:])
    body[-30:] = bytes(30)
    forged = data[:24] + struct.pack("<I", zlib.crc32(bytes(body))) + bytes(body)
    with pytest.raises(UserError, match="corrupt"):
        decode_bytes(forged)
    with pytest.raises(UserError, match="not found"):
        decode(tmp_path / "missing.huff")
    assert data[:8] == MAGIC


def test_lenet300_100_full_size_is_fast(tmp_path):
    # 266,610 parameters (784-300-100-10): prune to 8 %, share 5 bits, encode + decode in well under seconds
    torch.manual_seed(0)
    m = _lenet(resolution=28)
    assert sum(p.numel() for p in m.parameters()) == 266_610
    _prune(m, 0.08)
    info = share_weights(m, 5)
    t0 = time.perf_counter()
    n = encode(m, info, tmp_path / "l.huff")
    state = decode(tmp_path / "l.huff")
    sparse_s = time.perf_counter() - t0
    _assert_same_state(m.state_dict(), state)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    assert len(buf.getvalue()) / n >= 35  # Deep Compression reports 40x with a trained net; 32x before Huffman
    # dense (no pruning) is the worst case for the streams: 266 k entries each
    d = _lenet(resolution=28)
    info = share_weights(d, 5)
    t0 = time.perf_counter()
    encode(d, info, tmp_path / "d.huff")
    _assert_same_state(d.state_dict(), decode(tmp_path / "d.huff"))
    dense_s = time.perf_counter() - t0
    assert sparse_s < 3 and dense_s < 5
