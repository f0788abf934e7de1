"""DASA's README figures and numbers from the ``dasa_*`` Hydra multiruns.

Why: the claims of ALGORITHMS.md section 6 are statements about curves averaged over seeds and
compared across rules, regimes, numbers of agents and thresholds. ``flower-qlearn-plot`` draws
one sweep at a time; this script puts the DASA sweeps side by side (using the same loader and
the same mean / 95% Student-t band as ``flower_qlearn.sweeps``) and prints the tables quoted in
the README.

Reproduce (from the repository root; about 25 min on 2 cores with the joblib launcher):

    flower-qlearn -m +experiment=dasa_stragglers hydra/launcher=joblib
    flower-qlearn -m +experiment=dasa_heavy_tail hydra/launcher=joblib
    flower-qlearn -m +experiment=dasa_speedup hydra/launcher=joblib
    flower-qlearn -m +experiment=dasa_epsilon hydra/launcher=joblib
    flower-qlearn -m +experiment=dasa_heavy_tail strategy.rule=dasa \
        strategy.epsilon=0.05,0.1,0.2,0.3,0.5,1,2,5 seed='range(0,10)' \
        hydra.sweep.dir=multirun/dasa_epsilon_heavy_tail hydra/launcher=joblib
    python benchmarks/dasa_figures.py [--multirun multirun] [--out docs/figures]

Missing sweeps are skipped with a note.
"""

from __future__ import annotations

import argparse
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
DPI = 110


def _load(root: Path, name: str) -> list[sweeps.Job] | None:
    path = root / name
    try:
        return sweeps.load_jobs(path)
    except FileNotFoundError:
        print(f"(skipped: no runs in {path})")
        return None


def _by(jobs: Sequence[sweeps.Job], *keys: str) -> dict[tuple[str, ...], list[sweeps.Job]]:
    return sweeps.group_jobs(jobs, list(keys))


def _per_seed(jobs: Sequence[sweeps.Job], metric: str, rows: slice) -> np.ndarray:
    """One number per job: the mean of ``metric`` over the rows ``rows`` of its metrics.csv."""
    return np.array([np.nanmean(job.column(metric)[rows]) for job in jobs])


def _summary(values: np.ndarray) -> tuple[float, float, float]:
    mean, low, high = sweeps.mean_band(values[:, None])
    return float(mean[0]), float(low[0]), float(high[0])


def _fmt(triple: tuple[float, float, float], digits: int = 3) -> str:
    mean, low, high = triple
    return f"{mean:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"


# --------------------------------------------------------------------------------------------
# 1. q_error versus server iterations, two regimes
# --------------------------------------------------------------------------------------------


def regimes(root: Path, out: Path) -> None:
    panels = [
        ("dasa_stragglers", "Stragglers: 4 of 10 agents 50-150 iterations late"),
        ("dasa_heavy_tail", "Heavy-tailed: Pareto delays (tail 1.2, scale 5)"),
    ]
    loaded = [(name, title, _load(root, name)) for name, title in panels]
    loaded = [p for p in loaded if p[2] is not None]
    if not loaded:
        return
    fig, axes = plt.subplots(1, len(loaded), figsize=(5.2 * len(loaded), 3.9), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (name, title, jobs) in zip(axes, loaded, strict=True):
        print(f"\n### {name}: q_error at the last iteration (mean [95% CI] over seeds)\n")
        print(
            "| rule | seeds | q_error | skipped iterations | mean staleness used | "
            "max staleness used |"
        )
        print("|---|---|---|---|---|---|")
        finals = {}
        for (rule,), members in _by(jobs, "strategy.rule").items():
            curve = sweeps.aggregate(members, "q_error", "round", label=rule)
            ax.plot(
                curve.x,
                curve.mean,
                color=COLORS[rule],
                lw=1.6,
                label=f"{LABELS[rule]} (n={curve.num_seeds})",
            )
            ax.fill_between(curve.x, curve.low, curve.high, color=COLORS[rule], alpha=0.2, lw=0)
            final = _summary(curve.values[:, -1])
            finals[rule] = final[0]
            skipped = _summary(_per_seed(members, "skipped", slice(None)))
            staleness = _summary(_per_seed(members, "staleness_mean", slice(None)))
            worst = max(np.nanmax(job.column("staleness_max")) for job in members)
            print(
                f"| {LABELS[rule]} | {curve.num_seeds} | {_fmt(final)} | "
                f"{skipped[0]:.1%} | {staleness[0]:.2f} | {worst:.0f} |"
            )
        if {"dasa", "delayed", "nondelayed"} <= finals.keys():
            print(
                f"\nDelayed / DASA = {finals['delayed'] / finals['dasa']:.2f}; "
                f"DASA / Non-delayed = {finals['dasa'] / finals['nondelayed']:.2f}"
            )
        ax.set_yscale("log")
        ax.set_xlabel("server iteration")
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("q_error = ||theta_t - Q*||_inf")
    fig.suptitle(
        "DASA vs baselines, Garnet 5x2, gamma 0.8, N=10, B=10, alpha=2, epsilon=0.5 "
        "(mean and 95% CI)",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, out / "dasa_regimes.png")


# --------------------------------------------------------------------------------------------
# 2. Speedup: error at the noise floor versus N
# --------------------------------------------------------------------------------------------


def speedup(root: Path, out: Path) -> None:
    jobs = _load(root, "dasa_speedup")
    if jobs is None:
        return
    num_rounds = min(len(job.rows) for job in jobs)
    tail = slice(num_rounds // 2, num_rounds)
    print(
        f"\n### dasa_speedup: q_error averaged over iterations {tail.start + 1}-{tail.stop} "
        "(mean [95% CI] over seeds)\n"
    )
    table: dict[str, dict[int, tuple[float, float, float]]] = {r: {} for r in RULES}
    for (n, rule), members in _by(jobs, "num_clients", "strategy.rule").items():
        table[rule][int(n)] = _summary(_per_seed(members, "q_error", tail))
    ns = sorted({n for rows in table.values() for n in rows})
    print("| N | " + " | ".join(LABELS[r] for r in RULES) + " |")
    print("|---|" + "---|" * len(RULES))
    for n in ns:
        cells = [_fmt(table[r][n]) if n in table[r] else "-" for r in RULES]
        print(f"| {n} | " + " | ".join(cells) + " |")
    fig, ax = plt.subplots(figsize=(5.4, 4.0))
    for rule in RULES:
        xs = [n for n in ns if n in table[rule]]
        mean = np.array([table[rule][n][0] for n in xs])
        low = np.array([table[rule][n][1] for n in xs])
        high = np.array([table[rule][n][2] for n in xs])
        ax.plot(xs, mean, "o-", color=COLORS[rule], label=LABELS[rule])
        ax.fill_between(xs, low, high, color=COLORS[rule], alpha=0.2, lw=0)
        fit = [n for n in xs if n >= 2]
        if len(fit) >= 2:
            slope = np.polyfit(np.log(fit), np.log([table[rule][n][0] for n in fit]), 1)[0]
            print(f"{LABELS[rule]}: log-log slope of the error versus N (N >= 2): {slope:.2f}")
    ref_n = np.array([ns[0], ns[-1]], dtype=float)
    ref0 = table["nondelayed"][ns[0]][0] if ns[0] in table["nondelayed"] else 0.1
    ax.plot(ref_n, ref0 * (ref_n / ref_n[0]) ** -0.5, "k--", lw=1, label="slope -1/2")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("number of agents N (40% straggle 50-150 iterations)")
    ax.set_ylabel(f"q_error, mean over iterations {tail.start + 1}-{tail.stop}")
    ax.set_title("Speedup: Garnet 5x2, B=10, alpha=2, epsilon=0.5", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "dasa_speedup.png")


# --------------------------------------------------------------------------------------------
# 3. The threshold epsilon: error and skip rate
# --------------------------------------------------------------------------------------------


def epsilon(root: Path, out: Path) -> None:
    sweeps_found = [
        (name, title, _load(root, name))
        for name, title in (
            ("dasa_epsilon", "6 of 10 agents straggle (50-150)"),
            ("dasa_epsilon_heavy_tail", "Pareto delays (tail 1.2, scale 5)"),
        )
    ]
    sweeps_found = [s for s in sweeps_found if s[2] is not None]
    if not sweeps_found:
        return
    fig, (ax_err, ax_skip) = plt.subplots(1, 2, figsize=(10.4, 3.9))
    markers = ["o-", "s--"]
    for (name, title, jobs), marker in zip(sweeps_found, markers, strict=False):
        last = slice(-1, None)
        print(f"\n### {name}: DASA versus epsilon (final q_error, skipped iterations)\n")
        print("| epsilon | q_error at the last iteration | skipped iterations |")
        print("|---|---|---|")
        rows = []
        baselines = {}
        for (eps, rule), members in _by(jobs, "strategy.epsilon", "strategy.rule").items():
            err = _summary(_per_seed(members, "q_error", last))
            skip = _summary(_per_seed(members, "skipped", slice(None)))
            if rule == "dasa":
                rows.append((float(eps), err, skip))
            else:
                baselines[rule] = err  # identical for every epsilon (the rule ignores it)
        rows.sort()
        for eps, err, skip in rows:
            print(f"| {eps:g} | {_fmt(err)} | {skip[0]:.1%} |")
        for rule, err in baselines.items():
            print(f"{LABELS[rule]} (ignores epsilon): {_fmt(err)}")
        eps = [r[0] for r in rows]
        color = COLORS["dasa"] if marker == markers[0] else "tab:purple"
        ax_err.plot(eps, [r[1][0] for r in rows], marker, color=color, label=f"DASA, {title}")
        ax_err.fill_between(
            eps, [r[1][1] for r in rows], [r[1][2] for r in rows], color=color, alpha=0.2, lw=0
        )
        ax_skip.plot(eps, [r[2][0] for r in rows], marker, color=color, label=f"DASA, {title}")
        for rule, err in baselines.items():
            ax_err.axhline(
                err[0], color=COLORS[rule], ls=":", lw=1.2, label=f"{LABELS[rule]}, {title}"
            )
    for ax in (ax_err, ax_skip):
        ax.set_xscale("log")
        ax.set_xlabel("epsilon (threshold on the median selected delay error, l2)")
        ax.grid(True, which="both", alpha=0.3)
    ax_err.set_yscale("log")
    ax_err.set_ylabel("q_error after 150 iterations")
    ax_skip.set_ylabel("fraction of skipped iterations")
    ax_err.legend(fontsize=7)
    ax_skip.legend(fontsize=7)
    fig.suptitle(
        "DASA's threshold epsilon, Garnet 5x2, N=10, B=10, alpha=2 (mean and 95% CI)", fontsize=9
    )
    fig.tight_layout()
    _save(fig, out / "dasa_epsilon.png")


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
    regimes(args.multirun, args.out)
    speedup(args.multirun, args.out)
    epsilon(args.multirun, args.out)


if __name__ == "__main__":
    main()
