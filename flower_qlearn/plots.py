"""matplotlib figures of one run (error curves) and of sweeps (mean and band across seeds).

``flower-qlearn-plot DIR`` (:func:`main`) works on any run or multirun directory: it reads every
job with :mod:`flower_qlearn.sweeps`, groups the jobs by the swept parameters, and writes one PNG
per metric (mean over seeds and its 95% band per group), a table of final values (CSV and
Markdown) and, with ``--vs KEY``, the scaling figure of the error floor versus a numeric swept
parameter with its fitted log-log slope (the linear-speedup test).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
from hydra.experimental.callback import Callback

matplotlib.use("Agg")  # files only: runs happen on servers and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import sweeps  # noqa: E402


def plot_run(
    history: Sequence[dict], out_dir: Path, objective: str = "discounted", title: str = ""
) -> list[Path]:
    """Draw the error of the global estimate versus samples per agent (log-log).

    Returns the written PNG paths (``error_vs_samples.png``; for average reward also
    ``policy_gain_gap.png``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = [row["samples_per_agent"] for row in history]
    curves = (
        [("gain_error", "gain error ||Vbar - rho*||_inf"), ("policy_gain_gap", "policy gain gap")]
        if objective == "average_reward"
        else [("normalized_q_error", "(1 - gamma) ||Qbar - Q*||_inf")]
    )
    written = []
    for i, (key, label) in enumerate(curves):
        pts = [
            (a, row[key])
            for a, row in zip(x, history, strict=True)
            if row.get(key) is not None and a > 0
        ]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, [max(y, 1e-12) for y in ys], lw=1.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples per agent")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        path = out_dir / ("error_vs_samples.png" if i == 0 else f"{key}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


#: Axis labels of the metrics of ``metrics.csv``.
METRIC_LABELS = {
    "normalized_q_error": "(1 - gamma) ||Qbar - Q*||_inf",
    "q_error": "||Qbar - Q*||_inf",
    "gain_error": "gain error ||Vbar - rho*||_inf",
    "policy_gain_gap": "policy gain gap rho* - rho(greedy)",
    "samples_per_agent": "samples per agent",
    "round": "round",
}
_LINESTYLES = ("-", "--", ":", "-.")


def _auto_log(values: np.ndarray) -> bool:
    # Log axes where sensible: positive data spanning at least ~1.5 decades.
    finite = values[np.isfinite(values)]
    return bool(finite.size) and finite.min() > 0 and finite.max() / finite.min() >= 30


def _styles(curves: Sequence[sweeps.Curve]) -> list[dict]:
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


def plot_curves(
    curves: Sequence[sweeps.Curve],
    path: Path,
    *,
    title: str = "",
    xscale: str = "auto",
    yscale: str = "auto",
    threshold: float | None = None,
) -> Path:
    """One metric of a sweep: per group, the mean over seeds and its shaded confidence band.

    ``threshold`` draws a horizontal reference line (the level of ``--reach``).

    ``xscale``/``yscale``: ``"log"``, ``"linear"`` or ``"auto"`` (log when the data are
    positive and span more than ~1.5 decades). On a log y axis the band's lower edge is clipped
    at a positive floor (an interval reaching below 0 cannot be drawn there).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    keep = [c for c in curves if c.x.size and np.any(np.isfinite(c.mean))]
    x_all = np.concatenate([c.x for c in keep]) if keep else np.array([])
    y_all = np.concatenate([c.mean for c in keep]) if keep else np.array([])
    logx = xscale == "log" or (xscale == "auto" and _auto_log(x_all))
    logy = yscale == "log" or (yscale == "auto" and _auto_log(y_all))
    floor = np.nanmin(y_all[y_all > 0]) / 3 if logy and np.any(y_all > 0) else None
    for curve, style in zip(keep, _styles(keep), strict=True):
        ok = np.isfinite(curve.mean) & (curve.x > 0 if logx else True)
        x, mean, low, high = curve.x[ok], curve.mean[ok], curve.low[ok], curve.high[ok]
        if floor is not None:
            mean, low, high = (np.maximum(v, floor) for v in (mean, low, high))
        label = f"{', '.join(curve.params.values()) or 'all runs'} (n={curve.num_seeds})"
        ax.plot(x, mean, lw=1.6, label=label, **style)
        if curve.num_seeds > 1:
            ax.fill_between(x, low, high, color=style["color"], alpha=0.2, lw=0)
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls=":", lw=1)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    metric = curves[0].metric if curves else ""
    x_name = curves[0].x_name if curves else ""
    ax.set_xlabel(METRIC_LABELS.get(x_name, x_name))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    band = "mean and 95% t-interval over seeds" if any(c.num_seeds > 1 for c in keep) else ""
    ax.set_title("\n".join(t for t in (title, band) if t), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if keep:
        ax.legend(fontsize=8, loc="best", title=", ".join(keep[0].params) or None, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scaling(scaling: sweeps.Scaling, path: Path, *, title: str = "") -> Path:
    """``1 / E[err^2]`` (tail of each run, mean over seeds) versus a swept parameter, log-log.

    Draws the points with their 95% band, the least-squares line and its slope, and a slope-1
    reference through the first point: linear speedup means the points follow it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    ax.set_xticks(ks)
    ax.set_xticklabels([f"{k:g}" for k in ks])
    ax.set_xlabel(key)
    ax.set_ylabel(f"1 / E[{metric}^2]")
    sub = f"E over seeds and the last {scaling.tail:.0%} of rounds"
    ax.set_title("\n".join(t for t in (title, sub) if t), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _parse_reach(items: Sequence[str] | Mapping | None) -> dict[str, float]:
    if not items:
        return {}
    if isinstance(items, Mapping):
        return {str(k): float(v) for k, v in items.items()}
    out = {}
    for item in items:
        metric, sep, value = item.partition("=")
        try:
            out[metric] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            print(
                f"flower-qlearn-plot: --reach expects METRIC=VALUE, got {item!r}", file=sys.stderr
            )
            raise SystemExit(2)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flower-qlearn-plot",
        description="Figures and tables of a run or multirun directory: mean and 95%% band "
        "across seeds per group of swept parameters. Flags override the sweep config's "
        "'plot:' section.",
    )
    p.add_argument("dir", type=Path, help="a run directory, a multirun directory or any tree")
    p.add_argument(
        "--metric",
        action="append",
        help="metric column (repeatable); default: the error metrics present",
    )
    p.add_argument("--x", choices=sweeps.X_AXES, help="x axis (default samples_per_agent)")
    p.add_argument("--out", type=Path, help="output directory (default DIR/figures)")
    p.add_argument("--name", help="prefix of the output file names, e.g. woo_heterogeneity")
    p.add_argument(
        "--group-by",
        help="comma-separated keys to group by (default: the "
        "overrides that vary across jobs); '' for one group",
    )
    p.add_argument(
        "--average-over",
        default=None,
        help="comma-separated replicate keys averaged over (default: seed)",
    )
    p.add_argument(
        "--reach",
        action="append",
        metavar="METRIC=VALUE",
        help="report when the mean curve reaches METRIC <= VALUE",
    )
    p.add_argument(
        "--vs",
        metavar="KEY",
        help="scaling figure: 1/E[err^2] over the tail of "
        "each run versus the numeric swept KEY, with its log-log slope",
    )
    p.add_argument(
        "--tail", type=float, help="fraction of final rounds averaged by --vs (default 0.5)"
    )
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the bands")
    p.add_argument("--xscale", choices=("auto", "linear", "log"), help="default auto")
    p.add_argument("--yscale", choices=("auto", "linear", "log"), help="default auto")
    p.add_argument("--title", help="figure title")
    return p


def _keys(text: str | Sequence[str] | None) -> list[str] | None:
    if text is None:
        return None
    if isinstance(text, str):
        return [k.strip() for k in text.split(",") if k.strip()]
    return [str(k) for k in text]


def main(argv: Sequence[str]) -> int:
    """``flower-qlearn-plot DIR [--metric M] [--x samples_per_agent|round] [--out OUT] ...``.

    Writes ``<OUT>/<name_><metric>.png`` per metric, ``<OUT>/<name_>final.csv|.md``, and with
    ``--vs KEY`` ``<OUT>/<name_><metric>_vs_<KEY>.png`` plus ``..._vs_<KEY>.csv|.md``. A single
    run directory also gets its ``error_vs_samples.png`` redrawn. Prints the paths and tables.
    """
    args = _parser().parse_args(list(argv))
    try:
        jobs = sweeps.load_jobs(args.dir)
    except FileNotFoundError as exc:
        print(f"flower-qlearn-plot: {exc}", file=sys.stderr)
        return 2
    conf = sweeps.plot_settings(jobs)
    metrics = args.metric or conf.get("metrics") or sweeps.metrics_present(jobs)
    x = args.x or conf.get("x") or "samples_per_agent"
    if x not in sweeps.X_AXES:
        print(
            f"flower-qlearn-plot: plot.x={x!r}; expected one of {', '.join(sweeps.X_AXES)}",
            file=sys.stderr,
        )
        return 2
    missing = [m for m in metrics if m not in jobs[0].rows[0]]
    if missing:
        print(
            f"flower-qlearn-plot: no column {', '.join(missing)} in metrics.csv; "
            f"available: {', '.join(jobs[0].rows[0])}",
            file=sys.stderr,
        )
        return 2
    average_over = _keys(args.average_over) or _keys(conf.get("average_over")) or ["seed"]
    group_by = _keys(args.group_by) if args.group_by is not None else _keys(conf.get("group_by"))
    reach = _parse_reach(args.reach) or _parse_reach(conf.get("reach"))
    vs = args.vs or conf.get("vs")
    tail = args.tail if args.tail is not None else float(conf.get("tail", 0.5))
    name = args.name if args.name is not None else conf.get("name", "")
    prefix = f"{name}_" if name else ""
    title = args.title if args.title is not None else conf.get("title", "")
    xscale = args.xscale or conf.get("xscale", "auto")
    yscale = args.yscale or conf.get("yscale", "auto")
    single = len(jobs) == 1 and jobs[0].path == args.dir
    out = args.out or (args.dir / "figures")

    keys, curves = sweeps.sweep_curves(
        jobs, metrics, x, group_by=group_by, average_over=average_over, level=args.level
    )
    written = []
    for metric, group_curves in curves.items():
        written.append(
            plot_curves(
                group_curves,
                out / f"{prefix}{metric}.png",
                title=title or f"{len(jobs)} runs in {args.dir.name}",
                xscale=xscale,
                yscale=yscale,
                threshold=reach.get(metric),
            )
        )
    rows = sweeps.final_table(keys, curves, reach)
    written.extend(sweeps.write_table(rows, out / f"{prefix}final"))
    print(
        f"{len(jobs)} runs, grouped by {', '.join(keys) or '(nothing)'}; "
        f"averaged over {', '.join(average_over)}"
    )
    print(sweeps.markdown_table(rows))
    if vs:
        for metric in metrics:
            try:
                scaling = sweeps.scaling_table(jobs, vs, metric, tail=tail, level=args.level)
            except ValueError as exc:
                print(f"flower-qlearn-plot: {exc}", file=sys.stderr)
                return 2
            stem = out / f"{prefix}{metric}_vs_{vs}"
            written.append(plot_scaling(scaling, stem.parent / f"{stem.name}.png", title=title))
            written.extend(sweeps.write_table(scaling.rows, stem))
            print(sweeps.markdown_table(scaling.rows))
            print(
                f"log-log slope of 1/E[{metric}^2] versus {vs}: {scaling.slope:.3f} "
                f"(95% CI [{scaling.slope_low:.3f}, {scaling.slope_high:.3f}])"
            )
    if single and (args.dir / "summary.json").is_file():
        import json

        summary = json.loads((args.dir / "summary.json").read_text())
        written.extend(
            plot_run(
                jobs[0].rows, args.dir / "figures", objective=summary.get("objective", "discounted")
            )
        )
    for path in written:
        print(path)
    return 0


class SweepFigures(Callback):
    """Hydra callback: when a multirun ends, draw its figures and tables into the sweep dir.

    So ``flower-qlearn -m +experiment=NAME`` regenerates an experiment's figure in one command
    (``multirun/NAME/figures/``), with the experiment's ``plot:`` defaults. Registered in
    ``conf/config.yaml``; ``sweep_figures=false`` turns it off.
    """

    def on_multirun_end(self, config, **kwargs) -> None:  # noqa: D102 - Hydra's hook
        if not config.get("sweep_figures", True):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            main([str(sweep_dir)])
        except Exception as exc:  # noqa: BLE001 - a plotting failure must not fail the sweep
            logging.getLogger("flower_qlearn").warning(
                "could not draw the sweep figures of %s: %s (run flower-qlearn-plot %s)",
                sweep_dir, exc, sweep_dir,
            )
