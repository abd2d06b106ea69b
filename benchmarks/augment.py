"""Training recipe on 8x8 digits: random shifts and label smoothing, on the search-quality LeNet-style net.

Recipes: no augmentation, random shifts ("crop"), and no augmentation with label smoothing 0.1 (the search's
default). For each recipe and seed: validation accuracy after --epochs on the training split (what a search trial
sees), and test accuracy after --final-epochs on train+val (what a winner's retraining sees).

    python benchmarks/augment.py --seeds 0 1 2
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
from search_quality import baselines  # noqa: E402
from benchmarks._common import add_common_args, resolve_seeds, write_results  # noqa: E402
from training.data import load_data  # noqa: E402
from training.loop import TrainConfig, evaluate, fit, set_seed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--final-epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--json", default=str(ROOT / "results/benchmarks/augment.json"))
    add_common_args(ap)
    args = ap.parse_args()
    args.seeds = resolve_seeds(args.seeds)
    if args.quick:
        args.epochs, args.final_epochs, args.seeds = 1, 1, args.seeds[:1]
    torch.set_num_threads(1)
    spec = fit_alpha(baselines(divisor=4)["lenet-style conv"], 4.0, analytic_fits(Budget(0.02, 1000)), alpha_min=0.02)
    t0, rows, out = time.time(), [], {}
    for aug, smoothing in (("none", 0.0), ("crop", 0.0), ("none", 0.1)):
        name = aug + (f", label smoothing {smoothing:g}" if smoothing else "")
        vals, tests = [], []
        for seed in args.seeds:
            data = load_data("digits", seed=seed)
            # a search trial (train -> val) and a winner's retraining (train+val -> test)
            for train, held_out, epochs, sink in ((data.train, data.val, args.epochs, vals),
                                                  (data.trainval(), data.test, args.final_epochs, tests)):
                cfg = TrainConfig(epochs=epochs, batch_size=32, lr=args.lr, weight_decay=1e-4, augment=aug, seed=seed,
                                  label_smoothing=smoothing)
                set_seed(seed)
                model = build(spec)
                fit(model, train, None, cfg)
                sink.append(evaluate(model, held_out))
        out[name] = {"val": vals, "test": tests}
        rows.append([name, f"{100 * statistics.mean(vals):.2f}", " / ".join(f"{100 * v:.1f}" for v in vals),
                     f"{100 * statistics.mean(tests):.2f}", " / ".join(f"{100 * v:.1f}" for v in tests)])
    print(f"digits 8x8, {spec.to_string()}, lr {args.lr:g}, seeds {args.seeds}")
    print(tabulate(rows, headers=["recipe", f"val acc % ({args.epochs} ep)", "per seed",
                                  f"test acc % ({args.final_epochs} ep, train+val)", "per seed"], tablefmt="github"))
    write_results(args.json, {"config": vars(args), "spec": spec.to_string(), "results": out,
                              "seconds": time.time() - t0}, args, args.seeds)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
