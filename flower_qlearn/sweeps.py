"""Read a Hydra multirun (or any tree of run directories), group its jobs, aggregate over seeds.

Why: a published claim is a statement about curves averaged over seeds and compared across a
swept parameter (strategy, behavior, number of agents, ...). These modules turn a directory of
finished runs into exactly that, with no knowledge of which experiment produced it:

1. :mod:`~flower_qlearn.sweep_jobs`: :func:`load_jobs` reads every run below a directory (its
   ``metrics.csv``, Hydra overrides and composed config); :func:`varying_keys` picks the
   grouping, the override keys whose values differ across jobs, the seed excluded (it is what
   we average over).
2. :mod:`~flower_qlearn.sweep_curves`: :func:`aggregate` aligns each group's curves on a common
   x (``samples_per_agent`` or ``round``) and gives, at every x, the mean over seeds and a 95%
   Student-t confidence interval of the mean (:mod:`~flower_qlearn.stats`).
3. :mod:`~flower_qlearn.sweep_tables`: :func:`final_table` (values at the last common x, rounds
   to reach a threshold) and :func:`scaling_table` (a tail-averaged error versus a numeric swept
   parameter with its fitted log-log slope: the linear-speedup test), saved by
   :func:`write_table` as CSV and Markdown.

This module gathers their public names in one place. The figures are drawn by
:mod:`flower_qlearn.plots`; ``flower-qlearn-plot DIR`` (:mod:`flower_qlearn.plot_command`) runs
the lot. An experiment config may carry a ``plot:`` section (see ``conf/experiment/woo_*.yaml``)
with the defaults of ``flower-qlearn-plot`` for its sweep.
"""

from __future__ import annotations

from .stats import mean_band, t_quantile
from .sweep_curves import ERROR_METRICS, X_AXES, Curve, aggregate, metrics_present, sweep_curves
from .sweep_jobs import (
    SEED_KEYS,
    Job,
    group_jobs,
    group_label,
    load_job,
    load_jobs,
    plot_settings,
    varying_keys,
)
from .sweep_tables import (
    Scaling,
    final_table,
    first_reach,
    markdown_table,
    scaling_table,
    write_table,
)

__all__ = [
    "ERROR_METRICS",
    "SEED_KEYS",
    "X_AXES",
    "Curve",
    "Job",
    "Scaling",
    "aggregate",
    "final_table",
    "first_reach",
    "group_jobs",
    "group_label",
    "load_job",
    "load_jobs",
    "markdown_table",
    "mean_band",
    "metrics_present",
    "plot_settings",
    "scaling_table",
    "sweep_curves",
    "t_quantile",
    "varying_keys",
    "write_table",
]
