"""pandas over search and compression results: tidy tables, Pareto fronts, importances, plots and a report.

    import analysis
    df = analysis.load("results/<study>")                     # one row per trial (or a list of folders)
    analysis.pareto(df, maximize="val_acc", minimize=["mflops"])
    analysis.best_under(df, mflops=5, params="100k")
    analysis.by_block(df); analysis.importance("results/<study>")
    analysis.plot_accuracy_vs_mflops(df)                      # a matplotlib Figure
    analysis.load_stages("results/<study>")                   # compression stages, original first

Functions return DataFrames and figures and print nothing. Accuracy is in [0, 1] in the tables (percent on
plots and in the report); MFLOPs are million multiply-adds (fvcore MACs).
"""
from .data import TRIAL_COLUMNS, StudySource, find_stages, load, load_stages, open_sources, open_study
from .plots import (plot_accuracy_vs_mflops, plot_best_so_far, plot_budget_use, plot_by_block, plot_importance,
                    plot_stages, plot_tradeoff)
from .tables import best_so_far, best_under, by_block, candidates, importance, pareto, study_summary

__all__ = ["load", "load_stages", "open_study", "open_sources", "find_stages", "StudySource", "TRIAL_COLUMNS",
           "candidates", "pareto", "best_under", "by_block", "best_so_far", "importance", "study_summary",
           "plot_tradeoff", "plot_accuracy_vs_mflops", "plot_best_so_far", "plot_importance", "plot_by_block",
           "plot_budget_use", "plot_stages", "write_report"]


def write_report(*args, **kwargs):
    """See `analysis.report.write_report` (imported lazily: the CLI module is not needed to use the tables)."""
    from .report import write_report as _w

    return _w(*args, **kwargs)
