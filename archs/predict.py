"""CLI: `python -m archs.predict MODEL_DIR IMAGE...` — classify raw images with every artifact of a model folder.

    python -m archs.predict results/<study>/best digit.png
    python -m archs.predict results/<study>/compress/02_quantize_int8 a.png b.jpg --top 3

The folder's metrics.json says how to prepare the images (`archs.preprocess.Preprocessing`); each artifact found
(model.pt or model.huff through PyTorch, *.onnx through ONNX Runtime, *.tflite through TensorFlow Lite
Micro) classifies them, and the top classes are
printed with their probabilities (softmax of the logits), one row per image and artifact. A new artifact type is
one entry of `LOADERS`.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .cli import Parser
from .errors import UserError, run_cli
from .io import load_preprocessing

__all__ = ["Artifact", "LOADERS", "find_artifacts", "predict", "main"]

#: a loaded artifact: float32 N×C×H×W model input (normalised, as `Preprocessing` makes it) -> N×classes logits
Runner = Callable[[np.ndarray], np.ndarray]


def _metrics(directory: Path) -> dict:
    f = directory / "metrics.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _load_pytorch(path: Path) -> Runner:
    """model.pt (or a Huffman file): rebuilt from spec.json (+ structure.json of pruned stages) by compress."""
    from compress.modeldir import load_model  # handles plain, channel-pruned, factorized and Huffman folders

    model = load_model(path.parent)[0]

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def _load_onnx(path: Path) -> Runner:
    """Any ONNX file (float winners' model.onnx, model_int8/fp16/dynamic.onnx stages) through ONNX Runtime."""
    from .export import onnx_session

    try:
        sess = onnx_session(path, threads=1)
    except Exception as e:  # noqa: BLE001 - a corrupt file is a one-line error
        raise UserError(f"cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.astype(np.float32)})[0]


def _load_tflite(path: Path) -> Runner:
    """model_int8.tflite (compress.run --export tflite) in TensorFlow Lite Micro: int8 NHWC in, int8 out, with the
    scales and zero points of its metrics.json (compress.tflite.TflmModel quantizes and dequantizes)."""
    from compress.modeldir import load_stage

    model = load_stage(path.parent)
    return lambda x: model(torch.from_numpy(x)).numpy()


@dataclass(frozen=True)
class Artifact:
    """One artifact type: the file names it matches (glob), the name printed, and its loader."""

    pattern: str
    kind: str
    load: Callable[[Path], Runner]


#: artifact types in the order they are tried and printed; add one entry for a new runtime
LOADERS: list[Artifact] = [
    Artifact("model.pt", "pytorch", _load_pytorch),
    Artifact("model.huff", "pytorch (huffman)", _load_pytorch),
    Artifact("*.onnx", "onnxruntime", _load_onnx),
    Artifact("*.tflite", "tflite-micro", _load_tflite),
]


def find_artifacts(directory: str | Path) -> list[tuple[Artifact, Path]]:
    """The artifacts of `directory` that some entry of `LOADERS` can run, in `LOADERS` order."""
    d = Path(directory)
    found = []
    for a in LOADERS:
        for p in sorted(d.iterdir()):
            if p.is_file() and fnmatch.fnmatch(p.name, a.pattern) and not p.name.startswith("."):
                found.append((a, p))
    return found


def read_images(paths: list[str | Path]) -> list:
    from PIL import Image, UnidentifiedImageError

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                out.append(im.copy())
        except FileNotFoundError:
            raise UserError(f"image not found: {p}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"cannot read image {p}: {e}") from None
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(directory: str | Path, images: list, artifacts: list[str] | None = None) -> dict[str, np.ndarray]:
    """Class probabilities (N×classes) of Pillow `images` for each artifact of `directory`, keyed by file name.

    `artifacts` limits it to those file names."""
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"model directory not found: {d}")
    prep = load_preprocessing(d)
    x = prep.images_to_tensor(images).numpy()
    found = find_artifacts(d)
    if artifacts:
        found = [(a, p) for a, p in found if p.name in artifacts]
    if not found:
        names = ", ".join(a.pattern for a in LOADERS)
        raise UserError(f"{d} holds no artifact to run ({names})" if not artifacts else
                        f"{d} has no {', '.join(artifacts)}")
    return {p.name: _softmax(a.load(p)(x)) for a, p in found}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m archs.predict", description="Classify PNG/JPEG images with a model folder (a search's best/, top/<k>/, "
                           "pareto/<n>/, a compress.train folder or a compression stage): the images are "
                           "prepared as its metrics.json says, and every artifact it holds is run.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files Pillow reads (PNG, JPEG, ...)")
    p.add_argument("--top", type=int, default=3, help="classes printed per image")
    p.add_argument("--artifact", action="append", default=None, metavar="FILE",
                   help="only this artifact file of MODEL_DIR (repeatable); default: every one found")
    return p


def main(argv: list[str] | None = None) -> int:
    from tabulate import tabulate

    args = build_parser().parse_args(argv)
    if args.top < 1:
        raise UserError(f"--top must be >= 1, got {args.top}")
    d = Path(args.model_dir)
    images = read_images(args.images)
    probs = predict(d, images, args.artifact)
    classes = load_preprocessing(d).classes
    kinds = {p.name: a.kind for a, p in find_artifacts(d)}
    rows = []
    for i, path in enumerate(args.images):
        for name, pr in probs.items():
            order = np.argsort(-pr[i], kind="stable")[:args.top]
            top = ", ".join(f"{classes[j] if j < len(classes) else j} {100 * pr[i, j]:.2f}%" for j in order)
            rows.append([path, f"{name} ({kinds[name]})", top])
    print(tabulate(rows, headers=["image", "artifact (runtime)", f"top {args.top}: class probability"],
                   tablefmt="github"))
    return 0


if __name__ == "__main__":
    run_cli(main, prog="python -m archs.predict")
