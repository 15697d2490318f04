"""`fedgrid report RUN_DIR`: PNG plots and a Markdown summary of a run, from its files only.

What the plots are, and the code that draws them, is flow/results/report.py: a finished run's
trackers keep the same plots (flow/rounds/runner.py), and flow/rounds/ must not import the commands.
This module is the command's name for it.
"""

from __future__ import annotations

from fedgrid.flow.results.report import (
    fed_spread,
    metric_names,
    plot_accuracy,
    plot_bytes,
    plot_failures,
    plot_metrics,
    plot_sites,
    plot_spread,
    site_series,
    summary_md,
    write_report,
)

__all__ = ["fed_spread", "metric_names", "plot_accuracy", "plot_bytes", "plot_failures", "plot_metrics", "plot_sites",
           "plot_spread", "site_series", "summary_md", "write_report"]
