"""Confirmation trials: the last share of --trials re-train the leading candidates with new seeds.

One training run of a small network on a few hundred validation images is noisy (the same network and learning
rate differ by a point or more between seeds), so the best single run is often a lucky one. As in SMAC's
intensification, leaders are re-evaluated and candidates are ranked by their mean validation accuracy.
A candidate is a trial's full parameter set (structure, alpha, learning rate, weight decay); a confirmation trial
repeats it with another seed (seeds follow the trial number) and records which trial it confirms.

With `--confirm-folds K` (K > 1) a confirmation also validates on another fold of train+val
(`training.data.fold_positions`: fold 0 is the search's own val split, folds 1..K-1 partition the train split), so
a candidate's mean is taken over more distinct images as well as more seeds; the trial records its fold.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    import pandas as pd

CONFIRMS = "confirms"  # user attribute: the number of the trial whose candidate this trial re-evaluates
FOLD = "fold"          # user attribute: the fold of train+val a confirmation validates on (absent: 0, val)
LEADERS = 3            # how many leading candidates share the confirmation trials


def candidate_of(t: FrozenTrial) -> int:
    """The trial number that names `t`'s candidate (its own number unless it confirms another trial)."""
    return int(t.user_attrs.get(CONFIRMS, t.number))


def fold_of(t: FrozenTrial) -> int:
    """The fold `t` validates on (0, the search's val split, unless it is a confirmation on another fold)."""
    return int(t.user_attrs.get(FOLD, 0))


def next_fold(trials: Sequence[FrozenTrial], candidate: int, folds: int) -> int:
    """The fold the next evaluation of `candidate` should validate on: the one of `folds` its evaluations (done,
    running or queued) have used least, the lowest on a tie; with `folds` 1 always fold 0."""
    if folds <= 1:
        return 0
    used = [0] * folds
    for t in trials:
        if candidate_of(t) == candidate and t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING):
            used[fold_of(t) % folds] += 1
    return min(range(folds), key=lambda f: (used[f], f))


@dataclass
class CandidateScore:
    """A candidate's completed evaluations; `trial` is the first one (its parameters, spec and seed)."""

    trial: FrozenTrial
    values: list[float] = field(default_factory=list)
    pending: int = 0  # confirmations queued or running

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def evals(self) -> int:
        return len(self.values)


def rank_candidates(trials: Sequence[FrozenTrial]) -> list[CandidateScore]:
    """Candidates with at least one completed evaluation, best mean validation accuracy first (then fewer MFLOPs,
    then the earlier trial). Single-objective studies only."""
    by_number = {t.number: t for t in trials}
    scores: dict[int, CandidateScore] = {}
    for t in trials:
        c = candidate_of(t)
        if c not in by_number:
            continue
        s = scores.setdefault(c, CandidateScore(by_number[c]))
        if t.state == TrialState.COMPLETE and t.values:
            s.values.append(t.values[0])
        elif t.state in (TrialState.RUNNING, TrialState.WAITING) and c != t.number:
            s.pending += 1
    done = [s for s in scores.values() if s.values and s.trial.state == TrialState.COMPLETE]
    return sorted(done, key=lambda s: (-s.mean, s.trial.user_attrs.get("mflops", 0), s.trial.number))


def confirmation_count(n_trials: int, share: float) -> int:
    """Trials of a study of `n_trials` spent on confirmations (the rest explore)."""
    return int(round(share * n_trials))


def next_confirmation(trials: Sequence[FrozenTrial], counted: int, running: int, n_trials: int,
                      share: float) -> FrozenTrial | None:
    """The trial whose candidate the next trial should re-evaluate, or None to sample a new candidate.

    Confirmations fill the last `share` of the study. Of the `LEADERS` best candidates by mean, the one with the
    fewest evaluations (done or pending) goes next, the better one on a tie: a lucky single run is re-run first.
    """
    n_confirm = confirmation_count(n_trials, share)
    if n_confirm <= 0 or counted + running < n_trials - n_confirm:
        return None
    if any(t.state == TrialState.WAITING for t in trials):  # a queued trial (a retry) goes first
        return None
    leaders = rank_candidates(trials)[:LEADERS]
    if not leaders:
        return None
    pick = min(enumerate(leaders), key=lambda il: (il[1].evals + il[1].pending, il[0]))[1]
    return pick.trial


def enqueue_confirmation(study: optuna.Study, trials: Sequence[FrozenTrial], counted: int, running: int,
                         n_trials: int, share: float, folds: int = 1) -> FrozenTrial | None:
    """Queue the next confirmation (see `next_confirmation`) as the study's next trial, with `folds` > 1 on the
    leader's least-used fold (`next_fold`, recorded as `FOLD`); returns the trial it repeats, or None when the next
    trial should sample a new candidate. Call it under the study lock."""
    leader = next_confirmation(trials, counted, running, n_trials, share)
    if leader is not None:
        attrs: dict[str, int] = {CONFIRMS: leader.number}
        if folds > 1:
            attrs[FOLD] = next_fold(trials, leader.number, folds)
        study.enqueue_trial(leader.params, user_attrs=attrs)
    return leader


def candidate_table(df: "pd.DataFrame") -> "pd.DataFrame":
    """A trials table folded to one row per candidate and ranked as `rank_candidates` ranks them: `val_acc` becomes
    the candidate's mean validation accuracy over its completed runs (the figure the CLI prints), `runs` their
    number and `run_val_acc` the candidate trial's own single run; confirmation rows are left out. Best mean first
    (then fewer MFLOPs, then the earlier trial); rows without an accuracy follow in trial order.

    Works on `search.results.trials_frame` and on `analysis.load` tables (several studies: ranked within the
    table as a whole; group by ``study`` first for per-study ranks). A table without confirmation columns
    (an older study, a Pareto search) keeps every row with ``runs`` 1."""
    import pandas as pd

    out = df.copy()
    acc = pd.to_numeric(out["val_acc"], errors="coerce") if "val_acc" in out else pd.Series(float("nan"), out.index)
    out["run_val_acc"] = acc
    if "confirms" in out.columns:
        out = out[pd.to_numeric(out["confirms"], errors="coerce").isna()]
        acc = acc.loc[out.index]
    mean = pd.to_numeric(out["candidate_val_acc"], errors="coerce") if "candidate_val_acc" in out else None
    runs = pd.to_numeric(out["candidate_evals"], errors="coerce") if "candidate_evals" in out else None
    done = acc.notna()
    if "state" in out.columns:  # the search ranks completed candidates only
        done &= out["state"].astype(str) == "COMPLETE"
    if mean is not None and mean.notna().any():
        val = mean.where(mean.notna(), acc)
        n = runs.where(mean.notna(), 1.0) if runs is not None else pd.Series(1.0, out.index)
    else:
        val, n = acc, pd.Series(1.0, out.index)
    out["val_acc"] = val.where(done)
    out["runs"] = n.where(done)
    keys = ["val_acc"] + [c for c in ("mflops", "number") if c in out.columns]
    return out.sort_values(keys, ascending=[False] + [True] * (len(keys) - 1), na_position="last", kind="stable")
