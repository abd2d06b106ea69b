"""Training throughput of `training.fit` against a bare hand-written PyTorch loop, side by side.

Both loops train the same model (same initial weights) on the same in-memory tensors with the same batch size and
optimizer (AdamW, lr 3e-3, weight decay 1e-4) and no augmentation; `fit` adds what it always does (cosine
schedule stepped per batch, NaN/inf detection, per-epoch loss, no weight decay on 1-D parameters). Measurements
are interleaved (bare, fit, fit+crop_flip, alternating order) and repeated; medians are reported. Throughput is
images / wall-clock second of the whole call, setup included (optimizer creation, moving data to the device).

    python benchmarks/train_throughput.py                 # CPU, 5 repeats, 3 epochs
    python benchmarks/train_throughput.py --device cuda --repeats 7 --epochs 5
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import add_common_args, write_results  # noqa: E402
from archs.errors import run_cli  # noqa: E402
from training import TensorData, TrainConfig, fit, load_data, resolve_device  # noqa: E402

LR, WD = 3e-3, 1e-4


def small_cnn(in_chans: int = 1, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def dw_sep(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True),
    )


def mobilenet_ish(in_chans: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    w = width
    return nn.Sequential(
        nn.Conv2d(in_chans, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU6(inplace=True),
        dw_sep(w, 2 * w, 1), dw_sep(2 * w, 4 * w, 2), dw_sep(4 * w, 4 * w, 1),
        dw_sep(4 * w, 8 * w, 2), dw_sep(8 * w, 8 * w, 1), dw_sep(8 * w, 16 * w, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16 * w, num_classes),
    )


def bare_loop(model: nn.Module, data: TensorData, epochs: int, batch_size: int, device: torch.device) -> float:
    """The loop anyone would write by hand; returns wall seconds."""
    t0 = time.perf_counter()
    model.to(device).train()
    x, y = data.x.to(device), data.y.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    g = torch.Generator().manual_seed(0)
    n = len(y)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def fit_loop(model: nn.Module, data: TensorData, epochs: int, batch_size: int, device: torch.device,
             augment: str = "none", amp: bool = False) -> float:
    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=LR, weight_decay=WD, optimizer="adamw",
                      augment=augment, amp=amp, device=str(device), seed=0)
    fit(model, data, None, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def workloads(device: torch.device, n_random: int) -> list[dict]:
    digits = load_data("digits")
    g = torch.Generator().manual_seed(0)
    rnd = TensorData(torch.randn(n_random, 3, 32, 32, generator=g), torch.randint(0, 10, (n_random,), generator=g))
    return [
        {"name": "digits 8x8, small CNN", "data": digits.train, "make": lambda: small_cnn(1)},
        {"name": "digits 16x16, small CNN", "data": digits.train.resized(16), "make": lambda: small_cnn(1)},
        {"name": "random 32x32, MobileNet-ish", "data": rnd, "make": lambda: mobilenet_ish(3)},
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N (default cpu)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repetitions per measurement (default 5)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measurement (default 3)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--random-images", type=int, default=2048, help="size of the random 32x32 set (default 2048)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1, as search.run trains; 0 keeps torch's default)")
    ap.add_argument("--out", default="results/benchmarks/train_throughput.json")
    add_common_args(ap, seeds=False)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs, args.random_images = 1, 1, 64
    if args.repeats < 1 or args.epochs < 1 or args.batch_size < 1 or args.random_images < 1:
        ap.error("--repeats, --epochs, --batch-size and --random-images must be positive")
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    variants = ["bare", "fit", "fit+crop_flip"] + (["fit+amp"] if device.type == "cuda" else [])

    rows = []
    for wl in workloads(device, args.random_images):
        torch.manual_seed(0)
        init = wl["make"]()
        data: TensorData = wl["data"]
        n_img = len(data) * args.epochs

        def run(variant: str) -> float:
            model = copy.deepcopy(init)
            if variant == "bare":
                return bare_loop(model, data, args.epochs, args.batch_size, device)
            if variant == "fit":
                return fit_loop(model, data, args.epochs, args.batch_size, device)
            if variant == "fit+crop_flip":
                return fit_loop(model, data, args.epochs, args.batch_size, device, augment="crop_flip")
            return fit_loop(model, data, args.epochs, args.batch_size, device, amp=True)

        for v in variants:  # warm-up: allocator, kernels, lazy imports
            run(v)
        ips = {v: [] for v in variants}
        for r in range(args.repeats):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                ips[v].append(n_img / run(v))
        med = {v: statistics.median(s) for v, s in ips.items()}
        row = {
            "workload": wl["name"], "input_shape": list(data.x.shape[1:]), "train_images": len(data),
            "params": sum(p.numel() for p in init.parameters()), "batch_size": args.batch_size,
            "images_per_second": ips, "median_images_per_second": med,
            "overhead_ratio": med["bare"] / med["fit"],  # > 1: fit is slower than the bare loop
        }
        rows.append(row)
        print(f"  measured {wl['name']}", file=sys.stderr, flush=True)

    head = f"{'workload':<30} {'params':>8} " + " ".join(f"{v + ' img/s':>20}" for v in variants) + \
        f" {'bare/fit':>9}"
    print(f"\ntraining throughput on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads), "
          f"{args.epochs} epochs, batch {args.batch_size}, median of {args.repeats}")
    print(head)
    print("-" * len(head))
    for row in rows:
        cells = " ".join(f"{row['median_images_per_second'][v]:>20,.0f}" for v in variants)
        print(f"{row['workload']:<30} {row['params']:>8,} {cells} {row['overhead_ratio']:>9.3f}")

    meta = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "epochs": args.epochs,
            "repeats": args.repeats, "batch_size": args.batch_size,
            "note": "images per wall-clock second of the whole call; overhead_ratio = bare median / fit median"}
    out = write_results(args.out, {"config": meta, "results": rows}, args)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="train_throughput")
