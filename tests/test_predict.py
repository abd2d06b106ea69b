"""A model folder is enough to run the model on raw images: `archs.predict` on PNGs written from digits gives the
same classes and probabilities as the model on the training code's own tensors, for every artifact type."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from archs.errors import run_cli
from archs.io import load_model_dir, load_preprocessing
from archs.predict import LOADERS, main as predict_main, predict
from compress import run as compress_run
from compress.modeldir import load_stage
from search.run import main as search_main
from training.data import load_data

N_IMAGES = 12


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """PNG files of the first test images of the search's split (8-bit grey, 0..16 scaled to 0..255), their labels
    and the training code's normalised 8×8 tensors of the same images."""
    data = load_data("digits", seed=0)
    x = data.test.x[:N_IMAGES]
    raw = x * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)  # 0..16
    d = tmp_path_factory.mktemp("png")
    paths = []
    for i in range(N_IMAGES):
        p = d / f"digit{i}_label{int(data.test.y[i])}.png"
        px = np.clip(np.round(raw[i, 0].numpy() * 255 / 16), 0, 255).astype(np.uint8)
        Image.fromarray(px, "L").save(p)
        paths.append(p)
    return paths, data.test.y[:N_IMAGES], data.test.subset(range(N_IMAGES))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("results")
    search_main(["--budget-mflops", "0.2", "--trials", "2", "--epochs", "2", "--final-epochs", "4", "--top-k", "1",
                 "--rho", "2", "--no-warm-start", "--study-name", "p", "--out", str(out), "--quiet"])
    return out / "p"


def _open(paths):
    return [Image.open(p) for p in paths]


def test_winner_folder_predicts_pngs_like_the_model_on_its_tensors(digits, study):
    paths, _, tensors = digits
    best = study / "best"
    prep = load_preprocessing(best)
    assert prep.rho == 2 and prep.data_resolution == 8 and prep.input_size == 16  # rho != 1: resized first
    probs = predict(best, _open(paths))
    assert set(probs) == {"model.pt", "model.onnx"}
    model, spec, metrics = load_model_dir(best)
    assert metrics["preprocessing"] == json.loads((best / "metrics.json").read_text())["preprocessing"]
    with torch.no_grad():
        ref = torch.softmax(model(tensors.resized(spec.input_size).x), 1).numpy()
    for name, p in probs.items():
        assert p.shape == (N_IMAGES, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
        assert (p.argmax(1) == ref.argmax(1)).all(), name
        assert np.abs(p - ref).max() < 0.02, name  # only the PNG's 8-bit rounding differs


def test_predict_cli_prints_top_classes_for_each_artifact(digits, study, capsys):
    paths, labels, _ = digits
    with pytest.raises(SystemExit) as e:
        run_cli(predict_main, [str(study / "best"), str(paths[0]), str(paths[1]), "--top", "2"],
                prog="python -m archs.predict")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.count("model.pt (pytorch)") == 2 and out.count("model.onnx (onnxruntime)") == 2
    assert paths[0].name in out and "%" in out


def test_every_compression_stage_records_its_input_and_int8_predicts(digits, study, tmp_path, capsys):
    paths, _, tensors = digits
    out = tmp_path / "c"
    with pytest.raises(SystemExit) as e:
        run_cli(compress_run.main, [str(study / "best"), "--quantize", "int8", "--out", str(out), "--no-latency",
                                    "--quiet"], prog="python -m compress.run")
    assert e.value.code == 0
    capsys.readouterr()
    stage = out / "01_quantize_int8"
    for d in (out / "00_original", stage):
        m = json.loads((d / "metrics.json").read_text())
        assert m["preprocessing"] == json.loads((study / "best/metrics.json").read_text())["preprocessing"]
    io = json.loads((stage / "metrics.json").read_text())["io"]
    assert io["input"]["dtype"] == "float32"  # QDQ: float in, quantized inside
    assert isinstance(io["output"]["scale"], float) and isinstance(io["output"]["zero_point"], int)
    probs = predict(stage, _open(paths))
    assert set(probs) == {"model_int8.onnx"}
    qm = load_stage(stage)
    ref = torch.softmax(qm(tensors.resized(16).x), 1).numpy()
    assert (probs["model_int8.onnx"].argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert predict(out / "00_original", _open(paths))["model.pt"].shape == (N_IMAGES, 10)


def test_tflite_stage_predicts_pngs_through_tflm(digits, study, tmp_path, capsys):
    pytest.importorskip("tflite_micro")
    pytest.importorskip("litert_torch")
    paths, _, tensors = digits
    out = tmp_path / "t"
    with pytest.raises(SystemExit) as e:
        # an explicit arena: this test is about predict, not archs.memory's estimate
        run_cli(compress_run.main, [str(study / "best"), "--export", "tflite", "--tflm-arena-kb", "64", "--out",
                                    str(out), "--no-latency", "--quiet"], prog="python -m compress.run")
    assert e.value.code == 0, capsys.readouterr().err
    capsys.readouterr()
    stage = next(p for p in out.iterdir() if (p / "model_int8.tflite").is_file())
    m = json.loads((stage / "metrics.json").read_text())
    assert m["preprocessing"]["input_size"] == 16
    assert m["io"]["input"]["dtype"] == "int8" and isinstance(m["io"]["input"]["scale"], float)
    assert isinstance(m["io"]["output"]["zero_point"], int)
    probs = predict(stage, _open(paths))
    assert set(probs) == {"model_int8.tflite"}
    ref = torch.softmax(load_stage(stage)(tensors.resized(16).x), 1).numpy()
    assert (probs["model_int8.tflite"].argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert [a.pattern for a in LOADERS] == ["model.pt", "model.huff", "*.onnx", "*.tflite"]


def test_folder_without_record_or_bad_image_is_a_one_line_error(digits, study, tmp_path, capsys):
    paths, _, _ = digits
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.json").write_text("{}")
    not_image = tmp_path / "x.png"
    not_image.write_text("not a png")
    for argv, needle in (([str(bare), str(paths[0])], "no 'preprocessing' record"),
                         ([str(study / "best"), str(not_image)], "cannot read image"),
                         ([str(tmp_path / "missing"), str(paths[0])], "not found")):
        with pytest.raises(SystemExit) as e:
            run_cli(predict_main, argv, prog="python -m archs.predict")
        err = capsys.readouterr().err
        assert e.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
