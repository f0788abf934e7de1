"""Asynchronous Q-learning updates per second: the compiled kernel versus plain Python.

Why: the local loop is the clients' hot path (ALGORITHMS.md section 2), and the README quotes
this ratio. Every variant runs the same algorithm on the same uniforms of a Garnet 100 x 10:
an action by inverse CDF on the behavior policy, a next state by inverse CDF on ``P``, one
Q-learning update and one visit count. Two plain-Python loops run fewer steps, with their
uniforms drawn before the clock starts (the kernel's time includes drawing its own):

- "NumPy arrays": the straightforward loop over the project's arrays (``np.searchsorted``
  and ``q[s'].max()`` per step);
- "lists + bisect": the fastest pure-Python version we could write (C-level ``bisect`` on
  nested lists). The final ``speedup`` line is against this one: the conservative ratio.

Both Python results are checked to be bit-identical to the kernel's on the same steps.

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


def python_numpy_async_q(q, counts, reward, gamma, lr, p_cdf, pi_cdf, state, uniforms):
    """Asynchronous Q-learning in plain Python over NumPy arrays, in place."""
    for u_action, u_next in uniforms:
        action = int(np.searchsorted(pi_cdf[state], u_action, side="right"))
        next_state = int(np.searchsorted(p_cdf[state, action], u_next, side="right"))
        target = reward[state, action] + gamma * q[next_state].max()
        q[state, action] = (1.0 - lr) * q[state, action] + lr * target
        counts[state, action] += 1
        state = next_state
    return state


def python_lists_async_q(q, counts, reward, gamma, lr, p_cdf, pi_cdf, state, uniforms):
    """Asynchronous Q-learning in plain Python on nested lists with ``bisect``, in place."""
    q_rows, count_rows = q.tolist(), counts.tolist()
    reward_rows, p_rows, pi_rows = reward.tolist(), p_cdf.tolist(), pi_cdf.tolist()
    for u_action, u_next in uniforms.tolist():
        action = bisect.bisect_right(pi_rows[state], u_action)
        next_state = bisect.bisect_right(p_rows[state][action], u_next)
        target = reward_rows[state][action] + gamma * max(q_rows[next_state])
        q_rows[state][action] = (1.0 - lr) * q_rows[state][action] + lr * target
        count_rows[state][action] += 1
        state = next_state
    q[...], counts[...] = q_rows, count_rows
    return state


PYTHON_LOOPS = {"NumPy arrays": python_numpy_async_q, "lists + bisect": python_lists_async_q}


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark, print the rates and the speedup; return the speedup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5_000_000, help="compiled-kernel steps")
    parser.add_argument("--python-steps", type=int, default=None, help="default: steps // 25")
    args = parser.parse_args(argv)
    python_steps = args.python_steps or max(1, args.steps // 25)

    mdp = garnet(NUM_STATES, NUM_ACTIONS, BRANCHING, gamma=GAMMA, seed=SEED)
    policy = behavior_policy("uniform", NUM_STATES, NUM_ACTIONS, agent=0, num_agents=1, seed=SEED)
    p_cdf, pi_cdf = cumulative(mdp.P), cumulative(policy)
    reward = np.array(mdp.R)
    shape = (NUM_STATES, NUM_ACTIONS)
    warmup()

    def kernel(num_steps: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The compiled loop through its driver, drawing its uniforms from the Generator."""
        q, counts = np.zeros(shape), np.zeros(shape, dtype=np.int64)
        rng = np.random.default_rng(SEED)
        state = run_async_q(
            q, counts, reward, GAMMA, LEARNING_RATE, p_cdf, pi_cdf, 0, num_steps, rng
        )
        return q, counts, state

    start = time.perf_counter()
    kernel(args.steps)
    kernel_rate = args.steps / (time.perf_counter() - start)

    expected_q, expected_counts, expected_state = kernel(python_steps)
    uniforms = np.random.default_rng(SEED).random((python_steps, 2))  # the kernel's stream
    python_rates = {}
    for label, loop in PYTHON_LOOPS.items():
        q, counts = np.zeros(shape), np.zeros(shape, dtype=np.int64)
        start = time.perf_counter()
        state = loop(q, counts, reward, GAMMA, LEARNING_RATE, p_cdf, pi_cdf, 0, uniforms)
        python_rates[label] = python_steps / (time.perf_counter() - start)
        # Same samples, same updates: the results must agree bit for bit.
        same = np.array_equal(q, expected_q) and np.array_equal(counts, expected_counts)
        if not same or state != expected_state:
            raise SystemExit(f"the kernel and the Python loop ({label}) disagree")

    print(f"garnet {NUM_STATES}x{NUM_ACTIONS} (branching {BRANCHING}), async Q-learning")
    print(f"compiled kernel: {kernel_rate:,.0f} updates/s ({args.steps:,} steps, incl. RNG)")
    for label, rate in python_rates.items():
        print(
            f"plain Python, {label}: {rate:,.0f} updates/s ({python_steps:,} steps); "
            f"kernel {kernel_rate / rate:.1f}x faster"
        )
    speedup = kernel_rate / python_rates["lists + bisect"]
    print(f"speedup: {speedup:.1f}x")
    return speedup


if __name__ == "__main__":
    main()
