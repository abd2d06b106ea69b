"""analysis: tidy trial tables from real (small) studies, Pareto fronts, summaries, plots and the report CLI."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

import analysis
from analysis.report import main as report_main
from archs.errors import UserError
from search.run import main as search_main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--budget-mflops", "0.05", "--trials", "4", "--epochs", "1", "--final-epochs", "1", "--top-k", "1",
        "--quiet"]


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, Path]:
    """Three real studies on the embedded digits data: TPE, random, and a Pareto (accuracy, MFLOPs) NSGA-II."""
    out = tmp_path_factory.mktemp("results")
    search_main([*FAST, "--study-name", "tpe", "--out", str(out)])
    search_main([*FAST, "--study-name", "rand", "--sampler", "random", "--seed", "1", "--out", str(out)])
    search_main([*FAST, "--study-name", "mo", "--objectives", "accuracy,mflops", "--sampler", "nsga2", "--out",
                 str(out)])
    return {name: out / name for name in ("tpe", "rand", "mo")}


def _study(d: Path) -> optuna.Study:
    return optuna.load_study(study_name=d.name, storage=f"sqlite:///{d / 'study.db'}")


STAGES_CSV = """stage,kind,test_acc,val_acc,mflops,params,nonzero_params,size_bytes,compression_ratio,latency_b1_ms,latency_b64_ms,seconds,artifact,dir
original,original,0.95,0.96,0.036,4802,4802,24310,1.0,0.09,0.56,0.0,00_original/model.pt,00_original
prune_magnitude0.5,prune,0.93,0.94,0.036,4802,2426,24310,1.0,0.09,0.48,2.6,01_prune_magnitude0.5/model.pt,01_prune_magnitude0.5
share_5bit,share,0.92,0.93,0.036,4802,2426,24310,1.0,0.09,0.48,3.1,02_share_5bit/model.pt,02_share_5bit
huffman,huffman,0.92,0.93,0.036,4802,2426,3051,7.97,0.09,0.48,0.4,03_huffman/model.huff,03_huffman
"""


# ----- load ------------------------------------------------------------------------------------------------------
def test_load_matches_the_study(studies):
    d = studies["tpe"]
    df = analysis.load(d)
    study = _study(d)
    trials = study.trials
    assert len(df) == len(trials) and list(df["number"]) == [t.number for t in trials]
    assert list(df["state"]) == [t.state.name for t in trials]
    for col in ("study", "number", "state", "duration_s", "blocks", "n_stages", "depth", "resolution", "alpha", "rho",
                "mflops", "params", "latency_ms", "budget_share", "val_acc", "test_acc", "fail_reason", "infeasible"):
        assert col in df.columns, col
    assert set(df["study"]) == {"tpe"} and set(df["sampler"]) == {"tpe"}
    searched = {f"param_{k}" for t in trials for k in t.params}
    assert searched == {c for c in df.columns if c.startswith("param_")}
    for t, row in zip(trials, df.itertuples()):
        for k, v in t.params.items():
            assert getattr(row, f"param_{k}") == v
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert row.val_acc == pytest.approx(t.values[0])
            assert row.mflops == pytest.approx(t.user_attrs["mflops"]) and row.params == t.user_attrs["params_count"]
            assert 0 <= row.budget_share <= 1 and row.depth >= 1 and not row.infeasible
        assert row.infeasible == str(t.user_attrs.get("fail_reason", "")).startswith("infeasible")
        assert row.duration_s >= 0
    assert (df["state"] == "COMPLETE").sum() >= 1
    # the winner: retrained and tested once; its test accuracy comes back, everybody else's is NaN
    metrics = json.loads((d / "best" / "metrics.json").read_text())
    win = df[df["test_acc"].notna()]
    assert list(win["number"]) == [metrics["trial"]] and list(win["winner_rank"]) == [1]
    assert win["test_acc"].iloc[0] == pytest.approx(metrics["test_acc"])


def test_load_from_trials_csv_and_from_a_storage_url_agree(studies, tmp_path):
    d = studies["tpe"]
    full = analysis.load(d)
    csv_only = tmp_path / "tpe"
    shutil.copytree(d, csv_only, ignore=shutil.ignore_patterns("study.db", "*.onnx", "*.pt"))
    from_csv = analysis.load(csv_only)  # no storage: trials.csv + best/metrics.json
    assert list(from_csv.columns) == list(full.columns)
    assert len(from_csv) == len(full)
    for col in ("number", "state", "mflops", "params", "val_acc", "test_acc", "depth", "param_alpha", "param_rho"):
        pd.testing.assert_series_equal(from_csv[col], full[col], check_dtype=False, check_exact=False, rtol=1e-9)
    by_url = analysis.load(f"sqlite:///{d / 'study.db'}", study_name="tpe")
    assert list(by_url["number"]) == list(full["number"])
    assert by_url["test_acc"].notna().sum() == 1  # winners from the study's user attribute


def test_load_several_studies(studies):
    df = analysis.load([studies["tpe"], studies["rand"]])
    assert list(dict.fromkeys(df["study"])) == ["tpe", "rand"]
    assert len(df) == len(_study(studies["tpe"]).trials) + len(_study(studies["rand"]).trials)
    assert set(df.loc[df["study"] == "rand", "sampler"]) == {"random"}
    assert df.groupby("study")["test_acc"].count().to_dict() == {"rand": 1, "tpe": 1}


def test_multi_objective_study(studies):
    d = studies["mo"]
    df = analysis.load(d)
    study = _study(d)
    assert len(df) == len(study.trials)
    done = df[df["state"] == "COMPLETE"]
    assert np.allclose(done["value_0"], done["val_acc"]) and np.allclose(done["value_1"], done["mflops"])
    assert set(df["objectives"]) == {"accuracy,mflops"}
    # our Pareto front of (val_acc up, mflops down) is exactly Optuna's best_trials
    front = analysis.pareto(df, maximize="val_acc", minimize=["mflops"])
    assert set(front["number"]) == {t.number for t in study.best_trials}
    # every Pareto winner was retrained and tested (pareto/<n>/)
    winners = df[df["winner_rank"].notna()]
    assert set(winners["number"]) == {t.number for t in study.best_trials}
    assert winners["test_acc"].between(0, 1).all()
    assert all((d / "pareto" / str(int(r))).is_dir() for r in winners["winner_rank"])


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        analysis.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no study"):
        analysis.load(tmp_path / "empty")
    with pytest.raises(UserError, match="no such SQLite"):
        analysis.load(f"sqlite:///{tmp_path / 'nope.db'}")
    assert not (tmp_path / "nope.db").exists()  # never creates a database


# ----- tables on hand-made data ---------------------------------------------------------------------------------
def _table(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["number", "val_acc", "mflops", "params", "blocks"])


def test_pareto_with_ties_and_duplicates():
    df = _table([
        (0, 0.90, 10.0, 100, "dws"),
        (1, 0.90, 10.0, 100, "dws"),     # exact duplicate of 0: both on the front
        (2, 0.90, 12.0, 90, "ir"),       # same accuracy, more MFLOPs: dominated by 0
        (3, 0.95, 20.0, 300, "ir"),      # more accurate, more MFLOPs: front
        (4, 0.80, 5.0, 50, "fire"),      # cheapest: front
        (5, 0.80, 6.0, 40, "fire"),      # same accuracy as 4, costs more: dominated
        (6, 0.95, 25.0, 10, "conv"),     # same accuracy as 3, costs more: dominated
        (7, 0.99, math.nan, 10, "conv"),  # no cost (pruned): ignored
        (8, math.nan, 1.0, 10, "conv"),   # no accuracy: ignored
        (9, 0.70, 5.0, 60, "lowrank"),    # same cost as 4, less accurate: dominated
    ])
    front = analysis.pareto(df, maximize="val_acc", minimize=["mflops"])
    assert list(front["number"]) == [4, 0, 1, 3]  # sorted by MFLOPs, ties by trial number
    # two costs: 2, 5 and 6 become non-dominated (fewer params)
    front2 = analysis.pareto(df, maximize="val_acc", minimize=["mflops", "params"])
    assert set(front2["number"]) == {0, 1, 2, 3, 4, 5, 6}
    # only the maximize side: every row with the highest accuracy
    assert set(analysis.pareto(df, maximize="val_acc", minimize=[])["number"]) == {7}
    # per study
    two = pd.concat([df.assign(study="a"), df.assign(study="b", val_acc=df["val_acc"] * 0.5)])
    per = analysis.pareto(two, per_study=True)
    assert per.groupby("study")["number"].apply(list).to_dict() == {"a": [4, 0, 1, 3], "b": [4, 0, 1, 3]}
    assert analysis.pareto(df.iloc[0:0]).empty


def test_best_under_and_by_block():
    df = _table([
        (0, 0.90, 10.0, 1000, "dws"),
        (1, 0.92, 30.0, 5000, "dws+ir"),
        (2, 0.80, 5.0, 400, "fire"),
        (3, 0.92, 20.0, 4000, "ir"),
        (4, math.nan, 8.0, 900, "maxpool+fire"),  # pruned: no accuracy
        (5, math.nan, math.nan, math.nan, None),  # infeasible: never built
    ])
    assert list(analysis.best_under(df, mflops=50)["number"]) == [3]  # tie on accuracy: fewer MFLOPs wins
    assert list(analysis.best_under(df, mflops=15)["number"]) == [0]
    assert list(analysis.best_under(df, mflops=15, params="0.5k")["number"]) == [2]
    assert list(analysis.best_under(df, mflops=50, n=3)["number"]) == [3, 1, 0]
    assert analysis.best_under(df, mflops=1).empty
    b = analysis.by_block(df).set_index("block")
    assert set(b.index) == {"dws", "ir", "fire"}  # maxpool is a downsampling layer, not a catalog block
    assert b.loc["dws", "trials"] == 2 and b.loc["dws", "completed"] == 2
    assert b.loc["fire", "trials"] == 2 and b.loc["fire", "completed"] == 1
    assert b.loc["ir", "best_val_acc"] == pytest.approx(0.92) and b.loc["ir", "best_trial"] in (1, 3)
    assert b.loc["dws", "median_val_acc"] == pytest.approx(0.91)
    assert b.loc["fire", "median_val_acc_per_mflop"] == pytest.approx(0.80 / 5.0)
    assert list(b.index)[-1] == "fire"  # sorted by best accuracy


def test_importance_and_summaries_on_a_real_study(studies):
    imp = analysis.importance(studies["tpe"])
    assert list(imp.columns) == ["study", "param", "importance"]
    assert len(imp) >= 2 and imp["importance"].sum() == pytest.approx(1.0)
    assert imp["importance"].is_monotonic_decreasing
    assert set(imp["param"]) <= {k for t in _study(studies["tpe"]).trials for k in t.params}
    mo = analysis.importance(studies["mo"])  # multi-objective: target = validation accuracy
    assert mo["importance"].sum() == pytest.approx(1.0)
    df = analysis.load([studies["tpe"], studies["rand"]])
    from_frame = analysis.importance(df)  # rebuilt from the table (trials.csv-only folders)
    assert set(from_frame["study"]) == {"tpe", "rand"}
    summ = analysis.study_summary(df)
    assert list(summ["study"]) == ["tpe", "rand"]
    assert (summ["complete"] + summ["pruned"] >= 4).all()  # --trials 4 counts trained trials
    sofar = analysis.best_so_far(df)
    for name, g in df.groupby("study"):
        # the curve ends at the leading candidate's mean (a confirmation can lower it on the way), which is
        # the summary's best and the search's winner
        lead = analysis.candidates(g).iloc[0]
        last = sofar[sofar["study"] == name]["best_val_acc_so_far"].dropna().iloc[-1]
        assert last == pytest.approx(lead["val_acc"])
        assert summ.set_index("study").loc[name, "best_val_acc"] == pytest.approx(lead["val_acc"])
        assert summ.set_index("study").loc[name, "best_trial"] == lead["number"]
        win = g[g["winner_rank"] == 1]
        if len(win):
            assert int(win["number"].iloc[0]) == int(lead["number"])


# ----- plots and report ---------------------------------------------------------------------------------------
def _check_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        px = np.asarray(im.convert("RGB"))
    assert w >= 600 and h >= 350, (path.name, w, h)
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 20, f"{path.name} is (nearly) a single colour"


def test_report_writes_markdown_pngs_and_html(studies, tmp_path, capsys):
    (studies["tpe"] / "compress").mkdir(exist_ok=True)
    (studies["tpe"] / "compress" / "stages.csv").write_text(STAGES_CSV)
    out = tmp_path / "report"
    assert report_main([str(studies["tpe"]), str(studies["rand"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tpe" in printed and "rand" in printed and str(out / "report.md") in printed
    md = (out / "report.md").read_text()
    pngs = sorted((out / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"accuracy_vs_mflops.png", "best_so_far.png", "importance.png", "by_block.png", "budget_use.png",
            "stages_tpe.png"} <= names
    for p in pngs:
        assert f"](plots/{p.name})" in md
        _check_png(p)
    for heading in ("## Studies", "## Winners", "## Accuracy vs MFLOPs", "## Block types", "## Parameter importance",
                    "## Compression stages (tpe)"):
        assert heading in md
    assert "| study" in md and "test acc %" in md
    html = sorted((out / "html").glob("*.html"))
    assert any(p.name == "optimization_history.html" for p in html)
    assert all(p.stat().st_size < 200_000 for p in html)  # plotly.js is shared, not inlined
    # default output folder: the first study's; --quiet prints nothing
    assert report_main([str(studies["mo"]), "--quiet", "--no-html"]) == 0
    assert capsys.readouterr().out == ""
    assert (studies["mo"] / "report.md").is_file()
    for p in (studies["mo"] / "plots").glob("*.png"):
        _check_png(p)


def test_stages_table_and_plot(tmp_path):
    d = tmp_path / "s" / "compress"
    d.mkdir(parents=True)
    (d / "stages.csv").write_text(STAGES_CSV)
    for where in (d / "stages.csv", d, tmp_path / "s"):
        st = analysis.load_stages(where)
        assert list(st["stage"]) == ["original", "prune_magnitude0.5", "share_5bit", "huffman"]
        assert list(st["step"]) == [0, 1, 2, 3]
    assert st["size_kb"].iloc[-1] == pytest.approx(3051 / 1024)
    assert st["acc_drop_points"].iloc[-1] == pytest.approx(3.0)
    assert st["sparsity"].iloc[1] == pytest.approx(1 - 2426 / 4802)
    fig = analysis.plot_stages(st)
    assert len(fig.axes) == 3
    fig.savefig(tmp_path / "stages.png")
    _check_png(tmp_path / "stages.png")
    # a table with fewer columns still plots
    analysis.plot_stages(st[["stage", "test_acc"]]).savefig(tmp_path / "acc_only.png")
    _check_png(tmp_path / "acc_only.png")
    with pytest.raises(UserError, match="no compression stages"):
        analysis.load_stages(tmp_path / "nothing")


def test_plots_on_empty_and_tiny_tables(tmp_path):
    df = pd.DataFrame({"study": ["a"], "number": [0], "state": ["PRUNED"], "val_acc": [math.nan],
                       "mflops": [math.nan], "params": [math.nan], "budget_share": [math.nan], "blocks": [None],
                       "winner_rank": [math.nan], "sampler": ["tpe"]})
    for i, fig in enumerate((analysis.plot_accuracy_vs_mflops(df), analysis.plot_best_so_far(df),
                             analysis.plot_by_block(df), analysis.plot_budget_use(df),
                             analysis.plot_importance(pd.DataFrame(columns=["study", "param", "importance"])))):
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert any(t.strip() for t in texts), f"figure {i} explains nothing"  # an explanatory placeholder
        assert all(not ax.lines and not ax.collections and not ax.patches for ax in fig.axes), i  # and no data
        fig.savefig(tmp_path / f"x{i}.png")
        _check_png(tmp_path / f"x{i}.png")


def test_cli_errors_are_one_line_exit_2(tmp_path):
    (tmp_path / "not_a_study").mkdir()
    for arg in (str(tmp_path / "missing"), str(tmp_path / "not_a_study")):
        r = subprocess.run([sys.executable, "-m", "analysis.report", arg], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("python -m analysis.report: error:"), r.stderr
        assert "Traceback" not in r.stderr


def test_best_is_the_candidate_mean_not_a_lucky_confirmation_run():
    """A confirmation run with the highest single figure must not be named best: candidates are ranked by their
    mean over their runs, as the search ranks its winners (search.confirm.rank_candidates)."""
    df = pd.DataFrame({
        "study": "s", "number": [0, 1, 2, 3], "state": "COMPLETE", "blocks": ["conv", "dws", "conv", "dws"],
        "mflops": [1.0, 0.5, 1.0, 0.5], "params": [100, 50, 100, 50], "latency_ms": 0.1,
        "val_acc": [0.95, 0.90, 0.95, 0.98], "confirms": [np.nan, np.nan, 0, 1],
        "candidate_val_acc": [0.95, 0.94, 0.95, 0.94], "candidate_evals": [2, 2, 2, 2]})
    c = analysis.candidates(df)
    assert list(c["number"]) == [0, 1] and list(c["runs"]) == [2, 2]
    assert list(c["val_acc"]) == [0.95, 0.94] and list(c["run_val_acc"]) == [0.95, 0.90]
    assert list(analysis.best_under(df)["number"]) == [0]  # by single runs it would be trial 3
    assert list(analysis.best_under(df, mflops=0.6)["number"]) == [1]
    assert set(analysis.pareto(df)["number"]) == {0, 1}  # trial 3 (a re-run) is no point of its own
    assert analysis.study_summary(df.assign(sampler="tpe", objectives="accuracy", infeasible=False, test_acc=np.nan,
                                            winner_rank=np.nan, duration_s=1.0))["best_trial"].iloc[0] == 0
    sofar = analysis.best_so_far(df)["best_val_acc_so_far"].tolist()
    assert sofar == pytest.approx([0.95, 0.95, 0.95, 0.95])
    blocks = analysis.by_block(df).set_index("block")
    assert blocks.loc["dws", "trials"] == 2 and blocks.loc["dws", "best_val_acc"] == pytest.approx(0.94)
