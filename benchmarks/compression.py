"""Compression on digits, every result against the original fp32 model on the same data split and seeds.

1. Deep Compression on LeNet-300-100 (zoo `lenet300_100`: 784-300-100-10, 266,610 parameters, the paper's
   network, on the digits upsampled to 28x28): iterative global magnitude pruning ->
   k-means weight sharing (<= 5 bits) -> Huffman coding. Target: >= 40x smaller than the fp32 state_dict,
   <= 1 point of test accuracy lost.
2. A small catalog CNN (depthwise-separable, inverted residual and Fire stages at 16x16; a stand-in for a search
   winner) quantized to int8 (ONNX Runtime static QDQ behind `compress.quantize`): >= 3.5x smaller, latency
   ratios at batch 1 and 64 (against PyTorch fp32 and ONNX Runtime fp32), <= 1 point lost.
3. Physical removal of half the channels of that CNN (torch-pruning) in 2 steps, each fine-tuned: fvcore
   MFLOPs <= 0.55x, <= 1 point lost, latency ratios.
4. Distillation: a capacity-limited student (a 256-32-10 MLP) trained from that CNN as teacher vs the same
   student alone, same initialization, data and epochs, mean of the seeds; at the CLI defaults (T=4, alpha=0.9)
   and at T=2, alpha=0.5. The student sees the plain images (`--student-augment none`): an MLP has no
   translation invariance, and the random shifts the digits' default "crop" augmentation applies made it
   underfit (measured, 60 epochs, seeds 0-2: 95.6 % alone with crop against 97.2 % without).
5. The seeds' table: original, pruned, quantized, distilled: accuracy, size, time over the whole test set.

Stages 1-3 go through the same stage runner as `python -m compress.run` (`compress.stages.run_stages`); every
stage folder is kept under OUT/compression/seed<N>/. Prints tables; writes OUT/compression.json.
Training and timing use `--threads` CPU threads (default 1: stable medians on a shared machine; ONNX Runtime
sessions get the same number).

    python benchmarks/compression.py                    # development seeds 0 1 2, about 9 minutes on 2 shared CPU cores
    python benchmarks/compression.py --seeds report --shared-machine   # the README's figures
    python benchmarks/compression.py --quick            # smoke run
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archs import HeadSpec, NetSpec, StageSpec, StemSpec, build, latency, zoo  # noqa: E402
from benchmarks._common import add_common_args, resolve_seeds, write_results  # noqa: E402
from compress.distill import distill  # noqa: E402
from compress.stages import CompressConfig, Stage, format_table, run_stages, save_stage_model  # noqa: E402
from training.data import load_data  # noqa: E402
from training.loop import TrainConfig, evaluate, fit  # noqa: E402


def small_cnn() -> NetSpec:
    """The stand-in search winner: stem 24, dws 48 /2, 2 x ir 64 /2 (expand 4), fire 96, pool head (16x16)."""
    return NetSpec(num_classes=10, in_chans=1, resolution=16, divisor=8, stem=StemSpec(24),
                   stages=[StageSpec("dws", 48, 1, 2), StageSpec("ir", 64, 2, 2, args={"expand": 4}),
                           StageSpec("fire", 96, 1, 1)],
                   head=HeadSpec("pool", dropout=0.1), name="small_cnn").validate()


def student_spec() -> NetSpec:
    """A capacity-limited student: a 256-32-10 MLP on the 16x16 image (8.6 k params, no convolution)."""
    return NetSpec(num_classes=10, in_chans=1, resolution=16, divisor=1, norm=False, stem=StemSpec(0), stages=[],
                   head=HeadSpec("flatten", [32]), name="student_mlp32").validate()


def _train(spec: NetSpec, data, epochs: int, lr: float, seed: int, batch_size: int = 32):
    torch.manual_seed(seed)
    m = build(spec)
    fit(m, data.train, data.val, TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                             augment=data.augment))
    return m.cpu().eval()


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _row(df, kind: str) -> dict | None:
    sel = df[df["kind"] == kind]
    return None if sel.empty else sel.iloc[-1].to_dict()


def deep_compression(seed: int, args, out: Path, log) -> dict:
    spec = zoo.get("lenet300_100", resolution=args.lenet_resolution)
    data = load_data("digits", seed=seed).resized(spec.input_size)
    t0 = time.perf_counter()
    model = _train(spec, data, args.lenet_epochs, 3e-3, seed)
    train_s = time.perf_counter() - t0
    stages = [Stage("prune", args.lenet_sparsity), Stage("share", args.share_bits), Stage("huffman")]
    cfg = CompressConfig(finetune_epochs=args.lenet_finetune_epochs, lr=3e-3, batch_size=32, seed=seed,
                         prune_method="global", iterative=args.lenet_steps, quiet=True)
    df = run_stages(model, stages, data, cfg, out / f"seed{seed}" / "lenet300_100", spec=spec,
                    source="zoo:lenet300_100")
    log(f"\n[1] seed {seed}: LeNet-300-100 ({spec.input_size}x{spec.input_size}) deep compression, original trained in {train_s:.1f} s\n"
        + format_table(df))
    orig, last = df.iloc[0].to_dict(), df.iloc[-1].to_dict()
    res = {"table": df.to_dict(orient="records"), "original_test_acc": orig["test_acc"],
           "final_stage": last["stage"], "final_test_acc": last["test_acc"],
           "drop_points": 100 * (orig["test_acc"] - last["test_acc"]), "compression_ratio": last["compression_ratio"],
           "fp32_state_dict_bytes": orig["size_bytes"], "final_bytes": last["size_bytes"],
           "sparsity_nonzero_fraction": last["nonzero_params"] / orig["params"]}
    return res


def cnn_stages(seed: int, args, out: Path, log) -> tuple[dict, dict]:
    """(2) int8 quantization and (3) physical channel pruning of the small CNN; returns (results, models)."""
    data = load_data("digits", seed=seed).resized(16)
    spec = small_cnn()
    t0 = time.perf_counter()
    model = _train(spec, data, args.cnn_epochs, 3e-3, seed)
    train_s = time.perf_counter() - t0
    stages = [Stage("quantize", "int8"), Stage("prune", 0.5)]
    cfg = CompressConfig(finetune_epochs=args.cnn_finetune_epochs, lr=3e-3, batch_size=32, seed=seed,
                         prune_method="channels", iterative=args.cnn_prune_steps, quiet=True, calib_images=256)
    sdir = out / f"seed{seed}" / "small_cnn"
    df = run_stages(copy.deepcopy(model), stages, data, cfg, sdir, spec=spec, source="benchmark small_cnn")
    log(f"\n[2,3] seed {seed}: small CNN (16x16) int8 and half the channels, original trained in {train_s:.1f} s\n"
        + format_table(df))
    orig, q, p = _row(df, "original"), _row(df, "quantize"), _row(df, "prune")
    shape = spec.input_shape
    # ONNX Runtime fp32 of the same model, for a like-for-like runtime comparison with the int8 model
    ort_fp32 = {}
    try:
        from archs.export import export_onnx, onnx_session

        path = export_onnx(model, sdir / "fp32_reference.onnx")
        sess = onnx_session(path)
        name = sess.get_inputs()[0].name

        def run_ort(x):
            return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])

        ort_fp32 = {"latency_b1_ms": latency(run_ort, shape, 1), "latency_b64_ms": latency(run_ort, shape, 64),
                    "size_bytes": path.stat().st_size}
    except Exception as e:  # noqa: BLE001 - the reference is optional
        ort_fp32 = {"error": f"{type(e).__name__}: {e}"}
    quant = None
    if q is not None:
        quant = {"test_acc": q["test_acc"], "drop_points": 100 * (orig["test_acc"] - q["test_acc"]),
                 "size_bytes": q["size_bytes"], "size_ratio": orig["size_bytes"] / q["size_bytes"],
                 "latency_b1_ms": q["latency_b1_ms"], "latency_b64_ms": q["latency_b64_ms"],
                 "speedup_b1_vs_torch_fp32": orig["latency_b1_ms"] / q["latency_b1_ms"],
                 "speedup_b64_vs_torch_fp32": orig["latency_b64_ms"] / q["latency_b64_ms"]}
        if "latency_b1_ms" in ort_fp32:
            quant["speedup_b1_vs_ort_fp32"] = ort_fp32["latency_b1_ms"] / q["latency_b1_ms"]
            quant["speedup_b64_vs_ort_fp32"] = ort_fp32["latency_b64_ms"] / q["latency_b64_ms"]
    pruned = {"test_acc": p["test_acc"], "drop_points": 100 * (orig["test_acc"] - p["test_acc"]),
              "mflops": p["mflops"], "mflops_ratio": p["mflops"] / orig["mflops"],
              "params_ratio": p["params"] / orig["params"],
              "speedup_b1": orig["latency_b1_ms"] / p["latency_b1_ms"],
              "speedup_b64": orig["latency_b64_ms"] / p["latency_b64_ms"]}
    res = {"table": df.to_dict(orient="records"), "original": orig, "ort_fp32": ort_fp32, "int8": quant,
           "pruned": pruned, "train_seconds": train_s}
    from compress.stages import load_stage

    models = {"original": model, "pruned": load_stage(sdir / p["dir"])}
    res["sizes"] = {"original": orig["size_bytes"], "pruned": p["size_bytes"]}
    if q is not None:
        models["quantized"] = load_stage(sdir / q["dir"])
        res["sizes"]["quantized"] = q["size_bytes"]
    return res, models


def distillation(seed: int, teacher, args, work: Path, log) -> tuple[dict, torch.nn.Module, int]:
    data = load_data("digits", seed=seed).resized(16)
    spec = student_spec()
    augment = data.augment if args.student_augment == "data" else args.student_augment
    cfg = TrainConfig(epochs=args.student_epochs, lr=3e-3, batch_size=32, seed=seed, augment=augment)
    out = {"teacher_test_acc": evaluate(teacher, data.test)}
    torch.manual_seed(seed)
    alone = build(spec)
    fit(alone, data.train, data.val, cfg)
    out["alone"] = evaluate(alone, data.test)
    distilled = None
    for T, a in ((args.temperature, args.alpha), (2.0, 0.5)):
        torch.manual_seed(seed)
        s = build(spec)  # same initialization as the student trained alone
        distill(s, teacher, data.train, data.val, cfg, temperature=T, alpha=a)
        out[f"distilled_T{T:g}_alpha{a:g}"] = evaluate(s, data.test)
        if distilled is None:
            distilled = s.cpu().eval()
    log(f"[4] seed {seed}: teacher {_pct(out['teacher_test_acc'])}%, student alone {_pct(out['alone'])}%, "
        + ", ".join(f"{k} {_pct(v)}%" for k, v in out.items() if k.startswith("distilled")))
    d = save_stage_model(work / f"seed{seed}" / "student_distilled", distilled, {**out, "stage": "distilled"})
    return out, distilled, (d / "model.pt").stat().st_size


def seeds_table(seed: int, models: dict, sizes: dict) -> list[dict]:
    """Accuracy, bytes on disk of the saved artifact, and the time of one pass over the whole test set
    (the test set as one batch, archs.latency median)."""
    from compress.stages import accuracy

    data = load_data("digits", seed=seed).resized(16)
    n = len(data.test)
    rows = []
    for name in ("original", "pruned", "quantized", "distilled"):
        m = models.get(name)
        if m is None:
            continue
        rows.append({"seed": seed, "model": name, "test_acc": accuracy(m, data.test), "size_bytes": sizes[name],
                     "test_set_ms": latency(m, small_cnn().input_shape, batch_size=n), "test_images": n})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    ap.add_argument("--share-bits", type=int, default=5, help="weight-sharing bits for LeNet-300-100 (<= 5)")
    ap.add_argument("--lenet-sparsity", type=float, default=0.92,
                    help="fraction of LeNet weights pruned (Han et al. keep 8 %%)")
    ap.add_argument("--lenet-steps", type=int, default=4, help="iterative pruning steps")
    ap.add_argument("--lenet-resolution", type=int, default=28, help="LeNet-300-100 input side (28: 784 inputs)")
    ap.add_argument("--lenet-epochs", type=int, default=40)
    ap.add_argument("--lenet-finetune-epochs", type=int, default=20)
    ap.add_argument("--cnn-epochs", type=int, default=20)
    ap.add_argument("--cnn-finetune-epochs", type=int, default=20, help="fine-tuning epochs per pruning step")
    ap.add_argument("--cnn-prune-steps", type=int, default=2,
                    help="channel-pruning steps, each removing a share of the channels then fine-tuning (chosen on "
                         "validation accuracy: python benchmarks/prune_steps.py)")
    ap.add_argument("--student-epochs", type=int, default=150, help="epochs of the student, alone and distilled")
    ap.add_argument("--student-augment", default="none", choices=["none", "crop", "data"],
                    help="augmentation of the student's training, alone and distilled (data: the data set's own)")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for training, PyTorch and ONNX Runtime")
    ap.add_argument("--json", default=None, help="where to write the JSON (default: OUT/compression.json)")
    add_common_args(ap)
    args = ap.parse_args(argv)
    args.seeds = resolve_seeds(args.seeds)
    torch.set_num_threads(max(1, args.threads))
    if args.quick:
        args.lenet_epochs, args.lenet_finetune_epochs, args.lenet_steps = 5, 2, 2
        args.cnn_epochs, args.cnn_finetune_epochs, args.student_epochs = 3, 2, 3
        args.seeds = args.seeds[:1]
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    work = out / "compression"
    lines: list[str] = []

    def log(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    t_start = time.perf_counter()
    per_seed = {}
    table5: list[dict] = []
    for seed in args.seeds:
        r1 = deep_compression(seed, args, work, log)
        r23, models = cnn_stages(seed, args, work, log)
        r4, student, student_bytes = distillation(seed, models["original"], args, work, log)
        models["distilled"] = student
        table5 += seeds_table(seed, models, {**r23["sizes"], "distilled": student_bytes})
        per_seed[seed] = {"deep_compression": r1, "cnn": r23, "distillation": r4}

    # ---------------- summaries ----------------
    S = args.seeds
    dc = [per_seed[s]["deep_compression"] for s in S]
    summary = {
        "deep_compression": {
            "compression_ratio_per_seed": [d["compression_ratio"] for d in dc],
            "drop_points_per_seed": [d["drop_points"] for d in dc],
            "compression_ratio_mean": _mean([d["compression_ratio"] for d in dc]),
            "drop_points_mean": _mean([d["drop_points"] for d in dc]),
            "target": ">= 40x, <= 1 point"},
    }
    q = [per_seed[s]["cnn"]["int8"] for s in S if per_seed[s]["cnn"]["int8"]]
    if q:
        summary["int8"] = {k: _mean([x.get(k) for x in q]) for k in q[0]}
        summary["int8"]["target"] = ">= 3.5x smaller, faster at batch 1 and 64, <= 1 point"
    pr = [per_seed[s]["cnn"]["pruned"] for s in S]
    summary["channels_pruned"] = {k: _mean([x[k] for x in pr]) for k in pr[0]}
    summary["channels_pruned"]["target"] = "MFLOPs <= 0.55x, <= 1 point"
    di = [per_seed[s]["distillation"] for s in S]
    summary["distillation"] = {k: _mean([x[k] for x in di]) for k in di[0]}
    summary["distillation"]["per_seed"] = di

    log("\n== Summary (mean over seeds " + ", ".join(map(str, S)) + ") ==")
    rows = [["(1) LeNet-300-100 prune+share+Huffman", f"{summary['deep_compression']['compression_ratio_mean']:.1f}x "
             f"smaller ({', '.join(f'{x:.1f}' for x in summary['deep_compression']['compression_ratio_per_seed'])})",
             f"{summary['deep_compression']['drop_points_mean']:+.2f} pts lost "
             f"({', '.join(f'{x:+.2f}' for x in summary['deep_compression']['drop_points_per_seed'])})",
             ">= 40x, <= 1 pt"]]
    if q:
        s = summary["int8"]
        rows.append(["(2) small CNN int8", f"{s['size_ratio']:.2f}x smaller; speed x{s['speedup_b1_vs_torch_fp32']:.2f} "
                     f"b1 / x{s['speedup_b64_vs_torch_fp32']:.2f} b64 vs torch fp32"
                     + (f"; x{s['speedup_b1_vs_ort_fp32']:.2f} / x{s['speedup_b64_vs_ort_fp32']:.2f} vs ORT fp32"
                        if s.get("speedup_b1_vs_ort_fp32") else ""),
                     f"{s['drop_points']:+.2f} pts lost", ">= 3.5x, faster, <= 1 pt"])
    s = summary["channels_pruned"]
    rows.append(["(3) small CNN, half the channels", f"MFLOPs x{s['mflops_ratio']:.3f}, params x{s['params_ratio']:.3f}; "
                 f"speed x{s['speedup_b1']:.2f} b1 / x{s['speedup_b64']:.2f} b64", f"{s['drop_points']:+.2f} pts lost",
                 "<= 0.55x MFLOPs, <= 1 pt"])
    s = summary["distillation"]
    kd_keys = [k for k in s if k.startswith("distilled")]
    def _seeds(key):
        return "/".join(_pct(x[key]) for x in di)

    rows.append(["(4) student distilled vs alone", f"teacher {_pct(s['teacher_test_acc'])}% ({_seeds('teacher_test_acc')})",
                 f"alone {_pct(s['alone'])}% ({_seeds('alone')}); "
                 + "; ".join(f"{k[10:]} {_pct(s[k])}% ({_seeds(k)})" for k in kd_keys),
                 "distilled > alone"])
    log(tabulate(rows, headers=["benchmark", "result", "accuracy", "target"], tablefmt="github"))
    log("\n(5) seeds' table: accuracy, size, one pass over the whole test set (CPU, median ms)")
    log(tabulate([[r["seed"], r["model"], _pct(r["test_acc"]), f"{r['size_bytes']:,}", f"{r['test_set_ms']:.2f}"]
                  for r in table5], headers=["seed", "model", "test acc %", "size bytes", "test set ms"],
                 tablefmt="github"))
    total = time.perf_counter() - t_start
    log(f"\ntotal {total:.0f} s on {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}")
    result = {"benchmark": "compression", "dataset": "digits", "seeds": S, "args": vars(args), "summary": summary,
              "seeds_table": table5, "per_seed": per_seed, "seconds": total}
    path = write_results(args.json or out / "compression.json", result, args, S)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
