"""Atomic file writes and model directories (spec.json + model.pt + metrics.json), loaded safely."""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import SpecError, UserError
from .spec import NetSpec


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`; on any error the temporary
    file is removed and an OSError names `path` (a full disk's write error names no file by itself)."""
    path = Path(path)
    try:
        _atomic_write(path, data)
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete folder `new` in place of `target` (renames only; the old `target` is deleted last)."""
    import shutil

    new, target = Path(new), Path(target)
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_state_dict(path: str | os.PathLike, state: dict) -> None:
    """torch.save a state_dict atomically."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with weights_only=True; a corrupt or truncated file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes): it was never completely written")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" not in str(e).lower():  # garbage, not a refused object
            raise UserError(f"cannot load checkpoint {path}: not a PyTorch checkpoint (unpickling failed)") from None
        # what weights_only refuses: Python objects that could run code when loaded (torch's own message goes on
        # to suggest weights_only=False, which is exactly what must not be done with a file one does not trust)
        raise UserError(f"cannot load checkpoint {path}: refused, it holds Python objects other than tensors and "
                        "loading them could run arbitrary code; save a plain state_dict (tensors only)") from None
    except Exception as e:  # truncated zip, garbage
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"cannot load checkpoint {path}: {type(e).__name__}{': ' + first if first else ''}") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} does not hold a state_dict")
    return state


def read_spec(path: str | os.PathLike) -> NetSpec:
    """Read and validate a spec.json; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"spec file not found: {path}")
    try:
        return NetSpec.from_json(path.read_text())
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def save_model_dir(directory: str | os.PathLike, model: torch.nn.Module, metrics: dict | None = None,
                   spec: NetSpec | None = None) -> Path:
    """Write spec.json, model.pt (state_dict) and metrics.json into `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    spec = spec or getattr(model, "spec", None)
    if spec is None:
        raise ValueError("save_model_dir needs a model built from a NetSpec or an explicit spec")
    atomic_write_text(d / "spec.json", spec.to_json() + "\n")
    save_state_dict(d / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    if metrics is not None:
        atomic_write_json(d / "metrics.json", metrics)
    return d


def load_model_dir(directory: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the model of a model directory: returns (model in eval mode, spec, metrics dict).

    ``metrics["preprocessing"]`` (see `load_preprocessing`) says how to prepare raw images for it."""
    from .builder import build

    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"model directory not found: {d}")
    spec = read_spec(d / "spec.json")
    model = build(spec)
    state = load_state_dict(d / "model.pt", map_location)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"{d / 'model.pt'} does not match {d / 'spec.json'}: {first}") from None
    metrics = {}
    if (d / "metrics.json").is_file():
        try:
            metrics = json.loads((d / "metrics.json").read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{d / 'metrics.json'} is not valid JSON: {e.msg}") from None
    return model.eval(), spec, metrics


def load_preprocessing(directory: str | os.PathLike):
    """The input contract (`archs.preprocess.Preprocessing`) recorded in a model directory's metrics.json.

    Kept apart from `load_model_dir`, which returns (model, spec, metrics) as before; the same record is
    ``metrics["preprocessing"]`` there. A folder written before the record existed is a UserError naming it.
    """
    from .preprocess import PREPROCESSING_KEY, Preprocessing

    d = Path(directory)
    f = d / "metrics.json"
    if not f.is_file():
        raise UserError(f"{f} not found: the folder does not say how to prepare its input")
    try:
        metrics = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{f} is not valid JSON: {e}") from None
    rec = metrics.get(PREPROCESSING_KEY) if isinstance(metrics, dict) else None
    if not isinstance(rec, dict):
        raise UserError(f"{f} has no '{PREPROCESSING_KEY}' record (written by an older edgenas): retrain or "
                        "re-run the compression to get one")
    return Preprocessing.from_dict(rec)
