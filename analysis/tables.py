"""Tables over the trials DataFrame: Pareto fronts, best network under limits, per-block summaries, importances."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import optuna
import pandas as pd

from archs.errors import UserError
from archs.units import parse_quantity

__all__ = ["candidates", "pareto", "best_under", "by_block", "best_so_far", "importance", "study_summary"]


def candidates(df: pd.DataFrame) -> pd.DataFrame:
    """One row per candidate, ranked the way the search ranks its winners (`search.confirm.candidate_table`):
    ``val_acc`` is the candidate's mean validation accuracy over its ``runs`` (the figure the CLI prints),
    ``run_val_acc`` its first run's own; confirmation trials are folded into the trial they repeat. Every table
    and plot of `analysis` that ranks by validation accuracy goes through it."""
    from search.confirm import candidate_table

    return candidate_table(df)


def _as_list(x: str | Sequence[str] | None) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


def _nondominated(y: np.ndarray) -> np.ndarray:
    """Mask of the rows of `y` (all objectives to minimize) that no other row dominates.

    Row j dominates row i when it is <= in every objective and < in at least one; rows with identical
    objective vectors do not dominate each other, so duplicates on the front are all kept.
    """
    n = len(y)
    keep = np.ones(n, dtype=bool)
    chunk = max(1, 4_000_000 // max(1, n * y.shape[1]))
    for start in range(0, n, chunk):
        b = y[start:start + chunk]
        le = (y[None, :, :] <= b[:, None, :]).all(axis=2)
        lt = (y[None, :, :] < b[:, None, :]).any(axis=2)
        keep[start:start + chunk] = ~(le & lt).any(axis=1)
    return keep


def pareto(df: pd.DataFrame, maximize: str | Sequence[str] = "val_acc", minimize: str | Sequence[str] = ("mflops",),
           per_study: bool = False, by_candidate: bool = True) -> pd.DataFrame:
    """The non-dominated rows of `df` (highest `maximize`, lowest `minimize`), sorted by the first cost.

    Rows missing any objective (pruned, failed, infeasible trials) are ignored. Ties: a row equal to another in
    every objective is kept (neither dominates); a row equal in one objective and worse in another is dropped.
    `per_study=True` computes one front per value of the ``study`` column. `by_candidate` (default) first folds
    the table to one row per candidate (`candidates`: ``val_acc`` = mean over its runs), as the search ranks.
    """
    maxi, mini = _as_list(maximize), _as_list(minimize)
    cols = maxi + mini
    if not cols:
        raise ValueError("pareto needs at least one objective")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"no column(s) {', '.join(missing)} in the table")
    if by_candidate:
        df = candidates(df)
    if per_study and "study" in df.columns:
        parts = [pareto(g, maxi, mini, by_candidate=False) for _, g in df.groupby("study", sort=False)]
        return pd.concat(parts) if parts else df.iloc[0:0]
    vals = df[cols].apply(pd.to_numeric, errors="coerce")
    ok = np.isfinite(vals.to_numpy(dtype=float)).all(axis=1)
    sub = df[ok]
    if sub.empty:
        return sub.copy()
    y = np.array(vals[ok].to_numpy(dtype=float), dtype=float, copy=True)
    y[:, :len(maxi)] *= -1
    front = sub[_nondominated(y)]
    order = mini + maxi
    asc = [True] * len(mini) + [False] * len(maxi)
    if "number" in front.columns:
        order, asc = order + ["number"], asc + [True]
    return front.sort_values(order, ascending=asc, kind="stable")


def best_under(df: pd.DataFrame, mflops: float | str | None = None, params: float | str | None = None,
               latency_ms: float | str | None = None, by: str = "val_acc", n: int = 1,
               per_study: bool = False, by_candidate: bool = True, sram_kb: float | str | None = None,
               flash_kb: float | str | None = None) -> pd.DataFrame:
    """The `n` best rows by `by` (highest first) whose costs are within every limit given (sram_kb: int8 TFLM
    tensor arena, flash_kb: .tflite file, kB = 1,024 bytes).

    Limits take plain numbers or suffixes (``params="5k"``). Ties go to fewer MFLOPs, then fewer params, then
    the earlier trial. Empty when nothing fits. `per_study=True` gives the best `n` of each study.
    `by_candidate` (default): one row per candidate, ``val_acc`` its mean over ``runs`` (`candidates`).
    """
    limits = {k: parse_quantity(v, k) for k, v in (("mflops", mflops), ("params", params),
                                                   ("latency_ms", latency_ms), ("sram_kb", sram_kb),
                                                   ("flash_kb", flash_kb)) if v is not None}
    if by not in df.columns:
        raise KeyError(f"no column {by!r} in the table")
    if by_candidate:
        df = candidates(df)
    mask = pd.to_numeric(df[by], errors="coerce").notna()
    for k, v in limits.items():
        if k not in df.columns:
            raise KeyError(f"no column {k!r} in the table")
        mask &= pd.to_numeric(df[k], errors="coerce") <= v
    sub = df[mask]
    keys = [by] + [c for c in ("mflops", "params", "number") if c in sub.columns]
    asc = [False] + [True] * (len(keys) - 1)
    sub = sub.sort_values(keys, ascending=asc, kind="stable")
    if per_study and "study" in sub.columns:
        return sub.groupby("study", sort=False).head(n)
    return sub.head(n)


def by_block(df: pd.DataFrame, acc: str = "val_acc", per_study: bool = False,
             exclude: Sequence[str] = ("maxpool",)) -> pd.DataFrame:
    """Per block type: trials that used it, how many candidates finished with an accuracy, best and median
    accuracy, median MFLOPs, median accuracy per MFLOP, and the best trial's number. For ``val_acc`` a
    candidate's accuracy is its mean over its runs (`candidates`; confirmation trials count in ``trials`` only).

    A trial that mixes block types (``blocks`` like ``dws+ir``) counts once for each type it uses. `exclude`
    drops layer kinds that are not catalog blocks (max-pool downsampling stages are recorded in ``blocks`` too).
    Infeasible samples (never built) are left out. Sorted by best accuracy.
    """
    cols = ["block", "trials", "completed", f"best_{acc}", f"median_{acc}", "median_mflops",
            f"median_{acc}_per_mflop", "best_trial"]
    if per_study and "study" in df.columns:
        parts = []
        for name, g in df.groupby("study", sort=False):
            t = by_block(g, acc, exclude=exclude)
            t.insert(0, "study", name)
            parts.append(t)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["study", *cols])
    need = {"blocks", acc, "mflops"}
    if not need <= set(df.columns):
        raise KeyError(f"by_block needs the columns {', '.join(sorted(need))}")
    def explode(t: pd.DataFrame) -> pd.DataFrame:
        t = t[t["blocks"].map(lambda s: isinstance(s, str) and bool(s))]
        t = t.assign(block=t["blocks"].str.split("+")).explode("block")
        return t[~t["block"].isin(list(exclude))]

    ex_all = explode(df)
    if ex_all.empty:
        return pd.DataFrame(columns=cols)
    n_trials = ex_all.groupby("block", sort=False).size()
    ex = explode(candidates(df)) if acc == "val_acc" else ex_all
    ex = ex.assign(_acc=pd.to_numeric(ex[acc], errors="coerce"), _mf=pd.to_numeric(ex["mflops"], errors="coerce"))
    ex["_per"] = ex["_acc"] / ex["_mf"].where(ex["_mf"] > 0)
    rows = []
    for block, g in ex.groupby("block", sort=False):
        done = g[g["_acc"].notna()]
        best = done.loc[done["_acc"].idxmax()] if len(done) else None
        rows.append({"block": block, "trials": int(n_trials.get(block, len(g))), "completed": len(done),
                     f"best_{acc}": done["_acc"].max() if len(done) else math.nan,
                     f"median_{acc}": done["_acc"].median() if len(done) else math.nan,
                     "median_mflops": g["_mf"].median(),
                     f"median_{acc}_per_mflop": done["_per"].median() if len(done) else math.nan,
                     "best_trial": int(best["number"]) if best is not None and "number" in best else math.nan})
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values([f"best_{acc}", "trials"], ascending=[False, False], na_position="last",
                           kind="stable").reset_index(drop=True)


def best_so_far(df: pd.DataFrame, acc: str = "val_acc") -> pd.DataFrame:
    """Per study and trial number: the trial's own accuracy and the best accuracy after it. For ``val_acc`` the
    best is the leading candidate's mean over the runs finished so far, as the search ranks (`candidates`);
    a confirmation can lower it. Other columns: the running maximum."""
    cols = ["study", "number", acc, f"best_{acc}_so_far"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    d = df.assign(study=df["study"] if "study" in df.columns else "study")
    parts = []
    for _, g in d.groupby("study", sort=False):
        g = g.sort_values("number").copy()
        g[acc] = pd.to_numeric(g[acc], errors="coerce")
        if acc == "val_acc" and "confirms" in g.columns:
            g[f"best_{acc}_so_far"] = _candidate_best_so_far(g)
        else:
            g[f"best_{acc}_so_far"] = g[acc].cummax().ffill()
        parts.append(g[cols])
    return pd.concat(parts, ignore_index=True)


def _candidate_best_so_far(g: pd.DataFrame) -> list[float]:
    """After each trial (in number order): the best mean validation accuracy of the candidates completed so far."""
    sums: dict[int, list[float]] = {}
    eligible: set[int] = set()
    confirms = pd.to_numeric(g["confirms"], errors="coerce")
    done = g["val_acc"].notna() & (g["state"].astype(str) == "COMPLETE" if "state" in g.columns else True)
    out, best = [], math.nan
    for num, conf, acc, ok in zip(g["number"], confirms, g["val_acc"], done):
        if ok:
            c = int(num) if math.isnan(conf) else int(conf)
            if c == int(num):
                eligible.add(c)
            s = sums.setdefault(c, [0.0, 0])
            s[0] += float(acc)
            s[1] += 1
            means = [sums[k][0] / sums[k][1] for k in eligible]
            best = max(means) if means else best
        out.append(best)
    return out


def study_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per study: trials by outcome, best validation accuracy (and its trial), the rank-1 winner's test
    accuracy, MFLOPs and params, median trial time."""
    rows = []
    for name, g in df.groupby("study", sort=False):
        st = g["state"].astype(str)
        ranked = candidates(g)
        best = ranked.iloc[0] if len(ranked) and pd.notna(ranked["val_acc"].iloc[0]) else None
        win = g[g["winner_rank"] == 1]
        w = win.iloc[0] if len(win) else None
        rows.append({"study": name, "sampler": g["sampler"].iloc[0], "objectives": g["objectives"].iloc[0],
                     "trials": len(g), "complete": int((st == "COMPLETE").sum()),
                     "pruned": int(((st == "PRUNED") & ~g["infeasible"]).sum()),
                     "infeasible": int(g["infeasible"].sum()), "failed": int((st == "FAIL").sum()),
                     "best_val_acc": best["val_acc"] if best is not None else math.nan,
                     "best_trial": int(best["number"]) if best is not None else math.nan,
                     "winner_test_acc": w["test_acc"] if w is not None else math.nan,
                     "winner_mflops": w["mflops"] if w is not None else math.nan,
                     "winner_params": w["params"] if w is not None else math.nan,
                     "median_trial_s": pd.to_numeric(g.loc[~g["infeasible"], "duration_s"], errors="coerce").median()})
    return pd.DataFrame(rows)


# ----- parameter importance -------------------------------------------------------------------------------------
def _evaluator(name: str | optuna.importance.BaseImportanceEvaluator, seed: int):
    if not isinstance(name, str):
        return name
    key = name.lower().replace("_", "-")
    if key == "fanova":
        return optuna.importance.FanovaImportanceEvaluator(seed=seed)
    if key in ("mdi", "mean-decrease-impurity"):
        return optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=seed)
    if key in ("ped-anova", "pedanova"):
        return optuna.importance.PedAnovaImportanceEvaluator()
    raise ValueError(f"unknown importance evaluator {name!r}; use fanova, mdi or ped-anova")


def _target(study: optuna.Study, target: str | Callable[[optuna.trial.FrozenTrial], float]):
    if callable(target):
        return target
    if target in ("val_acc", "value", "value_0", "accuracy"):
        return lambda t: t.values[0]
    if target.startswith("value_"):
        i = int(target.split("_", 1)[1])
        return lambda t: t.values[i]
    key = "params_count" if target == "params" else target
    return lambda t: float(t.user_attrs.get(key, math.nan))


def _study_from_frame(df: pd.DataFrame, target: str) -> optuna.Study:
    """An in-memory study rebuilt from a trials table (completed rows), with distributions inferred from the
    values seen: used when only trials.csv is available."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    col = "val_acc" if target in ("val_acc", "value", "value_0", "accuracy") else target
    col = col if col in df.columns else {"params_count": "params"}.get(col, col)
    if col not in df.columns:
        raise KeyError(f"no column {col!r} in the trials table")
    done = df[(df["state"].astype(str) == "COMPLETE") & pd.to_numeric(df[col], errors="coerce").notna()]
    pcols = [c for c in df.columns if c.startswith("param_") and done[c].notna().all()] if len(done) else []
    dists = {}
    for c in pcols:
        v = done[c]
        if pd.api.types.is_bool_dtype(v) or v.map(lambda x: isinstance(x, (bool, np.bool_, str))).any():
            dists[c] = CategoricalDistribution(sorted({x.item() if hasattr(x, "item") else x for x in v}, key=str))
        elif np.allclose(v.astype(float), v.astype(float).round()):
            lo, hi = int(v.min()), int(v.max())
            dists[c] = IntDistribution(lo, max(hi, lo))
        else:
            lo, hi = float(v.min()), float(v.max())
            dists[c] = FloatDistribution(lo, max(hi, lo), log=lo > 0 and hi / lo > 20)
    from .data import quiet_optuna

    with quiet_optuna():
        study = optuna.create_study(direction="maximize")
    for _, r in done.iterrows():
        params = {}
        for c, dist in dists.items():
            x = r[c]
            x = x.item() if hasattr(x, "item") else x
            params[c[len("param_"):]] = int(x) if isinstance(dist, IntDistribution) else x
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={c[len("param_"):]: d for c, d in dists.items()},
            value=float(r[col]), user_attrs={col: float(r[col])}))
    return study


def importance(source: Any, target: str | Callable = "val_acc", evaluator: str | Any = "fanova",
               params: list[str] | None = None, study_name: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Optuna's parameter importances (``optuna.importance.get_param_importances``) as a DataFrame with columns
    study, param, importance (sums to 1 per study), sorted from most important.

    `source`: an ``optuna.Study``, anything `load` accepts (one or several studies), or a trials DataFrame (an
    in-memory study is rebuilt from its completed rows). `target`: ``val_acc`` (the first objective; also right
    for multi-objective studies), ``value_1``, or a trial user attribute such as ``mflops``, or a callable.
    Only parameters present in every completed trial are rated (Optuna's rule), so the per-stage parameters of
    stages that only some networks have are left out. Fewer than two completed trials give an empty table.
    """
    from .data import load, open_sources

    cols = ["study", "param", "importance"]
    studies: list[tuple[str, optuna.Study, Callable]] = []
    if isinstance(source, pd.DataFrame):
        if callable(target):
            raise TypeError("a callable target needs an optuna.Study or a results folder, not a DataFrame")
        groups = source.groupby("study", sort=False) if "study" in source.columns else [("study", source)]
        for name, g in groups:
            st = _study_from_frame(g, target)
            studies.append((str(name), st, lambda t: t.values[0]))
    else:
        for s in open_sources(source, study_name):
            st = s.study()
            if st is None:  # only trials.csv: rebuild the study from the table
                if callable(target):
                    raise UserError(f"{s.dir} has only trials.csv; a callable target needs the Optuna storage")
                studies.append((s.name, _study_from_frame(load(s), target), lambda t: t.values[0]))
            else:
                studies.append((s.name, st, _target(st, target)))
    parts = []
    for name, st, fn in studies:
        done = st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(done) < 2:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(st, evaluator=_evaluator(evaluator, seed), params=params,
                                                              target=fn)
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. no parameter shared by all trials, zero variance
            continue
        part = pd.DataFrame({"study": name, "param": [k.removeprefix("param_") for k in imp],
                             "importance": [float(v) for v in imp.values()]})
        parts.append(part[part["importance"].notna()].sort_values("importance", ascending=False, kind="stable"))
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)
