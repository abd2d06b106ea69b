"""Matplotlib figures over the trials and stages DataFrames. Each function returns a ``matplotlib.figure.Figure``
(made without pyplot, so nothing is shown or kept open; Jupyter displays it, ``fig.savefig`` writes it).

Units on every axis: MFLOPs = million multiply-adds (fvcore MACs), accuracy in percent, sizes in KB
(1 KB = 1024 bytes), latency in milliseconds.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from .tables import best_so_far, candidates, pareto

__all__ = ["plot_tradeoff", "plot_accuracy_vs_mflops", "plot_best_so_far", "plot_importance", "plot_by_block",
           "plot_budget_use", "plot_stages", "STYLE"]

#: font sizes and figure size shared by every plot
STYLE = {"figsize": (8.0, 5.2), "dpi": 110, "title": 14, "label": 12, "tick": 10.5, "legend": 10}
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]
_LABELS = {"mflops": "MFLOPs (million multiply-adds)", "params": "parameters (count; k = thousand)",
           "latency_ms": "CPU latency at batch 1 (ms)", "val_acc": "validation accuracy (%)",
           "sram_kb": "peak SRAM: int8 TFLM tensor arena (kB = 1,024 bytes)",
           "flash_kb": "flash: int8 .tflite (kB = 1,024 bytes)",
           "test_acc": "test accuracy (%)", "best_val_acc": "best validation accuracy (%)",
           "budget_share": "share of the budget used (%)"}
_PARAM_LABELS = {"alpha": "alpha (sampled upper bound)", "rho": "rho (resolution mult.)", "lr": "learning rate"}
_ACC = ("val_acc", "test_acc", "best_val_acc")


def _figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, **kw):
    fig = Figure(figsize=figsize or STYLE["figsize"], dpi=STYLE["dpi"], layout="constrained")
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


def _style(ax, title: str | None, xlabel: str | None, ylabel: str | None) -> None:
    if title:
        ax.set_title(title, fontsize=STYLE["title"])
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=STYLE["label"])
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=STYLE["label"])
    ax.tick_params(labelsize=STYLE["tick"])
    ax.grid(True, alpha=0.3, linewidth=0.7)


def _empty(fig: Figure, ax, title: str, message: str) -> Figure:
    ax.set_axis_off()
    ax.set_title(title, fontsize=STYLE["title"])
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=STYLE["label"], color="0.35",
            transform=ax.transAxes, wrap=True)
    return fig


def _studies(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["study"])) if "study" in df.columns else ["study"]


def _label(df: pd.DataFrame, name: str) -> str:
    """Legend label: study name, with the sampler when it is not already in the name."""
    if "sampler" not in df.columns:
        return str(name)
    s = df.loc[df["study"] == name, "sampler"].dropna()
    sampler = str(s.iloc[0]) if len(s) else ""
    return f"{name} ({sampler})" if sampler and sampler.lower() not in str(name).lower() else str(name)


def _for_study(df: pd.DataFrame, name: str) -> pd.DataFrame:
    return df[df["study"] == name] if "study" in df.columns else df


def _axis_label(col: str) -> str:
    return _LABELS.get(col, col.replace("_", " "))


def _pct(ax, axis: str = "y") -> None:
    fmt = PercentFormatter(xmax=1.0, decimals=0)
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)


def _thousands(ax, axis: str = "x") -> None:
    f = FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if abs(v) >= 1e6 else f"{v / 1e3:g}k" if abs(v) >= 1e3 else f"{v:g}")
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(f)


# ----- search ----------------------------------------------------------------------------------------------------
def plot_tradeoff(df: pd.DataFrame, x: str = "mflops", y: str = "val_acc", front: bool = True,
                  budget: float | None = None, winners: bool = True, title: str | None = None,
                  logx: bool | None = None) -> Figure:
    """Accuracy against a cost (`x`: mflops, params or latency_ms) for every completed candidate (``val_acc``: its
    mean over its runs, confirmation trials folded in: `analysis.candidates`), one colour and marker per study,
    with each study's Pareto front as a step line, the retrained winners ringed, and the budget as a dashed
    vertical line when given."""
    fig, ax = _figure(figsize=(STYLE["figsize"][0], STYLE["figsize"][1] + 0.8))
    xname = {"mflops": "MFLOPs", "params": "parameters", "latency_ms": "latency", "sram_kb": "peak SRAM",
             "flash_kb": "flash"}.get(x, x)
    title = title or f"{_axis_label(y).split(' (')[0].capitalize()} vs {xname}"
    need = {x, y}
    if df.empty or not need <= set(df.columns):
        return _empty(fig, ax, title, "no trials")
    df = candidates(df)
    data = df[pd.to_numeric(df[x], errors="coerce").notna() & pd.to_numeric(df[y], errors="coerce").notna()]
    if data.empty:
        return _empty(fig, ax, title, "no completed trials yet")
    studies = _studies(df)
    for i, name in enumerate(studies):
        d = _for_study(data, name)
        if d.empty:
            continue
        c, m = _COLORS[i % len(_COLORS)], _MARKERS[i % len(_MARKERS)]
        ax.scatter(d[x], d[y], s=42, color=c, marker=m, alpha=0.55, edgecolors="none",
                   label=f"{_label(df, name)}: {len(d)} completed candidates", zorder=3)
        if front:
            f = pareto(d, maximize=y, minimize=x, by_candidate=False).sort_values(x)
            if len(f):
                xs = np.r_[f[x].to_numpy(float), data[x].max() * (1.02 if not logx else 1.1)]
                ys = np.r_[f[y].to_numpy(float), f[y].to_numpy(float)[-1]]
                ax.step(xs, ys, where="post", color=c, linewidth=1.8, alpha=0.9, zorder=4,
                        label=f"{_label(df, name)}: Pareto front")
                ax.scatter(f[x], f[y], s=60, color=c, marker=m, edgecolors="black", linewidths=0.8, zorder=5)
        if winners and "winner_rank" in d.columns:
            w = d[d["winner_rank"].notna()]
            if len(w):
                ax.scatter(w[x], w[y], s=190, facecolors="none", edgecolors=c, linewidths=2.0, zorder=6)
    if winners and "winner_rank" in data.columns and data["winner_rank"].notna().any():
        ax.scatter([], [], s=190, facecolors="none", edgecolors="0.3", linewidths=2.0,
                   label="winner: retrained, tested once")
    if budget is not None and math.isfinite(budget):
        unit = {"mflops": " MFLOPs", "params": " params", "latency_ms": " ms", "sram_kb": " kB",
                "flash_kb": " kB"}.get(x, "")
        ax.axvline(budget, color="0.25", linestyle="--", linewidth=1.3, zorder=2,
                   label=f"budget: {budget:,.4g}{unit}")
    if logx is None:
        lo, hi = data[x].min(), data[x].max()
        logx = bool(lo > 0 and hi / lo > 30)
    if logx:
        ax.set_xscale("log")
    if x == "params":
        _thousands(ax, "x")
    _style(ax, title, _axis_label(x), _axis_label(y))
    if y in _ACC:
        _pct(ax, "y")
    _legend_below(fig, ax)
    return fig


def _legend_below(fig: Figure, ax) -> None:
    """The legend under the axes (never over the data), in two columns."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ncols = 2 if len(handles) > 2 else len(handles)
    rows = -(-len(handles) // ncols)
    order = [r * ncols + c for c in range(ncols) for r in range(rows) if r * ncols + c < len(handles)]
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=ncols,
               fontsize=STYLE["legend"], frameon=False)


def plot_accuracy_vs_mflops(df: pd.DataFrame, budget: float | None = None, **kw) -> Figure:
    """Validation accuracy (%) against MFLOPs with the Pareto front of each study (see `plot_tradeoff`)."""
    return plot_tradeoff(df, x="mflops", y="val_acc", budget=budget,
                         title=kw.pop("title", "Validation accuracy vs MFLOPs (Pareto front per study)"), **kw)


def plot_best_so_far(df: pd.DataFrame, acc: str = "val_acc") -> Figure:
    """Best accuracy so far against the trial number, one line per study, each completed trial as a dot."""
    fig, ax = _figure()
    title = "Best validation accuracy so far"
    b = best_so_far(df, acc)
    if b.empty or b[acc].notna().sum() == 0:
        return _empty(fig, ax, title, "no completed trials yet")
    for i, name in enumerate(_studies(df)):
        d = b[b["study"] == name] if "study" in b.columns else b
        if d.empty:
            continue
        c = _COLORS[i % len(_COLORS)]
        ax.scatter(d["number"], d[acc], s=22, color=c, alpha=0.4, marker=_MARKERS[i % len(_MARKERS)], zorder=3)
        ax.step(d["number"], d[f"best_{acc}_so_far"], where="post", color=c, linewidth=2.0, zorder=4,
                label=f"{_label(df, name)}: best so far")
    ax.scatter([], [], s=22, color="0.5", alpha=0.5, label="one completed trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _style(ax, title, "trial number (includes pruned and infeasible samples)", _axis_label(acc))
    _pct(ax, "y")
    ax.legend(fontsize=STYLE["legend"], loc="lower right", framealpha=0.9)
    return fig


def plot_importance(imp: pd.DataFrame, top: int = 12, title: str | None = None) -> Figure:
    """Horizontal bars of parameter importance (share of the accuracy variance explained, fANOVA by default);
    several studies side by side."""
    title = title or "Parameter importance for validation accuracy"
    if imp.empty:
        fig, ax = _figure()
        return _empty(fig, ax, title, "not enough completed trials to rate parameters")
    studies = list(dict.fromkeys(imp["study"])) if "study" in imp.columns else ["study"]
    order = (imp.groupby("param")["importance"].max().sort_values(ascending=False).head(top).index.tolist())
    n = len(order)
    fig, ax = _figure(figsize=(STYLE["figsize"][0], max(3.2, 0.36 * n * max(1, len(studies) * 0.7) + 1.4)))
    h = 0.8 / len(studies)
    ypos = np.arange(n)
    for i, name in enumerate(studies):
        d = imp[imp["study"] == name] if "study" in imp.columns else imp
        vals = d.set_index("param")["importance"].reindex(order).fillna(0).to_numpy()
        off = (i - (len(studies) - 1) / 2) * h
        bars = ax.barh(ypos + off, vals, height=h * 0.92, color=_COLORS[i % len(_COLORS)], label=str(name))
        if len(studies) == 1:
            ax.bar_label(bars, labels=[f"{100 * v:.0f}%" for v in vals], padding=3, fontsize=STYLE["tick"])
    ax.set_yticks(ypos, labels=[_PARAM_LABELS.get(p, p) for p in order])
    ax.invert_yaxis()
    ax.set_xlim(0, min(1.0, float(imp["importance"].max()) * 1.18 + 0.02))
    _style(ax, title, "importance (share of accuracy variance explained, %)", None)
    _pct(ax, "x")
    ax.grid(True, axis="x", alpha=0.3)
    ax.grid(False, axis="y")
    if len(studies) > 1:
        ax.legend(fontsize=STYLE["legend"], loc="lower right", framealpha=0.9)
    return fig


def plot_by_block(df: pd.DataFrame, acc: str = "val_acc", exclude: Sequence[str] = ("maxpool",)) -> Figure:
    """Accuracy distribution per block type (box plot with every candidate as a dot, its mean over its runs for
    ``val_acc``); a network mixing block types appears under each of them."""
    title = "Validation accuracy by block type"
    fig, ax = _figure()
    if df.empty or "blocks" not in df.columns:
        return _empty(fig, ax, title, "no trials")
    if acc == "val_acc":
        df = candidates(df)
    d = df[df["blocks"].map(lambda s: isinstance(s, str) and bool(s)) & pd.to_numeric(df[acc], errors="coerce").notna()]
    if d.empty:
        return _empty(fig, ax, title, "no completed trials yet")
    ex = d.assign(block=d["blocks"].str.split("+")).explode("block")
    ex = ex[~ex["block"].isin(list(exclude))]
    order = ex.groupby("block")[acc].median().sort_values(ascending=False).index.tolist()
    groups = [ex.loc[ex["block"] == b, acc].to_numpy(float) for b in order]
    ax.boxplot(groups, positions=range(len(order)), widths=0.55, showfliers=False, patch_artist=True,
               boxprops=dict(facecolor="#dbe8f5", edgecolor="0.3"), medianprops=dict(color="#d62728", linewidth=2))
    rng = np.random.default_rng(0)
    studies = _studies(df)
    for i, name in enumerate(studies):
        for j, b in enumerate(order):
            v = ex.loc[(ex["block"] == b) & ((ex["study"] == name) if "study" in ex.columns else True), acc]
            if len(v):
                ax.scatter(j + rng.uniform(-0.18, 0.18, len(v)), v, s=18, alpha=0.6, color=_COLORS[i % len(_COLORS)],
                           marker=_MARKERS[i % len(_MARKERS)], zorder=3,
                           label=_label(df, name) if j == 0 or b == order[0] else None)
    ax.set_xticks(range(len(order)), labels=[f"{b}\n(n={len(g)})" for b, g in zip(order, groups)])
    _style(ax, title, "block type (n = completed trials using it)", _axis_label(acc))
    _pct(ax, "y")
    if len(studies) > 1:
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=STYLE["legend"], loc="best", framealpha=0.9)
    return fig


def plot_budget_use(df: pd.DataFrame, bins: int | None = None) -> Figure:
    """Histogram of the share of the budget the trained networks use (100% = at the hard limit); studies side by
    side in each bin (2.5-point bins by default)."""
    title = "Budget use of the trained networks"
    fig, ax = _figure()
    if df.empty or "budget_share" not in df.columns:
        return _empty(fig, ax, title, "no trials")
    d = df[pd.to_numeric(df["budget_share"], errors="coerce").notna()]
    if d.empty:
        return _empty(fig, ax, title, "no trained trials yet")
    shares = d["budget_share"].to_numpy(float)
    hi = max(1.0, float(shares.max()))
    lo = min(0.9, math.floor(float(shares.min()) * 10) / 10)
    edges = np.linspace(lo, hi, max(2, round((hi - lo) / 0.025)) + 1) if bins is None else np.linspace(lo, hi, bins + 1)
    studies = [n for n in _studies(df) if len(_for_study(d, n))]
    data = [_for_study(d, n)["budget_share"].to_numpy(float) for n in studies]
    ax.hist(data, bins=edges, color=[_COLORS[_studies(df).index(n) % len(_COLORS)] for n in studies],
            label=[f"{_label(df, n)} (median {100 * np.median(v):.0f}%)" for n, v in zip(studies, data)],
            edgecolor="white", linewidth=0.6)
    ax.axvline(1.0, color="0.2", linestyle="--", linewidth=1.3, label="hard limit (100%)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _style(ax, title, "largest share of any budget used (MFLOPs, params or latency; %)", "trained networks")
    _pct(ax, "x")
    ax.legend(fontsize=STYLE["legend"], loc="upper left", framealpha=0.9)
    return fig


# ----- compression -----------------------------------------------------------------------------------------------
def plot_stages(stages: pd.DataFrame, title: str | None = None) -> Figure:
    """Compression stages side by side: model size on disk (KB, with the compression ratio), test accuracy (%)
    and MFLOPs per stage (panels for the columns present). The original is blue, compressed stages green."""
    title = title or "Compression stages"
    if stages.empty or "stage" not in stages.columns:
        fig, ax = _figure()
        return _empty(fig, ax, title, "no compression stages")
    panels = [p for p, col in (("size", "size_bytes"), ("acc", "test_acc"), ("mflops", "mflops"))
              if col in stages.columns and pd.to_numeric(stages[col], errors="coerce").notna().any()] or ["none"]
    n = len(stages)
    fig, axes = _figure(1, len(panels), figsize=(max(8.0, 1.5 + 1.1 * n * len(panels)), 5.4), squeeze=False)
    runs = stages["run"] if "run" in stages.columns and stages["run"].nunique() > 1 else None
    labels = [(f"{r}/{s}" if runs is not None else str(s)).replace("_", "\n", 1) for r, s in
              zip(runs if runs is not None else [None] * n, stages["stage"])]
    x = np.arange(n)
    colors = [_COLORS[0] if i == 0 else _COLORS[2] for i in range(n)]
    for ax, panel in zip(axes[0], panels):
        if panel == "size":
            kb = pd.to_numeric(stages["size_bytes"], errors="coerce").to_numpy(float) / 1024
            bars = ax.bar(x, kb, color=colors, width=0.65)
            ratio = pd.to_numeric(stages.get("compression_ratio", pd.Series([math.nan] * n)), errors="coerce")
            ax.bar_label(bars, labels=[f"{k:,.1f} KB\n{r:.1f}x" if math.isfinite(r) else f"{k:,.1f} KB"
                                       for k, r in zip(kb, ratio)], padding=2, fontsize=STYLE["tick"] - 1)
            ax.set_ylim(0, np.nanmax(kb) * 1.25 if np.isfinite(np.nanmax(kb)) else 1)
            _style(ax, "Model size on disk", None, "size (KB, 1 KB = 1024 bytes)")
        elif panel == "acc":
            acc = pd.to_numeric(stages["test_acc"], errors="coerce").to_numpy(float)
            bars = ax.bar(x, acc, color=colors, width=0.65)
            ax.bar_label(bars, labels=[f"{100 * a:.1f}%" if math.isfinite(a) else "-" for a in acc], padding=2,
                         fontsize=STYLE["tick"] - 1)
            finite = acc[np.isfinite(acc)]
            lo = max(0.0, float(finite.min()) - 0.1) if len(finite) else 0.0
            ax.set_ylim(lo, min(1.0, float(finite.max()) + 0.06) if len(finite) else 1.0)
            _style(ax, "Test accuracy", None, "test accuracy (%)")
            _pct(ax, "y")
        elif panel == "mflops":
            mf = pd.to_numeric(stages["mflops"], errors="coerce").to_numpy(float)
            bars = ax.bar(x, mf, color=colors, width=0.65)
            ax.bar_label(bars, labels=[f"{v:.4g}" for v in mf], padding=2, fontsize=STYLE["tick"] - 1)
            ax.set_ylim(0, np.nanmax(mf) * 1.18 if np.isfinite(np.nanmax(mf)) and np.nanmax(mf) > 0 else 1)
            _style(ax, "Compute", None, "MFLOPs (million multiply-adds)")
        wide = n * max(len(line) for lab in labels for line in lab.split("\n")) > 40
        ax.set_xticks(x, labels=labels, rotation=30 if wide else 0, ha="right" if wide else "center",
                      fontsize=STYLE["tick"] - (1 if wide else 0))
        ax.set_xlabel("stage (in order)", fontsize=STYLE["label"])
        ax.grid(False, axis="x")
    fig.suptitle(title, fontsize=STYLE["title"])
    return fig
