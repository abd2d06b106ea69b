"""Agreement and speed of the analytic int8 memory model `archs.memory` against TensorFlow Lite Micro.

On N seeded random valid specs (benchmarks/specgen.py: every catalog block, strides, kernels, alpha, rho,
heads, activations) each network (random weights: memory does not depend on their values) is exported by
`compress.tflite.export_int8` and allocated by the TFLM runtime (tflite-micro's recording allocator, smallest
arena found by doubling). It reports:
- the activation arena (TFLM's head) exact-match rate of `memory(spec).activation_bytes`,
- max relative error of the tensor arena (head + tail) and of the flash bytes (the .tflite file), and the
  number of under-estimates of each (must be 0: a budget that says "fits" must fit),
- median time per candidate of `memory` and `estimate` (mean of --repeats calls) and of export + TFLM.
Specs the exporter refuses (not full-integer) are counted and listed, not compared.
Bytes in the JSON; kB (1 kB = 1,024 bytes) in the printed table.

    python benchmarks/memory_model.py --n 200 --seed 0 [--cache results/benchmarks/memory_model_tflm.jsonl]

The TFLM measurements are cached one JSON line per spec (--cache) so a rerun only times the model again.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from archs import build, estimate  # noqa: E402
from archs.memory import memory  # noqa: E402
from specgen import random_specs  # noqa: E402


def measure_tflm(spec, work: Path) -> dict:
    """Export `spec` (random weights) to int8 TFLite and allocate it in TFLM: the cache record of one spec."""
    import torch

    from compress import tflite as T

    torch.manual_seed(0)
    model = build(spec).eval()
    path = work / "m.tflite"
    t0 = time.perf_counter()
    try:
        T.export_int8(model, torch.randn(8, *spec.input_shape[1:]), path)
    except Exception as e:  # noqa: BLE001 - recorded and counted, the benchmark goes on
        return {"spec": spec.to_string(), "error": f"{type(e).__name__}: {str(e)[:300]}"}
    t1 = time.perf_counter()
    try:
        rep = T.min_arena(path, 1 << 20)
    except Exception as e:  # noqa: BLE001
        rep = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    t2 = time.perf_counter()
    g = T.read_graph(path)
    return {"spec": spec.to_string(), "file_bytes": g.file_bytes, "alloc": rep, "export_s": t1 - t0,
            "tflm_s": t2 - t1, "ops": g.ops, "tensors": g.tensors, "inputs": g.inputs, "outputs": g.outputs}


def _time(fn, spec, repeats: int) -> float:
    t = time.perf_counter()
    for _ in range(repeats):
        fn(spec)
    return (time.perf_counter() - t) / repeats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="number of random specs (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=200, help="memory / estimate calls averaged per candidate")
    ap.add_argument("--cache", default=str(ROOT / "results" / "benchmarks" / "memory_model_tflm.jsonl"),
                    help="JSON lines of TFLM measurements, reused and extended")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "memory_model.json"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from tabulate import tabulate
    from tqdm.auto import tqdm

    specs = random_specs(args.n, args.seed)
    cache_path = Path(args.cache)
    cache: dict[str, dict] = {}
    if cache_path.is_file():
        for line in cache_path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                cache[r["spec"]] = r
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    rows, refused = [], []
    with tempfile.TemporaryDirectory() as td:
        for spec in tqdm(specs, desc="export + TFLM", unit="spec", disable=args.quiet):
            key = spec.to_string()
            if key not in cache:
                cache[key] = measure_tflm(spec, Path(td))
                with cache_path.open("a") as f:
                    f.write(json.dumps(cache[key]) + "\n")
            r = cache[key]
            if "error" in r or "error" in r.get("alloc", {}):
                refused.append({"spec": key, "error": r.get("error") or r["alloc"]["error"]})
                continue
            m = memory(spec)
            a = r["alloc"]
            rows.append({"spec": key, "blocks": sorted(set(spec.block_types())), "head": a["head"],
                         "head_est": m.activation_bytes, "arena": a["total"], "arena_est": m.arena_bytes,
                         "tail": a["tail"], "tail_est": m.overhead_bytes, "flash": r["file_bytes"],
                         "flash_est": m.flash_bytes, "live_bound": m.live_bound,
                         "t_memory": _time(memory, spec, args.repeats), "t_estimate": _time(estimate, spec, args.repeats),
                         "t_export_tflm": r["export_s"] + r["tflm_s"]})
    if not rows:
        print("no spec could be compared", file=sys.stderr)
        return 1
    n = len(rows)
    rel = lambda est, ref: (est - ref) / ref  # noqa: E731
    summary = {
        "specs": args.n, "compared": n, "refused_by_exporter": len(refused),
        "activation_exact": sum(r["head"] == r["head_est"] for r in rows) / n,
        "activation_above_live_bound": sum(r["head"] > r["live_bound"] for r in rows),
        "arena_max_rel_err": max(abs(rel(r["arena_est"], r["arena"])) for r in rows),
        "arena_under": sum(r["arena_est"] < r["arena"] for r in rows),
        "flash_max_rel_err": max(abs(rel(r["flash_est"], r["flash"])) for r in rows),
        "flash_under": sum(r["flash_est"] < r["flash"] for r in rows),
        "median_us_memory": 1e6 * statistics.median(r["t_memory"] for r in rows),
        "median_us_estimate": 1e6 * statistics.median(r["t_estimate"] for r in rows),
        "median_s_export_tflm": statistics.median(r["t_export_tflm"] for r in rows),
        "arena_kb_range": [min(r["arena"] for r in rows) / 1024, max(r["arena"] for r in rows) / 1024],
        "flash_kb_range": [min(r["flash"] for r in rows) / 1024, max(r["flash"] for r in rows) / 1024],
    }
    summary["memory_over_estimate"] = summary["median_us_memory"] / summary["median_us_estimate"]
    summary["export_tflm_over_memory"] = summary["median_s_export_tflm"] * 1e6 / summary["median_us_memory"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows, "refused": refused,
                               "machine": platform.platform(), "python": platform.python_version(),
                               "command": " ".join(sys.argv)}, indent=1) + "\n")
    s = summary
    table = [
        ["specs compared (of generated)", f"{n} of {args.n} ({len(refused)} refused by the exporter)"],
        ["activation arena = TFLM head", f"{100 * s['activation_exact']:.1f} % of specs"],
        ["specs where TFLM's planner needs more than the live bound", s["activation_above_live_bound"]],
        ["tensor arena: max |relative error|", f"{100 * s['arena_max_rel_err']:.2f} %"],
        ["tensor arena: under-estimates", s["arena_under"]],
        ["flash: max |relative error|", f"{100 * s['flash_max_rel_err']:.2f} %"],
        ["flash: under-estimates", s["flash_under"]],
        ["tensor arena range (TFLM)", f"{s['arena_kb_range'][0]:.1f}-{s['arena_kb_range'][1]:.1f} kB"],
        ["flash range (.tflite)", f"{s['flash_kb_range'][0]:.1f}-{s['flash_kb_range'][1]:.1f} kB"],
        ["median time: memory(spec)", f"{s['median_us_memory']:.0f} us"],
        ["median time: estimate(spec)", f"{s['median_us_estimate']:.0f} us ({s['memory_over_estimate']:.1f}x less)"],
        ["median time: export + TFLM", f"{s['median_s_export_tflm']:.1f} s ({s['export_tflm_over_memory']:,.0f}x memory)"],
    ]
    print(tabulate(table, headers=["memory model vs TFLM", "value"], tablefmt="github"))
    print("kB = 1,024 bytes. JSON:", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
