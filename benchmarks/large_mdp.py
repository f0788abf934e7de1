"""Large MDPs: time per update and peak memory versus the number of states S (issue 11 item 3).

Why: with dense ``(S, A, S)`` tables a Garnet with 10^4 states needed 7.45 GiB and every agent
kept its own cumulative copy; transitions are now sparse successor lists shared by all agents
of a process. For each ``S`` in ``--states`` (Garnet, ``A = 10``, branching 10,
``mdp.successors=floyd``), a fresh subprocess measures:

- the build time of the MDP and the times of its exact ``Q*`` (policy iteration, certified)
  and its exact optimal gain ``rho*`` (relative value iteration, certified; sparse above
  1000 states);
- ns per asynchronous Q-learning update (``run_async_q``, uniform behavior, RNG included) for
  ``client.sampler=cdf`` and ``alias``, and for the dense inverse CDF of before (the previous
  kernel, ``benchmarks/kernel_speed.py``) where a dense table fits (``S <= --dense-max``);
- a real in-process Flower run (``engine=inprocess``, ``K = --clients`` agents,
  ``--rounds`` rounds of ``--local-steps``, exact Q* evaluation) and the subprocess's peak RSS
  (``resource.getrusage``), which covers the whole run.

Workers run with one BLAS thread (``OPENBLAS_NUM_THREADS=1`` unless set). Writes a Markdown
table to stdout (and ``--table``) and a two-panel figure (``--figure``, default
``docs/figures/large_mdp.png``). The machine load is printed: on a shared machine
compare rows of one run.

Usage: ``python benchmarks/large_mdp.py [--states 100 1000 10000 100000] [--clients 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a source checkout
sys.path.insert(0, str(ROOT / "benchmarks"))

NUM_ACTIONS, BRANCHING, SEED = 10, 10, 0


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ns_per_update(p_table, pi_table, mdp, steps: int) -> float:
    from flower_qlearn.kernels import run_async_q

    shape = (mdp.num_states, mdp.num_actions)
    best = np.inf
    for _ in range(3):
        q, counts = np.zeros(shape), np.zeros(shape, dtype=np.int64)
        start = time.perf_counter()
        run_async_q(q, counts, mdp.R, mdp.gamma, 0.1, p_table, pi_table, 0, steps,
                    np.random.default_rng(SEED))
        best = min(best, time.perf_counter() - start)
    return best / steps * 1e9


def _dense_ns_per_update(mdp, policy, steps: int) -> float:
    from kernel_speed import dense_async_q

    from flower_qlearn.sampling import cumulative

    p_cdf, pi_cdf = cumulative(mdp.P), cumulative(policy)
    shape = (mdp.num_states, mdp.num_actions)
    best = np.inf
    for _ in range(3):
        q, counts = np.zeros(shape), np.zeros(shape, dtype=np.int64)
        start = time.perf_counter()
        uniforms = np.random.default_rng(SEED).random((steps, 2))
        dense_async_q(q, counts, mdp.R, mdp.gamma, 0.1, p_cdf, pi_cdf, 0, uniforms)
        best = min(best, time.perf_counter() - start)
    return best / steps * 1e9


def worker(args: argparse.Namespace) -> dict:
    """One ``S``: the Flower run (peak RSS), then build, Q* and kernel timings."""
    from flower_qlearn.api import run_experiment
    from flower_qlearn.kernels import warmup
    from flower_qlearn.mdp import garnet
    from flower_qlearn.samplers import action_table, next_state_table
    from flower_qlearn.sampling import behavior_policy
    from flower_qlearn.solvers import optimal_gain, optimal_q

    S = args.worker
    warmup()
    # the Flower run first: its peak RSS is then the run's own, not the timings' extra copies
    overrides = [
        "mdp=garnet", f"mdp.num_states={S}", f"mdp.num_actions={NUM_ACTIONS}",
        f"mdp.branching={BRANCHING}", "mdp.successors=floyd", f"num_clients={args.clients}",
        f"num_rounds={args.rounds}", f"client.local_steps={args.local_steps}", "figures=false",
        "log_every=0", f"output_dir={tempfile.mkdtemp(prefix='large_mdp_')}",
    ]
    start = time.perf_counter()
    run_experiment(overrides)
    row = {"S": S, "run_s": time.perf_counter() - start, "peak_rss_mib": _peak_mib()}
    start = time.perf_counter()
    mdp = garnet(S, NUM_ACTIONS, BRANCHING, seed=SEED, successors="floyd")
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    optimal_q(mdp)
    q_star_s = time.perf_counter() - start
    start = time.perf_counter()
    optimal_gain(mdp)  # the average-reward ground truth (sparse above 1000 states)
    rho_star_s = time.perf_counter() - start
    policy = behavior_policy("uniform", S, NUM_ACTIONS, agent=0, num_agents=1, seed=SEED)
    row.update(build_s=build_s, q_star_s=q_star_s, rho_star_s=rho_star_s,
               transition_mib=mdp.transitions.nbytes / 2**20)
    for sampler in ("cdf", "alias"):
        p, pi = next_state_table(mdp.transitions, sampler), action_table(policy, sampler)
        row[f"ns_{sampler}"] = _ns_per_update(p, pi, mdp, args.steps)
    # last, since it materializes the dense table of before
    row["ns_dense"] = (_dense_ns_per_update(mdp, policy, args.steps)
                       if S <= args.dense_max else None)
    return row


def _table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"| S | P sparse (MiB) | build (s) | exact Q* (s) | exact rho* (s) | ns/update cdf | "
        f"ns/update alias | ns/update dense (before) | K={args.clients} in-process run (s) | "
        "peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dense = "n/a (does not fit)" if r["ns_dense"] is None else f"{r['ns_dense']:.0f}"
        lines.append(
            f"| {r['S']:,} | {r['transition_mib']:.1f} | {r['build_s']:.2f} | {r['q_star_s']:.2f} "
            f"| {r['rho_star_s']:.2f} | {r['ns_cdf']:.0f} | {r['ns_alias']:.0f} | {dense} "
            f"| {r['run_s']:.1f} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def _figure(rows: list[dict], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    states = [r["S"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.loglog(states, [r["ns_cdf"] for r in rows], "o-", label="sparse cdf (default)")
    left.loglog(states, [r["ns_alias"] for r in rows], "s-", label="alias")
    dense = [(r["S"], r["ns_dense"]) for r in rows if r["ns_dense"] is not None]
    if dense:
        left.loglog(*zip(*dense, strict=True), "x--", label="dense cdf (before)")
    left.set(xlabel="states S (Garnet, A=10, b=10)", ylabel="ns per async Q-learning update",
             title="time per update")
    left.legend()
    right.loglog(states, [r["peak_rss_mib"] for r in rows], "o-",
                 label=f"in-process run, K={args.clients} (measured)")
    right.loglog(states, [2 * 8 * s * NUM_ACTIONS * s / 2**20 for s in states], "x--",
                 label="dense P + its cdf (before, computed)")
    right.axhline(2048, color="grey", lw=0.8, ls=":")
    right.text(states[0], 2300, "2 GiB", color="grey")
    right.set(xlabel="states S", ylabel="MiB", title="peak RSS")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _worker_env() -> dict:
    """One BLAS thread per worker: on a shared 2-core machine, multithreaded BLAS inside the
    exact solver oversubscribes the cores and its time says more about the load than the code."""
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    return env


def main(argv: list[str] | None = None) -> list[dict]:
    """Run one worker subprocess per S, print the table, save the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, nargs="+", default=[100, 1000, 10_000, 100_000])
    parser.add_argument("--clients", type=int, default=20, help="K agents of the Flower run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1_000_000, help="updates per timing")
    parser.add_argument("--dense-max", type=int, default=1000, help="largest S timed dense")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs/figures/large_mdp.png")
    parser.add_argument("--table", type=Path, default=None, help="also write the table here")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return []
    rows = []
    for S in args.states:
        cmd = [sys.executable, __file__, "--worker", str(S), "--clients", str(args.clients),
               "--rounds", str(args.rounds), "--local-steps", str(args.local_steps),
               "--steps", str(args.steps), "--dense-max", str(args.dense_max)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=_worker_env()
                             ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"S={S:,} done", file=sys.stderr, flush=True)
    load = os.getloadavg()
    table = _table(rows, args)
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(table)
    if args.table:
        args.table.write_text(table + "\n")
    _figure(rows, args.figure, args)
    print(f"figure: {args.figure}")
    return rows


if __name__ == "__main__":
    main()
