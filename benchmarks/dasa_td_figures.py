"""DASA on TD(0) with linear features: the DASA paper's Figure 2 and the majority-straggler
regime, from the ``dasa_td_*`` Hydra multiruns (docs/dasa_td.md).

Why: the claims are about theta_error curves averaged over seeds, compared across rules, step
sizes, numbers of agents and straggler fractions; this script puts them side by side (the
loader and the mean / 95% Student-t band of ``flower_qlearn.sweeps``) and prints the tables
quoted in docs/dasa_td.md.

Reproduce (from the repository root; about 20 min on 2 cores with the joblib launcher):

    flower-qlearn -m +experiment=dasa_td_delays hydra/launcher=joblib
    flower-qlearn -m +experiment=dasa_td_speedup hydra/launcher=joblib
    flower-qlearn -m +experiment=dasa_td_majority hydra/launcher=joblib
    flower-qlearn -m +experiment=dasa_td_majority strategy.rule=nondelayed delay.fraction=0.25 \
        hydra.sweep.dir=multirun/dasa_td_majority_nondelayed hydra/launcher=joblib
    python benchmarks/dasa_td_figures.py [--multirun multirun] [--out docs/figures]

Missing sweeps are skipped with a note.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from flower_qlearn import sweeps  # noqa: E402

RULES = ("nondelayed", "delayed", "dasa")
LABELS = {"nondelayed": "Non-delayed", "delayed": "Delayed", "dasa": "DASA"}
COLORS = {"nondelayed": "tab:blue", "delayed": "tab:orange", "dasa": "tab:green"}
METRIC = "theta_error"
YLABEL = "theta_error = ||theta_t - theta*||_2^2"
PROBLEM = "Garnet n=20, gamma 0.8, d=3 random features, B=10"
DPI = 110
#: Curves show each seed's running mean over this many iterations (the raw error is noisy).
SMOOTH = 25


def _load(root: Path, name: str) -> list[sweeps.Job] | None:
    try:
        return sweeps.load_jobs(root / name)
    except FileNotFoundError:
        print(f"(skipped: no runs in {root / name})")
        return None


def _per_seed(jobs: Sequence[sweeps.Job], metric: str, rows: slice) -> np.ndarray:
    return np.array([np.nanmean(job.column(metric)[rows]) for job in jobs])


def _summary(values: np.ndarray) -> tuple[float, float, float]:
    mean, low, high = sweeps.mean_band(values[:, None])
    return float(mean[0]), float(low[0]), float(high[0])


def _fmt(triple: tuple[float, float, float]) -> str:
    mean, low, high = triple
    return f"{mean:.3g} [{low:.3g}, {high:.3g}]"


def _curve(ax, jobs, label: str, color: str, ls: str = "-") -> np.ndarray:
    """Draw the mean over seeds (and its 95% band) of each seed's running mean over
    :data:`SMOOTH` iterations; return the raw ``(seeds, iterations)`` values."""
    n = min(len(job.rows) for job in jobs)
    values = np.stack([job.column(METRIC)[:n] for job in jobs])
    kernel = np.ones(SMOOTH) / SMOOTH
    smooth = np.stack([np.convolve(v, kernel, mode="valid") for v in values])
    x = np.arange(SMOOTH, n + 1)
    mean, low, high = sweeps.mean_band(smooth)
    ax.plot(x, mean, color=color, ls=ls, lw=1.5, label=f"{label} (n={len(jobs)})")
    # A t-band of a positive quantity can dip below 0 with few seeds: not drawable on a log axis.
    ax.fill_between(x, np.where(low > 0, low, np.nan), high, color=color, alpha=0.18, lw=0)
    return values


def _axes(ax, title: str) -> None:
    ax.set_yscale("log")
    ax.set_xlabel(f"server iteration (running mean over {SMOOTH})")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _tail(jobs: Sequence[sweeps.Job]) -> slice:
    n = min(len(job.rows) for job in jobs)
    return slice(n // 2, n)


# --------------------------------------------------------------------------------------------
# Figure 2(a): DASA vs Non-delayed vs Delayed, two step sizes
# --------------------------------------------------------------------------------------------


def delays(root: Path, out: Path) -> None:
    jobs = _load(root, "dasa_td_delays")
    if jobs is None:
        return
    by_c = sweeps.group_jobs(jobs, ["strategy.omega_divisor"])
    keys = sorted(by_c, key=lambda k: -float(k[0]))
    fig, axes = plt.subplots(1, len(keys), figsize=(5.3 * len(keys), 4.0), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys, strict=True):
        c = float(key[0])
        members = by_c[key]
        tail = _tail(members)
        omega = _omega(members[0])
        print(
            f"\n### dasa_td_delays, alpha = omega / {c:g} = {omega / c:.4g}: theta_error "
            f"(mean [95% CI] over seeds)\n"
        )
        print(
            "| rule | seeds | last iteration | mean over iterations "
            f"{tail.start + 1}-{tail.stop} | skipped | mean staleness used |"
        )
        print("|---|---|---|---|---|---|")
        finals, tails = {}, {}
        for (rule,), group in sorted(sweeps.group_jobs(members, ["strategy.rule"]).items()):
            values = _curve(ax, group, LABELS[rule], COLORS[rule])
            final = _summary(values[:, -1])
            tail_mean = _summary(_per_seed(group, METRIC, tail))
            finals[rule], tails[rule] = final[0], tail_mean[0]
            skipped = _summary(_per_seed(group, "skipped", slice(None)))[0]
            staleness = np.nanmean(_per_seed(group, "staleness_mean", slice(None)))
            print(
                f"| {LABELS[rule]} | {len(group)} | {_fmt(final)} | {_fmt(tail_mean)} | "
                f"{skipped:.1%} | {staleness:.1f} |"
            )
        if set(RULES) <= finals.keys():
            print(
                f"\nlast iteration: Delayed / DASA = {finals['delayed'] / finals['dasa']:.1f}, "
                f"DASA / Non-delayed = {finals['dasa'] / finals['nondelayed']:.2f}; tail mean: "
                f"Delayed / DASA = {tails['delayed'] / tails['dasa']:.1f}, DASA / Non-delayed "
                f"= {tails['dasa'] / tails['nondelayed']:.2f}"
            )
        _axes(ax, f"alpha = omega / {c:g} = {omega / c:.3g}")
    axes[0].set_ylabel(YLABEL)
    axes[0].set_ylim(bottom=1e-5)  # below: only the gaps of the seeds' t-bands
    fig.suptitle(
        f"DASA on TD(0), {PROBLEM}, N=20, 8 stragglers 100-500 iterations late, epsilon 0.05 "
        "(mean, 95% CI)",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, out / "dasa_td_delays.png")


def _omega(job: sweeps.Job) -> float:
    """omega of the run's problem (its summary's ground truth, else recomputed)."""
    import json

    summary = json.loads((job.path / "summary.json").read_text())
    return float(summary["ground_truth"]["omega"])


# --------------------------------------------------------------------------------------------
# Figure 2(b): linear speedup, N = 1 vs N = 20
# --------------------------------------------------------------------------------------------


def speedup(root: Path, out: Path) -> None:
    jobs = _load(root, "dasa_td_speedup")
    if jobs is None:
        return
    tail = _tail(jobs)
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    table: dict[tuple[str, int], tuple[float, float, float]] = {}
    groups = sweeps.group_jobs(jobs, ["num_clients", "strategy.rule"])
    for (n, rule), group in sorted(groups.items(), key=lambda kv: (int(kv[0][0]), kv[0][1])):
        n = int(n)
        ls = "-" if n > 1 else "--"
        _curve(ax, group, f"{LABELS[rule]}, N={n}", COLORS[rule], ls)
        table[(rule, n)] = _summary(_per_seed(group, METRIC, tail))
    print(
        f"\n### dasa_td_speedup: theta_error averaged over iterations {tail.start + 1}-"
        f"{tail.stop} (mean [95% CI] over seeds)\n"
    )
    ns = sorted({n for _, n in table})
    print("| rule | " + " | ".join(f"N={n}" for n in ns) + " | ratio N=1 / N=max |")
    print("|---|" + "---|" * (len(ns) + 1))
    for rule in ("nondelayed", "dasa"):
        cells = [_fmt(table[(rule, n)]) if (rule, n) in table else "-" for n in ns]
        ratio = (
            table[(rule, ns[0])][0] / table[(rule, ns[-1])][0]
            if (rule, ns[0]) in table and (rule, ns[-1]) in table
            else math.nan
        )
        print(f"| {LABELS[rule]} | " + " | ".join(cells) + f" | {ratio:.1f} |")
    _axes(ax, f"Speedup: {PROBLEM},\nalpha = omega/4, 40% stragglers 100-500 "
          "(N=1: no straggler, DASA = Non-delayed)")
    ax.set_ylabel(YLABEL)
    ax.set_ylim(bottom=1e-5)
    fig.tight_layout()
    _save(fig, out / "dasa_td_speedup.png")


# --------------------------------------------------------------------------------------------
# The majority-straggler regime
# --------------------------------------------------------------------------------------------


def majority(root: Path, out: Path) -> None:
    jobs = _load(root, "dasa_td_majority")
    if jobs is None:
        return
    baseline = _load(root, "dasa_td_majority_nondelayed")
    num_agents = int(jobs[0].value("num_clients"))
    last = slice(-1, None)
    rows: dict[str, list[tuple[int, tuple, tuple]]] = {"dasa": [], "delayed": []}
    for (frac, rule), group in sweeps.group_jobs(jobs, ["delay.fraction", "strategy.rule"]).items():
        k = math.floor(float(frac) * num_agents)
        rows[rule].append(
            (
                k,
                _summary(_per_seed(group, METRIC, last)),
                _summary(_per_seed(group, "skipped", slice(None))),
            )
        )
    nd = _summary(_per_seed(baseline, METRIC, last)) if baseline else None
    print(
        f"\n### dasa_td_majority: N = {num_agents}, theta_error at the last iteration "
        "(mean [95% CI]) and skipped iterations\n"
    )
    print("| stragglers | DASA theta_error | DASA skipped | Delayed theta_error | DASA / Delayed |")
    print("|---|---|---|---|---|")
    dasa, delayed = sorted(rows["dasa"]), dict((k, e) for k, e, _ in rows["delayed"])
    for k, err, skip in dasa:
        d = delayed.get(k)
        ratio = err[0] / d[0] if d else math.nan
        print(
            f"| {k} of {num_agents} | {_fmt(err)} | {skip[0]:.1%} | "
            f"{_fmt(d) if d else '-'} | {ratio:.2f} |"
        )
    if nd:
        print(f"Non-delayed (no delays): {_fmt(nd)}")
    fig, (ax_err, ax_skip) = plt.subplots(1, 2, figsize=(10.4, 3.9))
    for rule in ("dasa", "delayed"):
        pts = sorted(rows[rule])
        ks = [p[0] for p in pts]
        ax_err.plot(ks, [p[1][0] for p in pts], "o-", color=COLORS[rule], label=LABELS[rule])
        ax_err.fill_between(
            ks, [p[1][1] for p in pts], [p[1][2] for p in pts], color=COLORS[rule], alpha=0.2, lw=0
        )
    if nd:
        ax_err.axhline(nd[0], color=COLORS["nondelayed"], ls=":", label="Non-delayed")
    pts = sorted(rows["dasa"])
    ax_skip.plot(
        [p[0] for p in pts], [p[2][0] for p in pts], "o-", color=COLORS["dasa"], label="DASA"
    )
    half = num_agents / 2
    for ax in (ax_err, ax_skip):
        ax.axvline(half + 0.5, color="grey", ls="--", lw=1)
        ax.set_xlabel(f"stragglers of N={num_agents} (100-500 iterations late)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_err.text(half + 0.6, ax_err.get_ylim()[1], "majority\nstraggles", va="top", fontsize=8)
    ax_err.set_yscale("log")
    ax_err.set_ylabel(f"{METRIC} at the last iteration")
    ax_skip.set_ylabel("fraction of skipped iterations")
    ax_skip.set_ylim(-0.02, 1.02)
    fig.suptitle(
        f"DASA's median rule as stragglers pass N/2: {PROBLEM},\nalpha = omega/4, "
        "epsilon 0.05, 600 iterations (mean, 95% CI over 5 seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, out / "dasa_td_majority.png")


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print(f"\nwrote {path}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--multirun", type=Path, default=Path("multirun"))
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args(argv)
    delays(args.multirun, args.out)
    speedup(args.multirun, args.out)
    majority(args.multirun, args.out)


if __name__ == "__main__":
    main()
