"""compress.run options the README promises, end to end on the tiny CNN of test_compress_cli: --lowrank-mflops,
--quantize fp16|dynamic, and --temperature/--alpha reaching the distillation loss."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from compress import run as run_mod
from test_compress_cli import _check_reload, _check_table, _cli, trained  # noqa: F401  (trained: a fixture)


def test_lowrank_to_a_mflops_target(trained, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "c"
    first = _cli(run_mod.main, [str(trained), "--quantize", "fp16", "--out", str(tmp_path / "probe"), "--quiet",
                                "--no-latency"], "python -m compress.run", capsys)
    assert first[0] == 0
    mflops0 = pd.read_csv(tmp_path / "probe/stages.csv").loc[0, "mflops"]
    target = round(0.8 * mflops0, 4)
    code, _, err = _cli(run_mod.main, [str(trained), "--lowrank-mflops", str(target), "--finetune-epochs", "1",
                                       "--out", str(out), "--quiet"], "python -m compress.run", capsys)
    assert code == 0, err
    df = pd.read_csv(out / "stages.csv")
    assert len(df) == 2 and df.loc[1, "stage"].startswith("lowrank")
    assert df.loc[1, "mflops"] <= target < df.loc[0, "mflops"]  # the target is met, by factorizing
    _check_reload(out, df)


@pytest.mark.parametrize("mode, min_ratio", [("fp16", 1.8), ("dynamic", 1.0)])
def test_quantize_fp16_and_dynamic(trained, tmp_path, capsys, mode, min_ratio):  # noqa: F811
    out = tmp_path / mode
    code, _, err = _cli(run_mod.main, [str(trained), "--quantize", mode, "--out", str(out), "--quiet"],
                        "python -m compress.run", capsys)
    assert code == 0, err
    df = _check_table(out, [f"quantize_{mode}"])
    assert df.loc[1, "compression_ratio"] >= min_ratio  # fp16 halves the weights' bytes (ONNX overhead aside)
    assert abs(df.loc[1, "test_acc"] - df.loc[0, "test_acc"]) <= 0.01  # <= 1 point, the README's quantization target
    meta = json.loads((out / df.loc[1, "dir"] / "metrics.json").read_text())
    assert meta["stage"] == f"quantize_{mode}"
    _check_reload(out, df)


def test_temperature_and_alpha_reach_the_distillation_loss(trained, tmp_path, capsys, monkeypatch):  # noqa: F811
    import compress.distill as distill_mod

    seen, real = [], distill_mod.fit

    def spy(*a, **k):
        seen.append((k.get("temperature"), k.get("alpha"), k.get("teacher") is not None))
        return real(*a, **k)

    monkeypatch.setattr(distill_mod, "fit", spy)
    out = tmp_path / "kd"
    code, _, err = _cli(run_mod.main, [str(trained), "--distill", "--distill-from", str(trained), "--distill-epochs",
                                       "1", "--temperature", "2.5", "--alpha", "0.3", "--out", str(out), "--quiet",
                                       "--no-latency"], "python -m compress.run", capsys)
    assert code == 0, err
    assert seen == [(2.5, 0.3, True)]
    df = pd.read_csv(out / "stages.csv")
    meta = json.loads((out / df.loc[1, "dir"] / "metrics.json").read_text())
    assert (meta["details"]["temperature"], meta["details"]["alpha"]) == (2.5, 0.3)
