"""Agreement and speed of the analytic int8 memory model `archs.memory` against TensorFlow Lite Micro.

On N seeded random valid specs (benchmarks/specgen.py over every block kind archs.memory models: strides,
kernels, alpha, rho, heads, activations) each network (random weights: memory does not depend on their values) is exported by
`compress.tflite.export_int8` and allocated by the TFLM runtime (tflite-micro's recording allocator, smallest
arena found by doubling). It reports:
- the activation arena (TFLM's head) exact-match rate of `memory(spec).activation_bytes`,
- max relative error of the tensor arena and of the flash bytes (the .tflite file), and the number of
  under-estimates of each (must be 0: a budget that says "fits" must fit). TFLM's tensor arena is the larger of
  its recording allocator's total (head + tail) and the smallest arena it accepts (bisection, recorded as
  "need"; larger than the total when planning needs temporary room; caches without it use the total),
- median time per candidate of `memory` and `estimate` (mean of --repeats calls) and of export + TFLM.
Specs the exporter refuses (not full-integer) are counted and listed, not compared.
Bytes in the JSON; kB (1 kB = 1,024 bytes) in the printed table.

    python benchmarks/memory_model.py --n 200 --seed 0 [--cache results/benchmarks/memory_model_tflm.jsonl]

The TFLM measurements are cached one JSON line per spec (--cache) so a rerun only times the model again.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
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
from benchmarks._common import add_common_args, write_results  # noqa: E402
from specgen import random_specs  # noqa: E402


def trained_like(model):
    """Random batch-norm statistics and affine parameters, as training leaves them: a fresh BN folds into an
    all-zero bias, and the converter stores identical zero biases once, which no trained model has."""
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def measure_tflm(spec, work: Path) -> dict:
    """Export `spec` (random weights) to int8 TFLite and allocate it in TFLM: the cache record of one spec."""
    import torch

    from compress import tflite as T

    torch.manual_seed(0)
    model = trained_like(build(spec)).eval()
    path = work / "m.tflite"
    t0 = time.perf_counter()
    try:
        T.export_int8(model, torch.randn(8, *spec.input_shape[1:]), path)
    except Exception as e:  # noqa: BLE001 - recorded and counted, the benchmark goes on
        return {"spec": spec.to_string(), "error": f"{type(e).__name__}: {str(e)[:300]}"}
    t1 = time.perf_counter()
    try:
        rep = T.min_arena(path, 1 << 20)
        # the smallest arena TFLM accepts: above the recording allocator's total when planning needs more room
        rep["need"] = T.smallest_arena(path, rep["total"])
    except Exception as e:  # noqa: BLE001
        rep = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    t2 = time.perf_counter()
    g = T.read_graph(path)
    return {"spec": spec.to_string(), "file_bytes": g.file_bytes, "alloc": rep, "export_s": t1 - t0,
            "tflm_s": t2 - t1, "ops": g.ops, "tensors": g.tensors, "inputs": g.inputs, "outputs": g.outputs}


#: fixed per-item costs of the tail (TFLM struct sizes) and the features whose costs are fitted
_FIXED = {"tensors": 24, "ops": 64, "channel_arrays": 2, "QUANTIZE": 48}
_FREE = ("one", "reduce", "op_types")


def graph_matches(r: dict) -> bool:
    """True when archs.memory's converted graph has the ops of the measured file (same names, same order)."""
    from archs.memory import _build
    from archs.spec import NetSpec

    return [o[0] for o in _build(NetSpec.from_string(r["spec"])).ops] == [o[0] for o in r["ops"]]


def _lstsq(x, y, total, fixed_part):
    """Costs minimising the relative error (a small network's figure counts as much as a large one's), rounded
    to 0.01, and the scale that puts every fitted figure at or above its measured one."""
    import numpy as np

    used = x.any(0)
    w = 1.0 / total
    coef = np.zeros(x.shape[1])
    coef[used] = np.linalg.lstsq(x[:, used] * w[:, None], y * w, rcond=None)[0]
    coef = np.round(coef, 2)
    pred = fixed_part + x @ coef
    return coef, 1.0 + max(0.0, float(((total - pred) / pred).max())) + 1e-4


def fit(records: list[dict], folds: int = 5) -> dict:
    """Least-squares costs of the overhead (tail) model on measured records, the scale that makes every fitted
    figure at least the measured one, and the largest under-estimate in bytes under `folds`-fold cross-validation
    (a network left out of the fit, after its folds' own scale): what archs/memory.py's TAIL_COST / TAIL_SCALE
    hold. Records whose measured graph differs from the model's are left out (counted). (Flash is not fitted: it
    is the file's layout, archs.flash.)"""
    import numpy as np

    from archs.memory import OPS, _build, features
    from archs.spec import NetSpec

    kept = [r for r in records if graph_matches(r)]
    rows = [(r, features(_build(NetSpec.from_string(r["spec"])))) for r in kept]
    names = list(OPS) + list(_FREE)
    x = np.array([[f[k] for k in names] for _, f in rows])
    total = np.array([r["alloc"]["tail"] for r, _ in rows], float)
    y = np.array([r["alloc"]["tail"] - sum(c * f[k] for k, c in _FIXED.items()) for r, f in rows], float)
    fixed_part = total - y
    coef, scale = _lstsq(x, y, total, fixed_part)
    rel = (fixed_part + x @ coef) * scale / total - 1
    cv = np.zeros(len(rows))  # bytes over the measured figure of each network when it was left out of the fit
    fold = np.arange(len(rows)) % folds
    for k in range(folds):
        tr, te = fold != k, fold == k
        c, sc = _lstsq(x[tr], y[tr], total[tr], fixed_part[tr])
        cv[te] = (fixed_part[te] + x[te] @ c) * sc - total[te]
    cost = {**_FIXED, **{k: float(c) for k, c in zip(names, coef) if c}}
    out = {"tail": {"cost": cost, "scale": round(scale, 5), "n": len(rows), "left_out": len(records) - len(kept),
                    "max_rel_over": float(rel.max()), "min_rel_over": float(rel.min()),
                    "cv_max_rel_over": float((cv / total).max()), "cv_min_rel_over": float((cv / total).min()),
                    "cv_max_under_bytes": float(max(0.0, -cv.min()))}}
    return out


def _time(fn, spec, repeats: int) -> float:
    """Seconds per call: the best of 5 rounds of repeats / 5 calls (the least disturbed by other processes)."""
    n = max(1, repeats // 5)
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn(spec)
        best = min(best, (time.perf_counter() - t) / n)
    return best


def _lines(path: Path) -> list[str]:
    """The lines of a cache, plain or gzip-compressed (.gz: the committed docs/benchmarks/ copy)."""
    return (gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()).splitlines()


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
    ap.add_argument("--fit", nargs="+", metavar="CACHE", default=None,
                    help="instead: fit the overhead (tail) costs of archs.memory on these caches (other specs "
                         "than the benchmark's) and print them")
    ap.add_argument("--cached-only", action="store_true",
                    help="compare only the specs already measured in --cache (say how many), export none")
    ap.add_argument("--measure-only", action="store_true",
                    help="only export and measure in TFLM into --cache (every registered kind, the memory model "
                         "not needed), compare nothing")
    ap.add_argument("--kinds", default=None, help="comma-separated block kinds to draw stages from (default: all)")
    ap.add_argument("--every", type=int, default=1, help="benchmark every N-th spec only (held-out subsets)")
    ap.add_argument("--offset", type=int, default=0, help="... starting at this index")
    add_common_args(ap, seeds=False)
    args = ap.parse_args(argv)
    if args.fit:
        def read(files):
            recs = [json.loads(line) for f in files for line in _lines(Path(f)) if line.strip()]
            recs = [r for r in recs if "error" not in r and "total" in r.get("alloc", {})]
            return list({r["spec"]: r for r in recs}.values())

        print(json.dumps(fit(read(args.fit)), indent=1))
        return 0
    if args.quick:  # three specs of a development seed, measured afresh (not from or into the cache): the code
        # paths run; never the held-out benchmark seed 0
        args.n, args.repeats, args.cache = 3, 5, str(Path(tempfile.mkdtemp()) / "tflm.jsonl")
        args.seed = args.seed if args.seed != 0 else 1
    from tabulate import tabulate
    from tqdm.auto import tqdm

    kinds = tuple(args.kinds.split(",")) if args.kinds else None
    specs = random_specs(args.n, args.seed, kinds)[args.offset::args.every]
    cache_path = Path(args.cache)
    cache: dict[str, dict] = {}
    if cache_path.is_file():
        for line in _lines(cache_path):
            if line.strip():
                r = json.loads(line)
                cache[r["spec"]] = r
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    rows, refused = [], []
    with tempfile.TemporaryDirectory() as td:
        for spec in tqdm(specs, desc="export + TFLM", unit="spec", disable=args.quiet):
            key = spec.to_string()
            if key not in cache and args.cached_only:
                continue
            if key not in cache:
                cache[key] = measure_tflm(spec, Path(td))
                with (gzip.open(cache_path, "at") if cache_path.suffix == ".gz" else cache_path.open("a")) as f:
                    f.write(json.dumps(cache[key]) + "\n")
            r = cache[key]
            if args.measure_only:
                continue
            if "error" in r or "error" in r.get("alloc", {}):
                refused.append({"spec": key, "error": r.get("error") or r["alloc"]["error"]})
                continue
            m = memory(spec)
            a = r["alloc"]
            rows.append({"spec": key, "blocks": sorted(set(spec.block_types())), "head": a["head"],
                         "head_est": m.activation_bytes, "arena": max(a["total"], a.get("need", 0)),
                         "arena_total": a["total"], "arena_need": a.get("need"), "arena_est": m.arena_bytes,
                         "tail": a["tail"], "tail_est": m.overhead_bytes, "flash": r["file_bytes"],
                         "flash_est": m.flash_bytes, "live_bound": m.live_bound,
                         "t_memory": _time(memory, spec, args.repeats), "t_estimate": _time(estimate, spec, args.repeats),
                         "t_export_tflm": r["export_s"] + r["tflm_s"]})
    if args.measure_only:
        print(f"{len(specs)} specs measured in {cache_path}")
        return 0
    if not rows:
        print("no spec could be compared", file=sys.stderr)
        return 1
    n = len(rows)
    rel = lambda est, ref: (est - ref) / ref  # noqa: E731
    summary = {
        "specs": len(specs), "compared": n, "refused_by_exporter": len(refused),
        "activation_exact": sum(r["head"] == r["head_est"] for r in rows) / n,
        "activation_above_live_bound": sum(r["head"] > r["live_bound"] for r in rows),
        "arena_max_rel_err": max(abs(rel(r["arena_est"], r["arena"])) for r in rows),
        "arena_under": sum(r["arena_est"] < r["arena"] for r in rows),
        "arena_need_measured": sum(r["arena_need"] is not None for r in rows),
        "arena_need_above_total": sum((r["arena_need"] or 0) > r["arena_total"] for r in rows),
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
    out = write_results(args.out, {"summary": summary, "rows": rows, "refused": refused}, args, [args.seed])
    s = summary
    table = [
        ["specs compared (of generated)", f"{n} of {len(specs)} ({len(refused)} refused by the exporter)"],
        ["activation arena = TFLM head", f"{100 * s['activation_exact']:.1f} % of specs"],
        ["specs where TFLM's planner needs more than the live bound", s["activation_above_live_bound"]],
        ["tensor arena: max |relative error|", f"{100 * s['arena_max_rel_err']:.2f} %"],
        ["tensor arena: under-estimates", s["arena_under"]],
        ["specs whose smallest accepted arena is above TFLM's total (of measured)",
         f"{s['arena_need_above_total']} (of {s['arena_need_measured']})"],
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
