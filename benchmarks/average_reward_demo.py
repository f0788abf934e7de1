"""Average-reward federated Q-learning: convergence and linear-speedup demonstrations.

Why: ALGORITHMS.md section 5 lists the properties the implementation must show, measured, not
asserted: the gain error ``||max_a Qbar - rho*||_inf`` and the policy gain gap fall toward 0 as
epochs grow, for both schedule groups; at the same number of epochs, K agents reach the same
gain error with K times fewer samples per agent; the number of communication rounds does not
grow with K. Every run goes through the real Flower ServerApp/ClientApp on the in-process
engine (``flower_qlearn.run_experiment``), exactly as ``flower-qlearn +experiment=avg_*`` runs.

Usage::

    python benchmarks/average_reward_demo.py [convergence|speedup|all] [--seeds N]
        [--figures DIR] [--override KEY=VALUE ...]

Writes ``avg_convergence.png`` / ``avg_speedup.png`` into ``--figures`` (default
``docs/figures``) and prints markdown tables (mean and standard deviation over run seeds
``0..N-1``; the MDPs themselves are fixed, ``mdp.seed=0``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Runnable from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from flower_qlearn import run_experiment  # noqa: E402

#: The MDPs of the demonstration, as Hydra overrides.
MDPS = {
    "Garnet 10x3": ["mdp=garnet", "mdp.num_states=10", "mdp.num_actions=3"],
    "RiverSwim 6": ["mdp=riverswim"],
    "FrozenLake 4x4 (reset)": ["mdp=frozenlake", "mdp.terminal=reset"],
}
#: Epochs of the convergence runs and the epochs quoted in its table.
CONVERGENCE = {"polynomial": (200, (10, 50, 200)), "geometric": (7, (3, 5, 7))}
#: Epochs of the speedup runs (polynomial 60 is the sanity reference of ALGORITHMS.md).
SPEEDUP = {"polynomial": 60, "geometric": 6}
AGENTS = (1, 4, 16)
STYLE = {"polynomial": "-", "geometric": "--"}


#: Extra Hydra overrides appended to every run (``--override``), e.g. ``strategy.c_eta=1``.
EXTRA: list[str] = []


def run_epochs(overrides: list[str], workdir: Path) -> list[dict]:
    """Run one experiment; return its rows at the end of every epoch (plus ``rounds``)."""
    result = run_experiment(
        [
            "strategy=average_reward",
            "client=generative",
            "figures=false",
            "log_every=0",
            f"output_dir={workdir}",
            *overrides,
            *EXTRA,
        ]
    )
    rows = []
    for row in result.history:
        if row["epoch_end"] == 1:
            rows.append({**row, "rounds": row["round"]})
    return rows


def mean_runs(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``key`` across seeds, epoch by epoch."""
    values = np.array([[row[key] for row in rows] for rows in runs], dtype=float)
    return values.mean(axis=0), values.std(axis=0)


def convergence(seeds: int, fig_dir: Path, workdir: Path) -> None:
    """Gain error and policy gain gap per epoch, K = 1, both schedules, three MDPs."""
    fig, axes = plt.subplots(2, len(MDPS), figsize=(12, 6.4))
    tables = {kind: [] for kind in CONVERGENCE}
    for col, (label, mdp) in enumerate(MDPS.items()):
        for kind, (epochs, quoted) in CONVERGENCE.items():
            start = time.perf_counter()
            runs = [
                run_epochs(
                    [
                        *mdp,
                        f"strategy.schedule={kind}",
                        f"strategy.num_epochs={epochs}",
                        "num_clients=1",
                        f"seed={seed}",
                    ],
                    workdir / f"conv-{col}-{kind}-{seed}",
                )
                for seed in range(seeds)
            ]
            elapsed = time.perf_counter() - start
            samples = np.array([row["samples_per_agent"] for row in runs[0]])
            err, err_sd = mean_runs(runs, "gain_error")
            gap, _ = mean_runs(runs, "policy_gain_gap")
            gap = np.maximum(gap, 0.0)  # the solver's 1e-10 tolerance can make it -1e-10
            axes[0, col].loglog(samples, err, STYLE[kind], label=f"{kind} ({epochs} epochs)")
            axes[1, col].semilogx(samples, gap, STYLE[kind], label=kind)
            cells = []
            for e in quoted:
                i = e - 1
                cells.append(f"{err[i]:.4f} ± {err_sd[i]:.4f} / {gap[i]:.4f}")
            rounds = runs[0][-1]["rounds"]
            tables[kind].append(
                f"| {label} | {samples[-1]:,} | {rounds} | " + " | ".join(cells) + " |"
            )
            print(f"  {label} {kind}: {seeds} seeds in {elapsed:.1f}s", file=sys.stderr)
        axes[0, col].set_title(label)
        axes[1, col].set_xlabel("samples per agent (local steps)")
    axes[0, 0].set_ylabel("gain error ||Vbar - rho*||_inf")
    axes[1, 0].set_ylabel("policy gain gap rho* - rho(greedy)")
    for ax in axes.flat:
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Average-reward Q-learning, K = 1 (mean of {seeds} seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(fig_dir / "avg_convergence.png", dpi=110)
    plt.close(fig)

    for kind, (epochs, quoted) in CONVERGENCE.items():
        print(f"\n{kind} schedule, K = 1, {epochs} epochs; cells: gain error (mean ± sd) / ")
        print("policy gain gap, at the end of the epoch\n")
        head = " | ".join(f"epoch {e}" for e in quoted)
        print(f"| MDP | samples/agent (all epochs) | rounds | {head} |")
        print("|---|---:|---:|" + "---|" * len(quoted))
        print("\n".join(tables[kind]))


def speedup(seeds: int, fig_dir: Path, workdir: Path) -> None:
    """Garnet 10x3, K in {1, 4, 16}: same epochs, same error, K times fewer samples."""
    mdp = MDPS["Garnet 10x3"]
    fig, (ax_s, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {1: "tab:blue", 4: "tab:orange", 16: "tab:green"}
    lines = []
    for kind, epochs in SPEEDUP.items():
        base = None  # K = 1: (samples per epoch end, mean gain error)
        for k in AGENTS:
            start = time.perf_counter()
            runs = [
                run_epochs(
                    [
                        *mdp,
                        f"strategy.schedule={kind}",
                        f"strategy.num_epochs={epochs}",
                        f"num_clients={k}",
                        f"seed={seed}",
                    ],
                    workdir / f"speed-{kind}-{k}-{seed}",
                )
                for seed in range(seeds)
            ]
            elapsed = time.perf_counter() - start
            samples = np.array([row["samples_per_agent"] for row in runs[0]])
            rounds = np.array([row["rounds"] for row in runs[0]])
            err, err_sd = mean_runs(runs, "gain_error")
            label = f"{kind}, K={k}"
            ax_s.loglog(samples, err, STYLE[kind], color=colors[k], label=label)
            ax_r.loglog(rounds, err, STYLE[kind], color=colors[k], label=label)
            base = (samples, err) if base is None else base
            # Control: a single agent stopped at this K's samples per agent (its last epoch end
            # within that budget) is much worse; the K agents' error is that of K = 1 at E.
            alone = base[1][np.searchsorted(base[0], samples[-1], side="right") - 1]
            lines.append(
                f"| {kind} | {epochs} | {k} | {samples[-1]:,} | {base[0][-1] / samples[-1]:.2f} "
                f"| {rounds[-1]} | {err[-1]:.4f} ± {err_sd[-1]:.4f} | {alone:.4f} |"
            )
            print(f"  {kind} K={k}: {seeds} seeds in {elapsed:.1f}s", file=sys.stderr)
    ax_s.set_xlabel("samples per agent (local steps)")
    ax_r.set_xlabel("communication rounds")
    for ax in (ax_s, ax_r):
        ax.set_ylabel("gain error ||Vbar - rho*||_inf")
        ax.grid(True, which="both", alpha=0.3)
    ax_s.legend(fontsize=8)
    fig.suptitle(
        f"Linear speedup on Garnet 10x3 (mean of {seeds} seeds): K agents need K times fewer "
        "samples each; rounds do not depend on K",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(fig_dir / "avg_speedup.png", dpi=110)
    plt.close(fig)

    print(f"\nLinear speedup, Garnet 10x3, mean ± sd over {seeds} seeds\n")
    print(
        "| schedule | epochs | K | samples/agent | samples(K=1)/samples(K) | rounds | "
        "final gain error | K=1 with the same samples/agent |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["convergence", "speedup", "all"])
    parser.add_argument("--seeds", type=int, default=None, help="default: 3 / 10")
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    parser.add_argument(
        "--override", action="append", default=[], help="extra Hydra override for every run"
    )
    args = parser.parse_args(argv)
    EXTRA[:] = args.override
    args.figures.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="avg_demo_") as tmp:
        if args.what in ("convergence", "all"):
            convergence(args.seeds or 3, args.figures, Path(tmp))
        if args.what in ("speedup", "all"):
            speedup(args.seeds or 10, args.figures, Path(tmp))
    print(f"\ntotal {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
