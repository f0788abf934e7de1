"""matplotlib figures of one run (error curves) and of sweeps (mean and band across seeds).

:func:`plot_run` draws a run's error versus samples per agent; :func:`plot_curves` one metric of
a sweep (per group, the mean over seeds and its confidence band); :func:`plot_scaling` the error
floor versus a numeric swept parameter with its fitted log-log slope (the linear-speedup test).
The ``flower-qlearn-plot`` command that drives them is :mod:`flower_qlearn.plot_command`.

On a log y axis a value of 0 (e.g. ``policy_gain_gap`` once the greedy policy is optimal) has no
place: it is drawn as a downward triangle on the axis bottom, with a legend entry saying so,
never at an invented small value that would read as a measured floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)

from .sweep_curves import Curve
from .sweep_tables import Scaling

matplotlib.use("Agg")  # files only: runs happen on servers and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

#: Axis labels of the metrics of ``metrics.csv``.
METRIC_LABELS = {
    "normalized_q_error": "(1 - gamma) ||Qbar - Q*||_inf",
    "q_error": "||Qbar - Q*||_inf",
    "gain_error": "gain error ||Vbar - rho*||_inf",
    "policy_gain_gap": "policy gain gap rho* - rho(greedy)",
    "samples_per_agent": "samples per agent",
    "round": "round",
    "cumulative_bytes": "cumulative bytes, up + down (array payload)",
}
#: Legend entry of the values drawn on the bottom of a log axis.
ZERO_LABEL = "0 (marked on the axis bottom)"
_LINESTYLES = ("-", "--", ":", "-.")
# Values this small relative to the largest are 0 up to rounding (a gap rho* - rho(pi) of an
# optimal pi comes out as +-1e-16, or as -1e-10 with an iterative rho*, not as 0): on a log axis
# they are zeros, not 16 decades down.
_ROUNDING = 1e-12


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _zeros(values: np.ndarray) -> np.ndarray:
    """Where ``values`` are 0 up to rounding (or below 0): not drawable on a log axis."""
    finite = values[np.isfinite(values)]
    scale = np.max(np.abs(finite)) if finite.size else 0.0
    return np.isfinite(values) & (values <= _ROUNDING * scale)


def _log_floor(values: np.ndarray) -> float | None:
    """Bottom of a log axis: a third of the smallest drawable value (None: none drawable)."""
    positive = values[np.isfinite(values) & ~_zeros(values)]
    return float(positive.min()) / 3 if positive.size else None


def _mark_zeros(ax: Axes, x: np.ndarray, zero: np.ndarray, color: str, row: int = 0) -> bool:
    """Triangles on the bottom of the axes at the x of ``zero`` points; True if any.

    ``row`` stacks the marks of several curves (row 0 on the axis, each next one a marker
    higher) so that zeros of two groups at the same x do not hide each other.
    """
    if not np.any(zero):
        return False
    ax.plot(
        x[zero],
        np.full(int(zero.sum()), 0.03 * row),
        ls="none",
        marker="v",
        ms=5,
        color=color,
        transform=ax.get_xaxis_transform(),  # x in data, y in axes units: 0 = the bottom
        clip_on=False,
        zorder=3,
    )
    return True


def _mark_isolated(ax: Axes, x: np.ndarray, y: np.ndarray, **style) -> None:
    """A dot at each drawn value with no drawn neighbour: a line would leave it invisible."""
    drawn = np.isfinite(y)
    before = np.concatenate([[False], drawn[:-1]])
    after = np.concatenate([drawn[1:], [False]])
    alone = drawn & ~before & ~after
    if np.any(alone):
        ax.plot(x[alone], y[alone], ls="none", marker="o", ms=3, color=style.get("color"))


def _zero_handle(color: str = "gray") -> Line2D:
    return Line2D([], [], ls="none", marker="v", ms=5, color=color, label=ZERO_LABEL)


def _tick_label(value: float, powers_of_ten: bool) -> str:
    """``"$10^{-2}$"`` on a decade axis; else ``"2"``, ``"500"``, ``"0.05"`` (``"2x10^5"`` in
    mathtext outside 1e-3..1e4)."""
    if value <= 0:
        return f"{value:g}"
    exponent = math.floor(math.log10(value) + 1e-9)
    if -3 <= exponent <= 4 and not powers_of_ten:
        return f"{value:g}"
    mantissa = f"{value / 10**exponent:.3g}"
    return f"$10^{{{exponent}}}$" if mantissa == "1" else f"${mantissa}\\times10^{{{exponent}}}$"


def _clean_log_ticks(axis: Axis, low: float, high: float) -> None:
    """Labelled major ticks only, at least two in view; minor ticks unlabelled.

    Why: over less than a decade matplotlib labels minor ticks ("3x10^0") beside the major ones.
    Here the major ticks are powers of 10 if two fit, else 1-2-5, 1..9 or plain linear steps.
    """
    candidates = (
        LogLocator(base=10, subs=(1.0,)),
        LogLocator(base=10, subs=(1.0, 2.0, 5.0)),
        LogLocator(base=10, subs=tuple(range(1, 10))),
        MaxNLocator(nbins=4),
    )
    for locator in candidates:
        ticks = locator.tick_values(low, high)
        if np.sum((ticks >= low * (1 - 1e-9)) & (ticks <= high * (1 + 1e-9))) >= 2:
            break
    decades = locator is candidates[0]
    axis.set_major_locator(locator)
    axis.set_major_formatter(FuncFormatter(lambda v, _: _tick_label(v, decades)))
    axis.set_minor_formatter(NullFormatter())


def plot_run(
    history: Sequence[dict], out_dir: Path, objective: str = "discounted", title: str = ""
) -> list[Path]:
    """Draw the error of the global estimate versus samples per agent (log-log).

    Returns the written PNG paths (``error_vs_samples.png``; for average reward also
    ``policy_gain_gap.png``). Zeros are marked on the axis bottom (module docstring).
    """
    out_dir = Path(out_dir)
    x = np.array([float(row["samples_per_agent"]) for row in history])
    curves = {
        "average_reward": [
            ("gain_error", "gain error ||Vbar - rho*||_inf"),
            ("policy_gain_gap", "policy gain gap"),
        ],
        "td": [("theta_error", "||theta - theta*||_2^2")],
    }.get(objective, [("normalized_q_error", "(1 - gamma) ||Qbar - Q*||_inf")])
    written = []
    for i, (key, label) in enumerate(curves):
        y = np.array([np.nan if row.get(key) is None else float(row[key]) for row in history])
        ok = np.isfinite(y) & (x > 0)
        xs, ys = x[ok], y[ok]
        zero = _zeros(ys)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot(xs, np.where(zero, np.nan, ys), lw=1.6, color="C0")
        _mark_isolated(ax, xs, np.where(zero, np.nan, ys), color="C0")
        ax.set_xscale("log")
        floor = _log_floor(ys)
        if floor is not None:  # all zeros: a linear axis shows them as they are
            ax.set_yscale("log")
            ax.set_ylim(floor, ax.get_ylim()[1])
            _clean_log_ticks(ax.yaxis, *ax.get_ylim())
            if _mark_zeros(ax, xs, zero, "C0"):
                ax.legend(handles=[_zero_handle("C0")], fontsize=8, loc="best")
        if xs.size:
            _clean_log_ticks(ax.xaxis, *ax.get_xlim())
        ax.set_xlabel("samples per agent")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        name = "error_vs_samples.png" if i == 0 else f"{key}.png"
        written.append(_save(fig, out_dir / name))
    return written


def _auto_log(values: np.ndarray) -> bool:
    # Log axes where sensible: positive data spanning at least ~1.5 decades.
    finite = values[np.isfinite(values)]
    return bool(finite.size) and finite.min() > 0 and finite.max() / finite.min() >= 30


def _styles(curves: Sequence[Curve]) -> list[dict]:
    """Color by the first swept key, line style by the second (else one color per group)."""
    keys = list(curves[0].params) if curves else []
    if len(keys) == 2:
        first = list(dict.fromkeys(c.params[keys[0]] for c in curves))
        second = list(dict.fromkeys(c.params[keys[1]] for c in curves))
        return [
            {
                "color": f"C{first.index(c.params[keys[0]]) % 10}",
                "ls": _LINESTYLES[second.index(c.params[keys[1]]) % len(_LINESTYLES)],
            }
            for c in curves
        ]
    return [{"color": f"C{i % 10}", "ls": "-"} for i in range(len(curves))]


def _short_keys(keys: Sequence[str]) -> list[str]:
    """``client.behavior`` -> ``behavior``, unless two keys would then read the same."""
    short = [k.rsplit(".", 1)[-1] for k in keys]
    return short if len(set(short)) == len(short) else list(keys)


def sweep_title(curves: Sequence[Curve]) -> str:
    """What a sweep figure shows: ``"q_error: strategy x behavior, mean of 20 seeds"``."""
    if not curves:
        return ""
    swept = " x ".join(_short_keys(list(curves[0].params)))
    seeds = sorted({c.num_seeds for c in curves})
    if seeds[-1] == 1:
        count = "1 seed"
    else:
        n = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        count = f"mean of {n} seeds (shaded: {100 * curves[0].level:g}% t-interval)"
    return f"{curves[0].metric}{': ' + swept if swept else ''}, {count}"


def curves_figure(
    curves: Sequence[Curve],
    *,
    title: str = "",
    xscale: str = "auto",
    yscale: str = "auto",
    threshold: float | None = None,
) -> Figure:
    """The figure of :func:`plot_curves`, not saved (for callers that add to it, and tests)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    keep = [c for c in curves if c.x.size and np.any(np.isfinite(c.mean))]
    x_all = np.concatenate([c.x for c in keep]) if keep else np.array([])
    y_all = np.concatenate([c.mean for c in keep]) if keep else np.array([])
    logx = xscale == "log" or (xscale == "auto" and _auto_log(x_all))
    logy = yscale == "log" or (yscale == "auto" and _auto_log(y_all))
    floor = _log_floor(y_all) if logy else None
    if floor is None:
        logy = False  # nothing but zeros: a log axis cannot show them
    elif threshold is not None and threshold > 0:
        floor = min(floor, threshold / 2)
    zero_rows = 0
    for curve, style in zip(keep, _styles(keep), strict=True):
        ok = np.isfinite(curve.mean) & (curve.x > 0 if logx else True)
        x, mean, low, high = curve.x[ok], curve.mean[ok], curve.low[ok], curve.high[ok]
        zero = _zeros(mean) if logy else np.zeros(mean.shape, dtype=bool)
        if logy:  # zeros are marked, not drawn; a band reaching below the floor is cut there
            mean, low, high = (np.where(zero, np.nan, v) for v in (mean, low, high))
            low = np.maximum(low, floor)
        label = f"{', '.join(curve.params.values()) or 'all runs'} (n={curve.num_seeds})"
        ax.plot(x, mean, lw=1.6, label=label, **style)
        _mark_isolated(ax, x, mean, **style)
        if curve.num_seeds > 1:
            ax.fill_between(x, low, high, color=style["color"], alpha=0.2, lw=0)
        zero_rows += _mark_zeros(ax, x, zero, style["color"], row=zero_rows)
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls=":", lw=1, label=f"reach threshold {threshold:g}")
    if logx:
        ax.set_xscale("log")
        _clean_log_ticks(ax.xaxis, *ax.get_xlim())
    if logy:
        ax.set_yscale("log")
        ax.set_ylim(floor, ax.get_ylim()[1])
        _clean_log_ticks(ax.yaxis, *ax.get_ylim())
    metric = curves[0].metric if curves else ""
    x_name = curves[0].x_name if curves else ""
    ax.set_xlabel(METRIC_LABELS.get(x_name, x_name))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title("\n".join(t for t in (title, sweep_title(keep)) if t), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if keep:
        handles = ax.get_legend_handles_labels()[0] + ([_zero_handle()] if zero_rows else [])
        legend_title = ", ".join(keep[0].params) or None
        ax.legend(handles=handles, fontsize=8, loc="best", title=legend_title, title_fontsize=8)
    return fig


def plot_curves(
    curves: Sequence[Curve],
    path: Path,
    *,
    title: str = "",
    xscale: str = "auto",
    yscale: str = "auto",
    threshold: float | None = None,
) -> Path:
    """One metric of a sweep: per group, the mean over seeds and its shaded confidence band.

    The title says what was swept and over how many seeds (:func:`sweep_title`), under
    ``title`` if one is given. ``threshold`` draws a horizontal reference line (the level of
    ``--reach``), named in the legend.

    ``xscale``/``yscale``: ``"log"``, ``"linear"`` or ``"auto"`` (log when the data are
    positive and span more than ~1.5 decades). On a log y axis the axis ends a third below the
    smallest positive mean, a band reaching below it is cut there, and means of 0 are marked on
    the axis bottom.
    """
    fig = curves_figure(curves, title=title, xscale=xscale, yscale=yscale, threshold=threshold)
    return _save(fig, path)


def scaling_figure(scaling: Scaling, *, title: str = "") -> Figure:
    """The figure of :func:`plot_scaling`, not saved."""
    key, metric = scaling.key, scaling.metric
    col = f"1/E[{metric}^2]"
    ks = np.array([float(r[key]) for r in scaling.rows])
    ys = np.array([float(r[col]) for r in scaling.rows])
    lo = np.array([float(r[f"{col} low"] or np.nan) for r in scaling.rows])
    hi = np.array([float(r[f"{col} high"] or np.nan) for r in scaling.rows])
    yerr = np.vstack([np.nan_to_num(ys - lo), np.nan_to_num(hi - ys)])
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.errorbar(ks, ys, yerr=yerr, fmt="o", color="C0", capsize=3, label="measured (95% band)")
    if math.isfinite(scaling.slope):
        grid = np.geomspace(ks.min(), ks.max(), 50)
        fit = np.exp(scaling.intercept) * grid**scaling.slope
        ci = (
            f" [{scaling.slope_low:.2f}, {scaling.slope_high:.2f}]"
            if math.isfinite(scaling.slope_low)
            else ""
        )
        ax.plot(grid, fit, color="C1", lw=1.5, label=f"fit: slope {scaling.slope:.3f}{ci}")
        ax.plot(grid, ys[0] * grid / ks[0], color="gray", ls="--", lw=1, label="slope 1 (linear)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # x: exactly the measured values of the swept key, no minor ticks between them.
    ax.xaxis.set_major_locator(FixedLocator(ks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    _clean_log_ticks(ax.yaxis, *ax.get_ylim())
    ax.set_xlabel(key)
    ax.set_ylabel(f"1 / E[{metric}^2]")
    head = title or f"{metric}: error floor versus {key}"
    sub = f"E over seeds and the last {scaling.tail:.0%} of rounds"
    ax.set_title(f"{head}\n{sub}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_scaling(scaling: Scaling, path: Path, *, title: str = "") -> Path:
    """``1 / E[err^2]`` (tail of each run, mean over seeds) versus a swept parameter, log-log.

    Draws the points with their 95% band, the least-squares line and its slope, and a slope-1
    reference through the first point: linear speedup means the points follow it. The x ticks
    are the swept values; the y ticks are labelled major ticks only.
    """
    return _save(scaling_figure(scaling, title=title), path)


def main(argv: Sequence[str]) -> int:
    """``flower-qlearn-plot``: see :func:`flower_qlearn.plot_command.main` (kept here for callers
    of ``flower_qlearn.plots.main``)."""
    from .plot_command import main as plot_command_main

    return plot_command_main(argv)


def __getattr__(name: str):
    # The Hydra callback lives in the light module sweep_callback (no matplotlib); this keeps
    # its old _target_ flower_qlearn.plots.SweepFigures working.
    if name == "SweepFigures":
        from .sweep_callback import SweepFigures

        return SweepFigures
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
