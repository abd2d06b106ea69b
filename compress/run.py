"""CLI: `python -m compress.run MODEL_DIR [stages...]` — compress a trained model stage by stage, measuring each.

    python -m compress.run results/<study>/best --prune 0.5 --prune-method channels --quantize int8
    python -m compress.run results/lenet300 --prune 0.92 --prune-method global --iterative 4 --max-drop 1 \
        --share-bits 5 --huffman
    python -m compress.run results/net --lowrank 0.9 --distill-from zoo:resnet20 --distill --kd-alpha 0.9

Stages run in the order given. Output: OUT/NN_<stage>/ (model + metrics.json) and OUT/stages.csv, one row per
stage, original first; OUT defaults to MODEL_DIR/../compress. A later run into the same OUT goes to OUT/run-2/
(run-3, ...): results are never deleted or overwritten.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from archs.cli import DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, Parser, add_distill_weights
from archs.errors import UserError, run_cli
from archs.units import parse_quantity
from training.data import load_data

from .prune import METHODS
from .stages import (_STAGE_DIR, QUANT_MODES, CompressConfig, Stage, format_table, load_model, run_stages,
                     validate_stages)

__all__ = ["build_parser", "main"]


class _StageAction(argparse.Action):
    """Append (kind, value) to namespace.stages so that stages keep the command-line order."""

    def __init__(self, option_strings, dest, kind: str, convert=None, nargs=None, **kw):
        self.kind, self.convert = kind, convert
        super().__init__(option_strings, dest, nargs=nargs, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        stages = list(getattr(namespace, "stages", None) or [])
        value = values
        if self.convert is not None:
            try:
                value = self.convert(values)
            except (ValueError, UserError) as e:
                parser.error(f"argument {option_string}: {e}")
        stages.append(Stage(self.kind, value))
        namespace.stages = stages


def _fraction(text: str) -> float:
    v = float(text)
    if v != v:
        raise ValueError(f"not a number: {text!r}")
    return v


def _mflops(text: str) -> dict:
    return {"mflops": parse_quantity(text, "--lowrank-mflops")}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m compress.run",
                description="Compress a trained model stage by stage (stages run in the order given) and measure "
                            "every stage: test accuracy, fvcore MFLOPs (million multiply-adds), parameters, non-zero "
                            "parameters, bytes on disk, compression ratio, CPU latency at batch 1 and 64.")
    p.set_defaults(stages=[])
    p.add_argument("model_dir", metavar="MODEL_DIR",
                   help="model directory with spec.json + model.pt (a search's best/, python -m compress.train "
                        "output, or a float stage folder of an earlier run)")
    g = p.add_argument_group("stages (in command-line order; each may be used alone)")
    g.add_argument("--prune", action=_StageAction, kind="prune", convert=_fraction, metavar="RATIO",
                   help="prune: the fraction of weights (or, for channels, of channels) removed; for "
                        "--prune-method threshold the quality q (weights with |w| < q x layer std are removed)")
    g.add_argument("--lowrank", action=_StageAction, kind="lowrank", convert=_fraction, metavar="ENERGY",
                   help="SVD low-rank factorization of Linear and k>1 Conv2d layers keeping this fraction of "
                        "singular-value energy (e.g. 0.9); only where it lowers MACs; then fine-tune")
    g.add_argument("--lowrank-mflops", action=_StageAction, kind="lowrank", convert=_mflops, metavar="TARGET",
                   help="low-rank factorization with one energy level chosen so the model reaches TARGET MFLOPs")
    g.add_argument("--distill", action=_StageAction, kind="distill", nargs=0,
                   help="stand-alone distillation stage: train the current model on the teacher's soft targets for "
                        "--distill-epochs (needs --distill-from)")
    g.add_argument("--share-bits", action=_StageAction, kind="share", convert=int, metavar="B",
                   help="Deep Compression weight sharing: per-layer k-means to 2^B centroids, centroids fine-tuned")
    g.add_argument("--huffman", action=_StageAction, kind="huffman", nargs=0,
                   help="Huffman-code the cluster indices and sparse index gaps of the weights shared by the "
                        "--share-bits stage just before (without one: every weight tensor it can code smaller)")
    g.add_argument("--quantize", action=_StageAction, kind="quantize", metavar="MODE",
                   help=f"post-training quantization for CPU: {', '.join(QUANT_MODES)} (dynamic quantizes Linear "
                        "layers only); the model passed on to later stages stays float")
    g.add_argument("--export", action=_StageAction, kind="export", metavar="FORMAT",
                   help="deployment: 'tflite' writes a full-integer int8 model_int8.tflite (NHWC int8 input) and "
                        "model_data.cc/.h for firmware, then runs the test set in TensorFlow Lite Micro and records "
                        "its int8 accuracy, arena and flash bytes beside archs.memory's estimates (needs .[mcu])")
    g = p.add_argument_group("pruning")
    g.add_argument("--prune-method", choices=METHODS, default="magnitude",
                   help="magnitude (per layer), global (one ranking), threshold (Deep Compression q x std), "
                        "l1/l2 (zero whole filters by norm), channels (physical removal with torch-pruning)")
    g.add_argument("--channel-importance", choices=["l1", "l2"], default="l1",
                   help="norm ranking channel groups for --prune-method channels")
    g.add_argument("--iterative", type=int, default=1, metavar="STEPS",
                   help="reach the pruning ratio in STEPS prune -> fine-tune steps")
    g.add_argument("--max-drop", type=float, default=None, metavar="POINTS",
                   help="stop before validation accuracy drops more than this many percentage points")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--finetune-epochs", type=int, default=5, help="epochs of fine-tuning after each prune step, "
                                                                  "low-rank factorization and weight sharing")
    g.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (AdamW, cosine)")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="fine-tuning batch size (images)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="fine-tuning weight decay")
    g = p.add_argument_group("distillation")
    g.add_argument("--distill-from", default=None, metavar="TEACHER",
                   help="teacher model directory, or zoo:NAME (trained first, cached in OUT/teacher_NAME); used by "
                        "every fine-tuning step and by --distill")
    add_distill_weights(g, old_alpha=True)
    g.add_argument("--distill-epochs", type=int, default=10, help="epochs of the --distill stage")
    g.add_argument("--distill-from-scratch", action="store_true",
                   help="re-initialize the student's weights before the --distill stage")
    g.add_argument("--teacher-epochs", type=int, default=30, help="training epochs of a zoo:NAME teacher")
    g = p.add_argument_group("quantization")
    g.add_argument("--calib-images", type=int, default=256, help="training images used to calibrate int8")
    g.add_argument("--tflm-arena-kb", type=float, default=None, metavar="KB",
                   help="--export tflite: tensor arena to run TFLM in, kB (1 kB = 1,024 bytes; default: the arena "
                        "archs.memory computes for the model)")
    g = p.add_argument_group("data and output")
    g.add_argument("--dataset", default=None, help="data set (default: the one in MODEL_DIR/metrics.json, else digits)")
    g.add_argument("--data-dir", default=None, help="where torchvision data sets live")
    g.add_argument("--download", action="store_true", help="download torchvision data sets if missing")
    g.add_argument("--seed", type=int, default=None,
                   help="seed of the data split, fine-tuning and calibration (default: the model's training seed "
                        "from metrics.json or ../config.json, else 0, so the test split stays unseen)")
    g.add_argument("--device", default=DEFAULT_DEVICE,
                   help="training device: auto (a GPU when there is one), cpu, cuda or cuda:N (measuring is on CPU)")
    g.add_argument("--out", default=None, help="output folder (default MODEL_DIR/../compress); if it holds an earlier "
                                              "run, this one goes to OUT/run-2 (run-3, ...) and nothing is deleted")
    g.add_argument("--no-latency", action="store_true", help="skip the latency measurements (columns are NaN)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-stage lines")
    return p


def _origin(model_dir: Path, metrics: dict) -> dict:
    """dataset, data_dir and seed the model was trained with (metrics.json, or the study's config.json)."""
    found = {k: metrics.get(k) for k in ("dataset", "data_dir", "seed")}
    if metrics.get("source_seed") is not None and found["seed"] is None:
        found["seed"] = metrics["source_seed"]
    cfg_file = model_dir.resolve().parent / "config.json"
    if cfg_file.is_file():
        try:
            c = json.loads(cfg_file.read_text())
            if isinstance(c, dict):
                for k in found:
                    if found[k] is None and c.get(k) is not None:
                        found[k] = c[k]
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            pass
    return found


def holds_run(d: Path) -> bool:
    """`d` holds a compression run's results: stages.csv, or an NN_<stage> folder with its metrics.json (a folder
    that a failed run left without one holds no result)."""
    return d.is_dir() and any(p.name == "stages.csv" or (p.is_dir() and _STAGE_DIR.match(p.name)
                                                          and (p / "metrics.json").is_file()) for p in d.iterdir())


def run_folder(out: Path) -> Path:
    """Where this run writes its stages: OUT itself, or OUT/run-2, run-3, ... when OUT (and every earlier
    numbered run) already holds one, so that a re-run never deletes or overwrites results. A teacher cached in
    OUT/teacher_NAME stays shared by every run of OUT."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not holds_run(out):
        return out
    k = 2
    while (out / f"run-{k}").exists():
        k += 1
    return out / f"run-{k}"


def _write(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir = Path(args.model_dir)
    model, spec, metrics = load_model(model_dir)
    origin = _origin(model_dir, metrics)
    dataset = args.dataset or origin["dataset"] or "digits"
    seed = args.seed if args.seed is not None else int(origin["seed"] or 0)
    data_dir = args.data_dir or origin["data_dir"]
    for flag, v in (("--finetune-epochs", args.finetune_epochs), ("--distill-epochs", args.distill_epochs),
                    ("--teacher-epochs", args.teacher_epochs)):
        if v < 0:
            raise UserError(f"{flag} must be >= 0, got {v}")
    if not 0 <= args.kd_alpha <= 1:
        raise UserError(f"--kd-alpha must be in [0, 1], got {args.kd_alpha}")
    if not args.temperature > 0:
        raise UserError(f"--temperature must be > 0, got {args.temperature}")
    if args.lr <= 0 or args.batch_size < 1:
        raise UserError("--lr must be > 0 and --batch-size >= 1")
    cfg = CompressConfig(finetune_epochs=args.finetune_epochs, lr=args.lr, batch_size=args.batch_size,
                         weight_decay=args.weight_decay, device=args.device, seed=seed,
                         prune_method=args.prune_method, channel_importance=args.channel_importance,
                         iterative=args.iterative, max_drop=args.max_drop, temperature=args.temperature,
                         alpha=args.kd_alpha, distill_epochs=args.distill_epochs,
                         distill_from_scratch=args.distill_from_scratch, calib_images=args.calib_images,
                         quiet=args.quiet, measure_latency=not args.no_latency,
                         tflm_arena_bytes=None if args.tflm_arena_kb is None else int(args.tflm_arena_kb * 1024))
    stages: list[Stage] = args.stages
    if any(s.kind == "distill" for s in stages) and not args.distill_from:
        raise UserError("--distill needs a teacher: add --distill-from TEACHER (model directory or zoo:NAME)")
    validate_stages(stages, cfg, has_teacher=bool(args.distill_from))  # before any data or teacher is loaded
    md = model_dir.resolve()
    out = Path(args.out) if args.out else md.parent / "compress"
    if not args.out and (out == md or out in md.parents):  # MODEL_DIR is itself a stage folder of that output
        out = md / "compress"
    if out.resolve() == md or out.resolve() in md.parents:
        raise UserError(f"--out {out} contains MODEL_DIR {model_dir}; its stage folders would be overwritten")
    run_out = run_folder(out)
    torch.manual_seed(seed)
    splits = load_data(dataset, data_dir, args.download, seed=seed)
    if splits.num_classes != spec.num_classes or splits.in_chans != spec.in_chans:
        raise UserError(f"{model_dir}: the model has {spec.num_classes} classes and {spec.in_chans} input channels, "
                        f"data set {dataset!r} has {splits.num_classes} and {splits.in_chans}")
    say = (lambda s: None) if args.quiet else (lambda s: _write(s))
    if args.distill_from:
        from .distill import load_teacher

        cfg.teacher, tinfo = load_teacher(args.distill_from, splits.resized(spec.input_size), spec.input_shape,
                                          out_dir=out, epochs=args.teacher_epochs, seed=seed, device=args.device,
                                          quiet=args.quiet, dataset=dataset)
        if tinfo.get("test_acc") is not None:
            say(f"teacher {args.distill_from}: test {100 * tinfo['test_acc']:.2f}%"
                f"{' (reused)' if tinfo.get('reused') else ''}")
    if run_out != out:
        say(f"{out} holds an earlier run (kept): this run goes to {run_out}")
    say(f"{model_dir}: {dataset}, seed {seed}, {len(stages)} stage(s) -> {run_out}")
    df = run_stages(model, stages, splits, cfg, run_out, spec=spec, source=str(model_dir), original_metrics=metrics,
                    echo=say)
    print(format_table(df))
    print(f"stages table: {run_out / 'stages.csv'}")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="python -m compress.run")
