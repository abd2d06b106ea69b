"""Flash of archs.memory: the .tflite file's flatbuffer layout (archs.flash). The layout arithmetic against the
flatbuffers builder itself, the closed-form sums against the table-by-table walk, recorded development files,
and (with the `.[mcu]` extra) a file exported here."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from archs import NetSpec
from archs.flash import Layout, file_bytes
from archs.memory import FLASH_MARGIN, _build, _flash_description, flash_bytes, memory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# (spec, bytes of the file compress.tflite.export_int8 wrote for it: development seed 1, random weights)
_FILES = [
    ("c2_i3_r8_a1.582_p1.0_d8_hardswish | stem0k3s1 | maxpoolk2s2(ceil_mode=F,padding=1) | head:pool_32", 3184),
    ("c10_i1_r32_a1.495_p1.5_d8_relu6 | stem24k3s1 | lowrank49k3s1n3(rank_ratio=0.75) | "
     "conv72k3s1!(groups=3,padding=3) | head:conv_drop0.2", 90752),
    ("c10_i3_r32_a0.571_p1.0_d2_relu6 | stem24k3s1 | dws19k3s2n2 | lowrank18k7s1n2(rank_ratio=0.25) | "
     "basic34k7s1(shortcut=A) | fire22k5s1n3(bypass=F,pct3x3=0.75,squeeze_ratio=0.125) | head:pool_drop0.1", 46064),  # NHWC channel pad (46,560 before)
    ("c2_i1_r48_a0.74_p1.0_d4_relu6 | stem32k3s1 | ir45k7s2(expand=1,se=0.5) | basic40k3s2n2(shortcut=B) | "
     "avgpoolk2s2(padding=0) | lowrank28k7s1n3!(rank_ratio=0.1) | mbv3_14k3s1n3(act=hardswish,expand=6,se=0.5) | "
     "head:conv_drop0.1", 150816),
]


def test_layout_follows_the_flatbuffers_builder():
    """Vectors of every element size and alignment, strings, and tables with 1- and 4-byte fields in any order
    (vtables reused when equal): the offset Layout computes after each step is the real builder's."""
    flatbuffers = pytest.importorskip("flatbuffers")
    rng = random.Random(0)
    for _ in range(20):
        b, lay = flatbuffers.Builder(0), Layout()
        for _ in range(60):
            what = rng.random()
            if what < 0.3:
                elem, align = rng.choice([(1, 1), (1, 16), (4, 4), (8, 8)])
                n = rng.randint(0, 9)
                b.StartVector(elem, n, align)
                for _ in range(n):
                    {1: b.PrependUint8, 4: b.PrependInt32, 8: b.PrependInt64}[elem](1)
                b.EndVector()
                lay.vector(elem, n, align)
            elif what < 0.45:
                n = rng.randint(0, 7)
                b.CreateString("t" * n)
                lay.string(n)
            else:
                slots = rng.sample(range(6), rng.randint(0, 4))
                fields = tuple((s, rng.choice((1, 4))) for s in slots)
                b.StartObject(6)
                for s, size in fields:
                    (b.PrependInt8Slot if size == 1 else b.PrependInt32Slot)(s, 1, 0)
                b.EndObject()
                lay.table(fields)
            assert lay.off == b.Offset()
        b.StartObject(1)
        root = b.EndObject()
        lay.table(())
        b.Finish(root, file_identifier=b"TFL3")
        lay.minalign = max(lay.minalign, b.minalign)
        assert lay.finish() == len(b.Output())


def _dev_specs() -> list[NetSpec]:
    from specgen import random_specs

    return random_specs(40, 1)


def test_closed_form_sums_equal_the_table_by_table_walk():
    """flash_bytes sums the activations and conv weights (Graph.run) and the operators (archs.flash.Ops) in
    closed form: the same bytes as walking every tensor, operator and buffer, on 40 development networks of every
    block kind."""
    for spec in _dev_specs():
        g = _build(spec)
        assert flash_bytes(g) == file_bytes(*_flash_description(g)), spec.to_string()


@pytest.mark.parametrize("spec,size", _FILES, ids=["padv2-fc", "lowrank-zero-biases", "shortcut-a-fire", "hsig-se"])
def test_flash_is_the_exported_files_bytes(spec, size):
    """The layout of the modelled graph gives the file's bytes exactly on these development networks (padded max
    pool, fully-connected head, lowrank's shared zero biases, grouped and depthwise convs, shortcut A, Fire,
    hard-sigmoid squeeze-excite); memory() adds the margin."""
    s = NetSpec.from_string(spec)
    assert flash_bytes(_build(s)) == size
    assert memory(s).flash_bytes == size + FLASH_MARGIN


@pytest.mark.slow  # an export (~15 s quiet, ~45 s loaded); CI runs it in make test-slow
def test_flash_of_a_file_exported_here(tmp_path: Path):
    """A tiny network exported by compress.tflite.export_int8: archs.flash's walk of the parsed file gives its
    size, and the model's flash (from the spec alone) is within the margin, not below."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("tflite_micro")
    import torch

    from archs import build
    from archs.flash import describe
    from compress.tflite import _load_model_t, export_int8
    from memory_model import trained_like

    spec = NetSpec.from_string("c10_i1_r8_a1.0_p1.0_d4_relu6 | stem8k3s1 | dws16k3s2 | ir16k3s1(expand=2,se=0.25) | "
                               "maxpoolk3s2(padding=1) | head:pool")
    torch.manual_seed(0)
    path = tmp_path / "m.tflite"
    export_int8(trained_like(build(spec)).eval(), torch.randn(4, *spec.input_shape[1:]), path)
    data = path.read_bytes()
    assert file_bytes(*describe(_load_model_t(data))) == len(data)
    m = memory(spec)
    assert len(data) <= m.flash_bytes <= len(data) + 2 * FLASH_MARGIN
