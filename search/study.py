"""Study orchestration: storage, sampler, pruner, the trial loop with progress, and retraining of the winners."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
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
from archs.cli import progress
from archs.errors import UserError, forget_caught_keyboard_interrupt
from archs.memory import memory, supported
from archs.preprocess import PREPROCESSING_KEY, Preprocessing
from archs.spec import NetSpec
from training.data import AUGMENTS, Splits, load_data
from training.loop import TrainConfig, evaluate, fit, resolve_device, set_seed

from .confirm import CONFIRMS, FOLD, enqueue_confirmation, rank_candidates
from .objective import LATENCY_MARGIN, Objective, TrialFailed, latency_fit_target
from .results import fmt_pct, save_winner, write_config, write_trials_csv
from .space import Budget, DataShape, SearchSpace, check_feasible, warm_start_trials
from .storage import (DEFAULT_STORAGE_TIMEOUT_S, StudyLock, WorkerId, file_lock, mask,  # noqa: F401 (re-export)
                      open_storage)
from .workers import (ClaimKeeper, LocalWorkers, SigintDeferral, TrialLoop, check_interrupt, claim_winners,
                      describe_exit, die_with_parent, finished_count, interrupt_seen, is_counted, sigint_once,
                      stop_exit_code, worker_device)

OBJECTIVES = ("accuracy", "mflops", "params", "latency", "sram", "flash")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class SearchConfig:
    """Everything a search needs; written verbatim to config.json."""

    budget_mflops: float | None = None
    budget_params: float | None = None
    budget_latency_ms: float | None = None
    budget_sram_kb: float | None = None    # whole TFLM tensor arena, kB (1 kB = 1,024 bytes)
    budget_flash_kb: float | None = None   # int8 .tflite file, kB
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    trials: int = 30
    timeout: float | None = None
    epochs: int = 15
    final_epochs: int = 30
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
    n_workers: int = 1
    threads: int = 1
    warm_start: bool = True
    augment: str = "auto"              # "auto" = what suits the data set (training.data.DATASETS), or AUGMENTS
    label_smoothing: float = 0.1       # trials and final retrains; 0 = plain cross-entropy
    confirm: float = 0.2               # share of --trials re-training the leaders with new seeds (search.confirm)
    confirm_folds: int = 1             # >1: confirmations validate on other folds of train+val (search.confirm)
    width: str = "alpha"               # what the sampler chooses for the width (search.space.SearchSpace.width)
    screen: int = 0                    # >0: each new trial trains the best of this many random candidates by a proxy
    screen_proxy: str = "params"       # search.proxies.PROXIES; "-NAME" prefers low scores
    storage_timeout: float = DEFAULT_STORAGE_TIMEOUT_S  # s a database may stay unreachable before a worker gives up

    @property
    def budget(self) -> Budget:
        return Budget(self.budget_mflops, self.budget_params, self.budget_latency_ms, self.budget_sram_kb,
                      self.budget_flash_kb)

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def mcu(self) -> bool:
        """True with an SRAM or flash budget or objective (archs.memory must model every block kind searched)."""
        return self.budget.mcu or any(o in ("sram", "flash") for o in self.objectives)

    def validate(self) -> "SearchConfig":
        if not self.budget.any():
            raise UserError("give at least one budget: --budget-mflops, --budget-params, --budget-latency-ms, "
                            "--budget-sram-kb or --budget-flash-kb")
        for flag, v in (("--budget-sram-kb", self.budget_sram_kb), ("--budget-flash-kb", self.budget_flash_kb)):
            if v is not None and not (isinstance(v, (int, float)) and v > 0):
                raise UserError(f"{flag} must be a positive number of kB, got {v!r}")
        for name in ("trials", "epochs", "final_epochs", "top_k", "batch_size", "max_stages", "n_workers",
                     "threads"):
            v = getattr(self, name)
            lo = 0 if name == "final_epochs" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise UserError(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise UserError(f"--timeout must be positive seconds, got {self.timeout!r}")
        st = self.storage_timeout
        if isinstance(st, bool) or not isinstance(st, (int, float)) or not 0 < st < float("inf"):
            raise UserError(f"--storage-timeout must be positive seconds, got {st!r}")
        if self.sampler not in ("tpe", "nsga2", "random"):
            raise UserError(f"--sampler must be tpe, nsga2 or random, got {self.sampler!r}")
        if self.augment not in ("auto", *AUGMENTS):
            raise UserError(f"--augment must be auto, {', '.join(AUGMENTS)}; got {self.augment!r}")
        ls = self.label_smoothing
        if isinstance(ls, bool) or not isinstance(ls, (int, float)) or not 0 <= ls < 1:
            raise UserError(f"--label-smoothing must be in [0, 1), got {ls!r}")
        if isinstance(self.screen, bool) or not isinstance(self.screen, int) or self.screen < 0:
            raise UserError(f"--screen must be an integer >= 0 (candidates scored per trial), got {self.screen!r}")
        from .proxies import PROXIES

        if str(self.screen_proxy).lstrip("-") not in PROXIES:
            raise UserError(f"--screen-proxy must be one of {', '.join(PROXIES)} (or -NAME: low scores first), "
                            f"got {self.screen_proxy!r}")
        c = self.confirm
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c <= 0.5:
            raise UserError(f"--confirm must be a share of --trials in [0, 0.5], got {c!r}")
        k = self.confirm_folds
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 20:
            raise UserError(f"--confirm-folds must be an integer from 1 to 20 (folds of train+val), got {k!r}")
        if self.pruner not in ("median", "hyperband", "none"):
            raise UserError(f"--pruner must be median, hyperband or none, got {self.pruner!r}")
        obj = self.objectives
        if not obj or obj[0] != "accuracy" or len(obj) > 2 or any(o not in OBJECTIVES for o in obj) \
                or (len(obj) == 2 and obj[1] == "accuracy"):
            raise UserError(f"--objectives must be 'accuracy' or 'accuracy,COST' with COST in mflops, params, "
                            f"latency, sram, flash; got {','.join(obj)!r}")
        SearchSpace(blocks=tuple(self.space), width=self.width).validate()
        if self.mcu:
            missing = [b for b in self.space if not supported(b)]
            if missing:
                raise UserError(f"--budget-sram-kb / --budget-flash-kb / sram and flash objectives: archs.memory does "
                                f"not model block kind(s) {', '.join(missing)} (no tflite_graph record); leave them "
                                "out of --space")
        if not self.rho or any(not (isinstance(r, (int, float)) and 0 < r <= 8) for r in self.rho):
            raise UserError(f"--rho needs resolution multipliers in (0, 8], got {self.rho!r}")
        if self.study_name is not None and not _NAME_RE.match(self.study_name):
            raise UserError(f"--study-name {self.study_name!r} must be letters, digits, '.', '_' or '-' (no path "
                            "separators or '..'), at most 128 characters")
        if self.study_name is not None and ".." in self.study_name:
            raise UserError(f"--study-name {self.study_name!r} must not contain '..'")
        if self.resume and not self.study_name:
            raise UserError("--resume needs --study-name (the folder name under --out)")
        if self.storage is not None and not str(self.storage).strip():
            raise UserError("--storage must not be empty")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The configuration for config.json, with the storage password masked."""
        d = asdict(self)
        if d["storage"]:
            d["storage"] = mask(d["storage"])
        return d


# ----- storage, sampler, pruner -----------------------------------------------------------------------------------
# open_storage (search.storage) is re-exported here for callers of the old location.


def make_sampler(name: str, seed: int, multi: bool, trials: int = 40) -> optuna.samplers.BaseSampler:
    """Optuna sampler; TPE's random start-up phase is a quarter of the trials (5 to 10, warm-start trials count)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      n_startup_trials=max(5, min(10, trials // 4)), constant_liar=True)


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
                               f"{b.latency_ms:g}ms" if b.latency_ms else "",
                               f"{b.sram_kb:g}kBsram" if b.sram_kb else "", f"{b.flash_kb:g}kBflash" if b.flash_kb else "")
                   if x)
    return f"{cfg.dataset.split(':')[0]}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"


def storage_url(cfg: SearchConfig) -> str:
    """--storage, or the default SQLite file OUT/STUDY/study.db."""
    return cfg.storage or f"sqlite:///{(study_dir(cfg) / 'study.db').resolve()}"


def sampler_seed(cfg: SearchConfig, ordinal: int) -> int:
    """The sampler seed of the study's `ordinal`-th sampling process (numbered by the storage, `register_worker`):
    --seed for the first, so a lone seeded worker samples exactly what it always did; --seed + ordinal for the
    later ones (workers started together or one after another, --n-workers processes, a --resume), so that no two
    workers of a study draw the same samples (every worker of a study has the same --seed: study_settings)."""
    return cfg.seed + ordinal


#: SearchConfig fields that define what a study measures: every worker and every --resume must agree on them
#: (the data split, the trials' initial weights and the confirmation seeds follow --seed, so it is one of them;
#: --confirm-folds sets the folds a confirmation may validate on, so it is one too).
#: The others (--trials, --confirm, --timeout, --final-epochs, --top-k, --n-workers, --threads, --device, --out,
#: --quiet, --storage-timeout, --data-dir, --download, --no-warm-start) may differ between workers and runs.
STUDY_SETTINGS = ("budget_mflops", "budget_params", "budget_latency_ms", "budget_sram_kb", "budget_flash_kb",
                  "dataset", "image_size", "objectives", "space", "max_stages", "rho", "epochs", "batch_size", "lr",
                  "weight_decay", "augment", "label_smoothing", "sampler", "pruner", "distill_from", "kd_temperature",
                  "kd_alpha", "seed", "width", "screen", "screen_proxy", "confirm_folds")
SETTINGS_ATTR = "edgenas_settings"
WORKERS_ATTR = "edgenas_workers"
_FLAG = {"kd_temperature": "temperature"}


def study_settings(cfg: SearchConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: d[k] for k in STUDY_SETTINGS}


def _show(key: str, v: Any) -> str:
    if isinstance(v, list):
        v = ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    elif isinstance(v, float):
        v = f"{v:g}"
    return f"--{_FLAG.get(key, key.replace('_', '-'))} {v}"


def check_settings(study: optuna.Study, cfg: SearchConfig, lock: StudyLock, legacy: Path | None) -> None:
    """Refuse to add trials to a study made with other settings (one line naming every difference); the first
    process of a study records its settings in the storage, so this holds for workers on any machine.

    `legacy`: the config.json of a study made before its settings were recorded in the storage.
    """
    mine = study_settings(cfg)
    with lock():
        theirs = study.user_attrs.get(SETTINGS_ATTR)
        if theirs is None and legacy is not None and legacy.is_file():
            from .results import read_config

            with contextlib.suppress(ValueError, OSError):
                old = read_config(legacy)
                theirs = {k: old[k] for k in STUDY_SETTINGS if k in old} or None
        if theirs is None:
            study.set_user_attr(SETTINGS_ATTR, mine)
            return
    # a setting the study did not record was added to edgenas later: the study ran with its default
    theirs = {**study_settings(SearchConfig()), **theirs}
    diff = [k for k in STUDY_SETTINGS if _norm(theirs[k]) != _norm(mine[k])]
    if diff:
        what = ", ".join(f"{_show(k, theirs[k])} (now {_show(k, mine[k]).split(' ', 1)[1]})" for k in diff)
        raise UserError(f"study {cfg.study_name!r} was made with other settings: {what}; rerun with the study's "
                        "settings (see its config.json), or start a new study with another --study-name")


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return v


def register_worker(study: optuna.Study, lock: StudyLock) -> int:
    """A number unique among the study's sampling processes, handed out by the storage under the study lock:
    0 for the first process that samples, then 1, 2, ... (see `sampler_seed`)."""
    with lock():
        n = int(study.user_attrs.get(WORKERS_ATTR, 0))
        study.set_user_attr(WORKERS_ATTR, n + 1)
    return n


#: seconds after a study folder is made during which an identical command without --resume joins it while no trial
#: has finished (commands started together); otherwise an existing folder needs --resume
JOIN_WINDOW_S = 60.0


def open_study(cfg: SearchConfig, joining: bool = False) -> optuna.Study:
    """Create the study (or load it with --resume); refuse to silently reuse an existing study folder.

    A shared --storage is opened before anything is written locally, so an unreachable server or a wrong password
    leaves no trace. `joining`: a worker process of --n-workers, whose parent created the study.
    """
    d = study_dir(cfg)
    shared = bool(cfg.storage)
    existing = (d / "config.json").exists()
    # several identical commands started together: the first writes config.json before the last has looked, so a
    # folder made within JOIN_WINDOW_S that has no finished trial yet (no trials.csv) is joined; check_settings
    # below still refuses other settings
    together = existing and not (d / "trials.csv").exists() and \
        time.time() - (d / "config.json").stat().st_mtime < JOIN_WINDOW_S
    if not joining:
        if existing and not cfg.resume and not shared and not together:
            raise UserError(f"study folder {d} already exists; add --resume to continue it or pick another "
                            "--study-name")
        if cfg.resume and not shared and not existing:
            raise UserError(f"nothing to resume: {d} has no study (run without --resume first)")
    if shared:
        storage = open_storage(cfg.storage, timeout_s=cfg.storage_timeout, announce=not joining,
                               wait_s=cfg.storage_timeout if joining else 0.0)
        if cfg.resume or joining:
            try:
                storage.get_study_id_from_name(cfg.study_name)
            except KeyError:
                raise UserError(f"nothing to resume: study {cfg.study_name!r} is not in {mask(cfg.storage)}") from None
    else:
        d.mkdir(parents=True, exist_ok=True)
        storage = open_storage(storage_url(cfg), timeout_s=cfg.storage_timeout, announce=not joining,
                               wait_s=cfg.storage_timeout if joining else 0.0)
    directions = ["maximize"] + (["minimize"] if cfg.multi else [])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=cfg.study_name, directions=directions,
                                    sampler=make_sampler(cfg.sampler, cfg.seed, cfg.multi, cfg.trials),
                                    pruner=make_pruner(cfg.pruner, cfg.epochs), load_if_exists=True)
    except ValueError as e:
        raise UserError(f"study {cfg.study_name!r}: {mask(e)}") from None
    if len(study.directions) != len(directions):
        raise UserError(f"study {cfg.study_name!r} exists with {len(study.directions)} objective(s); "
                        f"--objectives gives {len(directions)}")
    # before anything is written under --out: a study made with other settings is never joined
    check_settings(study, cfg, StudyLock(study._storage, storage_url(cfg), cfg.study_name),
                   None if shared else d / "config.json")
    d.mkdir(parents=True, exist_ok=True)
    return study


def save_trials(study: optuna.Study, d: Path):
    """Rewrite d/trials.csv from the storage; the file lock orders writers on this machine (newest view wins)."""
    with file_lock(d / ".trials.csv.lock"):
        return write_trials_csv(study, d / "trials.csv")


def trial_line(t: FrozenTrial) -> str:
    a = t.user_attrs
    head = f"trial {t.number:>3} {t.state.name.lower():8s}"
    if "mflops" not in a:
        return f"{head} {a.get('fail_reason', '')}"
    acc = a.get("val_acc") or (a.get("curve") or [None])[-1]
    fold = f", fold {a[FOLD]}" if FOLD in a else ""
    why = a.get("fail_reason") or (f"re-run of trial {a[CONFIRMS]} (confirmation{fold})" if CONFIRMS in a else "")
    return (f"{head} val {fmt_pct(acc):>7s}  {a['mflops']:.4f} MFLOPs  {a['params_count']:>8,} params  "
            f"{a['latency_ms']:.2f} ms  {a['blocks']:<18s} {why}").rstrip()


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
    augment = data.augment if cfg.augment == "auto" else cfg.augment
    return TrainConfig(epochs=epochs, batch_size=cfg.batch_size, augment=augment, device=str(device),
                       seed=cfg.seed, label_smoothing=cfg.label_smoothing, **extra)


def quiet_library_warnings() -> None:
    """Optuna's experimental/deprecation notices and fvcore's are noise for users of the CLI."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*independent sampling.*")
    # our own worker loop records heartbeats around ask/tell (search.workers), which Optuna does not expect
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def run_search(cfg: SearchConfig, data: Splits | None = None, worker: bool = False,
               worker_index: int | None = None) -> dict[str, Any]:
    """Run (or resume, or join) a study to `cfg.trials` finished trials, then retrain and save the winners.

    Returns a summary dict (study name, folder, trials table, winners). `worker=True` runs trials only.
    `worker_index`: this process is worker `worker_index` of a --n-workers parent (which created the study).
    Everything that can be wrong with the input is checked before anything is written.
    """
    quiet_library_warnings()
    cfg.validate()
    joining = worker_index is not None
    if not cfg.study_name:
        cfg.study_name = default_study_name(cfg)
    device = resolve_device(worker_device(cfg.device, worker_index) if joining else cfg.device)
    if device.type == "cpu":
        # tiny networks train many times faster on one thread per process than on several (measured in README)
        torch.set_num_threads(cfg.threads)
    data = data or load_data(cfg.dataset, cfg.data_dir, cfg.download, seed=cfg.seed, image_size=cfg.image_size)
    space = SearchSpace(blocks=tuple(cfg.space), max_stages=cfg.max_stages, rho=tuple(cfg.rho), width=cfg.width)
    if cfg.lr is not None or cfg.weight_decay is not None:
        space.search_lr = False
    shape = DataShape(data.in_chans, data.resolution, data.num_classes)
    small_spec, _ = check_feasible(space, shape, cfg.budget)
    if cfg.budget.latency_ms is not None and not joining:
        lat = latency(build(small_spec), repeats=20)
        if lat > latency_fit_target(cfg.budget.latency_ms):  # networks are fitted to the budget less its margin
            raise UserError(f"impossible budget (--budget-latency-ms {cfg.budget.latency_ms:g}): the smallest network "
                            f"in the search space takes {lat:.3f} ms on this CPU at batch 1 (networks must fit "
                            f"{100 * (1 - LATENCY_MARGIN):.0f} % of the budget)")
    teacher = load_teacher(cfg.distill_from, data, device) if cfg.distill_from else None
    me = WorkerId.current(worker_index)
    d = study_dir(cfg)
    study = open_study(cfg, joining=joining)
    lock = StudyLock(study._storage, storage_url(cfg), cfg.study_name)
    if not joining and (not (d / "config.json").exists() or cfg.resume or cfg.storage):
        write_config(d / "config.json", cfg.to_dict())
    if cfg.warm_start and not joining:
        enqueue_warm_start(study, space, lock, cfg.trials)
    log = (lambda s: None) if cfg.quiet else tqdm.write

    def make_objective() -> Objective:
        return Objective(data, space, cfg.budget, cfg.objectives, train_config(cfg, device, data, cfg.epochs),
                         device, teacher, cfg.kd_temperature, cfg.kd_alpha, log, folds=cfg.confirm_folds)

    if cfg.n_workers > 1 and not joining:
        run_local_workers(study, cfg, d, lock, make_objective)
    else:
        seed = sampler_seed(cfg, register_worker(study, lock))
        study.sampler = make_sampler(cfg.sampler, seed, cfg.multi, cfg.trials)
        run_trials(study, make_objective(), cfg, d, lock=lock, worker=me, screen_seed=seed)
    if worker or joining:
        return {"study": cfg.study_name, "dir": str(d)}
    return finish_study(study, cfg, data, device, teacher, d, lock, me)


def enqueue_warm_start(study: optuna.Study, space: SearchSpace, lock: StudyLock, trials: int) -> int:
    """Queue the classic designs the space can express as the first trials of a new study (see space.TEMPLATES),
    at most a quarter of --trials (rounded up)."""
    with lock():
        if study.get_trials(deepcopy=False):
            return 0
        templates = warm_start_trials(space)[:-(-trials // 4)]
        for name, params in templates:
            study.enqueue_trial(params, user_attrs={"template": name})
    return len(templates)


def finish_study(study: optuna.Study, cfg: SearchConfig, data: Splits, device: torch.device,
                 teacher: torch.nn.Module | None, d: Path, lock: StudyLock, me: WorkerId) -> dict[str, Any]:
    """Retrain the winners if this worker wins the claim (exactly one worker of a shared study does)."""
    status, claim = claim_winners(study, lock, me, finished_count(study))
    note = None
    if status == "mine":
        with ClaimKeeper(study, claim):
            winners = retrain_winners(study, cfg, data, device, teacher, saved_by=me)
    else:
        who = claim.get("worker", {}) if claim else {}
        where = f"{who.get('host', '?')}:{who.get('pid', '?')}"
        if status == "done":
            winners = list(study.user_attrs.get("winners", []))
            if winners and all(Path(w.get("dir", "")).is_dir() for w in winners):
                note = f"the study was already finished: its winners, retrained earlier by worker {where}, are in {d}"
            else:
                note = f"winners were retrained by worker {where}; their files are on that machine"
        else:
            winners = []
            note = f"winners are being retrained by worker {where}"
    df = save_trials(study, d)
    return {"study": cfg.study_name, "dir": str(d), "trials": df, "winners": winners, "note": note}


def make_screen(objective: Objective, cfg: SearchConfig, seed: int):
    """--screen K: a `search.proxies.Screen` drawing candidates from the objective's space (seeded like the
    sampler), scoring them on 64 fixed training images."""
    from .proxies import Screen

    idx = torch.randperm(len(objective.data.train.y), generator=torch.Generator().manual_seed(seed))[:64]

    def batch(size: int):
        train, _ = objective.split(size)
        return train.x[idx.to(train.x.device)], train.y[idx.to(train.y.device)]

    return Screen(objective.space, objective.shape, cfg.budget, cfg.screen, cfg.screen_proxy, batch, seed)


def run_trials(study: optuna.Study, objective: Objective, cfg: SearchConfig, d: Path, lock: StudyLock | None = None,
               worker: WorkerId | None = None, screen_seed: int | None = None):
    """Run trials until the study holds `cfg.trials` finished ones (or --timeout), rewriting trials.csv after each.

    Infeasible samples cost microseconds and are not counted; diverged (FAIL) trials are not counted either.
    With --screen K, each new trial (not a warm-start design, a retry or a confirmation) is the best of K random
    budget-fitted candidates by --screen-proxy (single objective only).
    """
    lock = lock or StudyLock(study._storage, storage_url(cfg), cfg.study_name)
    worker = worker or WorkerId.current()
    save_trials(study, d)  # the table exists (and matches the storage) from the start
    done = finished_count(study)
    bar = progress(total=cfg.trials, initial=min(done, cfg.trials), desc=f"search {cfg.study_name}", unit="trial",
               disable=cfg.quiet, dynamic_ncols=True)

    def after_trial(st: optuna.Study, t: FrozenTrial) -> None:
        save_trials(st, d)
        bar.n = min(finished_count(st), cfg.trials)
        best = _best_value(st)
        if best is not None:
            bar.set_postfix_str(f"best val {fmt_pct(best)}")
        bar.refresh()
        if not cfg.quiet:
            tqdm.write(trial_line(t))

    screen = make_screen(objective, cfg, cfg.seed if screen_seed is None else screen_seed) if cfg.screen else None

    def before_ask(trials: list[FrozenTrial], counted: int, running: int) -> None:
        leader = enqueue_confirmation(study, trials, counted, running, cfg.trials, cfg.confirm, cfg.confirm_folds)
        if screen is not None and leader is None and not any(t.state == TrialState.WAITING for t in trials):
            params = screen.propose()
            if params is not None:
                study.enqueue_trial(params, user_attrs={"screened": f"best of {cfg.screen} by {cfg.screen_proxy}"})

    loop = TrialLoop(study, objective, n_trials=cfg.trials, lock=lock, worker=worker, timeout=cfg.timeout,
                     after_trial=after_trial, log=(lambda s: None) if cfg.quiet else tqdm.write, catch=(TrialFailed,),
                     before_ask=None if cfg.multi else before_ask)
    try:
        return loop.run()
    finally:
        bar.close()
        save_trials(study, d)


def run_local_workers(study: optuna.Study, cfg: SearchConfig, d: Path, lock: StudyLock, make_objective) -> None:
    """--n-workers K: K spawned worker processes share the study; this process shows progress, then finishes any
    trials left over if every worker died."""
    from dataclasses import replace

    start = time.monotonic()
    child = asdict(replace(cfg, n_workers=1, quiet=True, resume=True))
    pool = LocalWorkers(_worker_process, (child, cfg.n_workers, os.getpid()), cfg.n_workers)
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    bar = progress(total=cfg.trials, initial=min(finished_count(study), cfg.trials), unit="trial", dynamic_ncols=True,
               desc=f"search {cfg.study_name} ({cfg.n_workers} workers)", disable=cfg.quiet)

    def poll() -> None:
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.state.is_finished() and t.number not in seen:
                seen.add(t.number)
                if not cfg.quiet:
                    bar.write(trial_line(t))
        bar.n = min(sum(1 for t in trials if is_counted(t)), cfg.trials)
        best = _best_value(study)
        if best is not None:
            bar.set_postfix_str(f"best val {fmt_pct(best)}")
        bar.refresh()
        for i, code in pool.deaths():
            if code < 0 and code != -signal.SIGINT:  # killed (even with --quiet: the user should know)
                tqdm.write(f"warning: worker {i} (pid {pool.procs[i].pid}) {describe_exit(code)}; its trial is "
                           "failed and retried by the other workers", file=sys.stderr)

    pool.start()
    try:
        pool.wait(poll)
    except KeyboardInterrupt:
        interrupt_seen()
        guard = SigintDeferral().defer()  # more Ctrl-C presses must not cut the workers' bookkeeping short
        try:
            pool.interrupt()
            bar.close()
            save_trials(study, d)
        finally:
            guard.release(raise_pending=False)
        raise
    bar.close()
    save_trials(study, d)
    err = pool.first_error()
    if err:
        raise UserError(err)
    codes = pool.exit_codes()
    if any(c in (130, 143) for c in codes):
        raise KeyboardInterrupt
    crashed = [(i, c) for i, c in enumerate(codes) if c is not None and c > 0]
    if crashed:
        raise RuntimeError("; ".join(f"worker {i} {describe_exit(c)}" for i, c in crashed) + " (traceback above)")
    remaining = None if cfg.timeout is None else cfg.timeout - (time.monotonic() - start)
    if finished_count(study) < cfg.trials and (remaining is None or remaining > 0):
        # every worker was killed: finish the study in this process
        from dataclasses import replace as _replace

        seed = sampler_seed(cfg, register_worker(study, lock))
        study.sampler = make_sampler(cfg.sampler, seed, cfg.multi, cfg.trials)
        run_trials(study, make_objective(), _replace(cfg, timeout=remaining), d, lock=lock,
                   worker=WorkerId.current(cfg.n_workers), screen_seed=seed)


def _worker_process(cfg_dict: dict[str, Any], n_workers: int, parent_pid: int, index: int, results) -> None:
    """Entry point of a --n-workers process (spawned): run trials of the parent's study, report how it ended."""
    sigint_once()  # Ctrl-C reaches a worker from the terminal and again from its parent: stop once
    die_with_parent(parent_pid)  # no worker outlives its parent, however the parent ended
    try:
        run_search(SearchConfig(**cfg_dict), worker=True, worker_index=index)
        results.put((index, "ok", ""))
    except UserError as e:
        results.put((index, "error", mask(str(e))))
        sys.exit(2)
    except KeyboardInterrupt:
        forget_caught_keyboard_interrupt()
        sys.exit(stop_exit_code())


def _best_value(study: optuna.Study) -> float | None:
    """The progress bar's "best val": the leading candidate's mean (as the winners are ranked), or for a Pareto
    study the highest validation accuracy."""
    if len(study.directions) == 1:
        ranked = rank_candidates(study.get_trials(deepcopy=False))
        return ranked[0].mean if ranked else None
    vals = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    return max(vals) if vals else None


def select_winners(study: optuna.Study, k: int, multi: bool) -> list[tuple[FrozenTrial, float, int]]:
    """(trial, validation accuracy, evaluations) of the top-k candidates by mean validation accuracy over their
    evaluations (search.confirm), or of the Pareto set (best_trials) of a multi-objective study."""
    if multi:
        return [(t, t.values[0], 1) for t in sorted(study.best_trials, key=lambda t: (-t.values[0], t.values[1]))]
    return [(s.trial, s.mean, s.evals) for s in rank_candidates(study.get_trials(deepcopy=False))[:k]]


def retrain_winners(study: optuna.Study, cfg: SearchConfig, data: Splits, device: torch.device,
                    teacher: torch.nn.Module | None = None, saved_by: WorkerId | None = None) -> list[dict[str, Any]]:
    """Retrain winners on train+val for --final-epochs, evaluate once on test, save best/ (top/<rank>/) or pareto/<n>/."""
    winners = select_winners(study, cfg.top_k, cfg.multi)
    if not winners:
        return []
    d = study_dir(cfg)
    out = []
    bar = progress(winners, desc="retrain winners", unit="model", disable=cfg.quiet, dynamic_ncols=True)
    for rank, (t, val_acc, evals) in enumerate(bar, 1):
        check_interrupt()
        spec = NetSpec.from_dict(t.user_attrs["spec_json"])
        trainval = data.trainval().resized(spec.input_size).to(device)
        test = data.test.resized(spec.input_size).to(device)
        tcfg = train_config(cfg, device, data, cfg.final_epochs)
        hp = t.user_attrs.get("hparams", {})
        tcfg = TrainConfig(**{**tcfg.to_dict(), **hp, "seed": cfg.seed + t.number})
        set_seed(tcfg.seed)  # initial weights reproducible whatever ran before in this process
        model = build(spec).to(device)
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
        mem = memory(spec) if all(supported(k) for k in spec.block_types()) else None
        if mem is not None and not b.fits_memory(mem):
            raise RuntimeError(f"internal error: winner {t.number} is over the arena / flash budget")
        metrics = {"trial": t.number, "rank": rank, "spec": spec.to_string(), "mflops": counted.macs / 1e6,
                   "macs": counted.macs, "params": counted.params, "latency_ms": lat1,
                   "sram_kb": mem.arena_bytes / 1024 if mem else None,
                   "arena_kb": mem.activation_bytes / 1024 if mem else None,
                   "flash_kb": mem.flash_bytes / 1024 if mem else None,
                   "val_acc": val_acc, "val_evals": evals, "test_acc": test_acc, "final_epochs": cfg.final_epochs,
                   "retrain_seconds": seconds, "budget_share": cfg.budget.share(Cost(counted.macs, counted.params), lat1, mem),
                   "dataset": cfg.dataset, "distilled_from": cfg.distill_from,
                   "saved_by": str(saved_by or WorkerId.current()),
                   PREPROCESSING_KEY: Preprocessing.from_data(data, spec).to_dict()}
        sub = d / ("pareto" if cfg.multi else "top") / str(rank)
        target = d / "best" if (rank == 1 and not cfg.multi) else sub
        save_winner(target, model, metrics, check_x=test.x[:8].cpu())
        out.append({**metrics, "dir": str(target)})
    bar.close()
    study.set_user_attr("winners", [{k: v for k, v in w.items()} for w in out])
    return out
