"""Budget quantities, atomic writes, model directories (safe loads, one-line errors naming the file), secret masking."""
from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from archs import HeadSpec, NetSpec, StageSpec, StemSpec, build, format_quantity, parse_quantity
from archs.errors import SpecError, UserError, mask_secrets, run_cli
from archs.io import (atomic_write_bytes, atomic_write_json, atomic_write_text, load_model_dir, load_state_dict,
                      read_spec, save_model_dir, save_state_dict)


# ----- quantities ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [
    ("50", 50.0), ("2.5", 2.5), ("100k", 100_000.0), ("100K", 100_000.0), ("1.2M", 1_200_000.0),
    ("1.2m", 1_200_000.0), ("3G", 3e9), (" 7 ", 7.0), (".5", 0.5), ("1e3", 1000.0), ("2.5e-1k", 250.0),
    (12, 12.0), (0.25, 0.25),
])
def test_parse_quantity_accepts(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text,match", [
    ("0", r"^budget: must be positive, got '0'$"),
    ("-1", r"^budget: must be positive, got '-1'$"),
    ("0k", r"must be positive"),
    ("nan", r"^budget: 'nan' is not a finite number$"),
    ("inf", r"^budget: 'inf' is not a finite number$"),
    ("-inf", r"not a finite number"),
    ("abc", r"^budget: 'abc' is not a number \(examples: 50, 2.5, 100k, 1.2M\)$"),
    ("", r"^budget: '' is not a number"),
    ("k", r"is not a number"),
    ("10kb", r"is not a number"),
    ("1.2.3", r"is not a number"),
    (float("nan"), r"not a finite number"),
    (0, r"must be positive"),
    ("1e400", r"not a finite number"),
])
def test_parse_quantity_rejects(text, match):
    with pytest.raises(UserError, match=match):
        parse_quantity(text, name="budget")


def test_parse_quantity_allows_zero_when_not_positive():
    assert parse_quantity("0", positive=False) == 0.0
    assert parse_quantity("-2k", positive=False) == -2000.0


@pytest.mark.parametrize("value,text", [
    (1_234_567, "1.23M"), (100_000, "100k"), (999, "999"), (2.5e9, "2.5G"), (1000, "1k"), (0.5, "0.5"),
    (50e6, "50M"), (-1500, "-1.5k"),
])
def test_format_quantity(value, text):
    assert format_quantity(value) == text
    assert parse_quantity(text, positive=False) == pytest.approx(value, rel=5e-3)


# ----- atomic writes ------------------------------------------------------------------------------------------------
def test_atomic_write_replaces_content_and_leaves_no_temp_files(tmp_path):
    p = tmp_path / "sub" / "out.txt"
    atomic_write_text(p, "first")
    assert p.read_text() == "first"
    atomic_write_text(p, "second, longer content")
    assert p.read_text() == "second, longer content"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write_json(tmp_path / "m.json", {"acc": torch.tensor(0.5), "path": tmp_path})
    assert json.loads((tmp_path / "m.json").read_text()) == {"acc": 0.5, "path": str(tmp_path)}
    assert sorted(os.listdir(tmp_path / "sub")) == ["out.txt"]
    assert sorted(os.listdir(tmp_path)) == ["m.json", "sub"]


def test_atomic_write_gives_the_mode_open_would(tmp_path):
    import archs.io

    atomic_write_text(tmp_path / "a.txt", "x")
    # mkstemp alone would leave 0600 (unreadable to the group); the file gets what open() gives under the umask
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~archs.io._UMASK
    if archs.io._UMASK == 0o022:
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "out.txt"
    atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]  # the temporary file was removed
    with pytest.raises(TypeError):
        atomic_write_json(p, {"x": object()})
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


# ----- model directories --------------------------------------------------------------------------------------------
def _spec() -> NetSpec:
    return NetSpec(num_classes=4, in_chans=1, resolution=8, stem=StemSpec(8),
                   stages=[StageSpec("ir", 16, stride=2, args={"se": 0.25}), StageSpec("fire", 16),
                           StageSpec("lowrank", 12)], head=HeadSpec("pool", [8])).validate()


def _trained_model():
    torch.manual_seed(0)
    model = build(_spec())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    for _ in range(3):  # a few steps so weights and BN running statistics move away from their initial values
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_model_dir_round_trip_gives_identical_outputs(tmp_path):
    model = _trained_model()
    d = save_model_dir(tmp_path / "best", model, metrics={"val_acc": 0.75})
    assert sorted(os.listdir(d)) == ["metrics.json", "model.pt", "spec.json"]
    loaded, spec, metrics = load_model_dir(d)
    assert spec == model.spec and metrics == {"val_acc": 0.75} and not loaded.training
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert read_spec(d / "spec.json") == model.spec


def test_state_dict_loads_with_weights_only(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "ns": argparse.Namespace(a=1)}, p)  # a global that weights_only forbids
    with pytest.raises(UserError, match=r"^cannot load checkpoint .*evil\.pt: "):
        load_state_dict(p)
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(UserError, match=r"list\.pt does not hold a state_dict$"):
        load_state_dict(tmp_path / "list.pt")
    save_state_dict(tmp_path / "ok.pt", {"w": torch.arange(3)})
    assert torch.equal(load_state_dict(tmp_path / "ok.pt")["w"], torch.arange(3))


def _saved(tmp_path):
    return save_model_dir(tmp_path / "m", _trained_model())


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_truncated_model_pt(tmp_path):
    d = _saved(tmp_path)
    data = (d / "model.pt").read_bytes()
    (d / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        load_model_dir(d)
    assert str(d / "model.pt") in _one_line(e) and "cannot load checkpoint" in str(e.value)


def test_garbage_model_pt(tmp_path):
    d = _saved(tmp_path)
    (d / "model.pt").write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(UserError) as e:
        load_model_dir(d)
    assert str(d / "model.pt") in _one_line(e)


def test_model_pt_of_another_architecture(tmp_path):
    d = _saved(tmp_path)
    other = NetSpec.from_dict({**_spec().to_dict(), "alpha": 2.0})
    (d / "spec.json").write_text(other.to_json())
    with pytest.raises(UserError) as e:
        load_model_dir(d)
    msg = _one_line(e)
    assert str(d / "model.pt") in msg and str(d / "spec.json") in msg and "does not match" in msg


def _edit_stage(d, **changes):
    spec = json.loads((d / "spec.json").read_text())
    spec["stages"][0].update(changes)
    (d / "spec.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("changes,match", [
    ({"block": "transformer"}, r"stages\[0\]\.block: unknown block 'transformer'"),
    ({"channels": -16}, r"stages\[0\]\.channels must be >= 1, got -16"),
    ({"channels": "16"}, r"stages\[0\]\.channels must be an integer, got '16'"),
    ({"repeats": 1.5}, r"stages\[0\]\.repeats must be an integer, got 1.5"),
    ({"args": {"se": "yes"}}, r"stages\[0\]\.args\.se has the wrong type: 'yes'"),
])
def test_bad_spec_json_names_the_file(tmp_path, changes, match):
    d = _saved(tmp_path)
    _edit_stage(d, **changes)
    with pytest.raises(SpecError, match=match) as e:
        load_model_dir(d)
    assert _one_line(e).startswith(f"{d / 'spec.json'}: ")
    assert isinstance(e.value, UserError)


def test_spec_json_not_json_names_the_file(tmp_path):
    d = _saved(tmp_path)
    (d / "spec.json").write_text('{"stages": [')
    with pytest.raises(UserError, match=r"spec\.json: spec is not valid JSON") as e:
        load_model_dir(d)
    assert str(d / "spec.json") in _one_line(e)
    (d / "spec.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError) as e:
        load_model_dir(d)
    assert str(d / "spec.json") in _one_line(e)


def test_missing_things(tmp_path):
    with pytest.raises(UserError, match=r"^model directory not found: .*nowhere$"):
        load_model_dir(tmp_path / "nowhere")
    d = _saved(tmp_path)
    (d / "model.pt").unlink()
    with pytest.raises(UserError, match=r"^checkpoint not found: .*model\.pt$"):
        load_model_dir(d)
    (d / "spec.json").unlink()
    with pytest.raises(UserError, match=r"^spec file not found: .*spec\.json$"):
        load_model_dir(d)


def test_bad_metrics_json_names_the_file(tmp_path):
    d = _saved(tmp_path)
    (d / "metrics.json").write_text("{oops")
    with pytest.raises(UserError, match=r"metrics\.json is not valid JSON"):
        load_model_dir(d)


# ----- secrets and the CLI wrapper ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,hidden,shown", [
    ("postgresql://alice:s3cret@db.example:5432/nas", "s3cret", "postgresql://alice:***@db.example:5432/nas"),
    ("storage postgresql+psycopg://bob:pa55w0rd@10.0.0.1/nas failed", "pa55w0rd",
     "storage postgresql+psycopg://bob:***@10.0.0.1/nas failed"),
    ("two: postgresql://a:one@h1/x and mysql://b:two@h2/y", "one",
     "two: postgresql://a:***@h1/x and mysql://b:***@h2/y"),
    ("postgresql://alice:p%40ss@db/nas", "p%40ss", "postgresql://alice:***@db/nas"),
    ("postgresql://alice:p@ss@db/nas", "p@ss", "postgresql://alice:***@db/nas"),
])
def test_mask_secrets_hides_url_passwords(text, hidden, shown):
    masked = mask_secrets(text)
    assert masked == shown
    assert hidden not in masked


@pytest.mark.parametrize("text", ["postgresql://alice@db/nas", "sqlite:///results/s1/study.db", "no url here",
                                  "see https://example.org/a:b"])
def test_mask_secrets_leaves_urls_without_password(text):
    assert mask_secrets(text) == text


def test_run_cli_prints_one_masked_line_and_exits_2(capsys):
    def main(argv):
        raise UserError("cannot reach postgresql://u:hunter2@db/nas")

    with pytest.raises(SystemExit) as e:
        run_cli(main, [], prog="edgenas")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "edgenas: error: cannot reach postgresql://u:***@db/nas\n"
