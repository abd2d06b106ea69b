"""Bad input to `python -m search.run`: exit code 2, exactly one stderr line naming the problem, no traceback,
nothing created or changed under --out (or anywhere else), and never a password in any output or file.

Every case is a real CLI subprocess. They are independent, so a module fixture starts them all at once (three
at a time: most of each one is importing torch) and each test checks one result.

Budget parsing basics -- zero, negative, NaN, not a number, no budget, --trials 0, --epochs -1, unknown data set,
'../escape' -- are in tests/test_search.py::test_user_mistakes_give_one_line_errors.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
import torch

from archs import build
from archs.io import save_model_dir
from archs.spec import HeadSpec, NetSpec, StageSpec, StemSpec

from postgres_helpers import cli_env, pg_url, unique_study

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cretPW-do-not-print"
ABS_NAME = f"/tmp/edgenas-abs-{os.getpid()}"


@dataclass
class Case:
    """args(tmp) -> CLI arguments (may prepare files in tmp); `needle` must appear in the one stderr line."""

    args: Callable[[Path], list[str]]
    needle: str
    secret: str | None = None
    postgres: bool = False


def fixed(*a: str) -> Callable[[Path], list[str]]:
    return lambda tmp: list(a)


# ----- teachers to distill from: a valid model directory, then hand-edited or corrupted -----------------------------
def make_teacher(tmp: Path) -> Path:
    spec = NetSpec(num_classes=10, in_chans=1, resolution=8, stem=StemSpec(8, 3, 1),
                   stages=[StageSpec("dws", 16, 1, 2, 3, {})], head=HeadSpec("pool"))
    d = tmp / "teacher"
    save_model_dir(d, build(spec), {"note": "test teacher"})
    return d


def spec_edit(edit) -> Callable[[Path], list[str]]:
    def args(tmp: Path) -> list[str]:
        d = make_teacher(tmp)
        spec = json.loads((d / "spec.json").read_text())
        edit(spec)
        (d / "spec.json").write_text(json.dumps(spec))
        return ["--budget-mflops", "1", "--distill-from", str(d)]
    return args


def file_edit(name: str, edit) -> Callable[[Path], list[str]]:
    def args(tmp: Path) -> list[str]:
        d = make_teacher(tmp)
        edit(d / name)
        return ["--budget-mflops", "1", "--distill-from", str(d)]
    return args


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def folder_without_images(tmp: Path) -> list[str]:
    (tmp / "imgs/cat").mkdir(parents=True)
    (tmp / "imgs/cat/notes.txt").write_text("not an image")
    return ["--budget-mflops", "1", "--dataset", f"folder:{tmp / 'imgs'}"]


def torchvision_empty(name: str) -> Callable[[Path], list[str]]:
    def args(tmp: Path) -> list[str]:
        (tmp / "empty").mkdir()
        return ["--budget-mflops", "1", "--dataset", name, "--data-dir", str(tmp / "empty")]
    return args


def existing_study(tmp: Path) -> list[str]:
    d = tmp / "out" / "s1"
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"trials": 3}\n')
    (d / "trials.csv").write_text("number,state\n0,COMPLETE\n")
    return ["--budget-mflops", "1", "--study-name", "s1"]


def wrong_password(tmp: Path) -> list[str]:
    real = urlsplit(pg_url())
    bad = urlunsplit(real._replace(netloc=f"{real.username}:{SECRET}@{real.hostname}:{real.port or 5432}"))
    return ["--budget-mflops", "1", "--storage", bad, "--study-name", unique_study("pw")]


CASES: dict[str, Case] = {
    # flags and budgets
    "latency-zero": Case(fixed("--budget-latency-ms", "0"), "must be positive"),
    "params-negative": Case(fixed("--budget-params=-5k"), "must be positive"),
    "mflops-inf": Case(fixed("--budget-mflops", "inf"), "finite"),
    "impossible-params": Case(fixed("--budget-params", "10"), "impossible budget"),
    "impossible-latency": Case(fixed("--budget-mflops", "0.02", "--budget-latency-ms", "0.00001"), "impossible budget"),
    "trials-negative": Case(fixed("--budget-mflops", "1", "--trials=-3"), "--trials"),
    "final-epochs-negative": Case(fixed("--budget-mflops", "1", "--final-epochs=-1"), "--final-epochs"),
    "n-workers-zero": Case(fixed("--budget-mflops", "1", "--n-workers", "0"), "--n-workers"),
    "timeout-zero": Case(fixed("--budget-mflops", "1", "--timeout", "0"), "--timeout"),
    "device-unknown": Case(fixed("--budget-mflops", "1", "--device", "tpu"), "device"),
    "screen-proxy-unknown": Case(fixed("--budget-mflops", "1", "--screen", "5", "--screen-proxy", "zico"),
                                 "--screen-proxy must be one of"),
    "screen-negative": Case(fixed("--budget-mflops", "1", "--screen=-1"), "--screen must be an integer"),
    "width-unknown": Case(fixed("--budget-mflops", "1", "--width", "beta"), "--width"),
    # data
    "folder-missing": Case(fixed("--budget-mflops", "1", "--dataset", "folder:/nonexistent/edgenas"),
                           "/nonexistent/edgenas"),
    "folder-no-images": Case(folder_without_images, "no images"),
    "mnist-not-downloaded": Case(torchvision_empty("mnist"), "--download"),
    "cifar10-not-downloaded": Case(torchvision_empty("cifar10"), "--download"),
    # hand-edited or corrupt teacher (--distill-from)
    "spec-unknown-block": Case(spec_edit(lambda s: s["stages"][0].update(block="transformer")), "unknown block"),
    "spec-negative-channels": Case(spec_edit(lambda s: s["stages"][0].update(channels=-16)), "channels"),
    "spec-channels-string": Case(spec_edit(lambda s: s["stages"][0].update(channels="sixteen")), "integer"),
    "spec-stages-not-list": Case(spec_edit(lambda s: s.update(stages="dws")), "stages"),
    "spec-truncated": Case(file_edit("spec.json", lambda p: p.write_text(p.read_text()[:150])), "not valid JSON"),
    "weights-truncated": Case(file_edit("model.pt", lambda p: p.write_bytes(p.read_bytes()[:3000])),
                              "cannot load checkpoint"),
    "weights-garbage": Case(file_edit("model.pt", lambda p: p.write_bytes(b"\x00garbage" * 100)),
                            "cannot load checkpoint"),
    "weights-pickle-exploit": Case(file_edit("model.pt", lambda p: torch.save({"w": _Evil()}, p)),
                                   "cannot load checkpoint"),
    "weights-do-not-match-spec": Case(spec_edit(lambda s: s["stages"][0].update(channels=24)), "does not match"),
    "teacher-missing": Case(lambda tmp: ["--budget-mflops", "1", "--distill-from", str(tmp / "nope")], "not found"),
    # storage
    "storage-unreachable": Case(fixed("--budget-mflops", "1", "--storage",
                                      f"postgresql://edgenas:{SECRET}@127.0.0.1:1/nas", "--study-name", "s"),
                                "postgresql://edgenas:***@127.0.0.1:1/nas", secret=SECRET),
    "storage-bad-port": Case(fixed("--budget-mflops", "1", "--storage",
                                   f"postgresql://u:{SECRET}@127.0.0.1:notaport/db", "--study-name", "s"),
                             "cannot open storage", secret=SECRET),
    "storage-empty": Case(fixed("--budget-mflops", "1", "--storage", "  ", "--study-name", "s"), "--storage"),
    "storage-wrong-password": Case(wrong_password, "password authentication failed", secret=SECRET, postgres=True),
    "storage-resume-missing-study": Case(lambda tmp: ["--budget-mflops", "1", "--storage", pg_url(), "--study-name",
                                                      unique_study("none"), "--resume"],
                                         "nothing to resume", postgres=True),
    # study names that would write outside --out; an existing study folder
    "name-dotdot": Case(fixed("--budget-mflops", "1", "--study-name", "../x"), "--study-name"),
    "name-slash": Case(fixed("--budget-mflops", "1", "--study-name", "a/b"), "--study-name"),
    "name-absolute": Case(fixed("--budget-mflops", "1", "--study-name", ABS_NAME), "--study-name"),
    "name-parent": Case(fixed("--budget-mflops", "1", "--study-name", ".."), "--study-name"),
    "name-empty": Case(fixed("--budget-mflops", "1", "--study-name", ""), "--study-name"),
    "existing-study-folder": Case(existing_study, "already exists"),
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple]:
    """Prepare every case, run all CLIs three at a time; id -> (tmp, completed process, files before, files after)."""
    have_pg = bool(os.environ.get("EDGENAS_PG_URL"))
    prepared = {}
    for cid, case in CASES.items():
        if case.postgres and not have_pg:
            continue
        tmp = tmp_path_factory.mktemp(cid)
        args = case.args(tmp)
        prepared[cid] = (tmp, [*args, "--out", str(tmp / "out"), "--quiet"], snapshot(tmp))

    def run(cid: str):
        tmp, args, before = prepared[cid]
        env = cli_env({"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
        r = subprocess.run([sys.executable, "-m", "search.run", *args], cwd=tmp, capture_output=True, text=True,
                           timeout=300, env=env)
        return cid, (tmp, r, before, snapshot(tmp))

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, prepared))


@pytest.mark.parametrize("cid", [pytest.param(c, marks=pytest.mark.postgres) if CASES[c].postgres else c
                                 for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(results, cid: str):
    case = CASES[cid]
    if case.postgres:
        pg_url()  # skip (developer machine) or fail (CI) without a server
    tmp, r, before, after = results[cid]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("python -m search.run: error: ") and case.needle in lines[0], lines[0]
    assert after == before, "a rejected command must not create or change any file"
    for secret in (SECRET, urlsplit(os.environ.get("EDGENAS_PG_URL", "")).password):
        if secret:
            assert secret not in r.stdout and secret not in r.stderr
    if cid == "name-absolute":
        assert not Path(ABS_NAME).exists()
    if cid == "name-dotdot":
        assert not (tmp / "x").exists()
    if cid == "weights-pickle-exploit":
        assert not (tmp / "PWNED").exists() and not (ROOT / "PWNED").exists()
    if cid in ("mnist-not-downloaded", "cifar10-not-downloaded"):
        assert not any((tmp / "empty").iterdir()), "nothing may be downloaded without --download"
