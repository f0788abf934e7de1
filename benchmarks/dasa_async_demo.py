"""DASA with real asynchrony: real slow clients, a server that never waits for them.

Why: the simulated mode shows what the rule does on a virtual clock; this script shows the same
rule driving real Flower messages whose replies come back late because some ClientApps are
really slow (``client.slow_agents`` sleep ``client.slow_sleep_s`` before every operator). The
server loop (``strategy.execution=async``) pushes the iterate to idle agents, pulls whatever
has arrived within a tick of ``strategy.tick_s`` seconds, and counts staleness in server
iterations. For contrast it also times the synchronous round loop on the same slow clients,
which has to wait for the slowest agent every round.

    python benchmarks/dasa_async_demo.py                 # in-process, a thread per ClientApp
    python benchmarks/dasa_async_demo.py --engine ray    # Flower's Ray simulation runtime

Numbers depend on the machine's timing (this is real asynchrony): they are not deterministic.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from flower_qlearn import run_experiment

COMMON = [
    "strategy=dasa",
    "mdp=garnet",
    "mdp.num_states=5",
    "mdp.num_actions=2",
    "mdp.gamma=0.8",
    "num_clients=10",
    "strategy.step_size=2.0",
    "strategy.epsilon=0.5",
    "strategy.batch_size=10",
    "client.slow_agents=[6,7,8,9]",
    "log_every=0",
    "figures=false",
]


def engine_overrides(engine: str) -> list[str]:
    if engine == "ray":
        # Sleeping clients use no CPU: 10 Ray workers share the machine's cores.
        return ["engine=ray", "engine.num_cpus_per_client=0.2"]
    return ["engine.concurrent=true"]


def run(overrides: list[str]) -> tuple[list[dict], float]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        history = run_experiment([*overrides, f"output_dir={out}"]).history
        return history, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["inprocess", "ray"], default="inprocess")
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.4, help="slow agents' sleep, s")
    parser.add_argument("--tick", type=float, default=0.02, help="strategy.tick_s")
    args = parser.parse_args()
    if args.engine == "ray":
        args.tick = max(args.tick, 0.2)  # Ray's message round trip is ~0.1-0.2 s
    seeds = range(args.seeds) if args.engine == "inprocess" else range(1)
    base = COMMON + engine_overrides(args.engine) + [f"client.slow_sleep_s={args.sleep}"]
    print(
        f"engine={args.engine}: 10 agents, agents 6-9 sleep {args.sleep}s per operator, "
        f"tick {args.tick}s, {args.iterations} iterations, seeds {list(seeds)}\n"
    )
    print(
        "| mode | rule | q_error (mean over seeds) | skipped | mean / max staleness used "
        "| operators received | wall s per iteration |"
    )
    print("|---|---|---|---|---|---|---|")
    for rule in ("delayed", "dasa"):
        rows = []
        for seed in seeds:
            history, wall = run(
                base
                + [
                    "strategy.execution=async",
                    f"strategy.rule={rule}",
                    f"strategy.tick_s={args.tick}",
                    f"num_rounds={args.iterations}",
                    f"seed={seed}",
                ]
            )
            used = [r["staleness_mean"] for r in history if r.get("staleness_mean") is not None]
            rows.append(
                (
                    history[-1]["q_error"],
                    np.mean([r["skipped"] for r in history]),
                    np.mean(used) if used else float("nan"),
                    max((r.get("staleness_max") or 0) for r in history),
                    sum(r["accepted"] for r in history),
                    (history[-1]["wall_s"] - history[0]["wall_s"]) / (len(history) - 1),
                )
            )
        r = np.array(rows)
        print(
            f"| async | {rule} | {r[:, 0].mean():.3g} | {r[:, 1].mean():.1%} | "
            f"{r[:, 2].mean():.1f} / {r[:, 3].max():.0f} | {r[:, 4].mean():.0f} | "
            f"{r[:, 5].mean():.3f} |"
        )
    # The synchronous loop on the same clients: every round waits for the slowest agent.
    history, wall = run(base + ["strategy.rule=nondelayed", "num_rounds=6", "seed=0"])
    per_iteration = (history[-1]["wall_s"] - history[0]["wall_s"]) / (len(history) - 1)
    print(
        f"| synchronous | nondelayed | (6 rounds only) | - | 0 / 0 | "
        f"{sum(r['accepted'] for r in history)} | {per_iteration:.3f} |"
    )


if __name__ == "__main__":
    main()
