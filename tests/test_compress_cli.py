"""The compression CLIs end to end on a tiny model trained on digits: train CLI -> run CLI -> stages.csv and
reloadable stage folders; corrupt inputs give one-line errors and exit 2."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import archs
from archs import HeadSpec, NetSpec, StageSpec, StemSpec
from archs.errors import run_cli
from compress import run as run_mod
from compress import train as train_mod
from compress.stages import COLUMNS, load_model, load_stage
from training import load_data

ROOT = Path(__file__).resolve().parents[1]


def _cli(main, argv, prog, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv, prog=prog)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _tiny_spec() -> NetSpec:
    return NetSpec(num_classes=10, in_chans=1, resolution=8, divisor=1, stem=StemSpec(16),
                   stages=[StageSpec("conv", 24, kernel=3, stride=2), StageSpec("dws", 32)],
                   head=HeadSpec("pool", [32]), name="tiny").validate()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CNN trained by `python -m compress.train` (in-process) from a spec.json."""
    root = tmp_path_factory.mktemp("cli")
    spec_file = root / "tiny.json"
    spec_file.write_text(_tiny_spec().to_json())
    out = root / "model"
    with pytest.raises(SystemExit) as e:
        run_cli(train_mod.main, [str(spec_file), "--epochs", "6", "--lr", "0.01", "--batch-size", "32",
                                 "--out", str(out), "--quiet", "--seed", "0"], prog="python -m compress.train")
    assert e.value.code == 0
    return out


def _check_table(out: Path, stages: list[str]) -> pd.DataFrame:
    df = pd.read_csv(out / "stages.csv")
    assert list(df.columns) == COLUMNS
    assert list(df["stage"]) == ["original", *stages]
    assert df["test_acc"].between(0, 1).all()
    assert (df["size_bytes"] > 0).all() and df.loc[0, "compression_ratio"] == 1.0
    assert (df["latency_b1_ms"] > 0).all() and (df["latency_b64_ms"] > 0).all()
    return df


def _check_reload(out: Path, df: pd.DataFrame) -> None:
    test = load_data("digits", seed=0).test
    for r in df.itertuples():
        d = out / r.dir
        meta = json.loads((d / "metrics.json").read_text())
        assert meta["stage"] == r.stage
        m = load_stage(d)
        x, y = test.x, test.y
        with torch.no_grad():
            pred = torch.as_tensor(m(x)).argmax(1)
        assert (pred == y).sum().item() / len(y) == pytest.approx(r.test_acc, abs=1e-9), r.stage


def test_train_cli_writes_a_model_directory(trained):
    m, spec, metrics = archs.io.load_model_dir(trained)
    assert metrics["dataset"] == "digits" and metrics["seed"] == 0 and metrics["epochs"] == 6
    assert metrics["test_acc"] > 0.8
    assert metrics["mflops"] == pytest.approx(archs.count(m).macs / 1e6)


def test_run_cli_prune_lowrank_distill(trained, tmp_path, capsys):
    out = tmp_path / "c"
    code, stdout, _ = _cli(run_mod.main, [str(trained), "--prune", "0.5", "--prune-method", "channels",
                                          "--lowrank", "0.9", "--distill", "--distill-from", str(trained),
                                          "--distill-epochs", "1", "--finetune-epochs", "2", "--out", str(out),
                                          "--quiet"], "python -m compress.run", capsys)
    assert code == 0
    assert "prune_channels0.5" in stdout and "test acc %" in stdout
    df = _check_table(out, ["prune_channels0.5", "lowrank_e0.9", "distill"])
    assert df.loc[1, "mflops"] < df.loc[0, "mflops"] and df.loc[1, "params"] < df.loc[0, "params"]
    assert (out / "01_prune_channels0.5" / "structure.json").is_file()
    _check_reload(out, df)
    # a float stage folder is itself a valid MODEL_DIR (default output: MODEL_DIR/../compress)
    code, _, _ = _cli(run_mod.main, [str(out / "01_prune_channels0.5"), "--prune", "0.5", "--finetune-epochs", "0",
                                     "--quiet", "--no-latency"], "python -m compress.run", capsys)
    assert code == 0
    df2 = pd.read_csv(out / "compress" / "stages.csv")
    assert df2.loc[0, "mflops"] == pytest.approx(df.loc[1, "mflops"])
    assert df2.loc[1, "nonzero_params"] < df2.loc[0, "nonzero_params"]


def test_run_cli_masks_iterative_and_zoo_teacher(trained, tmp_path, capsys):
    out = tmp_path / "c"
    argv = [str(trained), "--prune", "0.6", "--prune-method", "global", "--iterative", "2", "--max-drop", "50",
            "--distill-from", "zoo:lenet300_100", "--teacher-epochs", "2", "--finetune-epochs", "1", "--out", str(out),
            "--quiet", "--no-latency"]
    code, _, _ = _cli(run_mod.main, argv, "python -m compress.run", capsys)
    assert code == 0
    df = pd.read_csv(out / "stages.csv")
    assert list(df["stage"]) == ["original", "prune_global0.6"]
    m = load_stage(out / "01_prune_global0.6")
    w = torch.cat([p.detach().flatten() for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1])
    assert (w == 0).float().mean().item() == pytest.approx(0.6, abs=0.01)
    meta = json.loads((out / "teacher_lenet300_100" / "metrics.json").read_text())
    assert meta["source"] == "zoo:lenet300_100" and meta["epochs"] == 2
    stamp = (out / "teacher_lenet300_100" / "model.pt").stat().st_mtime_ns
    code, _, _ = _cli(run_mod.main, argv, "python -m compress.run", capsys)  # the cached teacher is reused
    assert code == 0
    assert (out / "teacher_lenet300_100" / "model.pt").stat().st_mtime_ns == stamp


def test_run_cli_all_deep_compression_stages(trained, tmp_path):
    """train CLI -> run CLI with prune + quantize + share + huffman, as a real subprocess."""
    out = tmp_path / "c"
    r = subprocess.run([sys.executable, "-m", "compress.run", str(trained), "--prune", "0.5", "--quantize", "int8",
                        "--share-bits", "4", "--huffman", "--finetune-epochs", "1", "--out", str(out), "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    stages = ["prune_magnitude0.5", "quantize_int8", "share_4bit", "huffman"]
    df = _check_table(out, stages)
    assert df.loc[4, "size_bytes"] < df.loc[3, "size_bytes"]      # the Huffman file is smaller than the state_dict
    assert df.loc[4, "test_acc"] == df.loc[3, "test_acc"]          # and decodes to the same weights
    assert df.loc[2, "size_bytes"] < df.loc[0, "size_bytes"]       # int8 artifact smaller than fp32
    assert json.loads((out / "04_huffman" / "metrics.json").read_text())["details"]["roundtrip_exact"]
    _check_reload(out, df)


def test_run_cli_huffman_without_sharing_codes_the_pruned_weights(trained, tmp_path, capsys):
    """--huffman with no --share-bits before it stores the pruned float weights sparse (exact values as the
    codebook), so the file is smaller than the state_dict and decodes bit-exactly."""
    out = tmp_path / "c"
    code, _, _ = _cli(run_mod.main, [str(trained), "--prune", "0.8", "--prune-method", "global", "--huffman",
                                     "--finetune-epochs", "0", "--out", str(out), "--quiet", "--no-latency"],
                      "python -m compress.run", capsys)
    assert code == 0
    df = pd.read_csv(out / "stages.csv")
    assert list(df["stage"]) == ["original", "prune_global0.8", "huffman"]
    assert df.loc[2, "size_bytes"] < 0.6 * df.loc[1, "size_bytes"]
    assert df.loc[2, "test_acc"] == df.loc[1, "test_acc"]
    assert json.loads((out / "02_huffman" / "metrics.json").read_text())["details"]["roundtrip_exact"]
    pruned, decoded = load_stage(out / "01_prune_global0.8"), load_stage(out / "02_huffman")
    for (k, a), (k2, b) in zip(pruned.state_dict().items(), decoded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_run_cli_rerun_keeps_the_first_run(trained, tmp_path, capsys):
    """A second compress.run into the same --out never deletes or overwrites the first run: it goes to OUT/run-2
    (other stages, so the first run's stage folders would otherwise be removed as stale)."""
    out = tmp_path / "c"
    first = [str(trained), "--prune", "0.5", "--finetune-epochs", "0", "--out", str(out), "--quiet", "--no-latency"]
    assert _cli(run_mod.main, first, "python -m compress.run", capsys)[0] == 0
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = [str(trained), "--quantize", "dynamic", "--out", str(out), "--quiet", "--no-latency"]
    code, _, err = _cli(run_mod.main, second, "python -m compress.run", capsys)
    assert code == 0, err
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if not k.startswith("run-2/")} == before
    assert list(pd.read_csv(out / "run-2" / "stages.csv")["stage"]) == ["original", "quantize_dynamic"]
    assert _cli(run_mod.main, second, "python -m compress.run", capsys)[0] == 0
    assert (out / "run-3" / "stages.csv").is_file() and (out / "run-2" / "stages.csv").is_file()


# ------------------------------------------------------------------------------------------------------------------
# user mistakes: one line on stderr, exit 2
# ------------------------------------------------------------------------------------------------------------------
def _one_line_error(code, err):
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m compress.run: error:")
    assert "Traceback" not in err
    return lines[0]


def test_garbage_model_pt_is_a_one_line_error(trained, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    (bad / "model.pt").write_bytes(b"this is not a checkpoint" * 10)
    code, _, err = _cli(run_mod.main, [str(bad), "--prune", "0.5", "--quiet"], "python -m compress.run", capsys)
    assert "model.pt" in _one_line_error(code, err)


def test_unknown_block_in_spec_is_a_one_line_error(trained, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    spec = json.loads((bad / "spec.json").read_text())
    spec["stages"][0]["block"] = "transformer"
    (bad / "spec.json").write_text(json.dumps(spec))
    code, _, err = _cli(run_mod.main, [str(bad), "--prune", "0.5", "--quiet"], "python -m compress.run", capsys)
    assert "transformer" in _one_line_error(code, err)


def test_corrupt_structure_and_missing_dir(trained, tmp_path, capsys):
    code, _, err = _cli(run_mod.main, [str(tmp_path / "nope"), "--prune", "0.5"], "python -m compress.run", capsys)
    assert "not found" in _one_line_error(code, err)
    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    (bad / "structure.json").write_text("{not json")
    code, _, err = _cli(run_mod.main, [str(bad), "--prune", "0.5"], "python -m compress.run", capsys)
    _one_line_error(code, err)


@pytest.mark.parametrize("argv,needle", [
    (["--distill"], "--distill-from"),
    (["--prune", "1.5"], "ratio"),
    (["--lowrank", "0"], "energy"),
    (["--quantize", "int4"], "int8"),
    (["--share-bits", "0"], "share-bits"),
    (["--prune", "abc"], "--prune"),
])
def test_bad_stage_arguments(trained, argv, needle, capsys):
    code, _, err = _cli(run_mod.main, [str(trained), *argv], "python -m compress.run", capsys)
    assert needle in _one_line_error(code, err)


def test_train_cli_unknown_zoo_network(tmp_path, capsys):
    code, _, err = _cli(train_mod.main, ["zoo:nonet", "--out", str(tmp_path / "x")], "python -m compress.train", capsys)
    assert code == 2 and "unknown zoo network" in err and len(err.strip().splitlines()) == 1
