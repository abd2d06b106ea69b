"""`python -m analysis.report results/<study> [results/<other> ...]` — report.md, plots/*.png and interactive HTML.

The report's tables are the DataFrames of `analysis` (load, pareto, best_under, by_block, importance,
load_stages) rendered as Markdown; accuracy is printed in percent, MFLOPs are million multiply-adds.
"""
from __future__ import annotations

import argparse
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from archs.cli import Parser
from archs.errors import UserError, mask_secrets, run_cli
from archs.io import atomic_write_text

from .data import StudySource, find_stages, load, load_stages, open_sources, quiet_optuna
from .plots import (plot_accuracy_vs_mflops, plot_best_so_far, plot_budget_use, plot_by_block, plot_importance,
                    plot_stages, plot_tradeoff)
from .tables import best_under, by_block, candidates, importance, pareto, study_summary

__all__ = ["write_report", "format_table", "main"]

_PCT = ("val_acc", "test_acc", "best_val_acc", "winner_test_acc", "budget_share", "importance")
_HEADERS = {"val_acc": "val acc %", "test_acc": "test acc %", "best_val_acc": "best val acc %",
            "winner_test_acc": "winner test acc %", "budget_share": "budget used %", "mflops": "MFLOPs",
            "winner_mflops": "winner MFLOPs", "params": "params", "winner_params": "winner params",
            "latency_ms": "latency ms", "number": "trial", "winner_rank": "rank", "median_trial_s": "median trial s",
            "importance": "importance %", "median_val_acc": "median val acc %", "median_mflops": "median MFLOPs",
            "median_val_acc_per_mflop": "median val acc per MFLOP", "best_trial": "best trial",
            "size_bytes": "size bytes", "compression_ratio": "ratio", "latency_b1_ms": "latency b1 ms",
            "latency_b64_ms": "latency b64 ms", "nonzero_params": "nonzero params", "seconds": "seconds",
            "duration_s": "seconds", "mflops_limit": "MFLOPs limit", "winner_dir": "folder"}


def _fmt(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (bool,)):
        return str(v)
    if col in _PCT or col.endswith("_acc") or (col.startswith("median_") and col.endswith("_acc")):
        return f"{100 * float(v):.2f}"
    if isinstance(v, (int, float)):
        if col in ("params", "winner_params", "nonzero_params", "size_bytes", "trials", "complete", "pruned",
                   "infeasible", "failed", "completed", "number", "best_trial", "winner_rank", "resolution", "depth",
                   "n_stages", "rank", "trial", "best_trial", "step", "runs"):
            return f"{int(v):,}"
        if "mflops" in col and "per" not in col:
            return f"{float(v):.4g}"
        if col == "compression_ratio":
            return f"{float(v):.2f}x"
        if "latency" in col:
            return f"{float(v):.3f}"
        return f"{float(v):.3g}" if isinstance(v, float) else str(v)
    return str(v)


def format_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A display copy of a table: accuracy and shares in percent, counts with separators, readable headers."""
    cols = [c for c in (columns or df.columns) if c in df.columns]
    out = pd.DataFrame({_HEADERS.get(c, c.replace("_", " ")): [_fmt(c, v) for v in df[c]] for c in cols})
    return out


def _md(df: pd.DataFrame, columns: Sequence[str] | None = None, empty: str = "_none_") -> str:
    if df.empty:
        return empty
    cols = [c for c in (columns or df.columns) if c in df.columns]
    return format_table(df, cols).to_markdown(index=False, disable_numparse=True, colalign=_align(df, cols))


def _align(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    """Numbers right-aligned, text left-aligned."""
    return ["right" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) else "left"
            for c in cols]


def _budget_text(src: StudySource) -> str:
    b = src.budgets()
    parts = []
    if "mflops" in b:
        parts.append(f"{b['mflops']:g} MFLOPs")
    if "params" in b:
        parts.append(f"{b['params']:,.0f} params")
    if "latency_ms" in b:
        parts.append(f"{b['latency_ms']:g} ms")
    if "sram_kb" in b:
        parts.append(f"{b['sram_kb']:g} kB arena")
    if "flash_kb" in b:
        parts.append(f"{b['flash_kb']:g} kB flash")
    return ", ".join(parts) or "-"


def _common_budget(sources: list[StudySource], key: str) -> float | None:
    vals = {s.budgets().get(key) for s in sources}
    return vals.pop() if len(vals) == 1 else None


def _rel(path: Any, start: Path) -> Any:
    """A path relative to the report folder when it lies inside it (links stay valid when the folder moves)."""
    if not isinstance(path, str) or not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(start.resolve()))
    except ValueError:
        return path


def _save(fig, path: Path, written: list[Path]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=fig.dpi, facecolor="white")
    tmp.replace(path)
    written.append(path)
    return f"plots/{path.name}"


def _limits_table(df: pd.DataFrame, sources: list[StudySource]) -> pd.DataFrame:
    """Best trial per study under 25%, 50% and 100% of the MFLOPs budget (or of the largest MFLOPs seen)."""
    budget = _common_budget(sources, "mflops")
    mf = pd.to_numeric(df["mflops"], errors="coerce")
    top = budget if budget is not None else (float(mf.max()) if mf.notna().any() else None)
    if top is None:
        return pd.DataFrame()
    rows = []
    for frac in (0.25, 0.5, 1.0):
        limit = top * frac
        best = best_under(df, mflops=limit, per_study=True)
        for _, r in best.iterrows():
            rows.append({"mflops_limit": limit, **{c: r[c] for c in ("study", "number", "blocks", "mflops",
                                                                               "params", "val_acc", "runs",
                                                                               "test_acc")}})
    return pd.DataFrame(rows)


def _html(sources: list[StudySource], out: Path, plotlyjs: str, written: list[Path]) -> list[str]:
    """Optuna's interactive plots (optimization history, importances, Pareto front) as HTML, when plotly is there."""
    try:
        import plotly  # noqa: F401
        import optuna.visualization as vis
    except ImportError:
        return []
    studies = [(s, s.study()) for s in sources]
    studies = [(s, st) for s, st in studies if st is not None and any(
        t.state.name == "COMPLETE" for t in st.get_trials(deepcopy=False))]
    if not studies:
        return []
    d = out / "html"
    d.mkdir(parents=True, exist_ok=True)
    links = []

    def write(fig, name: str, label: str) -> None:
        fig.update_layout(font=dict(size=14))
        p = d / name
        fig.write_html(str(p), include_plotlyjs=plotlyjs, full_html=True)
        written.append(p)
        links.append(f"[{label}](html/{name})")

    acc = lambda t: t.values[0]  # noqa: E731 - the first objective is validation accuracy in every study
    with warnings.catch_warnings(), quiet_optuna():
        warnings.simplefilter("ignore")
        fig = vis.plot_optimization_history([st for _, st in studies], target=acc, target_name="validation accuracy")
        write(fig, "optimization_history.html", "optimization history")
        for s, st in studies:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s.name)
            n_done = sum(1 for t in st.get_trials(deepcopy=False) if t.state.name == "COMPLETE")
            if n_done >= 2:
                try:
                    fig = vis.plot_param_importances(
                        st, target=acc, target_name="validation accuracy",
                        evaluator=__import__("optuna").importance.FanovaImportanceEvaluator(seed=0))
                    write(fig, f"param_importances_{safe}.html", f"parameter importances ({s.name})")
                except (ValueError, RuntimeError, ZeroDivisionError):
                    pass
            if len(st.directions) > 1:
                cost = s.objectives[1] if len(s.objectives) > 1 else "cost"
                cost_name = {"mflops": "MFLOPs", "params": "parameters", "latency": "latency ms"}.get(cost, cost)
                fig = vis.plot_pareto_front(st, target_names=["validation accuracy", cost_name])
                write(fig, f"pareto_front_{safe}.html", f"Pareto front ({s.name})")
    return links


@dataclass
class _Report:
    """What every section of the report reads (studies, trials, output folder) and adds to (tables, files)."""

    sources: list[StudySource]
    df: pd.DataFrame
    out: Path
    top: int
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    @property
    def plots(self) -> Path:
        return self.out / "plots"

    def plot(self, fig, name: str) -> str:
        """Save a figure as plots/NAME and return the link the Markdown uses."""
        return _save(fig, self.plots / name, self.written)


def _intro(r: _Report) -> list[str]:
    names = ", ".join(s.name for s in r.sources)
    return [f"# Search report: {names}", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `python -m analysis.report` from "
            + ", ".join(f"`{mask_secrets(str(s.dir or s.storage))}`" for s in r.sources) + ".", "",
            "MFLOPs are million multiply-adds (MACs, fvcore's count); params count every trainable parameter; "
            "latency is the median CPU time at batch 1 in ms; accuracy is in percent. Validation accuracy is "
            "what the search optimizes; test accuracy is measured once, for the retrained winners only.", ""]


def _studies_section(r: _Report) -> list[str]:
    summ = study_summary(r.df) if len(r.df) else pd.DataFrame()
    if len(summ):
        by_name = {s.name: _budget_text(s) for s in r.sources}
        summ.insert(3, "budgets", summ["study"].map(by_name))
    r.tables["studies"] = summ
    return ["## Studies", "", _md(summ, ["study", "sampler", "objectives", "budgets", "trials", "complete", "pruned",
                                         "infeasible", "failed", "best_val_acc", "best_trial", "winner_test_acc",
                                         "median_trial_s"], "_no trials yet_"), "",
            "_pruned_: stopped early while training; _infeasible_: no width multiplier fitted the budget, never "
            "trained (does not count towards --trials).", ""]


def _winners_section(r: _Report) -> list[str]:
    df = r.df
    order = {s.name: i for i, s in enumerate(r.sources)}
    cand = candidates(df)  # one row per candidate, val_acc = its mean over its runs (what the CLI prints)
    win = cand[cand["winner_rank"].notna()].copy()
    win = win.assign(_o=win["study"].map(order)).sort_values(["_o", "winner_rank"], kind="stable").drop(columns="_o")
    win["winner_dir"] = win["winner_dir"].map(lambda p: _rel(p, r.out))
    r.tables["winners"] = win
    return ["## Winners", "", "Retrained on train+validation for the final epochs and tested once "
            "(`best/`, `top/<rank>/` or `pareto/<n>/` in the study folder).", "",
            _md(win, ["study", "winner_rank", "number", "blocks", "mflops", "params", "latency_ms", "val_acc",
                      "runs", "test_acc", "winner_dir"], "_no winners yet (the search is still running or ran as a worker)_"),
            ""]


def _tradeoff_section(r: _Report) -> list[str]:
    df, sources = r.df, r.sources
    img = r.plot(plot_accuracy_vs_mflops(df, budget=_common_budget(sources, "mflops")), "accuracy_vs_mflops.png")
    front = pareto(df, "val_acc", ["mflops"], per_study=True)
    r.tables["pareto"] = front
    md = ["## Accuracy vs MFLOPs", "", f"![accuracy vs MFLOPs]({img})", "",
          "Pareto front (no other trial of the study is at least as accurate with no more MFLOPs):", "",
          _md(front, ["study", "number", "blocks", "mflops", "params", "latency_ms", "val_acc", "runs",
                      "test_acc"]), ""]
    img = r.plot(plot_tradeoff(df, x="params", budget=_common_budget(sources, "params"),
                               title="Validation accuracy vs parameters (Pareto front per study)"),
                 "accuracy_vs_params.png")
    md += ["## Accuracy vs parameters", "", f"![accuracy vs parameters]({img})", ""]
    if "sram_kb" in df.columns and pd.to_numeric(df["sram_kb"], errors="coerce").notna().any():
        img = r.plot(plot_tradeoff(df, x="sram_kb", budget=_common_budget(sources, "sram_kb"),
                                   title="Validation accuracy vs peak SRAM (int8 TFLM tensor arena)"),
                     "accuracy_vs_sram.png")
        md += ["## Accuracy vs peak SRAM", "", f"![accuracy vs peak SRAM]({img})", "",
               "Peak SRAM is the whole TensorFlow Lite Micro tensor arena of the int8 model (activations plus "
               "runtime overhead, `archs.memory`; kB = 1,024 bytes); the dashed line is --budget-sram-kb.", ""]
    lim = _limits_table(df, sources)
    r.tables["best_under"] = lim
    if len(lim):
        md += ["## Best network under an MFLOPs limit", "",
               "Best validation accuracy with at most 25%, 50% and 100% of the MFLOPs budget (limits no trial "
               "meets are left out).", "", _md(lim), ""]
    return md


def _progress_section(r: _Report) -> list[str]:
    df, top = r.df, r.top
    img = r.plot(plot_best_so_far(df), "best_so_far.png")
    cand = candidates(df)  # ranked as the search ranks its winners
    done = cand[cand["val_acc"].notna()]
    topt = done.groupby("study", sort=False).head(top) if len(r.sources) > 1 else done.head(top)
    r.tables["top"] = topt
    return ["## Search progress", "", f"![best so far]({img})", "",
            f"### Top {top} candidates{' per study' if len(r.sources) > 1 else ''}", "",
            "Validation accuracy is each candidate's mean over its runs (the trial and the confirmation trials that "
            "re-trained it with new seeds), the figure the search ranks by.", "",
            _md(topt, ["study", "number", "blocks", "depth", "resolution", "alpha", "mflops", "params", "latency_ms",
                       "budget_share", "val_acc", "runs", "test_acc", "duration_s"]), ""]


def _blocks_section(r: _Report) -> list[str]:
    bb = by_block(r.df)
    r.tables["by_block"] = bb
    img = r.plot(plot_by_block(r.df), "by_block.png")
    return ["## Block types", "", f"![accuracy by block type]({img})", "",
            "A trial mixing block types counts once for each type it uses.", "", _md(bb), ""]


def _importance_section(r: _Report) -> list[str]:
    try:
        imp = importance(r.sources)
    except UserError:
        imp = importance(r.df)
    r.tables["importance"] = imp
    img = r.plot(plot_importance(imp), "importance.png")
    return ["## Parameter importance", "", f"![parameter importance]({img})", "",
            "fANOVA (Optuna's default evaluator) on the completed trials, target: validation accuracy. Only "
            "parameters every completed trial has are rated, so per-stage parameters of optional stages are left out.",
            "", _md(imp.groupby("study", sort=False).head(r.top) if len(imp) else imp, empty="_not enough trials_"),
            ""]


def _budget_section(r: _Report) -> list[str]:
    df = r.df
    img = r.plot(plot_budget_use(df), "budget_use.png")
    use = df[df["budget_share"].notna()].groupby("study", sort=False)["budget_share"]
    stats = "; ".join(f"{name}: median {100 * g.median():.0f}%, {100 * (g >= 0.9).mean():.0f}% of networks at 90% "
                      f"or more" for name, g in use)
    return ["## Budget use", "", f"![budget use]({img})", "",
            f"Largest share of any budget each trained network uses (100% = at the hard limit). {stats}.", ""]


def _failures_section(r: _Report) -> list[str]:
    bad = r.df[r.df["fail_reason"].notna()]
    if not len(bad):
        return []
    reasons = (bad.assign(reason=bad["fail_reason"].astype(str).str.slice(0, 100))
               .groupby(["study", "state", "reason"], sort=False).size().reset_index(name="trials"))
    r.tables["failures"] = reasons
    return ["## Skipped and failed trials", "", _md(reasons), ""]


def _compression_section(r: _Report) -> list[str]:
    md: list[str] = []
    for s in r.sources:
        if s.dir is None or not find_stages(s.dir):
            continue
        st = load_stages(s.dir)
        key = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s.name)
        r.tables[f"stages:{s.name}"] = st
        img = r.plot(plot_stages(st, title=f"Compression stages ({s.name})"),
                     f"stages_{key}.png" if len(r.sources) > 1 else "stages.png")
        md += [f"## Compression stages ({s.name})", "", f"![compression stages]({img})", "",
               _md(st, [c for c in ("run", "stage", "test_acc", "mflops", "params", "nonzero_params", "size_bytes",
                                    "compression_ratio", "latency_b1_ms", "latency_b64_ms", "seconds")
                        if c in st.columns and not (c == "run" and st["run"].nunique() < 2)]), ""]
    return md


#: The report's sections in order, each a function of the shared `_Report` returning its Markdown lines.
_SECTIONS: tuple[Callable[[_Report], list[str]], ...] = (
    _winners_section, _tradeoff_section, _progress_section, _blocks_section, _importance_section, _budget_section,
    _failures_section, _compression_section)


def write_report(source: Any, out: str | Path | None = None, study_name: str | None = None, html: bool = True,
                 plotlyjs: str = "directory", top: int = 10) -> dict[str, Any]:
    """Write OUT/report.md, OUT/plots/*.png and (with plotly) OUT/html/*.html for one or several studies.

    `source`: what `analysis.load` accepts. `out` defaults to the first study's folder. Returns the paths written
    (report, plots, html) and the tables (DataFrames) the report shows.
    """
    sources = open_sources(source, study_name)
    if out is None:
        first = sources[0]
        out = first.dir if first.dir is not None else Path("results") / first.name
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    r = _Report(sources, load(sources), out, top)
    md = _intro(r) + _studies_section(r)
    if r.df.empty:
        atomic_write_text(out / "report.md", "\n".join(md) + "\n")
        return {"report": out / "report.md", "plots": [], "html": [], "tables": r.tables, "out": out}
    for section in _SECTIONS:
        md += section(r)
    links = _html(sources, out, plotlyjs, r.written) if html else []
    if links:
        md += ["## Interactive plots (Optuna, plotly)", "", *[f"- {x}" for x in links], ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    r.written.insert(0, out / "report.md")
    return {"report": out / "report.md", "plots": [p for p in r.written if p.suffix == ".png"],
            "html": [p for p in r.written if p.suffix == ".html"], "tables": r.tables, "out": out}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m analysis.report", description=(
        "Write report.md, plots/*.png and interactive Optuna plots (html/, when plotly is installed) for one or "
        "several searches. Several studies (e.g. TPE and random) share each plot. MFLOPs means million "
        "multiply-adds (MACs)."))
    p.add_argument("studies", nargs="+", metavar="STUDY",
                   help="results/<study> folder (study.db and/or trials.csv), a study.db, or an Optuna storage URL")
    p.add_argument("--study-name", default=None, help="study name inside a storage URL that holds several studies")
    p.add_argument("--out", default=None, help="output folder (default: the first study's folder)")
    p.add_argument("--top", type=int, default=10, help="rows in the top-trials and importance tables")
    p.add_argument("--no-html", action="store_true", help="skip the interactive plotly HTML plots")
    p.add_argument("--plotlyjs", choices=["directory", "cdn"], default="directory",
                   help="directory: one shared plotly.min.js next to the HTML files (works offline); "
                        "cdn: load plotly.js from the internet (tiny files)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        raise UserError(f"--top must be >= 1, got {args.top}")
    import matplotlib

    matplotlib.use("Agg")
    res = write_report(args.studies, args.out, args.study_name, html=not args.no_html, plotlyjs=args.plotlyjs,
                       top=args.top)
    if not args.quiet:
        from tabulate import tabulate

        summ = res["tables"]["studies"]
        if len(summ):
            cols = ["study", "sampler", "trials", "complete", "pruned", "infeasible", "failed", "best_val_acc",
                    "winner_test_acc", "winner_mflops", "winner_params"]
            t = format_table(summ, cols)
            print(tabulate(t, headers="keys", tablefmt="github", showindex=False, disable_numparse=True,
                           colalign=_align(summ, [c for c in cols if c in summ.columns])))
        else:
            print("no trials yet")
        print(f"\nreport: {res['report']}")
        print(f"plots:  {res['out'] / 'plots'}/ " + ", ".join(p.name for p in res["plots"]))
        if res["html"]:
            print(f"html:   {res['out'] / 'html'}/ " + ", ".join(p.name for p in res["html"]))
    return 0


if __name__ == "__main__":
    run_cli(main, prog="python -m analysis.report")
