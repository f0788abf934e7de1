"""A sweep's curves: each group's metric versus x, averaged over seeds with a confidence band.

:func:`aggregate` aligns a group's curves on a common x (``samples_per_agent``, ``round`` or the
derived ``cumulative_bytes``) and gives, at every x, the mean over seeds and its Student-t
interval (:func:`~.stats.mean_band`); :func:`sweep_curves` does it for every group of a sweep
and every metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .stats import mean_band
from .sweep_jobs import SEED_KEYS, Job, group_jobs, group_label, varying_keys

#: Allowed x axes of the curves: columns of ``metrics.csv``, and the derived ``DERIVED_X``.
X_AXES: tuple[str, ...] = ("samples_per_agent", "round", "cumulative_bytes")
#: x axes computed from a job's columns: ``cumulative_bytes`` is the running total of the
#: array payload the strategies report (``bytes_up + bytes_down``, an empty cell counting 0),
#: i.e. the traffic spent up to and including each round.
DERIVED_X: dict[str, tuple[str, ...]] = {"cumulative_bytes": ("bytes_up", "bytes_down")}


def x_column(job: Job, x: str) -> np.ndarray:
    """The x values of ``job`` on axis ``x`` (a ``metrics.csv`` column or a ``DERIVED_X``)."""
    if x in DERIVED_X:
        total = sum(np.nan_to_num(job.column(c)) for c in DERIVED_X[x])
        return np.cumsum(total)
    return job.column(x)


#: Metrics plotted by default, in this order, when a sweep has values for them.
ERROR_METRICS: tuple[str, ...] = (
    "normalized_q_error",
    "q_error",
    "gain_error",
    "policy_gain_gap",
)


@dataclass
class Curve:
    """A group's metric versus x: per-seed values and their mean with a confidence band."""

    label: str
    params: dict[str, str]
    metric: str
    x_name: str
    x: np.ndarray  # (T,)
    rounds: np.ndarray  # (T,) the round of each x
    values: np.ndarray  # (n_seeds, T)
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    runs: list[Path] = field(default_factory=list)
    level: float = 0.95  # confidence level of the band [low, high]

    @property
    def num_seeds(self) -> int:
        return int(self.values.shape[0])


def aggregate(
    jobs: Sequence[Job],
    metric: str,
    x: str = "samples_per_agent",
    *,
    level: float = 0.95,
    label: str = "",
    params: Mapping[str, str] | None = None,
) -> Curve:
    """Align ``jobs``' curves of ``metric`` on their common ``x`` values and average over them.

    Only the x values that every job reached are kept (a sweep whose jobs ran different numbers
    of rounds is cut to the shortest), so each point averages the same seeds.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    common: set[float] | None = None
    for job in jobs:
        xs = set(x_column(job, x).tolist())
        common = xs if common is None else common & xs
    grid = np.array(sorted(common or ()))
    values = np.full((len(jobs), len(grid)), np.nan)
    rounds = np.full(len(grid), np.nan)
    for i, job in enumerate(jobs):
        xs, ys, rs = x_column(job, x), job.column(metric), job.column("round")
        index = {v: j for j, v in enumerate(xs.tolist())}  # last occurrence wins (resumed runs)
        cols = [index[v] for v in grid.tolist()]
        values[i] = ys[cols]
        rounds = rs[cols]
    mean, low, high = mean_band(values, level)
    return Curve(
        label=label,
        params=dict(params or {}),
        metric=metric,
        x_name=x,
        x=grid,
        rounds=rounds,
        values=values,
        mean=mean,
        low=low,
        high=high,
        runs=[job.path for job in jobs],
        level=level,
    )


def metrics_present(jobs: Sequence[Job], candidates: Sequence[str] = ERROR_METRICS) -> list[str]:
    """The ``candidates`` that have at least one value in some job's ``metrics.csv``."""
    return [m for m in candidates if any(np.any(~np.isnan(job.column(m))) for job in jobs)]


def sweep_curves(
    jobs: Sequence[Job],
    metrics: Sequence[str],
    x: str = "samples_per_agent",
    *,
    group_by: Sequence[str] | None = None,
    average_over: Sequence[str] = SEED_KEYS,
    level: float = 0.95,
) -> tuple[list[str], dict[str, list[Curve]]]:
    """Group ``jobs`` and aggregate every metric: ``(group keys, {metric: [Curve per group]})``."""
    keys = list(group_by) if group_by is not None else varying_keys(jobs, average_over)
    groups = group_jobs(jobs, keys)
    curves = {
        m: [
            aggregate(
                members,
                m,
                x,
                level=level,
                label=group_label(keys, values),
                params=dict(zip(keys, values, strict=True)),
            )
            for values, members in groups.items()
        ]
        for m in metrics
    }
    return keys, curves
