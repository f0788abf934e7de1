"""Read a Hydra multirun (or any tree of run directories), group its jobs, aggregate over seeds.

Why: a published claim is a statement about curves averaged over seeds and compared across a
swept parameter (strategy, behavior, number of agents, ...). This module turns a directory of
finished runs into exactly that, with no knowledge of which experiment produced it:

1. :func:`load_jobs` finds every ``metrics.csv`` under a directory and reads, beside it, the
   job's Hydra overrides (``.hydra/overrides.yaml``) and composed config (``.hydra/config.yaml``,
   else the ``config`` of ``summary.json`` for runs started from Python).
2. :func:`varying_keys` picks the grouping: the override keys whose values differ across jobs,
   the seed excluded (it is what we average over). Runs without Hydra overrides fall back to the
   config entries that differ.
3. :func:`aggregate` aligns each group's curves on a common x (``samples_per_agent`` or
   ``round``) and gives, at every x, the mean over seeds and a 95% **Student-t confidence
   interval of the mean**: ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (sample sd, ``ddof=1``).
   It is the interval for the expected curve, not a spread of individual runs; with one seed
   the band has zero width.
4. :func:`final_table` (values at the last common x, and the rounds at which the mean curve first
   reaches, and stays below, a threshold) and :func:`scaling_table` (a tail-averaged error
   versus a numeric swept parameter with its fitted log-log slope: the linear-speedup test)
   produce rows that :func:`write_table` saves as CSV and Markdown.

The figures are drawn by :mod:`flower_qlearn.plots`; ``flower-qlearn-plot DIR`` runs the lot.
An experiment config may carry a ``plot:`` section (see ``conf/experiment/woo_*.yaml``) with the
defaults of ``flower-qlearn-plot`` for its sweep.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

#: Override keys that index replicates: averaged over, never a group.
SEED_KEYS: tuple[str, ...] = ("seed",)
#: Allowed x axes of the curves (columns of ``metrics.csv``).
X_AXES: tuple[str, ...] = ("samples_per_agent", "round")
#: Metrics plotted by default, in this order, when a sweep has values for them.
ERROR_METRICS: tuple[str, ...] = (
    "normalized_q_error",
    "q_error",
    "gain_error",
    "policy_gain_gap",
)
#: Config entries that differ between runs without being an experimental choice.
_IGNORED_CONFIG_KEYS = ("output_dir", "plot")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One finished (or partly finished) run: its directory, overrides, config and metrics."""

    path: Path
    overrides: dict[str, str] | None  # key -> value as typed; None: not a Hydra job
    config: dict
    rows: list[dict]

    def column(self, name: str) -> np.ndarray:
        """Column ``name`` of ``metrics.csv`` as float64; empty cells (not applicable) are NaN."""
        return np.array(
            [np.nan if row.get(name) is None else float(row[name]) for row in self.rows]
        )

    def value(self, key: str) -> str:
        """This job's value of ``key``: its override if it has one, else the config entry."""
        if self.overrides is not None and key in self.overrides:
            return self.overrides[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return "<unset>"
            node = node[part]
        if isinstance(node, Mapping):  # a config group, e.g. key "strategy": its option name
            return str(node.get("name", "<group>"))
        return _fmt(node)


def _fmt(value: Any) -> str:
    return "null" if value is None else str(value)


def _natural_key(path: Path) -> list:
    # Job directories are numbered 0, 1, ..., 10: sort them as numbers, not as strings.
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"[/\\]", str(path))]


def _parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        if not sep:  # "~key" deletes a key: keep it as a value so it can still group
            out[key.lstrip("~")] = "<deleted>"
            continue
        out[key.lstrip("+")] = value
    return out


def _read_metrics(path: Path) -> list[dict]:
    def parse(text: str):
        if text is None or text == "":
            return None
        try:
            return int(text)
        except ValueError:
            return float(text)

    with path.open(newline="") as fh:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def load_job(run_dir: str | Path) -> Job:
    """Read one run directory (``metrics.csv`` and, if present, ``.hydra/`` and summary)."""
    run_dir = Path(run_dir)
    hydra_dir = run_dir / ".hydra"
    overrides = None
    if (hydra_dir / "overrides.yaml").is_file():
        lines = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []
        overrides = _parse_overrides(lines)
    config: dict = {}
    if (hydra_dir / "config.yaml").is_file():
        config = yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}
    elif (run_dir / "summary.json").is_file():
        config = json.loads((run_dir / "summary.json").read_text()).get("config", {})
    return Job(run_dir, overrides, config, _read_metrics(run_dir / "metrics.csv"))


def load_jobs(root: str | Path) -> list[Job]:
    """Every run under ``root`` (a run directory, a multirun directory or any tree of them).

    Jobs are in sweep order (numeric directory names sorted as numbers); runs whose
    ``metrics.csv`` has no rows yet are skipped.

    Raises
    ------
    FileNotFoundError
        If ``root`` holds no ``metrics.csv`` at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    paths = sorted((p.parent for p in root.rglob("metrics.csv")), key=_natural_key)
    jobs = [job for job in (load_job(p) for p in paths) if job.rows]
    if not jobs:
        raise FileNotFoundError(f"{root}: no run with a non-empty metrics.csv below it")
    return jobs


# --------------------------------------------------------------------------------------------
# Grouping
# --------------------------------------------------------------------------------------------


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def varying_keys(jobs: Sequence[Job], average_over: Sequence[str] = SEED_KEYS) -> list[str]:
    """The swept parameters: keys whose value differs across ``jobs``, ``average_over`` excluded.

    Hydra jobs are compared on their overrides (``strategy``, ``client.behavior``, ...), in the
    order they appear on the command line / in ``hydra.sweeper.params``. Runs without overrides
    (started from Python) are compared on their flattened configs.
    """
    excluded = set(average_over)
    if all(job.overrides is not None for job in jobs):
        keys: list[str] = []
        for job in jobs:
            keys.extend(k for k in job.overrides if k not in keys)  # type: ignore[union-attr]
        keys = [k for k in keys if k not in excluded and not k.startswith("hydra")]
    else:
        flats = [_flatten(job.config) for job in jobs]
        keys = []
        for flat in flats:
            keys.extend(k for k in flat if k not in keys)
        keys = [
            k for k in keys if k not in excluded and k.split(".")[0] not in _IGNORED_CONFIG_KEYS
        ]
    return [k for k in keys if len({job.value(k) for job in jobs}) > 1]


def group_jobs(jobs: Sequence[Job], keys: Sequence[str]) -> dict[tuple[str, ...], list[Job]]:
    """Jobs by their values of ``keys``, groups in order of first appearance (sweep order)."""
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.value(k) for k in keys), []).append(job)
    return groups


def group_label(keys: Sequence[str], values: Sequence[str]) -> str:
    """``"strategy=importance, client.behavior=disjoint"`` (``"all runs"`` when no key)."""
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) or "all runs"


# --------------------------------------------------------------------------------------------
# Aggregation over seeds
# --------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    # Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4).
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom, ``0.5 <= p < 1``.

    Bisection on the CDF ``1 - I_{df/(df+t^2)}(df/2, 1/2) / 2``; accurate to ~1e-12 (no SciPy
    dependency for one number).
    """
    if not 0.5 <= p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df > 0, got p={p}, df={df}")

    def cdf(t: float) -> float:
        return 1.0 - 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if cdf(mid) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_band(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 and the Student-t ``level`` confidence interval of that mean.

    ``values`` is ``(n_seeds, ...)``; NaNs (metric not applicable) are ignored per column.
    Returns ``(mean, low, high)``; where fewer than 2 values exist the band has zero width.
    """
    values = np.asarray(values, dtype=np.float64)
    n = np.sum(~np.isnan(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(values, axis=0) / n
        sd = np.sqrt(np.nansum((values - mean) ** 2, axis=0) / (n - 1))
    half = np.zeros_like(mean)
    for count in np.unique(n[n >= 2]):
        mask = n == count
        t = t_quantile(0.5 + level / 2.0, float(count - 1))
        half = np.where(mask, t * sd / np.sqrt(count), half)
    return mean, mean - half, mean + half


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
        xs = set(job.column(x).tolist())
        common = xs if common is None else common & xs
    grid = np.array(sorted(common or ()))
    values = np.full((len(jobs), len(grid)), np.nan)
    rounds = np.full(len(grid), np.nan)
    for i, job in enumerate(jobs):
        xs, ys, rs = job.column(x), job.column(metric), job.column("round")
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


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


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


def plot_settings(jobs: Sequence[Job]) -> dict:
    """The ``plot:`` section of the sweep's config (experiment defaults for the plot command)."""
    for job in jobs:
        section = job.config.get("plot")
        if isinstance(section, Mapping):
            return dict(section)
    return {}
