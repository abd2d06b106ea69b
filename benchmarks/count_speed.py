"""Speed and agreement of the analytic cost model `archs.estimate` against fvcore and ptflops.

On N seeded random valid specs (every catalog block; mostly small nets at 8-64 px like the search produces,
about one in ten larger nets at 96-160 px) it measures:
- agreement of `estimate(spec)` with fvcore's `count(build(spec))` on MACs and parameters (must be 100 %),
- median time per candidate of `estimate` (mean of --estimate-repeats calls per candidate), of `build`,
  of fvcore's FlopCountAnalysis on the built model, and of ptflops (`aten` and `pytorch` backends, on the
  first --ptflops-n specs, default all), and the ratio fvcore (build + analysis) / estimate,
- for the ptflops subset, whether ptflops' aten count equals fvcore's conv+linear MACs plus bias additions,
- the stages drawn and the agreement per registered block kind (specgen draws every kind in the registry),
- with --baseline DIR (a checkout of an earlier commit, e.g. a `git worktree`), `estimate`'s time per candidate
  of that checkout's `archs` and of this one side by side, interleaved in one process, on the specs the
  baseline can express.
MACs = multiply-adds as fvcore counts them (MFLOPs in this package). Prints a table, writes JSON.

    python benchmarks/count_speed.py --n 1000 --seed 0
    git worktree add /tmp/base 1ce9b96 && python benchmarks/count_speed.py --baseline /tmp/base
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import io
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks._common import add_common_args, write_results  # noqa: E402
from archs import build, conv_linear_macs, count, count_ptflops, estimate  # noqa: E402
from archs.registry import names  # noqa: E402
from specgen import random_specs  # noqa: E402


def _load_baseline(root: str):
    """The `archs` package of another checkout, imported as `archs_baseline` (its imports are relative)."""
    spec = importlib.util.spec_from_file_location("archs_baseline", f"{root}/archs/__init__.py",
                                                  submodule_search_locations=[f"{root}/archs"])
    if spec is None:
        raise SystemExit(f"--baseline: no archs package in {root}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["archs_baseline"] = mod
    spec.loader.exec_module(mod)
    return mod


def side_by_side(specs, baseline_root: str, rounds: int, repeats: int) -> dict:
    """Median time per candidate of the baseline's `estimate` and this one's, alternating which goes first."""
    base = _load_baseline(baseline_root)
    pairs = []
    for s in specs:
        try:
            pairs.append((base.NetSpec.from_dict(s.to_dict()), s))
        except base.SpecError:  # a kind the baseline does not have
            pass
    if not pairs:
        raise SystemExit("--baseline: that checkout cannot express any of the specs")
    agree = sum((base.estimate(b).macs, base.estimate(b).params) == (estimate(s).macs, estimate(s).params)
                for b, s in pairs)
    times: dict[str, list[float]] = {"baseline": [], "this": []}
    for r in range(rounds):
        order = [("baseline", base.estimate, 0), ("this", estimate, 1)]
        for label, est, k in (order if r % 2 == 0 else order[::-1]):
            per = []
            for pair in pairs:
                x = pair[k]
                t = time.perf_counter()
                for _ in range(repeats):
                    est(x)
                per.append((time.perf_counter() - t) / repeats)
            times[label].append(statistics.median(per))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"baseline": baseline_root, "specs": len(pairs), "same_costs": agree, "rounds": rounds,
            "median_per_round_seconds": times, "median_seconds": med, "ratio_this_over_baseline":
            med["this"] / med["baseline"]}


def bias_adds(model: torch.nn.Module, layers) -> int:
    """Bias additions of conv/linear layers (= output elements of each biased layer), from fvcore's table."""
    macs = dict(zip(layers["module"], layers["macs"]))
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
            per_output = m.weight[0].numel()  # multiplications per output element
            total += int(macs[name]) // per_output
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="number of random specs (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ptflops-n", type=int, default=None,
                    help="measure ptflops on the first N specs only (default: all of them)")
    ap.add_argument("--estimate-repeats", type=int, default=20, help="estimate calls averaged per candidate")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for build, fvcore and ptflops (default 1: stable timings; "
                         "estimate is pure Python)")
    ap.add_argument("--baseline", default=None,
                    help="a checkout of an earlier commit: time its estimate against this one, interleaved")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds with --baseline (default 8)")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "count_speed.json"))
    add_common_args(ap, seeds=False)
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.estimate_repeats = 20, 2
    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")

    t0 = time.perf_counter()
    specs = random_specs(a.n, a.seed)
    gen_s = time.perf_counter() - t0
    n_pt = a.n if a.ptflops_n is None else min(a.ptflops_n, a.n)

    # warm-up: imports and first-call costs of fvcore and ptflops
    for s in specs[:3]:
        m = build(s)
        count(m)
        with contextlib.redirect_stdout(io.StringIO()):
            count_ptflops(m, s.input_shape, "aten")
            count_ptflops(m, s.input_shape, "pytorch")

    t_est, t_build, t_fca, t_pt_aten, t_pt_torch = [], [], [], [], []
    large = []
    agree_macs = agree_params = 0
    aten_ok = 0
    mismatches = []
    macs_all = []
    per_kind: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])  # stages, specs, specs agreeing
    wall0 = time.perf_counter()
    for i, s in enumerate(specs):
        t = time.perf_counter()
        for _ in range(a.estimate_repeats):
            e = estimate(s)
        t_est.append((time.perf_counter() - t) / a.estimate_repeats)
        t = time.perf_counter()
        model = build(s)
        t_build.append(time.perf_counter() - t)
        t = time.perf_counter()
        c = count(model)
        t_fca.append(time.perf_counter() - t)
        agree_macs += e.macs == c.macs
        agree_params += e.params == c.params
        if (e.macs, e.params) != (c.macs, c.params):
            mismatches.append({"spec": s.to_string(), "estimate": [e.macs, e.params], "fvcore": [c.macs, c.params]})
        for kind, n in collections.Counter(st.block for st in s.stages).items():
            per_kind[kind][0] += n
            per_kind[kind][1] += 1
            per_kind[kind][2] += (e.macs, e.params) == (c.macs, c.params)
        large.append(s.name.endswith("large"))
        macs_all.append(c.macs)
        if i < n_pt:
            with contextlib.redirect_stdout(io.StringIO()):
                t = time.perf_counter()
                aten = count_ptflops(model, s.input_shape, "aten")
                t_pt_aten.append(time.perf_counter() - t)
                t = time.perf_counter()
                count_ptflops(model, s.input_shape, "pytorch")
                t_pt_torch.append(time.perf_counter() - t)
            aten_ok += aten == conv_linear_macs(c) + bias_adds(model, c.layers)
        if (i + 1) % 100 == 0:
            print(f"  {i + 1}/{a.n} specs, {time.perf_counter() - wall0:.0f} s", file=sys.stderr)
    wall = time.perf_counter() - wall0

    med = statistics.median
    fv_total = [b + f for b, f in zip(t_build, t_fca)]
    ratios = [f / e for f, e in zip(fv_total, t_est)]
    r_est, r_fv = med(t_est), med(fv_total)

    def group(values, want_large):
        sel = [v for v, lg in zip(values, large) if lg == want_large]
        return med(sel) if sel else float("nan")

    rows = [
        ["estimate(spec)", f"{r_est * 1e6:.1f} µs", "1", a.n],
        ["build(spec)", f"{med(t_build) * 1e3:.2f} ms", f"{med(t_build) / r_est:,.0f}", a.n],
        ["fvcore FlopCountAnalysis (built model)", f"{med(t_fca) * 1e3:.2f} ms", f"{med(t_fca) / r_est:,.0f}", a.n],
        ["fvcore count = build + analysis", f"{r_fv * 1e3:.2f} ms", f"{r_fv / r_est:,.0f}", a.n],
        ["ptflops aten (built model)", f"{med(t_pt_aten) * 1e3:.2f} ms", f"{med(t_pt_aten) / r_est:,.0f}", n_pt],
        ["ptflops pytorch (built model)", f"{med(t_pt_torch) * 1e3:.2f} ms", f"{med(t_pt_torch) / r_est:,.0f}", n_pt],
    ]
    print(f"\nCost counting on {a.n} random valid specs (seed {a.seed}; {sum(large)} larger nets at 96-160 px), "
          f"torch threads {torch.get_num_threads()}; median time per candidate:")
    print(tabulate(rows, headers=["method", "median / candidate", "× estimate", "specs"], disable_numparse=True))
    print(f"\nagreement estimate == fvcore: MACs {agree_macs}/{a.n} ({100 * agree_macs / a.n:.1f} %), "
          f"params {agree_params}/{a.n} ({100 * agree_params / a.n:.1f} %)")
    print(f"speed: fvcore (build + analysis) / estimate = {r_fv / r_est:,.0f}× (ratio of medians); "
          f"median per-candidate ratio {med(ratios):,.0f}×, minimum {min(ratios):,.0f}×")
    print(f"  small nets: estimate {group(t_est, False) * 1e6:.1f} µs, fvcore {group(fv_total, False) * 1e3:.1f} ms; "
          f"larger nets: estimate {group(t_est, True) * 1e6:.1f} µs, fvcore {group(fv_total, True) * 1e3:.1f} ms")
    if n_pt < a.n:
        print(f"ptflops measured on the first {n_pt} of {a.n} specs only (--ptflops-n {n_pt}).")
    print(f"ptflops aten == fvcore conv+linear MACs + bias adds: {aten_ok}/{n_pt}")
    kinds_rows = [[k, per_kind[k][0], per_kind[k][1], f"{per_kind[k][2]}/{per_kind[k][1]}"] for k in names()]
    print("\nper registered block kind:")
    print(tabulate(kinds_rows, headers=["kind", "stages", "specs with it", "specs exact"], disable_numparse=True))
    missing = [k for k in names() if not per_kind[k][0]]
    if missing:
        print(f"kinds never drawn: {', '.join(missing)} (raise --n)")
    sbs = side_by_side(specs, a.baseline, a.rounds, a.estimate_repeats) if a.baseline else None
    if sbs:
        m = sbs["median_seconds"]
        print(f"\nestimate side by side with {a.baseline} on the {sbs['specs']} specs it can express "
              f"({sbs['same_costs']} with the same costs), {a.rounds} interleaved rounds: baseline "
              f"{m['baseline'] * 1e6:.2f} µs, this {m['this'] * 1e6:.2f} µs per candidate (median of round "
              f"medians), ratio {sbs['ratio_this_over_baseline']:.3f}")
    print(f"MACs of the specs: median {med(macs_all) / 1e6:.3f} M, max {max(macs_all) / 1e6:.1f} M; "
          f"generation {gen_s:.1f} s, measurement {wall:.0f} s")

    result = {
        "n": a.n, "seed": a.seed, "ptflops_n": n_pt, "estimate_repeats": a.estimate_repeats,
        "torch_threads": torch.get_num_threads(), "n_large": sum(large),
        "agreement": {"macs": agree_macs / a.n, "params": agree_params / a.n, "mismatches": mismatches[:20]},
        "median_seconds_per_candidate": {
            "estimate": r_est, "build": med(t_build), "fvcore_analysis": med(t_fca), "fvcore_count": r_fv,
            "ptflops_aten": med(t_pt_aten), "ptflops_pytorch": med(t_pt_torch),
            "estimate_small": group(t_est, False), "estimate_large": group(t_est, True),
            "fvcore_count_small": group(fv_total, False), "fvcore_count_large": group(fv_total, True),
        },
        "speedup_fvcore_over_estimate": {"ratio_of_medians": r_fv / r_est, "median_ratio": med(ratios),
                                         "min_ratio": min(ratios)},
        "ptflops_aten_equals_conv_linear_plus_bias": aten_ok / n_pt if n_pt else None,
        "macs": {"median": med(macs_all), "max": max(macs_all)},
        "per_kind": {k: {"stages": v[0], "specs": v[1], "specs_exact": v[2]} for k, v in per_kind.items()},
        "side_by_side": sbs,
        "wall_seconds": wall, "python": platform.python_version(), "torch": torch.__version__,
        "machine": platform.machine(), "processor": platform.processor(),
    }
    out = write_results(a.out, result, a, [a.seed])
    print(f"wrote {out}")
    return 0 if agree_macs == agree_params == a.n else 1


if __name__ == "__main__":
    sys.exit(main())
