"""How noisy one trial's validation accuracy is: one fixed network and learning rate, trained with several seeds.

The search-quality benchmark's LeNet-style network (alpha fitted to 0.02 MFLOPs / 1,000 params) is trained like a
trial (15 epochs on the training split, label smoothing 0.1) on each data split with several seeds; only the seed
changes between runs of a split. This spread is why the search re-trains its leaders (search.confirm).

    python benchmarks/val_noise.py --splits 0 1 2 --seeds 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from archs import build  # noqa: E402
from search.space import Budget, analytic_fits, fit_alpha  # noqa: E402
from search.study import SearchConfig, quiet_library_warnings  # noqa: E402
from search_quality import baselines  # noqa: E402
from training.data import load_data  # noqa: E402
from benchmarks._common import add_common_args, resolve_seeds, write_results  # noqa: E402
from training.loop import TrainConfig, fit, set_seed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splits", nargs="+", default=["dev"], help="data split seeds: dev, report or integers")
    ap.add_argument("--seeds", type=int, default=5, help="training seeds per split")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--json", default=str(ROOT / "results/benchmarks/val_noise.json"))
    add_common_args(ap, seeds=False)
    args = ap.parse_args()
    args.splits = resolve_seeds(args.splits)
    if args.quick:
        args.epochs, args.seeds, args.splits = 1, 2, args.splits[:1]
    quiet_library_warnings()
    torch.set_num_threads(1)
    spec = fit_alpha(baselines(divisor=4)["lenet-style conv"], 4.0, analytic_fits(Budget(0.02, 1000)), 0.02)
    t0 = time.time()
    rows, per_split = [], {}
    for split in args.splits:
        data = load_data("digits", seed=split)
        accs = []
        for s in range(args.seeds):
            cfg = TrainConfig(epochs=args.epochs, batch_size=32, lr=args.lr, weight_decay=args.weight_decay,
                              seed=100 + s, label_smoothing=SearchConfig.label_smoothing)
            set_seed(cfg.seed)
            accs.append(fit(build(spec), data.train, data.val, cfg).val_acc)
        per_split[split] = accs
        rows.append([split, len(data.val), f"{100 * min(accs):.2f}", f"{100 * statistics.median(accs):.2f}",
                     f"{100 * max(accs):.2f}", f"{100 * statistics.stdev(accs):.2f}"])
    every = [a for accs in per_split.values() for a in accs]
    print(f"{spec.to_string()}\nlr {args.lr:g}, weight decay {args.weight_decay:g}, {args.epochs} epochs; "
          f"{args.seeds} training seeds per data split")
    print(tabulate(rows, headers=["split", "val images", "min %", "median %", "max %", "std (points)"],
                   tablefmt="github"))
    print(f"all runs: {100 * min(every):.2f}-{100 * max(every):.2f} % validation accuracy "
          f"({time.time() - t0:.0f} s)")
    out = {"spec": spec.to_string(), "config": vars(args), "val_acc": per_split, "seconds": time.time() - t0}
    write_results(args.json, out, args, args.splits)


if __name__ == "__main__":
    main()
