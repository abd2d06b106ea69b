"""Which channel-pruning recipe keeps the most *validation* accuracy (how benchmarks/compression.py chose its own).

The compression benchmark's small CNN (16x16 digits, trained 20 epochs) loses half its channels (torch-pruning,
L1 importance) under four recipes: one step + 20 fine-tuning epochs, 2 steps x 20 epochs, one step + 40 epochs,
and one step + 20 epochs distilled from the unpruned network. Only validation accuracy is printed: the test split
stays for the benchmark itself.

    python benchmarks/prune_steps.py            # all recipes, development seeds 0-2, about 4 minutes on one thread
    python benchmarks/prune_steps.py --quick    # smoke run
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchmarks._common import add_common_args, resolve_seeds, write_results  # noqa: E402
from compression import _train, small_cnn  # noqa: E402
from compress.stages import CompressConfig, Stage, run_stages  # noqa: E402
from training.data import load_data  # noqa: E402

RECIPES = {
    "one step, 20 epochs": dict(finetune_epochs=20, iterative=1),
    "2 steps x 20 epochs": dict(finetune_epochs=20, iterative=2),
    "one step, 40 epochs": dict(finetune_epochs=40, iterative=1),
    "one step, 20 epochs, distilled": dict(finetune_epochs=20, iterative=1, teacher=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipes", nargs="*", help=f"recipes to compare (default: all): {', '.join(map(repr, RECIPES))}")
    ap.add_argument("--json", default=str(ROOT / "results/benchmarks/prune_steps.json"))
    add_common_args(ap)
    args = ap.parse_args()
    args.seeds = resolve_seeds(args.seeds)
    if set(args.recipes) - set(RECIPES):
        ap.error(f"unknown recipe(s) {sorted(set(args.recipes) - set(RECIPES))}; choose from {list(RECIPES)}")
    epochs, scale = (2, 0.05) if args.quick else (20, 1.0)  # quick: 1 and 2 fine-tuning epochs instead of 20 and 40
    if args.quick:
        args.seeds = args.seeds[:1]
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    pick = args.recipes or list(RECIPES)
    if args.quick and not args.recipes:  # the iterative and the distilled code paths
        pick = ["2 steps x 20 epochs", "one step, 20 epochs, distilled"]
    res: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            data = load_data("digits", seed=seed).resized(16)
            model = _train(small_cnn(), data, epochs, 3e-3, seed)
            for i, name in enumerate(pick):
                kw = dict(RECIPES[name])
                kw["finetune_epochs"] = max(1, round(kw["finetune_epochs"] * scale))
                if kw.pop("teacher", False):
                    kw["teacher"] = copy.deepcopy(model).eval()
                cfg = CompressConfig(lr=3e-3, batch_size=32, seed=seed, prune_method="channels", quiet=True,
                                     measure_latency=False, **kw)
                df = run_stages(copy.deepcopy(model), [Stage("prune", 0.5)], data, cfg, Path(tmp) / f"{seed}-{i}",
                                spec=small_cnn(), source="prune_steps")
                o, p = df.iloc[0], df.iloc[-1]
                res.setdefault(name, []).append((o.val_acc, p.val_acc))
                print(f"seed {seed} {name}: val {100 * o.val_acc:.2f}% -> {100 * p.val_acc:.2f}%", flush=True)
    for name, rows in res.items():
        drops = [100 * (a - b) for a, b in rows]
        print(f"{name:32s} validation points lost: mean {statistics.mean(drops):.2f}; per seed "
              + " ".join(f"{d:.2f}" for d in drops))
    path = write_results(args.json, {"config": vars(args), "val_acc_original_pruned": res}, args, args.seeds)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
