"""Wall time of one experiment on the in-process engine, on Ray, and as a bare NumPy loop.

Why: the in-process engine exists so that sweeps are fast while still driving the real
ServerApp, ClientApp and strategy with real Flower ``Message``s. This script measures what that
costs, in one run:

- **inprocess**: ``run_experiment([... "engine=inprocess"])`` (compose, every round through the
  Flower apps, reply validation, exact evaluation each round, ``metrics.csv``/``summary.json``);
- **ray**: the same with ``engine=ray`` (Flower's Ray simulation, ``num_cpus=1`` per client),
  including Ray's start-up (~10 s), which is what a user waits for;
- **bare**: the same algorithm with no Flower at all: for each round and agent
  ``kernels.run_async_q`` from the global table, then ``strategies.equal_average`` (or
  ``importance_average``) and the same sup-norm evaluation. It uses the client's seeding
  (``SeedSequence([seed, k, r])`` per round), so its final error must equal the engines' to the
  last bit; the script checks that.

Experiments: the reference experiment (two_state, m=10, K=20, tau=50, 100 rounds) on all three;
garnet 100x10 (K=20, 100 rounds, tau=100 and tau=1000) in-process vs bare. Figures are off
(``figures=false``) and progress lines too, so every variant does the same work. Each variant
runs ``--repeats`` times after one warm-up run (numba compilation, imports); the best time is
reported.

Usage: ``python benchmarks/engines.py [--repeats N] [--no-ray]``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Runnable from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flower_qlearn.strategies import equal_average, importance_average  # noqa: E402

from flower_qlearn import config as fq_config  # noqa: E402
from flower_qlearn import run_experiment  # noqa: E402
from flower_qlearn.kernels import run_async_q, warmup  # noqa: E402
from flower_qlearn.mdp import make_mdp  # noqa: E402
from flower_qlearn.sampling import behavior_policy, cumulative  # noqa: E402
from flower_qlearn.solvers import optimal_q  # noqa: E402

REFERENCE = [
    "mdp=two_state",
    "mdp.num_actions=10",
    "num_clients=20",
    "client.local_steps=50",
    "num_rounds=100",
]
GARNET = [
    "mdp=garnet",
    "mdp.num_states=100",
    "mdp.num_actions=10",
    "mdp.branching=10",
    "num_clients=20",
    "client.local_steps=100",
    "num_rounds=100",
]
QUIET = ["figures=false", "log_every=0"]


def bare_loop(overrides: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """FedAsynQ with equal or importance averaging in plain NumPy + the compiled kernel.

    Returns the ``q_error`` of every round and the final global table. Same seeding as the
    ClientApp, so the result equals the Flower engines' bit for bit.
    """
    cfg = fq_config.compose(list(overrides))
    c = cfg.client
    if c.sampling != "markovian" or cfg.strategy.name not in ("equal", "importance"):
        raise ValueError("bare_loop covers FedAsynQ-EqAvg/ImAvg (client.sampling=markovian)")
    mdp = make_mdp(**fq_config.to_container(cfg.mdp))
    q_star = optimal_q(mdp)
    p_cdf = cumulative(mdp.P)
    k_agents, lr, tau = int(cfg.num_clients), float(c.learning_rate), int(c.local_steps)
    pi_cdfs, states = [], []
    for k in range(k_agents):
        policy = behavior_policy(
            c.behavior,
            mdp.num_states,
            mdp.num_actions,
            agent=k,
            num_agents=k_agents,
            seed=int(cfg.seed),
            alpha=float(c.behavior_alpha),
            epsilon=float(c.behavior_epsilon),
            num_groups=c.behavior_groups,
        )
        pi_cdfs.append(cumulative(policy))
        init_rng = np.random.default_rng([int(cfg.seed), k, 0])
        states.append(int(init_rng.choice(mdp.num_states, p=mdp.initial)))
    q_global = np.zeros((mdp.num_states, mdp.num_actions))
    tables = np.empty((k_agents, *q_global.shape))
    counts = np.zeros((k_agents, *q_global.shape), dtype=np.int64)
    errors = np.empty(int(cfg.num_rounds))
    for server_round in range(1, int(cfg.num_rounds) + 1):
        counts[:] = 0
        for k in range(k_agents):
            tables[k] = q_global
            rng = np.random.default_rng([int(cfg.seed), k, server_round])
            states[k] = run_async_q(
                tables[k], counts[k], mdp.R, mdp.gamma, lr, p_cdf, pi_cdfs[k], states[k], tau, rng
            )
        if cfg.strategy.name == "importance":
            q_global = importance_average(tables, counts, lr)
        else:
            q_global = equal_average(tables)
        # Evaluated every round, like the server.
        errors[server_round - 1] = np.max(np.abs(q_global - q_star))
    return errors, q_global


def _time(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls and the output of that best call."""
    best, best_out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, best_out = elapsed, out
    return best, best_out


def _engine(overrides: Sequence[str], engine: str, workdir: Path, tag: str):
    def run():
        out = workdir / f"{tag}-{time.monotonic_ns()}"
        result = run_experiment([*overrides, *QUIET, f"engine={engine}", f"output_dir={out}"])
        return result.history[-1]["q_error"], result

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the times and ratios; exit 1 if engines disagree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (best)")
    parser.add_argument("--ray-repeats", type=int, default=1, help="timed Ray runs (best)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    args = parser.parse_args(argv)
    logging.getLogger("flower_qlearn").setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="fq-bench-"))
    ok = True
    try:
        warmup()
        # Warm-up: imports, numba cache, Hydra composition of each config.
        for ov in (REFERENCE, GARNET):
            _engine(ov, "inprocess", workdir, "warm")()
            bare_loop([*ov, *QUIET])

        print("reference experiment: two_state m=10, K=20, tau=50, 100 rounds (FedAsynQ-EqAvg)")
        t_inp, (e_inp, res) = _time(_engine(REFERENCE, "inprocess", workdir, "ref"), args.repeats)
        t_bare, (e_bare, _) = _time(lambda: bare_loop([*REFERENCE, *QUIET]), args.repeats)
        e_bare = float(e_bare[-1])
        # Rounds 2..R: excludes the first round, where Ray starts its actors.
        loop_s = res.history[-1]["wall_s"] - res.history[0]["wall_s"]
        print(
            f"  inprocess : {t_inp:8.3f} s total ({loop_s:.3f} s for rounds 2-100)"
            f"   final q_error {e_inp!r}"
        )
        print(f"  bare NumPy: {t_bare:8.3f} s{'':32}final q_error {e_bare!r}")
        ok &= e_inp == e_bare
        if not args.no_ray:
            t_ray, (e_ray, res_ray) = _time(
                _engine(REFERENCE, "ray", workdir, "ray"), args.ray_repeats
            )
            ray_loop = res_ray.history[-1]["wall_s"] - res_ray.history[0]["wall_s"]
            print(
                f"  ray       : {t_ray:8.3f} s total ({ray_loop:.3f} s for rounds 2-100)"
                f"  final q_error {e_ray!r}"
            )
            ok &= e_ray == e_inp
            print(f"  ratio ray / inprocess       = {t_ray / t_inp:7.1f}x   (goal >= 20x)")
            print(
                f"  ratio ray / inprocess, loop = {ray_loop / loop_s:7.1f}x   "
                "(rounds 2-100 only: Ray start-up excluded)"
            )
        print(f"  ratio inprocess / bare      = {t_inp / t_bare:7.2f}x")

        # Per-message Flower costs are fixed, so the ratio shrinks as local work grows: tau=1000
        # shows where the in-process engine stands once clients do real work.
        for tau, goal in ((100, "   (goal <= 3x)"), (1000, "")):
            overrides = [*GARNET, f"client.local_steps={tau}"]
            print(f"garnet 100x10 (branching 10), K=20, tau={tau}, 100 rounds (FedAsynQ-EqAvg)")
            g_inp, (eg_inp, _) = _time(
                _engine(overrides, "inprocess", workdir, f"garnet{tau}"), args.repeats
            )
            g_bare, (eg_bare, _) = _time(lambda o=overrides: bare_loop([*o, *QUIET]), args.repeats)
            eg_bare = float(eg_bare[-1])
            print(f"  inprocess : {g_inp:8.3f} s   final q_error {eg_inp!r}")
            print(f"  bare NumPy: {g_bare:8.3f} s   final q_error {eg_bare!r}")
            ok &= eg_inp == eg_bare
            print(f"  ratio inprocess / bare      = {g_inp / g_bare:7.2f}x{goal}")
        print("identical final errors on every engine:", "yes" if ok else "NO")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
