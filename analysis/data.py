"""Loading: search studies (storage or trials.csv) and compression stage tables as tidy pandas DataFrames.

One row per trial. Column conventions (accuracy in [0, 1], MFLOPs = million multiply-adds as fvcore counts them):

- ``study``, ``number``, ``state`` (Optuna's: COMPLETE, PRUNED, FAIL, RUNNING, WAITING), ``infeasible`` (pruned
  before training because no width fitted the budget), ``duration_s``, ``datetime_start``, ``datetime_complete``
- derived from the network actually trained: ``blocks`` (block types used, in order, joined with ``+``; as the
  search records it, max-pool downsampling stages appear as ``maxpool``), ``n_block_types`` (catalog blocks
  only), ``n_stages``, ``depth`` (blocks in all stages), ``resolution`` (input side in px), ``alpha``
  (width multiplier *after* fitting to the budget), ``rho`` (resolution multiplier), ``spec`` (NetSpec string)
- costs: ``mflops``, ``params``, ``latency_ms`` (median CPU ms at batch 1), ``sram_kb`` (int8 TFLM tensor arena:
  activations + runtime overhead), ``arena_kb`` (its activation part), ``flash_kb`` (.tflite file), all from
  ``archs.memory`` in kB = 1,024 bytes, ``budget_share`` (largest fraction
  of any budget used; 1.0 = at the limit)
- results: ``val_acc`` (validation accuracy at the last epoch; what the search optimizes), ``best_val_acc``,
  ``confirms`` (the trial whose candidate a confirmation trial re-trained with another seed, else NaN),
  ``candidate_val_acc`` and ``candidate_evals`` (mean validation accuracy of the trial's candidate over its
  completed runs, which ranks the winners, and their number),
  ``test_acc`` and ``winner_rank`` (winners only: retrained on train+val and tested once), ``epochs_run``,
  ``train_seconds``, ``fail_reason``
- ``value_0``, ``value_1``: the raw objective values of a multi-objective study
- ``param_<name>``: every searched parameter exactly as Optuna sampled it. The prefix is kept on purpose:
  ``param_alpha`` is the *sampled upper bound* of the width multiplier while ``alpha`` is the one used.
- ``sampler``, ``objectives``: from the study's config.json when known.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import optuna
import pandas as pd

from archs.errors import UserError, mask_secrets

__all__ = ["StudySource", "open_sources", "open_study", "load", "load_stages", "find_stages", "TRIAL_COLUMNS"]

#: tidy columns in table order (``value_*``, ``param_*``, ``winner_dir`` follow)
TRIAL_COLUMNS = ["study", "number", "state", "infeasible", "duration_s", "datetime_start", "datetime_complete",
                 "blocks", "n_block_types", "n_stages", "depth", "resolution", "alpha", "rho", "mflops", "params",
                 "latency_ms", "sram_kb", "arena_kb", "flash_kb", "budget_share", "val_acc", "best_val_acc",
                 "confirms", "candidate_val_acc", "candidate_evals", "test_acc", "winner_rank", "epochs_run", "train_seconds", "fail_reason", "spec",
                 "sampler", "objectives"]

#: the numeric ones among them
NUMERIC = ["duration_s", "n_block_types", "n_stages", "depth", "resolution", "alpha", "rho", "mflops", "params",
           "latency_ms", "sram_kb", "arena_kb", "flash_kb", "budget_share", "val_acc", "best_val_acc", "confirms",
           "candidate_val_acc", "candidate_evals",
           "test_acc", "winner_rank", "epochs_run", "train_seconds"]
_NOT_BLOCKS = ("maxpool",)  # layer kinds recorded in `blocks` that are not catalog blocks
_STORAGE_FILES = ("study.db", "journal", "study.journal", "journal.log")


@dataclass
class StudySource:
    """Where one study lives: its folder (results/<study>/), its Optuna storage URL, its config.json."""

    name: str
    dir: Path | None = None
    storage: str | None = None
    study_name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    _study: optuna.Study | None = field(default=None, repr=False)

    @property
    def has_storage(self) -> bool:
        return self._study is not None or self.storage is not None

    def study(self) -> optuna.Study | None:
        """The Optuna study (loaded once), or None when only trials.csv is available."""
        if self._study is None and self.storage is not None:
            self._study = _load_study(self.storage, self.study_name)
        return self._study

    @property
    def multi(self) -> bool:
        st = self.study()
        if st is not None:
            return len(st.directions) > 1
        return len(self.config.get("objectives") or ["accuracy"]) > 1

    @property
    def objectives(self) -> list[str]:
        obj = self.config.get("objectives")
        if obj:
            return list(obj)
        return ["accuracy", "cost"] if self.multi else ["accuracy"]

    @property
    def sampler(self) -> str | None:
        return self.config.get("sampler")

    def budgets(self) -> dict[str, float]:
        """The hard budgets from config.json: keys among mflops, params, latency_ms, sram_kb, flash_kb."""
        out = {}
        for key, name in (("budget_mflops", "mflops"), ("budget_params", "params"),
                          ("budget_latency_ms", "latency_ms"), ("budget_sram_kb", "sram_kb"),
                          ("budget_flash_kb", "flash_kb")):
            v = self.config.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[name] = float(v)
        return out


# ----- opening ---------------------------------------------------------------------------------------------------
def _is_url(x: str) -> bool:
    return "://" in x


def _journal_storage(path: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


def _storage_for(url: str):
    """A URL or journal path -> something optuna.load_study accepts; never creates a database that is not there."""
    if not _is_url(url):
        p = Path(url)
        if not p.is_file():
            raise UserError(f"no such storage file: {url}")
        if p.suffix == ".db" or p.read_bytes()[:16].startswith(b"SQLite format 3"):
            return f"sqlite:///{p.resolve()}"
        return _journal_storage(p)
    if url.startswith("sqlite:///"):
        p = Path(url[len("sqlite:///"):])
        if not p.is_file():
            raise UserError(f"no such SQLite database: {p}")
    return url


@contextlib.contextmanager
def quiet_optuna():
    """Optuna's INFO logging off for the duration (restored afterwards: a notebook's own setting is kept)."""
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(old)


def _load_study(url: str, study_name: str | None) -> optuna.Study:
    with quiet_optuna():
        return _load_study_quiet(url, study_name)


def _load_study_quiet(url: str, study_name: str | None) -> optuna.Study:
    storage = _storage_for(url)
    try:
        names = optuna.get_all_study_names(storage)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - driver / file errors of any kind become one-line user errors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot open storage {mask_secrets(url)}: {mask_secrets(msg)[:300]}") from None
    if study_name is None:
        if len(names) != 1:
            raise UserError(f"storage {mask_secrets(url)} holds {len(names)} studies"
                            f"{' (' + ', '.join(names[:10]) + ')' if names else ''}; give the study name")
        study_name = names[0]
    elif study_name not in names:
        raise UserError(f"no study {study_name!r} in {mask_secrets(url)}"
                        f"{'; it holds ' + ', '.join(names[:10]) if names else ' (it holds no study)'}")
    return optuna.load_study(study_name=study_name, storage=storage)


def _read_config(d: Path) -> dict[str, Any]:
    p = d / "config.json"
    if not p.is_file():
        return {}
    try:
        cfg = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: not readable JSON ({e})") from None
    return cfg if isinstance(cfg, dict) else {}


def _local_storage(d: Path, cfg: dict[str, Any]) -> str | None:
    """The study's storage when it is a local file: OUT/STUDY/study.db, a journal, or config's sqlite/journal path.

    Remote storages (postgresql://, mysql://) are not opened automatically (their password is masked in
    config.json); the folder's trials.csv is read instead. Pass the URL to `load` to read them.
    """
    for name in _STORAGE_FILES:
        if (d / name).is_file():
            return str(d / name)
    url = cfg.get("storage")
    if isinstance(url, str) and url:
        if url.startswith("sqlite:///") and Path(url[len("sqlite:///"):]).is_file():
            return url
        if not _is_url(url):  # a journal file: as given (relative to where the search ran) or inside the folder
            for p in (Path(url), d / url, d / Path(url).name):
                if p.is_file():
                    return str(p)
    return None


def _source_from_dir(d: Path, study_name: str | None) -> StudySource:
    if not d.exists():
        raise UserError(f"no such folder: {d}")
    if not d.is_dir():
        raise UserError(f"{d} is not a study folder (expected results/<study>/ with study.db or trials.csv)")
    cfg = _read_config(d)
    storage = _local_storage(d, cfg)
    if storage is None and not (d / "trials.csv").is_file():
        inner = sorted(p.name for p in d.iterdir() if p.is_dir() and
                       ((p / "trials.csv").is_file() or (p / "study.db").is_file()))
        hint = f"; it holds the studies {', '.join(inner[:8])}{' ...' if len(inner) > 8 else ''}" if inner else ""
        raise UserError(f"{d} holds no study (no study.db or trials.csv){hint}")
    name = study_name or cfg.get("study_name") or d.name
    return StudySource(name=str(name), dir=d, storage=storage, study_name=study_name or cfg.get("study_name"),
                       config=cfg)


def open_sources(source: Any, study_name: str | None = None) -> list[StudySource]:
    """Resolve what `load` accepts (folder, list of folders, storage URL, optuna.Study) to StudySource objects."""
    if isinstance(source, StudySource):
        return [source]
    if isinstance(source, optuna.Study):
        return [StudySource(name=source.study_name, study_name=source.study_name, _study=source)]
    if isinstance(source, (list, tuple)):
        if not source:
            raise UserError("no study given")
        out = [s for x in source for s in open_sources(x, study_name)]
        seen: dict[str, int] = {}
        for s in out:  # the same study name from two folders: tell them apart by folder
            seen[s.name] = seen.get(s.name, 0) + 1
        for s in out:
            if seen[s.name] > 1 and s.dir is not None:
                s.name = f"{s.name} ({s.dir.parent.name or s.dir.parent})"
        return out
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a results folder, a storage URL, an optuna.Study or a list of them; "
                        f"got {type(source).__name__}")
    text = os.fspath(source)
    if _is_url(text):
        study = _load_study(text, study_name)
        return [StudySource(name=study.study_name, storage=text, study_name=study.study_name, _study=study)]
    p = Path(text)
    if p.is_file():
        if p.name.endswith(".csv"):
            d = p.parent
            cfg = _read_config(d)
            return [StudySource(name=study_name or cfg.get("study_name") or d.name, dir=d, config=cfg)]
        study = _load_study(text, study_name)
        cfg = _read_config(p.parent)
        return [StudySource(name=study.study_name, dir=p.parent, storage=text, study_name=study.study_name,
                            config=cfg if cfg.get("study_name") in (None, study.study_name) else {}, _study=study)]
    return [_source_from_dir(p, study_name)]


def open_study(source: Any, study_name: str | None = None) -> optuna.Study:
    """The optuna.Study of a results folder or storage URL (for optuna.visualization or your own code)."""
    srcs = open_sources(source, study_name)
    if len(srcs) != 1:
        raise UserError("open_study takes one study")
    st = srcs[0].study()
    if st is None:
        raise UserError(f"{srcs[0].dir} has no local Optuna storage (only trials.csv); pass the storage URL")
    return st


# ----- the trials table ----------------------------------------------------------------------------------------
def read_table(path: Path) -> pd.DataFrame:
    """pd.read_csv of a table this package wrote; an unreadable, unparsable or non-UTF-8 file is a UserError naming
    it (an empty one stays pandas' EmptyDataError for the caller to decide)."""
    try:
        return pd.read_csv(path)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                        "not a table edgenas wrote") from None
    except (OSError, pd.errors.ParserError) as e:
        raise UserError(f"{path}: cannot read ({(str(e).splitlines() or [type(e).__name__])[0]})") from None



def _raw_frame(src: StudySource) -> pd.DataFrame:
    study = src.study()
    if study is not None:
        from search.results import trials_frame

        return trials_frame(study)
    path = src.dir / "trials.csv"  # type: ignore[operator]
    try:
        df = read_table(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=["number", "state"])
    if "number" not in df.columns or "state" not in df.columns:
        raise UserError(f"{path} is not a trials table (no 'number' and 'state' columns)")
    for c in ("datetime_start", "datetime_complete"):
        if c in df.columns:
            df[c] = pd.to_datetime(df[c], errors="coerce")
    return df


def _winner_records(src: StudySource) -> list[dict[str, Any]]:
    """Winners from the study's user attribute 'winners', else from best/, top/<rank>/ and pareto/<n>/ metrics.json."""
    study = src.study()
    if study is not None:
        w = study.user_attrs.get("winners")
        if isinstance(w, list) and w:
            return [x for x in w if isinstance(x, dict)]
    if src.dir is None:
        return []
    out = []
    files = [src.dir / "best" / "metrics.json", *sorted(src.dir.glob("top/*/metrics.json")),
             *sorted(src.dir.glob("pareto/*/metrics.json"))]
    for f in files:
        if not f.is_file():
            continue
        try:
            m = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(m, dict) and "trial" in m:
            out.append({**m, "dir": str(f.parent)})
    return out


def _tidy(raw: pd.DataFrame, src: StudySource) -> pd.DataFrame:
    df = raw.rename(columns={"params_count": "params"}).copy()
    n = len(df)
    for col in TRIAL_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series([None] * n, dtype="object") if col in ("blocks", "spec", "fail_reason") else math.nan
    df["study"] = src.name
    df["sampler"] = src.sampler
    df["objectives"] = ",".join(src.objectives)
    fr = df["fail_reason"].astype("object")
    df["infeasible"] = fr.map(lambda s: isinstance(s, str) and s.startswith("infeasible")).astype(bool)
    blocks = df["blocks"].astype("object")
    df["n_block_types"] = blocks.map(lambda s: len([b for b in s.split("+") if b not in _NOT_BLOCKS])
                                     if isinstance(s, str) and s else math.nan)
    if "param_n_stages" in df.columns:
        df["n_stages"] = pd.to_numeric(df["param_n_stages"], errors="coerce")
    # the trained network's n_stages only exists for trials that were built
    df.loc[df["mflops"].isna(), "n_stages"] = math.nan
    df["test_acc"] = math.nan
    df["winner_rank"] = math.nan
    df["winner_dir"] = None
    for w in _winner_records(src):
        hit = df["number"] == w.get("trial")
        if hit.any():
            df.loc[hit, "test_acc"] = w.get("test_acc", math.nan)
            df.loc[hit, "winner_rank"] = w.get("rank", math.nan)
            df.loc[hit, "winner_dir"] = w.get("dir")
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["number"] = pd.to_numeric(df["number"], errors="coerce").astype("int64")
    values = sorted(c for c in df.columns if c.startswith("value_"))
    params = sorted(c for c in df.columns if c.startswith("param_"))
    cols = TRIAL_COLUMNS + values + params + ["winner_dir"]
    return df[cols].sort_values("number", kind="stable").reset_index(drop=True)


def load(source: Any, study_name: str | None = None) -> pd.DataFrame:
    """One row per trial of one or several studies (see the module docstring for the columns).

    `source`: a results folder (``results/<study>/`` with study.db and/or trials.csv), a trials.csv or study.db
    file, a list of those, an Optuna storage URL (with `study_name` when it holds several studies) or an
    ``optuna.Study``. The Optuna storage is preferred when present (it is the source of truth); test accuracy
    comes from the study's ``winners`` attribute or from the winner folders' metrics.json.
    """
    frames = [_tidy(_raw_frame(s), s) for s in open_sources(source, study_name)]
    frames = [f.astype({c: "object" for c in f.columns if f[c].isna().all()}) for f in frames]
    df = pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
    lead = [c for c in TRIAL_COLUMNS if c in df.columns]
    values = sorted(c for c in df.columns if c.startswith("value_"))
    params = sorted(c for c in df.columns if c.startswith("param_"))
    df = df[lead + values + params + ["winner_dir"]]
    for c in (*NUMERIC, *values):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["infeasible"] = df["infeasible"].astype(bool)
    return df


# ----- compression stages ----------------------------------------------------------------------------------------
def find_stages(path: str | os.PathLike) -> list[Path]:
    """stages.csv files for a path: the file itself, PATH/stages.csv, PATH/compress/stages.csv, PATH/*/stages.csv."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        return []
    for cand in (p / "stages.csv", p / "compress" / "stages.csv"):
        if cand.is_file():
            return [cand]
    return sorted(q for q in p.glob("*/stages.csv") if q.is_file())


def load_stages(path: str | os.PathLike | Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Compression stages as a DataFrame, one row per stage, original first (the columns of compress/stages.csv).

    `path`: a stages.csv, a compress output folder, or a study folder (``results/<study>/compress/stages.csv``).
    Added columns, when their inputs exist: ``run`` (the folder holding the stages.csv), ``step`` (0 = original),
    ``size_kb`` (size_bytes / 1024), ``sparsity`` (1 - nonzero_params / params) and ``acc_drop_points``
    (percentage points of test accuracy lost against the original).
    """
    paths: list[Path] = []
    items: Iterable = path if isinstance(path, (list, tuple)) else [path]
    for x in items:
        found = find_stages(x)
        if not found:
            raise UserError(f"no compression stages at {x} (looked for stages.csv, compress/stages.csv)")
        paths.extend(found)
    frames = []
    for f in paths:
        try:
            df = read_table(f)
        except pd.errors.EmptyDataError:
            raise UserError(f"{f}: cannot read (the file is empty)") from None
        if "stage" not in df.columns:
            raise UserError(f"{f} is not a compression stage table (no 'stage' column)")
        df.insert(0, "run", f.parent.name)
        df.insert(1, "step", range(len(df)))
        if "size_bytes" in df.columns:
            df["size_kb"] = pd.to_numeric(df["size_bytes"], errors="coerce") / 1024
        if {"nonzero_params", "params"} <= set(df.columns):
            df["sparsity"] = 1 - pd.to_numeric(df["nonzero_params"], errors="coerce") / pd.to_numeric(
                df["params"], errors="coerce")
        if "test_acc" in df.columns and len(df):
            acc = pd.to_numeric(df["test_acc"], errors="coerce")
            df["acc_drop_points"] = 100 * (acc.iloc[0] - acc)
        frames.append(df)
    return pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
