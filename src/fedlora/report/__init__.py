"""Reports of finished runs: plots, summaries and comparison tables."""

from fedlora.report.companion import with_companion
from fedlora.report.plots import plot_comparison, plot_panels, plot_run
from fedlora.report.summary import run_summary, write_run_report
from fedlora.report.tables import ComparisonRow, comparison_rows, write_comparison

__all__ = [
    "ComparisonRow",
    "comparison_rows",
    "plot_comparison",
    "plot_panels",
    "plot_run",
    "run_summary",
    "with_companion",
    "write_comparison",
    "write_run_report",
]
