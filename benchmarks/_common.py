"""What every benchmark shares: its two seed sets, the --seeds/--quick/--shared-machine flags and one JSON writer.

Development seeds are for changing code or settings (choose on validation accuracy); report seeds are fixed
here before any run and used only for the figures the README reports. Every JSON a benchmark writes carries
the command, date, git commit and machine, so a committed figure says where it came from.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]

DEV_SEEDS: tuple[int, ...] = (0, 1, 2)  # used while tuning; figures on them are labelled "development seeds"
REPORT_SEEDS: tuple[int, ...] = (100, 101, 102)  # fixed 2026-12-01 before any run; never used to choose anything


def add_common_args(ap: argparse.ArgumentParser, seeds: bool = True) -> None:
    """--seeds dev|report|N..., --quick (a seconds-long smoke run) and --shared-machine (recorded in the JSON)."""
    if seeds:
        ap.add_argument("--seeds", nargs="+", default=["dev"],
                        help=f"'dev' ({' '.join(map(str, DEV_SEEDS))}, for choosing anything), 'report' "
                             f"({' '.join(map(str, REPORT_SEEDS))}, for reported figures only) or integers")
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (CI runs it; no figure)")
    ap.add_argument("--shared-machine", action="store_true",
                    help="record that other jobs shared the machine (wall-clock figures are then noisy)")


def resolve_seeds(values: Sequence[str | int]) -> list[int]:
    """'dev' / 'report' / integers -> a list of seeds."""
    out: list[int] = []
    for v in values:
        if str(v) == "dev":
            out += DEV_SEEDS
        elif str(v) == "report":
            out += REPORT_SEEDS
        else:
            try:
                out.append(int(v))
            except ValueError:
                raise SystemExit(f"--seeds: expected 'dev', 'report' or integers, got {v!r}") from None
    return out


def seed_kind(seeds: Sequence[int]) -> str:
    """'report', 'dev' or 'other' (a mix or seeds outside both sets)."""
    if seeds and set(seeds) <= set(REPORT_SEEDS):
        return "report"
    if seeds and set(seeds) <= set(DEV_SEEDS):
        return "dev"
    return "other"


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _code_state() -> dict[str, Any]:
    """The commit and tree state the run's code came from, taken once when the benchmark starts (a run can outlast
    later commits to the same checkout: the JSON must name the code that ran, not the code at writing time)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _git("rev-parse", "HEAD"), "uncommitted_changes": bool(status) if status is not None else None}


_START = _code_state()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(shared: bool) -> dict[str, Any]:
    """The machine a figure was measured on."""
    import torch

    return {"cpus": os.cpu_count(), "cpu_model": _cpu_model(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "shared_machine": bool(shared),
            "load_average": list(os.getloadavg())}


def provenance(args: argparse.Namespace | None = None, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Command, date written, start time, commit at the start (and whether the tree had uncommitted changes), machine and seed set of a run."""
    from archs.errors import mask_secrets

    return {"command": mask_secrets(" ".join(shlex.quote(a) for a in ["python", *sys.argv])),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **_START,
            "machine": machine(bool(getattr(args, "shared_machine", False))),
            "seeds": list(seeds) if seeds is not None else None,
            "seed_set": seed_kind(seeds) if seeds is not None else None,
            "quick": bool(getattr(args, "quick", False))}


def write_results(path: str | Path, result: dict[str, Any], args: argparse.Namespace | None = None,
                  seeds: Sequence[int] | None = None) -> Path:
    """Write `result` plus its provenance ("meta") as JSON, atomically; returns the path."""
    from archs.io import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"meta": provenance(args, seeds), **result})
    return path
