"""The one results writer: trials table (atomic CSV), config.json, and winner directories (spec, weights, metrics, ONNX)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch

from archs.export import export_onnx, onnx_io, onnx_max_diff
from archs.io import atomic_write_json, atomic_write_text, replace_dir, save_model_dir

from .confirm import candidate_of, rank_candidates

#: user attributes every trial records, in table order
TRIAL_ATTRS = ("spec", "template", "confirms", "blocks", "depth", "resolution", "alpha", "rho", "mflops", "params_count",
               "latency_ms", "sram_kb", "arena_kb", "flash_kb", "budget_share", "fold", "val_acc", "best_val_acc", "epochs_run",
               "train_seconds", "fail_reason")
#: derived columns: `infeasible` (sampled, never trained), `last_val_acc` (last epoch reached, also for pruned
#: trials), `candidate_val_acc` / `candidate_evals`: mean validation accuracy of the trial's candidate over its
#: completed evaluations (the trial and its confirmations, search.confirm) and their number
DERIVED = ("infeasible", "last_val_acc", "candidate_val_acc", "candidate_evals")


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, timing, every searched parameter (param_*), costs, accuracy, failure reason."""
    rows = []
    trials = study.get_trials(deepcopy=False)
    single = len(study.directions) == 1
    scores = {s.trial.number: s for s in rank_candidates(trials)} if single else {}
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name,
                               "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
                               "duration_s": t.duration.total_seconds() if t.duration else float("nan")}
        for key in TRIAL_ATTRS:
            row[key] = t.user_attrs.get(key)
        if row["fail_reason"] is None and t.state == optuna.trial.TrialState.FAIL:
            row["fail_reason"] = t.system_attrs.get("fail_reason")
        row["infeasible"] = bool(t.user_attrs.get("infeasible", False))
        curve = t.user_attrs.get("curve") or []
        row["last_val_acc"] = curve[-1] if curve else None
        score = scores.get(candidate_of(t))
        row["candidate_val_acc"] = score.mean if score else None
        row["candidate_evals"] = score.evals if score else None
        if t.values is not None and len(t.values) > 1:
            for i, v in enumerate(t.values):
                row[f"value_{i}"] = v
        for k, v in t.params.items():
            row[f"param_{k}"] = v
        rows.append(row)
    cols = ["number", "state", "datetime_start", "datetime_complete", "duration_s", *TRIAL_ATTRS, *DERIVED]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=cols)
    extra = sorted(c for c in df.columns if c not in cols)
    return df[cols + extra].sort_values("number").reset_index(drop=True)


def write_trials_csv(study: optuna.Study, path: str | Path) -> pd.DataFrame:
    """Rewrite `trials.csv` atomically from the storage (the storage is the source of truth)."""
    df = trials_frame(study)
    atomic_write_text(path, df.to_csv(index=False))
    return df


def write_config(path: str | Path, config: dict[str, Any]) -> None:
    atomic_write_json(path, config)


def read_config(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def save_winner(directory: str | Path, model: torch.nn.Module, metrics: dict[str, Any],
                check_x: torch.Tensor | None = None) -> Path:
    """Write spec.json, model.pt, model.onnx and metrics.json (incl. the ONNX Runtime vs PyTorch max difference).

    The files are written into a hidden sibling folder that replaces `directory` once complete: a full disk or an
    interruption never leaves a half-written winner where a reader would take it for a result.
    """
    d = Path(directory)
    stage = d.parent / f".{d.name}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        model = model.eval().cpu()
        onnx_path = export_onnx(model, stage / "model.onnx")
        if check_x is not None:
            diff = onnx_max_diff(model, onnx_path, check_x.cpu())
            metrics = {**metrics, "onnx_max_abs_diff": diff}
        save_model_dir(stage, model, {**metrics, "io": onnx_io(onnx_path)})
        replace_dir(stage, d)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return d


def fmt_pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.2f}%"
