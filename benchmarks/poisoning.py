"""The poisoning figure: one in-bound attacker of 20, with and without robust aggregation.

Why: issue 13 item 3. One client sending ``Q = bound`` (accepted: it is in bound) drags every
strategy's global table away; ``strategy.robust=trimmed_mean`` (and ``median``) should keep the
final error within 2x of the honest run, for every strategy. For each strategy this runs, with
the public API (:func:`flower_qlearn.run_experiment`, in-process engine, real Flower messages):

    honest              no attacker, robust=none (today's numbers)
    honest-trimmed      no attacker, robust=trimmed_mean (what the defence costs)
    attacked-none       client.attack=<attack> on client.attack_agents, robust=none
    attacked-trimmed    the same attacker, robust=trimmed_mean (trim_fraction 0.1)
    attacked-median     the same attacker, robust=median

and writes a figure (error vs round, mean over seeds) and a table of final errors with the
ratios to the honest run (``.md`` and ``.csv`` beside the figure).

Reproduce (from the repository root; the defaults take a few minutes on 2 cores):

    python benchmarks/poisoning.py                 # 1 seed
    python benchmarks/poisoning.py --seeds 3       # mean over seeds 0, 1, 2
    python benchmarks/poisoning.py --full          # 5 seeds, twice the rounds
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from flower_qlearn import run_experiment  # noqa: E402
from flower_qlearn.attacks import ATTACKS  # noqa: E402

#: Per strategy: its overrides (a small, fast config of the reference setting).
STRATEGIES: dict[str, list[str]] = {
    "equal": ["strategy=equal", "num_rounds=60"],
    "importance": ["strategy=importance", "num_rounds=60"],
    "average_reward": ["strategy=average_reward", "strategy.num_epochs=40"],
    "dasa": ["strategy=dasa", "num_rounds=300"],
}
#: Scenario -> (robust, attacked).
SCENARIOS = {
    "honest": ("none", False),
    "honest-trimmed_mean": ("trimmed_mean", False),
    "attacked-none": ("none", True),
    "attacked-trimmed_mean": ("trimmed_mean", True),
    "attacked-median": ("median", True),
}
COLORS = {"honest": "black", "honest-trimmed_mean": "tab:gray", "attacked-none": "tab:red",
          "attacked-trimmed_mean": "tab:green", "attacked-median": "tab:blue"}
#: The run's error metric, in order of preference (average reward reports the gain error).
ERROR_METRICS = ("normalized_q_error", "gain_error")


def error_curve(history: list[dict]) -> tuple[str, np.ndarray]:
    """``(metric, values per round)`` of the first error metric the run reports."""
    for metric in ERROR_METRICS:
        values = [row.get(metric) for row in history]
        if values and all(v not in (None, "") for v in values):
            return metric, np.array(values, dtype=np.float64)
    raise KeyError(f"no error metric among {ERROR_METRICS} in the history")


def run_one(strategy: str, scenario: str, seed: int, args: argparse.Namespace, out: Path):
    """One run; returns ``(metric, error per round, rejected replies in all)``."""
    robust, attacked = SCENARIOS[scenario]
    overrides = [
        *STRATEGIES[strategy],
        f"num_clients={args.num_clients}",
        f"seed={seed}",
        f"strategy.robust={robust}",
        f"strategy.trim_fraction={args.trim_fraction}",
        "log_every=0",
        "figures=false",
        f"output_dir={out / f'{strategy}_{scenario}_{seed}'}",
    ]
    if args.full:
        overrides = [_doubled(o) for o in overrides]
    if attacked:
        agents = ",".join(str(a) for a in args.attack_agents)
        overrides += [f"client.attack={args.attack}", f"client.attack_agents=[{agents}]"]
    result = run_experiment(overrides)
    metric, curve = error_curve(result.history)
    rejected = int(sum(int(row.get("rejected") or 0) for row in result.history))
    return metric, curve, rejected


def _doubled(override: str) -> str:
    key, _, value = override.partition("=")
    if key in ("num_rounds", "strategy.num_epochs"):
        return f"{key}={int(value) * 2}"
    return override


def write_table(rows: list[dict], path: Path) -> None:
    """``path``.md and ``path``.csv: final errors and their ratio to the honest run."""
    keys = list(rows[0])
    with path.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[k]) for k in keys) + " |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot(curves: dict, metrics: dict, title: str, path: Path) -> None:
    """One panel per strategy: mean error over seeds vs round, one line per scenario."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6))
    for ax, (strategy, by_scenario) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        for scenario, runs in by_scenario.items():
            mean = np.mean(np.stack(runs), axis=0)
            ax.plot(np.arange(1, mean.size + 1), mean, color=COLORS[scenario], label=scenario,
                    linestyle="--" if scenario == "honest-trimmed_mean" else "-")
        ax.set_yscale("log")
        ax.set_title(strategy)
        ax.set_xlabel("round")
        ax.set_ylabel(metrics[strategy])
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    parser.add_argument("--full", action="store_true",
                        help="5 seeds (unless --seeds is given) and twice the rounds")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                        choices=list(STRATEGIES), help="strategies to run (default: all)")
    parser.add_argument("--num-clients", type=int, default=20, help="K (default 20)")
    parser.add_argument("--attack", default="max_value", choices=[a for a in ATTACKS
                                                                   if a != "none"])
    parser.add_argument("--attack-agents", type=int, nargs="+", default=[0],
                        help="partition ids of the attackers (default: 0)")
    parser.add_argument("--trim-fraction", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/poisoning.png"),
                        help="the figure; the table goes beside it as .md and .csv")
    args = parser.parse_args(argv)
    if args.full and "--seeds" not in (argv if argv is not None else sys.argv):
        args.seeds = 5
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print("load:", os.getloadavg())
    curves: dict[str, dict[str, list[np.ndarray]]] = {}
    metrics: dict[str, str] = {}
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="poisoning-") as tmp:
        for strategy in args.strategies:
            curves[strategy] = {scenario: [] for scenario in SCENARIOS}
            rejected = 0
            for seed in range(args.seeds):
                for scenario in SCENARIOS:
                    metric, curve, n = run_one(strategy, scenario, seed, args, Path(tmp))
                    curves[strategy][scenario].append(curve)
                    metrics[strategy], rejected = metric, rejected + n
            final = {s: float(np.mean([c[-1] for c in runs]))
                     for s, runs in curves[strategy].items()}
            honest = final["honest"]
            row = {"strategy": strategy, "metric": metrics[strategy], **final}
            for scenario in list(SCENARIOS)[1:]:
                row[f"{scenario} / honest"] = final[scenario] / honest if honest else math.nan
            row["rejected replies"] = rejected
            rows.append(row)
            print({k: _fmt(v) for k, v in row.items()}, flush=True)
    title = (f"1 attacker ({args.attack}, agents {args.attack_agents}) of {args.num_clients}; "
             f"trim_fraction={args.trim_fraction}; mean of {args.seeds} seed(s)")
    plot(curves, metrics, title, args.out)
    write_table(rows, args.out.with_suffix(""))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in "
          f"{time.perf_counter() - start:.0f}s; load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
