"""Study orchestration: storage, sampler, pruner, the trial loop with progress, and retraining of the winners."""
from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from archs import Cost, build, count, latency
from archs.errors import UserError, mask_secrets
from archs.spec import NetSpec
from training.data import Splits, load_data
from training.loop import TrainConfig, evaluate, fit, resolve_device

from .objective import COST_OBJECTIVES, Objective, TrialFailed
from .results import fmt_pct, read_config, save_winner, write_config, write_trials_csv
from .space import Budget, DataShape, SearchSpace, check_feasible

OBJECTIVES = ("accuracy", "mflops", "params", "latency")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class SearchConfig:
    """Everything a search needs; written verbatim to config.json."""

    budget_mflops: float | None = None
    budget_params: float | None = None
    budget_latency_ms: float | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    trials: int = 30
    timeout: float | None = None
    epochs: int = 15
    final_epochs: int = 40
    batch_size: int = 32
    sampler: str = "tpe"
    pruner: str = "median"
    objectives: list[str] = field(default_factory=lambda: ["accuracy"])
    space: list[str] = field(default_factory=lambda: list(SearchSpace().blocks))
    max_stages: int = 4
    rho: list[float] = field(default_factory=lambda: list(SearchSpace().rho))
    top_k: int = 3
    storage: str | None = None
    study_name: str | None = None
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    out: str = "results"
    quiet: bool = False
    distill_from: str | None = None
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    lr: float | None = None
    weight_decay: float | None = None

    @property
    def budget(self) -> Budget:
        return Budget(self.budget_mflops, self.budget_params, self.budget_latency_ms)

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def validate(self) -> "SearchConfig":
        if not self.budget.any():
            raise UserError("give at least one budget: --budget-mflops, --budget-params or --budget-latency-ms")
        for name in ("trials", "epochs", "final_epochs", "top_k", "batch_size", "max_stages"):
            v = getattr(self, name)
            lo = 0 if name == "final_epochs" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise UserError(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise UserError(f"--timeout must be positive seconds, got {self.timeout!r}")
        if self.sampler not in ("tpe", "nsga2", "random"):
            raise UserError(f"--sampler must be tpe, nsga2 or random, got {self.sampler!r}")
        if self.pruner not in ("median", "hyperband", "none"):
            raise UserError(f"--pruner must be median, hyperband or none, got {self.pruner!r}")
        obj = self.objectives
        if not obj or obj[0] != "accuracy" or len(obj) > 2 or any(o not in OBJECTIVES for o in obj) \
                or (len(obj) == 2 and obj[1] == "accuracy"):
            raise UserError(f"--objectives must be 'accuracy' or 'accuracy,COST' with COST in mflops, params, "
                            f"latency; got {','.join(obj)!r}")
        SearchSpace(blocks=tuple(self.space)).validate()
        if not self.rho or any(not (isinstance(r, (int, float)) and 0 < r <= 8) for r in self.rho):
            raise UserError(f"--rho needs resolution multipliers in (0, 8], got {self.rho!r}")
        if self.study_name is not None and not _NAME_RE.match(self.study_name):
            raise UserError(f"--study-name {self.study_name!r} must be letters, digits, '.', '_' or '-' (no path "
                            "separators or '..'), at most 128 characters")
        if self.study_name is not None and ".." in self.study_name:
            raise UserError(f"--study-name {self.study_name!r} must not contain '..'")
        if self.resume and not self.study_name:
            raise UserError("--resume needs --study-name (the folder name under --out)")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["storage"]:
            d["storage"] = mask_secrets(d["storage"])
        return d


# ----- storage, sampler, pruner -----------------------------------------------------------------------------------
def open_storage(url: str, heartbeat: bool = True):
    """Optuna storage for a URL (sqlite/postgresql/mysql via RDB with heartbeats) or a journal file path."""
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    kwargs: dict[str, Any] = {}
    if heartbeat:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        kwargs = dict(heartbeat_interval=10, grace_period=30,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
    except Exception as e:  # noqa: BLE001 - driver/connection errors of any kind are a user-facing problem
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot open storage {mask_secrets(url)}: {mask_secrets(msg)[:300]}") from None


def make_sampler(name: str, seed: int, multi: bool) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10,
                                      constant_liar=True)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 3))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs))
    return optuna.pruners.NopPruner()


def study_dir(cfg: SearchConfig) -> Path:
    return Path(cfg.out) / cfg.study_name


def default_study_name(cfg: SearchConfig) -> str:
    b = cfg.budget
    tag = "-".join(x for x in (f"{b.mflops:g}mflops" if b.mflops else "", f"{b.params:g}params" if b.params else "",
                               f"{b.latency_ms:g}ms" if b.latency_ms else "") if x)
    return f"{cfg.dataset.split(':')[0]}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"


def open_study(cfg: SearchConfig) -> optuna.Study:
    """Create the study (or load it with --resume); refuse to silently reuse an existing study folder."""
    d = study_dir(cfg)
    url = cfg.storage or f"sqlite:///{(d / 'study.db').resolve()}"
    existing = (d / "config.json").exists()
    if existing and not cfg.resume and not cfg.storage:
        raise UserError(f"study folder {d} already exists; add --resume to continue it or pick another --study-name")
    if cfg.resume and not cfg.storage and not existing:
        raise UserError(f"nothing to resume: {d} has no study (run without --resume first)")
    d.mkdir(parents=True, exist_ok=True)
    storage = open_storage(url)
    directions = ["maximize"] + (["minimize"] if cfg.multi else [])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=cfg.study_name, directions=directions,
                                    sampler=make_sampler(cfg.sampler, cfg.seed, cfg.multi),
                                    pruner=make_pruner(cfg.pruner, cfg.epochs), load_if_exists=True)
    except ValueError as e:
        raise UserError(f"study {cfg.study_name!r}: {e}") from None
    if len(study.directions) != len(directions):
        raise UserError(f"study {cfg.study_name!r} exists with {len(study.directions)} objective(s); "
                        f"--objectives gives {len(directions)}")
    return study


def finished_count(study: optuna.Study) -> int:
    """Trials that trained to the end or were pruned while training (infeasible samples are not counted)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED) if not t.user_attrs.get("infeasible"))


def trial_line(t: FrozenTrial) -> str:
    a = t.user_attrs
    head = f"trial {t.number:>3} {t.state.name.lower():8s}"
    if "mflops" not in a:
        return f"{head} {a.get('fail_reason', '')}"
    acc = a.get("val_acc") or (a.get("curve") or [None])[-1]
    return (f"{head} val {fmt_pct(acc):>7s}  {a['mflops']:.4f} MFLOPs  {a['params_count']:>8,} params  "
            f"{a['latency_ms']:.2f} ms  {a['blocks']:<18s} {a.get('fail_reason') or ''}").rstrip()


# ----- the search ------------------------------------------------------------------------------------------------
def load_teacher(path: str, data: Splits, device: torch.device) -> torch.nn.Module:
    from archs.io import load_model_dir

    model, spec, _ = load_model_dir(path)
    if spec.num_classes != data.num_classes or spec.in_chans != data.in_chans:
        raise UserError(f"teacher {path} predicts {spec.num_classes} classes from {spec.in_chans} channels; the data "
                        f"set has {data.num_classes} classes and {data.in_chans} channels")
    return model.to(device).eval()


def train_config(cfg: SearchConfig, device: torch.device, data: Splits, epochs: int) -> TrainConfig:
    extra = {k: v for k, v in (("lr", cfg.lr), ("weight_decay", cfg.weight_decay)) if v is not None}
    return TrainConfig(epochs=epochs, batch_size=cfg.batch_size, augment=data.augment, device=str(device),
                       seed=cfg.seed, **extra)


def quiet_library_warnings() -> None:
    """Optuna's experimental/deprecation notices and fvcore's are noise for users of the CLI."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*independent sampling.*")


def run_search(cfg: SearchConfig, data: Splits | None = None, worker: bool = False) -> dict[str, Any]:
    """Run (or resume) a study to `cfg.trials` finished trials, then retrain and save the winners.

    Returns a summary dict (study name, folder, trials table, winners). `worker=True` runs trials only.
    """
    quiet_library_warnings()
    cfg.validate()
    if not cfg.study_name:
        cfg.study_name = default_study_name(cfg)
    device = resolve_device(cfg.device)
    data = data or load_data(cfg.dataset, cfg.data_dir, cfg.download, seed=cfg.seed, image_size=cfg.image_size)
    space = SearchSpace(blocks=tuple(cfg.space), max_stages=cfg.max_stages, rho=tuple(cfg.rho))
    if cfg.lr is not None or cfg.weight_decay is not None:
        space.search_lr = False
    shape = DataShape(data.in_chans, data.resolution, data.num_classes)
    small_spec, _ = check_feasible(space, shape, cfg.budget)
    if cfg.budget.latency_ms is not None:
        lat = latency(build(small_spec), repeats=20)
        if lat > cfg.budget.latency_ms:
            raise UserError(f"impossible budget (--budget-latency-ms {cfg.budget.latency_ms:g}): the smallest network "
                            f"in the search space takes {lat:.3f} ms on this CPU at batch 1")
    study = open_study(cfg)
    d = study_dir(cfg)
    if not (d / "config.json").exists() or cfg.resume:
        write_config(d / "config.json", cfg.to_dict())
    teacher = load_teacher(cfg.distill_from, data, device) if cfg.distill_from else None
    log = (lambda s: None) if cfg.quiet else tqdm.write
    objective = Objective(data, space, cfg.budget, cfg.objectives, train_config(cfg, device, data, cfg.epochs),
                          device, teacher, cfg.kd_temperature, cfg.kd_alpha, log)
    run_trials(study, objective, cfg, d)
    if worker:
        return {"study": cfg.study_name, "dir": str(d)}
    winners = retrain_winners(study, cfg, data, device, teacher)
    df = write_trials_csv(study, d / "trials.csv")
    return {"study": cfg.study_name, "dir": str(d), "trials": df, "winners": winners}


def run_trials(study: optuna.Study, objective: Objective, cfg: SearchConfig, d: Path) -> None:
    """Run trials until the study holds `cfg.trials` finished ones (or --timeout), rewriting trials.csv after each."""
    done = finished_count(study)
    bar = tqdm(total=cfg.trials, initial=min(done, cfg.trials), desc=f"search {cfg.study_name}", unit="trial",
               disable=cfg.quiet, dynamic_ncols=True)

    def after_trial(st: optuna.Study, t: FrozenTrial) -> None:
        write_trials_csv(st, d / "trials.csv")
        n = finished_count(st)
        bar.n = min(n, cfg.trials)
        best = _best_value(st)
        if best is not None:
            bar.set_postfix_str(f"best val {fmt_pct(best)}")
        bar.refresh()
        if not cfg.quiet:
            tqdm.write(trial_line(t))
        if n >= cfg.trials:
            st.stop()

    start = time.monotonic()
    attempts = 0
    try:
        # infeasible samples cost microseconds and are not counted; diverged (FAIL) trials are not counted either
        while finished_count(study) < cfg.trials and attempts < 20 * cfg.trials + 100:
            remaining_time = None if cfg.timeout is None else cfg.timeout - (time.monotonic() - start)
            if remaining_time is not None and remaining_time <= 0:
                break
            todo = cfg.trials - finished_count(study)
            attempts += todo
            study.optimize(objective, n_trials=todo, timeout=remaining_time, catch=(TrialFailed,),
                           callbacks=[after_trial], gc_after_trial=False)
    finally:
        bar.close()
        write_trials_csv(study, d / "trials.csv")


def _best_value(study: optuna.Study) -> float | None:
    vals = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    return max(vals) if vals else None


def select_winners(study: optuna.Study, k: int, multi: bool) -> list[FrozenTrial]:
    """Top-k by validation accuracy, or the Pareto set (best_trials) of a multi-objective study."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if multi:
        return sorted(study.best_trials, key=lambda t: (-t.values[0], t.values[1]))
    return sorted(complete, key=lambda t: (-t.values[0], t.user_attrs.get("mflops", 0), t.number))[:k]


def retrain_winners(study: optuna.Study, cfg: SearchConfig, data: Splits, device: torch.device,
                    teacher: torch.nn.Module | None = None) -> list[dict[str, Any]]:
    """Retrain winners on train+val for --final-epochs, evaluate once on test, save best/ (top/<rank>/) or pareto/<n>/."""
    winners = select_winners(study, cfg.top_k, cfg.multi)
    if not winners:
        return []
    d = study_dir(cfg)
    out = []
    bar = tqdm(winners, desc="retrain winners", unit="model", disable=cfg.quiet, dynamic_ncols=True)
    for rank, t in enumerate(bar, 1):
        spec = NetSpec.from_dict(t.user_attrs["spec_json"])
        trainval = data.trainval().resized(spec.input_size).to(device)
        test = data.test.resized(spec.input_size).to(device)
        model = build(spec).to(device)
        tcfg = train_config(cfg, device, data, cfg.final_epochs)
        hp = t.user_attrs.get("hparams", {})
        tcfg = TrainConfig(**{**tcfg.to_dict(), **hp, "seed": cfg.seed + t.number})
        t0 = time.perf_counter()
        if cfg.final_epochs > 0:
            fit(model, trainval, None, tcfg, teacher=teacher, temperature=cfg.kd_temperature, alpha=cfg.kd_alpha)
        seconds = time.perf_counter() - t0
        test_acc = evaluate(model, test)
        model = model.cpu().eval()
        counted = count(model)  # fvcore confirms the analytic count
        b = cfg.budget
        if (b.mflops is not None and counted.macs > b.mflops * 1e6) or (b.params is not None and counted.params > b.params):
            raise RuntimeError(f"internal error: winner {t.number} is over budget by fvcore's count")
        lat1 = latency(model, batch_size=1)
        metrics = {"trial": t.number, "rank": rank, "spec": spec.to_string(), "mflops": counted.macs / 1e6,
                   "macs": counted.macs, "params": counted.params, "latency_ms": lat1,
                   "val_acc": t.user_attrs.get("val_acc"), "test_acc": test_acc, "final_epochs": cfg.final_epochs,
                   "retrain_seconds": seconds, "budget_share": cfg.budget.share(Cost(counted.macs, counted.params), lat1),
                   "dataset": cfg.dataset, "distilled_from": cfg.distill_from}
        sub = d / ("pareto" if cfg.multi else "top") / str(rank)
        target = d / "best" if (rank == 1 and not cfg.multi) else sub
        save_winner(target, model, metrics, check_x=test.x[:8].cpu())
        out.append({**metrics, "dir": str(target)})
    bar.close()
    study.set_user_attr("winners", [{k: v for k, v in w.items()} for w in out])
    return out
