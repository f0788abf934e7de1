"""A sweep's tables: final values per group, rounds to a threshold, and error-floor scaling.

:func:`final_table` gives the values at the last common x and the rounds at which the mean
curve first reaches, and stays below, a threshold; :func:`scaling_table` gives a tail-averaged
error versus a numeric swept parameter with its fitted log-log slope (the linear-speedup test).
:func:`write_table` saves rows as CSV and Markdown.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .stats import mean_band, t_quantile
from .sweep_curves import Curve
from .sweep_jobs import Job, group_jobs


def first_reach(curve: Curve, threshold: float) -> tuple[float | None, float | None]:
    """Rounds at which the mean curve first reaches ``<= threshold``, and from which it stays.

    Returns ``(first, settled)`` (``None`` when never / when it ends above). Reporting both
    keeps a transient dip below the threshold from passing for convergence.
    """
    below = curve.mean <= threshold
    if not below.any():
        return None, None
    first = float(curve.rounds[int(np.argmax(below))])
    if not below[-1]:
        return first, None
    above = np.flatnonzero(~below)
    settled = float(curve.rounds[0 if above.size == 0 else above[-1] + 1])
    return first, settled


def _num(value: float | None, digits: int = 4) -> int | float | None:
    """``value`` rounded to ``digits`` significant digits for tables (integers stay integers)."""
    if value is None or math.isnan(value):
        return None
    rounded = float(f"{value:.{digits}g}")
    return int(rounded) if rounded.is_integer() and abs(rounded) < 1e15 else rounded


def final_table(
    keys: Sequence[str],
    curves: Mapping[str, Sequence[Curve]],
    reach: Mapping[str, float] | None = None,
) -> list[dict]:
    """One row per group: seeds, last common round/x, and per metric mean and band there.

    ``reach`` (``{metric: threshold}``) adds ``<metric><=<thr>: first round`` and
    ``... settled round`` columns from :func:`first_reach` of the mean curve.
    """
    rows: list[dict] = []
    metrics = list(curves)
    if not metrics:
        return rows
    for i, base in enumerate(curves[metrics[0]]):
        row: dict[str, Any] = dict(base.params)
        row["seeds"] = base.num_seeds
        row["round"] = int(base.rounds[-1]) if len(base.rounds) else None
        row[base.x_name] = _num(float(base.x[-1]), 12) if len(base.x) else None
        for m in metrics:
            c = curves[m][i]
            if not len(c.mean):
                continue
            row[f"{m} mean"] = _num(c.mean[-1])
            row[f"{m} low"] = _num(c.low[-1])
            row[f"{m} high"] = _num(c.high[-1])
        for m, thr in (reach or {}).items():
            if m not in curves:
                continue
            first, settled = first_reach(curves[m][i], thr)
            row[f"rounds to {m}<={thr:g} (first)"] = None if first is None else int(first)
            row[f"rounds to {m}<={thr:g} (settled)"] = None if settled is None else int(settled)
        rows.append(row)
    return rows


@dataclass
class Scaling:
    """A tail-averaged error versus a numeric swept parameter, and its fitted log-log slope."""

    key: str
    metric: str
    tail: float
    rows: list[dict]
    slope: float  # of log(1 / E[err^2]) versus log(key): 1 = linear speedup
    intercept: float
    slope_low: float  # 95% t-interval of the least-squares slope (nan with < 3 points)
    slope_high: float


def scaling_table(
    jobs: Sequence[Job],
    key: str,
    metric: str,
    *,
    tail: float = 0.5,
    level: float = 0.95,
) -> Scaling:
    """Mean squared ``metric`` over the last ``tail`` fraction of rounds and seeds, per ``key``.

    Why: with a constant step size the error stops decreasing once the initial bias has died
    out; it then fluctuates around a noise floor whose square scales like ``1/K`` if averaging
    over ``K`` agents gives linear speedup. Averaging ``err^2`` over the stationary tail (and
    over seeds) estimates that floor far better than one final value; ``1 / E[err^2]`` versus
    ``key`` on log-log axes should then have slope 1.

    Rows: ``key``, ``seeds``, ``rounds`` averaged, ``E[err^2]`` with its t-band over seeds,
    ``rms err``, ``1/E[err^2]`` with the band mapped through ``1/.``. Jobs whose other swept
    parameters differ are pooled; sweep one parameter (plus seeds) per scaling study.
    """
    if not 0.0 < tail <= 1.0:
        raise ValueError(f"tail must be in (0, 1], got {tail}")
    groups = group_jobs(jobs, [key])
    points = []
    for (value,), members in groups.items():
        try:
            k = float(value)
        except ValueError:
            k = math.nan
        if not k > 0:  # also catches NaN
            raise ValueError(
                f"scaling versus {key}: value {value!r} is not a number > 0 (log-log axes)"
            )
        per_seed = []
        tail_rounds = 0
        for job in members:
            err = job.column(metric)
            err = err[~np.isnan(err)]
            tail_rounds = max(1, int(math.ceil(tail * len(err))))
            per_seed.append(np.mean(err[-tail_rounds:] ** 2))
        ms, lo, hi = (float(v) for v in mean_band(np.array(per_seed), level))
        points.append((k, len(members), tail_rounds, ms, lo, hi))
    points.sort()
    rows = [
        {
            key: int(k) if k.is_integer() else k,
            "seeds": n,
            "tail rounds": t,
            f"E[{metric}^2]": _num(ms),
            f"rms {metric}": _num(math.sqrt(ms)),
            f"1/E[{metric}^2]": _num(1.0 / ms),
            f"1/E[{metric}^2] low": _num(1.0 / hi) if hi > 0 else None,
            f"1/E[{metric}^2] high": _num(1.0 / lo) if lo > 0 else None,
        }
        for k, n, t, ms, lo, hi in points
    ]
    xs = np.log([p[0] for p in points])
    ys = np.log([1.0 / p[3] for p in points])
    if len(points) >= 2:
        slope, intercept = (float(v) for v in np.polyfit(xs, ys, 1))
    else:
        slope, intercept = math.nan, math.nan
    slope_low = slope_high = math.nan
    if len(points) >= 3:
        resid = ys - (slope * xs + intercept)
        se = math.sqrt(np.sum(resid**2) / (len(xs) - 2) / np.sum((xs - xs.mean()) ** 2))
        half = t_quantile(0.5 + level / 2.0, len(xs) - 2) * se
        slope_low, slope_high = slope - half, slope + half
    return Scaling(key, metric, tail, rows, slope, intercept, slope_low, slope_high)


def write_table(rows: Sequence[Mapping], path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``rows`` as ``<stem>.csv`` and ``<stem>.md`` (a Markdown table); return both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    # Append (not with_suffix): a stem like "woo_eta0.1_final" has a dot of its own.
    csv_path, md_path = stem.parent / f"{stem.name}.csv", stem.parent / f"{stem.name}.md"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    md_path.write_text(markdown_table(rows, columns))
    return csv_path, md_path


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of ``rows`` (missing values as ``-``)."""
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(c for c in row if c not in columns)
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = ["-" if row.get(c) is None else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
