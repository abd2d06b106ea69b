"""Train a zoo network (or any NetSpec) into a model directory usable as `compress.run`'s MODEL_DIR or as a teacher.

    python -m compress.train zoo:lenet300_100 --dataset digits --epochs 30 --out results/lenet300
    python -m compress.train zoo:mobilenet_v1 --zoo-arg alpha=0.25 --resolution 16 --out results/mbv1
    python -m compress.train path/to/spec.json --epochs 20 --out results/mynet

The directory gets spec.json, model.pt (state_dict) and metrics.json (test/val accuracy, fvcore MFLOPs = million
multiply-adds, params, CPU latency, and the dataset and seed, which `compress.run` reuses so that its test
split is the one this model never saw).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from archs import NetSpec, build, count, latency, zoo
from archs.cli import DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, Parser
from archs.errors import UserError, run_cli
from archs.io import read_spec, save_model_dir
from archs.preprocess import PREPROCESSING_KEY, Preprocessing
from training.data import Splits, load_data
from training.loop import TrainConfig, evaluate, fit, set_seed

__all__ = ["resolve_spec", "train_model", "main"]


def _parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def resolve_spec(source: str, num_classes: int, in_chans: int, resolution: int | None,
                 zoo_kwargs: dict | None = None) -> NetSpec:
    """`zoo:NAME` (built for the data's classes, channels and `resolution`), a spec.json file, a model directory
    holding spec.json, or a one-line spec string."""
    if not isinstance(source, str) or not source:
        raise UserError("give a network: zoo:NAME, a spec.json file, or a model directory")
    if source.startswith("zoo:"):
        kw = {"num_classes": num_classes, "in_chans": in_chans, **(zoo_kwargs or {})}
        if resolution is not None:
            kw["resolution"] = resolution
        try:
            return zoo.get(source[4:], **kw)
        except TypeError as e:
            raise UserError(f"{source}: {e}") from None
    if zoo_kwargs:
        raise UserError("--zoo-arg only applies to zoo:NAME networks")
    p = Path(source)
    if p.is_dir():
        spec = read_spec(p / "spec.json")
    elif p.is_file():
        spec = read_spec(p)
    elif "|" in source:
        spec = NetSpec.from_string(source)
    else:
        raise UserError(f"{source!r} is neither zoo:NAME, a spec.json file, a model directory nor a spec string "
                        f"(zoo networks: {', '.join(zoo.names())})")
    if spec.num_classes != num_classes or spec.in_chans != in_chans:
        raise UserError(f"{source}: the spec has {spec.num_classes} classes and {spec.in_chans} input channels, "
                        f"the data set {num_classes} and {in_chans}")
    return spec


def train_model(source: str, splits: Splits | None = None, dataset: str = "digits", data_dir: str | None = None,
                download: bool = False, epochs: int = 30, out: str | Path | None = None, seed: int = 0,
                lr: float | None = None, batch_size: int = 64, weight_decay: float | None = None,
                resolution: int | None = None, device: str = "cpu", quiet: bool = True,
                zoo_kwargs: dict | None = None):
    """Build, train (train split, validated on val), test once, and save to `out` (when given).

    Returns (model on CPU in eval mode, metrics dict)."""
    if splits is None:
        splits = load_data(dataset, data_dir, download, seed=seed)
    spec = resolve_spec(source, splits.num_classes, splits.in_chans,
                        resolution if resolution is not None else (splits.resolution if source.startswith("zoo:")
                                                                   else None), zoo_kwargs)
    data = splits.resized(spec.input_size)
    set_seed(seed)  # reproducible initial weights
    model = build(spec)
    cfg = TrainConfig(epochs=epochs, lr=3e-3 if lr is None else lr, batch_size=batch_size,
                      weight_decay=1e-4 if weight_decay is None else weight_decay, augment=data.augment,
                      device=device, seed=seed)
    t0 = time.perf_counter()
    res = fit(model, data.train, data.val, cfg, progress=not quiet, desc=source if len(source) < 40 else "train")
    seconds = time.perf_counter() - t0
    model = model.cpu().eval()
    test_acc = evaluate(model, data.test)
    c = count(model)
    metrics = {"source": source, "spec": spec.to_string(), "dataset": dataset, "data_dir": data_dir, "seed": seed,
               "epochs": epochs, "resolution": spec.input_size, "lr": cfg.lr, "batch_size": batch_size,
               "weight_decay": cfg.weight_decay, "augment": cfg.augment, "test_acc": test_acc,
               "val_acc": res.val_acc, "best_val_acc": res.best_val_acc, "mflops": c.macs / 1e6, "macs": c.macs,
               "params": c.params, "latency_ms": latency(model, batch_size=1), "train_seconds": seconds,
               PREPROCESSING_KEY: Preprocessing.from_data(splits, spec).to_dict()}
    if out is not None:
        save_model_dir(out, model, metrics)
    return model, metrics


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m compress.train",
                description="Train a zoo network or a NetSpec into a model directory (spec.json, model.pt, "
                            "metrics.json) for python -m compress.run or as a distillation teacher. "
                            "MFLOPs means million multiply-adds (fvcore's count).")
    p.add_argument("network", help=f"zoo:NAME ({', '.join(zoo.names())}), a spec.json file, a model directory, "
                                   "or a one-line spec string")
    p.add_argument("--dataset", default="digits", help="digits (embedded), mnist, fashion-mnist, cifar10, svhn, folder:PATH")
    p.add_argument("--data-dir", default=None, help="where torchvision data sets live")
    p.add_argument("--download", action="store_true", help="download torchvision data sets if missing")
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (AdamW, cosine)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="batch size (images)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    p.add_argument("--resolution", type=int, default=None,
                   help="input side length in pixels for zoo networks (default: the data set's, 8 for digits); "
                        "a larger one trains on the data set's images upscaled to it")
    p.add_argument("--zoo-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra zoo argument, e.g. alpha=0.5 for mobilenet_v1 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split and of training")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--out", default=None, help="output model directory (default: results/<network name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs < 0:
        raise UserError(f"--epochs must be >= 0, got {args.epochs}")
    kw = {}
    for item in args.zoo_arg:
        if "=" not in item:
            raise UserError(f"--zoo-arg takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        kw[k.strip()] = _parse_value(v.strip())
    name = args.network[4:] if args.network.startswith("zoo:") else Path(args.network).stem or "model"
    out = Path(args.out) if args.out else Path("results") / name
    _, m = train_model(args.network, dataset=args.dataset, data_dir=args.data_dir, download=args.download,
                       epochs=args.epochs, out=out, seed=args.seed, lr=args.lr, batch_size=args.batch_size,
                       weight_decay=args.weight_decay, resolution=args.resolution, device=args.device,
                       quiet=args.quiet, zoo_kwargs=kw or None)
    print(f"{args.network}: test {100 * m['test_acc']:.2f}%  val {100 * (m['val_acc'] or 0):.2f}%  "
          f"{m['mflops']:.4f} MFLOPs  {m['params']:,} params  {m['latency_ms']:.3f} ms  "
          f"{m['train_seconds']:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="python -m compress.train")
