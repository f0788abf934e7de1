"""``flower-qlearn-plot DIR``: the figures and tables of a run or multirun directory.

:func:`main` works on any run or multirun directory: it reads every job with
:mod:`flower_qlearn.sweeps`, groups the jobs by the swept parameters, and writes one PNG per
metric (mean over seeds and its 95% band per group, drawn by :mod:`flower_qlearn.plots`), a
table of final values (CSV and Markdown) and, with ``--vs KEY``, the scaling figure of the error
floor versus a numeric swept parameter with its fitted log-log slope (the linear-speedup test).
Defaults come from the sweep config's ``plot:`` section; flags override them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import plots, sweeps
from .outputs import SUMMARY_FILE

#: The x axis of the figures when neither ``--x`` nor the sweep's ``plot.x`` names one.
DEFAULT_X = "samples_per_agent"


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
    # The description is printed as written; only arguments' help strings are %-formatted.
    p = argparse.ArgumentParser(
        prog="flower-qlearn-plot",
        description="Figures and tables of a run or multirun directory: mean and 95% band "
        "across seeds per group of swept parameters. Flags override the sweep config's "
        "'plot:' section.",
    )
    p.add_argument("dir", type=Path, help="a run directory, a multirun directory or any tree")
    p.add_argument(
        "--metric",
        action="append",
        help="metric column (repeatable); default: the error metrics present",
    )
    p.add_argument(
        "--x",
        choices=sweeps.X_AXES,
        help=f"x axis (default {DEFAULT_X}); another x than the sweep's default is written to "
        "<metric>_vs_<x>.png, beside the default figures",
    )
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
        help="report when the mean curve reaches METRIC <= VALUE (and draw the line)",
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
    p.add_argument("--title", help="first title line (the second says what was swept)")
    return p


def _keys(text: str | Sequence[str] | None) -> list[str] | None:
    if text is None:
        return None
    if isinstance(text, str):
        return [k.strip() for k in text.split(",") if k.strip()]
    return [str(k) for k in text]


def main(argv: Sequence[str]) -> int:
    """``flower-qlearn-plot DIR [--metric M] [--x samples_per_agent|round] [--out OUT] ...``.

    Writes ``<OUT>/<name_><metric>.png`` per metric (``<name_><metric>_vs_<x>.png`` when ``--x``
    is not the sweep's default x, so the default figures are kept), ``<OUT>/<name_>final.csv|.md``,
    and with ``--vs KEY`` ``<OUT>/<name_><metric>_vs_<KEY>.png`` plus ``..._vs_<KEY>.csv|.md``. A
    single run directory also gets its ``error_vs_samples.png`` redrawn. Prints the paths and
    tables.
    """
    args = _parser().parse_args(list(argv))
    try:
        jobs = sweeps.load_jobs(args.dir)
    except FileNotFoundError as exc:
        print(f"flower-qlearn-plot: {exc}", file=sys.stderr)
        return 2
    conf = sweeps.plot_settings(jobs)
    metrics = args.metric or conf.get("metrics") or sweeps.metrics_present(jobs)
    default_x = conf.get("x") or DEFAULT_X
    x = args.x or default_x
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
    x_suffix = "" if x == default_x else f"_vs_{x}"
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
            plots.plot_curves(
                group_curves,
                out / f"{prefix}{metric}{x_suffix}.png",
                title=title,
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
            written.append(
                plots.plot_scaling(scaling, stem.parent / f"{stem.name}.png", title=title)
            )
            written.extend(sweeps.write_table(scaling.rows, stem))
            print(sweeps.markdown_table(scaling.rows))
            print(
                f"log-log slope of 1/E[{metric}^2] versus {vs}: {scaling.slope:.3f} "
                f"(95% CI [{scaling.slope_low:.3f}, {scaling.slope_high:.3f}])"
            )
    if single and (args.dir / SUMMARY_FILE).is_file():
        summary = json.loads((args.dir / SUMMARY_FILE).read_text())
        written.extend(
            plots.plot_run(
                jobs[0].rows, args.dir / "figures", objective=summary.get("objective", "discounted")
            )
        )
    for path in written:
        print(path)
    return 0
