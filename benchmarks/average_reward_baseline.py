"""BASELINE comparison: single-agent average-reward Q-learning versus RVI Q-learning.

Why: the README compares the single-agent Algorithm 1 of ALGORITHMS.md section 5 (the
``average_reward`` strategy with ``num_clients=1``) with the textbook model-free method users
know for average-reward MDPs, on the same sample budget. The baseline lives only here; it is
NOT part of the package.

BASELINE = synchronous RVI Q-learning (relative value iteration Q-learning; Abounadi, Bertsekas,
Borkar, SIAM J. Control Optim. 2001), fed by the same generative model as Algorithm 1 (one next
state for every ``(s, a)`` per step, so one step costs ``|S||A|`` samples for both)::

    Q(s, a) <- Q(s, a) + eta_t (r(s, a) + max_b Q(s', b) - f(Q) - Q(s, a)),  f(Q) = mean Q,

whose gain estimate is ``f(Q_t) -> rho*``. Its step sizes ``eta_t = (1 + t / c)^-omega`` are
tuned per MDP over a grid on separate seeds (1000, 1001, 1002), which favors the baseline; the
median and worst grid points are reported too.
Algorithm 1 runs untuned, with the strategy's default constants, through the real Flower apps
(``flower_qlearn.run_experiment``, in-process engine).

Both are scored on the same footing at the same numbers of local steps: the scalar gain error
``|rho_hat - rho*|`` (Algorithm 1: ``rho_hat = mean_s Vbar(s)``; RVI: ``f(Q)``) and the policy
gain gap ``rho* - rho(greedy(Q))``; Algorithm 1's sup-norm ``||Vbar - rho*||_inf`` is listed
too (RVI has no normalized value vector to compare).

Usage::

    python benchmarks/average_reward_baseline.py [--seeds N] [--figures DIR]

Prints a markdown table (mean over run seeds ``0..N-1``) and writes ``avg_baseline.png``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit

# Runnable from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from flower_qlearn import run_experiment  # noqa: E402
from flower_qlearn.mdp import TabularMDP, make_mdp  # noqa: E402
from flower_qlearn.sampling import cumulative, draw_next_states  # noqa: E402
from flower_qlearn.solvers import greedy_policy, optimal_gain, policy_gain  # noqa: E402

MDPS = {
    "Garnet 10x3": (["mdp=garnet"], dict(name="garnet", num_states=10, num_actions=3)),
    "RiverSwim 6": (["mdp=riverswim"], dict(name="riverswim")),
    "FrozenLake 4x4 (reset)": (
        ["mdp=frozenlake", "mdp.terminal=reset"],
        dict(name="frozenlake", terminal="reset"),
    ),
}
#: Algorithm 1 runs: schedule -> epochs (the budgets of the speedup demonstration).
SCHEDULES = {"polynomial": 60, "geometric": 6}
#: RVI Q-learning step-size grid: eta_t = (1 + t / c)^-omega.
GRID_C = (1.0, 10.0, 100.0, 1000.0, 10000.0)
GRID_OMEGA = (0.6, 0.8, 1.0)
TUNING_SEEDS = (1000, 1001, 1002)
CHUNK = 1 << 14


@njit(cache=True)
def rvi_q_steps(q, reward, next_states, step_sizes):  # pragma: no cover - compiled
    """BASELINE: synchronous RVI Q-learning steps in place, reference ``f(Q) = mean(Q)``."""
    num_states, num_actions = q.shape
    v = np.empty(num_states)
    for t in range(next_states.shape[0]):
        f = q.mean()
        for s in range(num_states):
            best = q[s, 0]
            for a in range(1, num_actions):
                if q[s, a] > best:
                    best = q[s, a]
            v[s] = best
        eta = step_sizes[t]
        for s in range(num_states):
            for a in range(num_actions):
                q[s, a] += eta * (reward[s, a] + v[next_states[t, s, a]] - f - q[s, a])


def run_rvi(
    mdp: TabularMDP, rho: float, c: float, omega: float, checkpoints: list[int], seed: int
) -> list[tuple[float, float]]:
    """BASELINE run; ``(|f(Q) - rho*|, policy gain gap)`` after each checkpoint's steps."""
    rng = np.random.default_rng(seed)
    p_cdf = cumulative(mdp.P)
    reward = np.ascontiguousarray(mdp.R, dtype=np.float64).copy()
    q = np.zeros((mdp.num_states, mdp.num_actions))
    done = 0
    out = []
    for stop in checkpoints:
        while done < stop:
            n = min(CHUNK, stop - done)
            t = np.arange(done + 1, done + n + 1, dtype=np.float64)
            rvi_q_steps(q, reward, draw_next_states(p_cdf, rng, n), (1.0 + t / c) ** -omega)
            done += n
        gap = rho - policy_gain(mdp, greedy_policy(q))
        out.append((abs(float(q.mean()) - rho), max(gap, 0.0)))
    return out


def tune_rvi(
    mdp: TabularMDP, rho: float, checkpoints: list[int], budgets: list[int]
) -> tuple[float, float]:
    """BASELINE tuning on separate seeds: the ``(c, omega)`` of the grid with the lowest mean
    ``|f(Q) - rho*|`` summed over the checkpoint indices ``budgets``."""

    def score(params: tuple[float, float]) -> float:
        c, omega = params
        errs = [run_rvi(mdp, rho, c, omega, checkpoints, s) for s in TUNING_SEEDS]
        return float(sum(np.mean([e[i][0] for e in errs]) for i in budgets))

    return min(itertools.product(GRID_C, GRID_OMEGA), key=score)


def run_algorithm1(overrides: list[str], kind: str, seed: int, workdir: Path) -> list[dict]:
    """Algorithm 1 (K = 1) through the Flower apps; the rows at the end of every epoch."""
    result = run_experiment(
        [
            "strategy=average_reward",
            "client=generative",
            f"strategy.schedule={kind}",
            f"strategy.num_epochs={SCHEDULES[kind]}",
            "num_clients=1",
            f"seed={seed}",
            "figures=false",
            "log_every=0",
            f"output_dir={workdir}",
            *overrides,
        ]
    )
    return [row for row in result.history if row["epoch_end"] == 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    args = parser.parse_args(argv)
    args.figures.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    table = []
    fig, axes = plt.subplots(1, len(MDPS), figsize=(12, 3.8))
    with tempfile.TemporaryDirectory(prefix="avg_baseline_") as tmp:
        for col, (label, (overrides, spec)) in enumerate(MDPS.items()):
            name = spec.pop("name")
            mdp = make_mdp(name, gamma=0.9, **spec)
            spec["name"] = name
            rho, _ = optimal_gain(mdp)
            ours = {
                kind: [
                    run_algorithm1(overrides, kind, seed, Path(tmp) / f"{col}-{kind}-{seed}")
                    for seed in range(args.seeds)
                ]
                for kind in SCHEDULES
            }
            checkpoints = sorted(
                {int(row["samples_per_agent"]) for runs in ours.values() for row in runs[0]}
            )
            budgets = [int(runs[0][-1]["samples_per_agent"]) for runs in ours.values()]
            at = [checkpoints.index(b) for b in budgets]

            c, omega = tune_rvi(mdp, rho, checkpoints, at)
            # Every grid point on the evaluation seeds: the tuned one, and the spread of the
            # grid as context (what an untuned choice of step size costs).
            grid = {
                params: np.array(
                    [run_rvi(mdp, rho, *params, checkpoints, s) for s in range(args.seeds)]
                ).mean(axis=0)  # (checkpoints, 2)
                for params in itertools.product(GRID_C, GRID_OMEGA)
            }
            rvi_err, rvi_gap = grid[(c, omega)][:, 0], grid[(c, omega)][:, 1]
            grid_err = np.array([g[:, 0] for g in grid.values()])  # (grid, checkpoints)

            ax = axes[col]
            for kind, runs in ours.items():
                x = [row["samples_per_agent"] for row in runs[0]]
                scalar = np.mean([[abs(r["rho_hat"] - rho) for r in rows] for rows in runs], 0)
                sup = np.mean([[r["gain_error"] for r in rows] for rows in runs], 0)
                gap = np.mean([[max(r["policy_gain_gap"], 0.0) for r in rows] for rows in runs], 0)
                style = "-" if kind == "polynomial" else "--"
                ax.loglog(x, scalar, style, color="tab:blue", label=f"Alg. 1 {kind} |rho_hat-rho*|")
                i = checkpoints.index(int(x[-1]))
                table.append(
                    f"| {label} | {int(x[-1]):,} | Algorithm 1, {kind} ({SCHEDULES[kind]} epochs) "
                    f"| {scalar[-1]:.4f} | {sup[-1]:.4f} | {gap[-1]:.4f} |"
                )
                table.append(
                    f"| {label} | {int(x[-1]):,} | BASELINE RVI Q-learning, tuned (c={c:g}, "
                    f"omega={omega:g}) | {rvi_err[i]:.4f} | - | {rvi_gap[i]:.4f} |"
                )
                table.append(
                    f"| {label} | {int(x[-1]):,} | BASELINE RVI Q-learning, median / worst of "
                    f"the {len(grid)}-point grid | {np.median(grid_err[:, i]):.4f} / "
                    f"{grid_err[:, i].max():.4f} | - | - |"
                )
            ax.loglog(
                checkpoints,
                np.maximum(rvi_err, 1e-6),
                ":",
                color="tab:red",
                label="BASELINE RVI Q-learning |f(Q)-rho*|",
            )
            ax.set_title(f"{label} (rho* = {rho:.3f})", fontsize=9)
            ax.set_xlabel("samples per agent (local steps)")
            ax.grid(True, which="both", alpha=0.3)
            print(f"  {label}: RVI c={c:g} omega={omega:g}", file=sys.stderr)
    axes[0].set_ylabel("scalar gain error |rho_hat - rho*|")
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"Single agent: Algorithm 1 vs BASELINE RVI Q-learning (tuned), mean of {args.seeds} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(args.figures / "avg_baseline.png", dpi=110)
    plt.close(fig)

    print(f"\nSingle agent (K = 1), mean over {args.seeds} seeds, at the same local steps\n")
    print(
        "| MDP | samples/agent | method | abs(rho_hat - rho*) | "
        "sup-norm gain error | policy gain gap |"
    )
    print("|---|---:|---|---:|---:|---:|")
    print("\n".join(table))
    print(f"\ntotal {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
