"""The README's shell examples run, in the order written, on a fresh copy of the checkout.

Every command of every ```bash block is run with the same flags, plus small trial and epoch counts (`_small`), in
a copy of the files git tracks (no results/, no .venv) as the working directory; only the commands in `SKIP` are
not run, each for the reason given there. A command that is neither run nor skipped fails the test, so a new
README example is either walked or explicitly excused.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from archs.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]

#: (how a command starts or what it contains, why it is not run here)
SKIP = [
    ("make ", "builds a virtual environment and installs packages from the registry (minutes, needs the network)"),
    (". .venv/bin/activate", "this test already runs inside the environment"),
    ("--download", "downloads a data set (needs the internet)"),
    ("--device cuda", "needs a GPU"),
    ("postgresql://", "needs a PostgreSQL server"),
    ("sudo ", "installs and configures a PostgreSQL server (root)"),
    (".ci/postgres.sh", "starts a PostgreSQL server"),
    ("export PGPASSWORD", "only for the PostgreSQL example"),
    (".venv/bin/python -m pytest", "the PostgreSQL tests (skipped without a server)"),
    ("optuna-dashboard ", "starts a web server that runs until stopped"),
]

#: README commands that fail today for a reason outside the walk, each with that reason; they are still run, and
#: the test fails when one of them starts to pass (remove it here then)
KNOWN_FAILING: dict[str, str] = {}  # none now: the mcu32 --export tflite example passes since the exporter's fixes

#: flags made small (value -> small value) and, per module, appended when the command does not set them
_EPOCH_FLAGS = ("--epochs", "--final-epochs", "--finetune-epochs", "--teacher-epochs", "--distill-epochs")
_APPEND = {"search.run": ["--trials", "3", "--epochs", "1", "--final-epochs", "1", "--quiet"],
           "compress.train": ["--epochs", "1", "--quiet"],
           "compress.run": ["--finetune-epochs", "1", "--teacher-epochs", "1", "--distill-epochs", "1",
                            "--calib-images", "32", "--no-latency", "--quiet"],
           "analysis.report": ["--quiet"]}


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks, in order, continuation lines joined."""
    cmds = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                cmds.append(line.strip())
    return cmds


def _small_trials(n: int) -> int:
    """Keeps the order of study sizes (a resume to more trials still adds trials), at most 4."""
    return min(4, max(2, round(n / 10)))


def _small(argv: list[str]) -> list[str]:
    """The same command with small trial and epoch counts (and at most 2 local workers)."""
    module = argv[2] if len(argv) > 2 and argv[1] == "-m" else ""
    out, i = list(argv), 0
    while i < len(out) - 1:
        flag, val = out[i], out[i + 1]
        if flag == "--trials":
            out[i + 1] = str(_small_trials(int(val)))
        elif flag in _EPOCH_FLAGS:
            out[i + 1] = "1"
        elif flag == "--n-workers":
            out[i + 1] = str(min(2, int(val)))
        i += 1
    extra, k = _APPEND.get(module, []), 0
    while k < len(extra):
        flag = extra[k]
        takes_value = k + 1 < len(extra) and not extra[k + 1].startswith("--")
        if flag not in out:
            out += extra[k:k + 2] if takes_value else [flag]
        k += 2 if takes_value else 1
    return out


def _skip_reason(cmd: str) -> str | None:
    for needle, why in SKIP:
        if cmd.startswith(needle) or f" {needle}" in f" {cmd}":
            return why
    return None


def _fresh_checkout(dest: Path) -> Path:
    """The files git tracks or would track (no results/, no .venv), copied to `dest`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def test_readme_commands_parse_and_every_one_is_run_or_excused():
    cmds = readme_commands((ROOT / "README.md").read_text())
    assert len(cmds) >= 15
    for c in cmds:
        argv = shlex.split(c, comments=True)
        assert argv, c
        assert _skip_reason(c) or argv[0] == "python", f"README command neither run nor excused: {c}"


def test_small_keeps_the_command_and_shrinks_its_counts():
    argv = shlex.split("python -m search.run --budget-mflops 50 --study-name d --trials 40 --resume")
    assert _small(argv)[:8] == ["python", "-m", "search.run", "--budget-mflops", "50", "--study-name", "d",
                                "--trials"]
    assert _small(argv)[8] == "4" and "--resume" in _small(argv) and _small(argv).count("--trials") == 1
    assert _small_trials(30) < _small_trials(40)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """Run `python -m MODULE ARGS` (through the module's `main`, as its __main__ does) or `python -c CODE` in this
    process: the same code, without paying the torch import for each of the README's commands."""
    import importlib

    import torch

    threads = torch.get_num_threads()
    try:
        if argv[1] == "-m":
            mod = importlib.import_module(argv[2])
            try:
                run_cli(mod.main, argv[3:], prog=f"python -m {argv[2]}")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                return code, capsys.readouterr().err
        elif argv[1] == "-c":
            exec(compile(argv[2], "<README>", "exec"), {"__name__": "__main__"})
        else:
            raise AssertionError(f"cannot run {argv}")
        return 0, capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_readme_examples_run_in_order_on_a_fresh_checkout(tmp_path: Path, monkeypatch, capsys):
    repo = _fresh_checkout(tmp_path / "edgenas")
    assert not (repo / "results" / "digits50").exists()
    monkeypatch.chdir(repo)  # every relative path of the README is the fresh copy's
    monkeypatch.setenv("EDGENAS_DATA_DIR", str(tmp_path / "data"))
    ran, skipped = [], []
    for cmd in readme_commands((repo / "README.md").read_text()):
        why = _skip_reason(cmd)
        if why:
            skipped.append((cmd, why))
            continue
        code, err = _run(_small(shlex.split(cmd, comments=True)), capsys)
        known = next((k for k in KNOWN_FAILING if cmd.startswith(k)), None)
        if known:
            assert code != 0, f"README command now passes: remove it from KNOWN_FAILING: {cmd}"
            continue
        assert code == 0, f"README command failed ({code}): {cmd}\n{err[-3000:]}"
        ran.append(cmd)
    assert len(ran) >= 12, ran
    # what the examples promise they make
    res = repo / "results"
    for f in ("digits50/best/model.onnx", "digits50-random/best/metrics.json", "pareto5/pareto/1/spec.json",
              "lenet-deep-compression/stages.csv", "digits50-channels-int8/02_quantize_int8/model_int8.onnx",
              "digits50-lowrank-distill/stages.csv", "compare/report.md", "digits50/report.md"):
        assert (res / f).is_file(), f
    assert not (res / "pareto5" / "best").exists()
