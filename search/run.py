"""CLI: `python -m search.run --budget-mflops 50` — search compact CNNs under hard budgets, retrain and save winners."""
from __future__ import annotations

import argparse
import sys

from archs.cli import DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, Parser, add_distill_weights
from archs.errors import UserError, run_cli
from archs.units import parse_quantity
from training.data import AUGMENTS

from .confirm import candidate_table
from .space import DEFAULT_BLOCKS, SEARCHABLE_BLOCKS, SearchSpace
from .study import SearchConfig, run_search
from .workers import sigint_once


def _quantity(text: str) -> float:
    """A positive finite number with optional k/M/G suffix, for argparse."""
    try:
        return parse_quantity(text, "")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in _list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m search.run", description=(
        "Search compact CNNs built from the edgenas catalog (Fire, depthwise-separable, inverted residual, low-rank, "
        "plain conv) under hard budgets with Optuna, then retrain the winners and save them under OUT/STUDY/. "
        "MFLOPs means million multiply-adds (MACs) exactly as fvcore's FlopCountAnalysis counts them."))
    g = p.add_argument_group("budgets (at least one; hard: no over-budget network is ever trained)")
    g.add_argument("--budget-mflops", type=_quantity, help="max million multiply-adds (fvcore count)")
    g.add_argument("--budget-params", type=_quantity,
                   help="max trainable parameters; suffixes k/M accepted, e.g. 100k, 1.2M")
    g.add_argument("--budget-latency-ms", type=_quantity,
                   help="max median CPU latency at batch 1, in milliseconds, measured on this machine")
    g.add_argument("--budget-sram-kb", type=_quantity,
                   help="max int8 TensorFlow Lite Micro tensor arena (activations + runtime overhead), kB "
                        "(1 kB = 1,024 bytes), computed by archs.memory before training")
    g.add_argument("--budget-flash-kb", type=_quantity,
                   help="max int8 .tflite model file (flash), kB (1 kB = 1,024 bytes), computed by archs.memory")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (embedded, no download), mnist, fashion-mnist, cifar10, svhn, or folder:PATH")
    g.add_argument("--data-dir", default=None, help="where torchvision data sets live (default: $EDGENAS_DATA_DIR or ./data)")
    g.add_argument("--download", action="store_true", help="download torchvision data sets if missing")
    g.add_argument("--augment", choices=["auto", *AUGMENTS], default="auto",
                   help="training augmentation: auto (what suits the data set: none for digits, random shifts for "
                        "MNIST/SVHN, shifts and flips for photos), none, crop (random shifts), crop_flip")
    g.add_argument("--image-size", type=int, default=None, help="resize folder:PATH images to this side length (px)")
    g = p.add_argument_group("study")
    g.add_argument("--trials", type=int, default=30, help="finished trials the study should hold (whole study)")
    g.add_argument("--timeout", type=_quantity, default=None,
                   help="stop starting trials after this many seconds (default: no limit)")
    g.add_argument("--epochs", type=int, default=15, help="training epochs per trial")
    g.add_argument("--final-epochs", type=int, default=30, help="epochs to retrain each winner on train+validation")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="training batch size (images)")
    g.add_argument("--lr", type=_quantity, default=None, help="fixed learning rate (default: searched)")
    g.add_argument("--weight-decay", type=float, default=None, help="fixed weight decay (default: searched)")
    g.add_argument("--label-smoothing", type=float, default=SearchConfig.label_smoothing,
                   help="label smoothing of the cross-entropy in trials and final retrains (0 = off)")
    g.add_argument("--confirm", type=float, default=SearchConfig.confirm,
                   help="share of --trials spent re-training the 3 leading candidates with new seeds; candidates "
                        "are ranked by mean validation accuracy over their runs (0 = off; single objective only)")
    g.add_argument("--confirm-folds", type=int, default=SearchConfig.confirm_folds,
                   help="K > 1: confirmation trials also validate on other folds of train+val (K folds, fold 0 = the "
                        "validation split), so a candidate's mean covers more distinct images (1 = the validation "
                        "split only)")
    g.add_argument("--sampler", choices=["tpe", "nsga2", "random"], default="tpe", help="Optuna sampler")
    g.add_argument("--screen", type=int, default=SearchConfig.screen,
                   help="each new trial trains the best of this many random budget-fitted candidates by a zero-cost "
                        "proxy (0 = off; benchmarks/sampler_efficiency.py measures it)")
    g.add_argument("--screen-proxy", default=SearchConfig.screen_proxy,
                   help="proxy the screen ranks by: params, macs, naswot, synflow, grad_norm; -NAME prefers low scores")
    g.add_argument("--width", choices=["alpha", "share"], default=SearchConfig.width,
                   help="what the sampler chooses for the width: alpha, an upper bound the budget fit shrinks "
                        "(default), or share, the share of the budget (0.5-1) alpha is then fitted to")
    g.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                   help="Optuna pruner (single-objective only; Pareto searches use dominance early stopping)")
    g.add_argument("--objectives", type=_list, default=["accuracy"],
                   help="'accuracy' or a Pareto search: accuracy,mflops | accuracy,params | accuracy,latency | "
                        "accuracy,sram (TFLM tensor arena) | accuracy,flash (.tflite bytes)")
    g.add_argument("--space", type=_list, default=list(DEFAULT_BLOCKS),
                   help=f"block types the search may use, comma-separated from: {','.join(SEARCHABLE_BLOCKS)} "
                        f"(default: {','.join(DEFAULT_BLOCKS)})")
    g.add_argument("--max-stages", type=int, default=4, help="most stages a network may have")
    g.add_argument("--rho", type=_floats, default=list(SearchSpace().rho),
                   help="resolution multipliers the search may choose (input side = round(native px * rho))")
    g.add_argument("--top-k", type=int, default=3, help="winners to retrain and test (single objective)")
    g.add_argument("--storage", default=None,
                   help="Optuna storage shared by workers: postgresql://user@host/db (password from PGPASSWORD or "
                        "~/.pgpass rather than the URL, which other users can see in the process list; it is "
                        "masked in every message and file), sqlite:///PATH, or a journal file PATH (default: "
                        "OUT/STUDY/study.db, which optuna-dashboard opens)")
    g.add_argument("--storage-timeout", type=_quantity, default=SearchConfig.storage_timeout,
                   help="seconds the study's database may stay unreachable (a server restart or failover, SQLite "
                        "locked beyond its busy timeout) before a worker gives up; meanwhile storage calls are "
                        "retried with exponential backoff and the running trial keeps training")
    g.add_argument("--study-name", default=None, help="study name and folder under --out (default: dataset-budget-time)")
    g.add_argument("--n-workers", type=int, default=1,
                   help="worker processes on this machine sharing the study (each gets its own GPU with "
                        "--device cuda and several GPUs); start the same command on other machines with a "
                        "shared --storage to add more workers")
    g.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="warm start is on unless this flag is given: a new study's first trials are classic designs "
                        "(LeNet-, MobileNet-, MobileNetV2- and SqueezeNet-like networks fitted to the budget); with "
                        "this flag every trial is sampled")
    g.add_argument("--threads", type=int, default=1,
                   help="CPU threads per worker process for training and latency; the catalog's tiny networks "
                        "train fastest on one (use --n-workers for more cores, more threads for large networks)")
    g.add_argument("--resume", action="store_true", help="continue an existing study up to --trials finished trials")
    g.add_argument("--seed", type=int, default=0, help="seed for the sampler, data split and training")
    g.add_argument("--device", default=DEFAULT_DEVICE, help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    g.add_argument("--out", default="results", help="output folder")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-trial lines")
    g = p.add_argument_group("distillation")
    g.add_argument("--distill-from", default=None, help="teacher model directory (spec.json + model.pt)")
    add_distill_weights(g)
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    if not 0 <= args.kd_alpha <= 1:
        raise UserError(f"--kd-alpha must be in [0, 1], got {args.kd_alpha}")
    return SearchConfig(
        budget_mflops=args.budget_mflops, budget_params=args.budget_params, budget_latency_ms=args.budget_latency_ms,
        budget_sram_kb=args.budget_sram_kb, budget_flash_kb=args.budget_flash_kb,
        dataset=args.dataset, data_dir=args.data_dir, download=args.download, image_size=args.image_size,
        trials=args.trials, timeout=args.timeout, epochs=args.epochs, final_epochs=args.final_epochs,
        batch_size=args.batch_size, sampler=args.sampler, pruner=args.pruner, objectives=args.objectives,
        space=args.space, max_stages=args.max_stages, rho=args.rho, top_k=args.top_k, storage=args.storage,
        study_name=args.study_name, resume=args.resume, seed=args.seed, device=args.device, out=args.out,
        quiet=args.quiet, distill_from=args.distill_from, kd_temperature=args.temperature, kd_alpha=args.kd_alpha,
        lr=args.lr, weight_decay=args.weight_decay, n_workers=args.n_workers,
        threads=args.threads, warm_start=args.warm_start, augment=args.augment, label_smoothing=args.label_smoothing,
        confirm=args.confirm, confirm_folds=args.confirm_folds, storage_timeout=args.storage_timeout, width=args.width,
        screen=args.screen, screen_proxy=args.screen_proxy)


def _kb(v) -> str:
    """kB with one decimal, or '-' where the memory model has no figure (a block kind it does not model)."""
    return "-" if v is None or v != v else f"{v:.1f}"


def summary_table(result: dict, mcu: bool = False) -> str:
    """Top trials and winners as a readable table; with `mcu` (an SRAM / flash budget or objective) also the tensor
    arena ("SRAM kB") and .tflite size ("flash kB") archs.memory gives, kB = 1,024 bytes."""
    from tabulate import tabulate

    df = result["trials"]
    mem_head = ["SRAM kB", "flash kB"] if mcu else []
    lines = []
    done = candidate_table(df) if len(df) else df  # one row per candidate, ranked as the winners are
    done = done[done["val_acc"].notna()].head(5) if len(done) else done
    if len(done):
        rows = [[int(r.number), r.blocks, f"{r.mflops:.4f}", f"{int(r.params_count):,}",
                 *([_kb(r.sram_kb), _kb(r.flash_kb)] if mcu else []), f"{r.latency_ms:.2f}",
                 f"{100 * r.budget_share:.0f}%", f"{100 * r.val_acc:.2f}", int(r.runs)] for r in done.itertuples()]
        lines.append(tabulate(rows, headers=["trial", "blocks", "MFLOPs", "params", *mem_head, "latency ms",
                                             "budget used", "val acc %", "runs"], tablefmt="github"))
    states = df["state"].value_counts().to_dict() if len(df) else {}
    lines.append("trials: " + ", ".join(f"{v} {k.lower()}" for k, v in states.items()))
    if result["winners"]:
        rows = [[w["rank"], w["trial"], f"{w['mflops']:.4f}", f"{w['params']:,}",
                 *([_kb(w.get("sram_kb")), _kb(w.get("flash_kb"))] if mcu else []), f"{w['latency_ms']:.2f}",
                 f"{100 * w['val_acc']:.2f}" if w.get("val_acc") is not None else "-", w.get("val_evals", 1),
                 f"{100 * w['test_acc']:.2f}", w["dir"]] for w in result["winners"]]
        lines.append(tabulate(rows, headers=["rank", "trial", "MFLOPs", "params", *mem_head, "latency ms",
                                             "val acc %", "runs", "test acc %", "saved to"], tablefmt="github"))
    if mcu:
        lines.append("SRAM kB: the whole TFLM tensor arena (activations + runtime overhead), flash kB: the int8 "
                     ".tflite file, both from archs.memory; kB = 1,024 bytes")
    if result.get("note"):
        lines.append(result["note"])
    lines.append(f"study '{result['study']}' in {result['dir']} (trials.csv, config.json, study storage)")
    return "\n\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    result = run_search(cfg)
    print("\n" + summary_table(result, mcu=cfg.mcu))
    return 0


if __name__ == "__main__":
    sigint_once()  # the first Ctrl-C stops the search; more presses cannot cut short the recording of its trial
    run_cli(main, prog="python -m search.run", resume_hint=", rerun with --resume to continue")
