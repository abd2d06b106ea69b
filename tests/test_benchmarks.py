"""Every benchmark's --quick smoke run, once, so that none can silently rot; and the seed sets they declare."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import DEV_SEEDS, REPORT_SEEDS, resolve_seeds, seed_kind  # noqa: E402

# benchmark -> the flag naming its JSON output (the scripts predate one common name)
BENCHMARKS = {"search_quality": "--json", "make_run": "--json", "compression": "--json", "augment": "--json",
              "val_noise": "--json", "prune_steps": "--json", "count_speed": "--out", "train_throughput": "--out",
              "workers": "--out"}


def test_every_benchmark_script_is_smoke_tested():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert scripts - {"specgen"} == set(BENCHMARKS)  # specgen is a library of random specs, not a benchmark


def test_report_seeds_are_disjoint_from_development_seeds():
    assert not set(DEV_SEEDS) & set(REPORT_SEEDS) and len(REPORT_SEEDS) >= 3
    assert resolve_seeds(["report"]) == list(REPORT_SEEDS) and resolve_seeds(["dev", "7"]) == [*DEV_SEEDS, 7]
    assert seed_kind(REPORT_SEEDS) == "report" and seed_kind([0]) == "dev" and seed_kind([0, 100]) == "other"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_quick_run_writes_json_with_provenance(name, tmp_path):
    out = tmp_path / f"{name}.json"
    extra = {"search_quality": ["--out", str(tmp_path / "studies")], "make_run": ["--out", str(tmp_path / "mr")],
             "compression": ["--out", str(tmp_path / "comp")]}.get(name, [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", BENCHMARKS[name],
                           str(out), *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    meta = result["meta"]
    assert meta["quick"] is True and meta["command"].startswith("python ") and "--quick" in meta["command"]
    assert meta["date"] and meta["machine"]["cpus"] and meta["machine"]["torch"]
    assert "shared_machine" in meta["machine"]
    if (ROOT / ".git").exists():
        assert len(meta["commit"]) == 40
