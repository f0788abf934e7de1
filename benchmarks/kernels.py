"""Asynchronous Q-learning updates per second: the compiled kernel versus plain Python.

Why: the local loop is the clients' hot path (ALGORITHMS.md section 2), and the README quotes
this ratio. Both sides run the same algorithm on the same uniforms of a Garnet 100 x 10: an
action by inverse CDF on the behavior policy, a next state by inverse CDF on ``P``, one
Q-learning update. The Python loop is given its best chance (lists, ``bisect``, uniforms drawn
before the clock starts) and runs fewer steps; rates are compared. Its result is checked to be
bit-identical to the kernel's on the same steps.

Usage: ``python benchmarks/kernels.py [--steps N] [--python-steps M]``; the last line is
``speedup: <ratio>x``.
"""

from __future__ import annotations

import argparse
import bisect
import sys
import time
from pathlib import Path

import numpy as np

# Runnable from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flower_qlearn.kernels import run_async_q, warmup  # noqa: E402
from flower_qlearn.mdp import garnet  # noqa: E402
from flower_qlearn.sampling import behavior_policy, cumulative  # noqa: E402

NUM_STATES, NUM_ACTIONS, BRANCHING = 100, 10, 10
GAMMA, LEARNING_RATE, SEED = 0.9, 0.1, 0


def python_async_q(q, reward, gamma, lr, p_cdf, pi_cdf, state, uniforms):
    """The same asynchronous Q-learning loop in plain Python (lists, bisect), for reference."""
    q = q.tolist()
    reward = reward.tolist()
    p_rows = p_cdf.tolist()
    pi_rows = pi_cdf.tolist()
    for u_action, u_next in uniforms.tolist():
        action = bisect.bisect_right(pi_rows[state], u_action)
        next_state = bisect.bisect_right(p_rows[state][action], u_next)
        target = reward[state][action] + gamma * max(q[next_state])
        q[state][action] = (1.0 - lr) * q[state][action] + lr * target
        state = next_state
    return np.array(q), state


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark, print both rates and the speedup; return the speedup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5_000_000, help="compiled-kernel steps")
    parser.add_argument("--python-steps", type=int, default=None, help="default: steps // 25")
    args = parser.parse_args(argv)
    python_steps = args.python_steps or max(1, args.steps // 25)

    mdp = garnet(NUM_STATES, NUM_ACTIONS, BRANCHING, gamma=GAMMA, seed=SEED)
    policy = behavior_policy("uniform", NUM_STATES, NUM_ACTIONS, agent=0, num_agents=1, seed=SEED)
    p_cdf, pi_cdf = cumulative(mdp.P), cumulative(policy)
    reward = np.array(mdp.R)
    warmup()

    # Compiled kernel through its driver, including drawing the uniforms from the Generator.
    q = np.zeros((NUM_STATES, NUM_ACTIONS))
    counts = np.zeros((NUM_STATES, NUM_ACTIONS), dtype=np.int64)
    start = time.perf_counter()
    run_async_q(
        q,
        counts,
        reward,
        GAMMA,
        LEARNING_RATE,
        p_cdf,
        pi_cdf,
        0,
        args.steps,
        np.random.default_rng(SEED),
    )
    kernel_rate = args.steps / (time.perf_counter() - start)

    # Plain Python on the first python_steps uniforms of the same stream.
    uniforms = np.random.default_rng(SEED).random((python_steps, 2))
    start = time.perf_counter()
    q_python, state_python = python_async_q(
        np.zeros((NUM_STATES, NUM_ACTIONS)),
        reward,
        GAMMA,
        LEARNING_RATE,
        p_cdf,
        pi_cdf,
        0,
        uniforms,
    )
    python_rate = python_steps / (time.perf_counter() - start)

    # Same samples, same updates: the kernel must reproduce the Python result exactly.
    q_check = np.zeros((NUM_STATES, NUM_ACTIONS))
    state_check = run_async_q(
        q_check,
        np.zeros_like(counts),
        reward,
        GAMMA,
        LEARNING_RATE,
        p_cdf,
        pi_cdf,
        0,
        python_steps,
        np.random.default_rng(SEED),
    )
    if state_check != state_python or not np.array_equal(q_check, q_python):
        raise SystemExit("kernel and Python loop disagree on the same samples")

    speedup = kernel_rate / python_rate
    print(f"garnet {NUM_STATES}x{NUM_ACTIONS} (branching {BRANCHING}), async Q-learning")
    print(f"compiled kernel: {kernel_rate:,.0f} updates/s ({args.steps:,} steps, incl. RNG)")
    print(f"plain Python:    {python_rate:,.0f} updates/s ({python_steps:,} steps)")
    print(f"speedup: {speedup:.1f}x")
    return speedup


if __name__ == "__main__":
    main()
