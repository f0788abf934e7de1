"""Nanoseconds per asynchronous Q-learning update: dense CDF, sparse CDF, alias, joint-alias bound.

Why: issue 11 item 4. The async kernel used to bisect dense ``S``-entry CDF rows; it now draws
from sparse successor rows (``client.sampler=cdf``, the same samples bit for bit) or from alias
tables (``client.sampler=alias``). The goal is ``cdf`` or ``alias`` within 2.5x of a bare
joint-alias kernel: one alias table per state over the ``A x W`` pairs ``(a, s')`` with
probabilities ``pi(a|s) P(s'|s, a)``, a xorshift RNG kept in registers, one Q update per step —
about the fastest a Markovian Q-learning step can be on this machine.

All variants run side by side in one process on Garnet 100 x 10 (branching 10), uniform
behavior, ``gamma = 0.9``, ``lr = 0.1``:

- ``dense cdf (before)``: the previous kernel, re-implemented here: inverse CDF on dense rows;
- ``sparse cdf``: :func:`flower_qlearn.kernels.run_async_q` on ``AgentEnv``'s table;
- ``alias``: the same driver on alias tables;
- ``joint alias (reference)``: the bare kernel below.

The first three are timed through the driver, which draws its uniforms from numpy's PCG64
(``rng.random``), and also on pre-drawn uniforms (kernel only). The dense and sparse ``cdf``
results are checked bit-identical. Machine load (``os.getloadavg``) is printed: on a shared
machine, compare ratios of one run, not absolute times.

Usage: ``python benchmarks/kernel_speed.py [--steps N] [--repeats R]``; the last line is
``ratio: <best of cdf/alias> / reference = <x>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit, uint64

# Runnable from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flower_qlearn.jit import dispatcher  # noqa: E402
from flower_qlearn.kernels import async_q_steps, run_async_q, warmup  # noqa: E402
from flower_qlearn.mdp import garnet  # noqa: E402
from flower_qlearn.samplers import (  # noqa: E402
    action_table,
    alias_rows,
    inverse_cdf,
    next_state_table,
)
from flower_qlearn.sampling import behavior_policy, cumulative  # noqa: E402

# Our kernels are declared with flower_qlearn.jit (compiled when first needed); an @njit
# function of this script calls numba's dispatcher of one.
inverse_cdf = dispatcher(inverse_cdf)

NUM_STATES, NUM_ACTIONS, BRANCHING = 100, 10, 10
GAMMA, LEARNING_RATE, SEED = 0.9, 0.1, 0


@njit(cache=True)
def dense_async_q(q, counts, reward, gamma, lr, p_cdf, pi_cdf, state, uniforms):
    """The kernel before sparse rows: inverse CDF on dense ``(S, A, S)`` rows."""
    num_actions = q.shape[1]
    keep = 1.0 - lr
    for t in range(uniforms.shape[0]):
        action = inverse_cdf(pi_cdf[state], uniforms[t, 0])
        nxt = inverse_cdf(p_cdf[state, action], uniforms[t, 1])
        best = q[nxt, 0]
        for b in range(1, num_actions):
            if q[nxt, b] > best:
                best = q[nxt, b]
        q[state, action] = keep * q[state, action] + lr * (reward[state, action] + gamma * best)
        counts[state, action] += 1
        state = nxt
    return state


@njit(cache=True)
def joint_alias_q(q, counts, reward, gamma, lr, j_action, j_next, j_thr, j_alias, state, steps,
                  seed):
    """Bare reference: one joint ``(a, s')`` alias draw per step, xorshift64* in registers."""
    num_actions = q.shape[1]
    width = j_thr.shape[1]
    keep = 1.0 - lr
    x = uint64(seed) | uint64(1)
    scale = 1.0 / 9007199254740992.0  # 2**-53
    for _ in range(steps):
        x ^= x >> uint64(12)
        x ^= x << uint64(25)
        x ^= x >> uint64(27)
        u = float((x * uint64(2685821657736338717)) >> uint64(11)) * scale * width
        j = int(u)
        if u - j >= j_thr[state, j]:
            j = j_alias[state, j]
        action = j_action[state, j]
        nxt = j_next[state, j]
        best = q[nxt, 0]
        for b in range(1, num_actions):
            if q[nxt, b] > best:
                best = q[nxt, b]
        q[state, action] = keep * q[state, action] + lr * (reward[state, action] + gamma * best)
        counts[state, action] += 1
        state = nxt
    return state


def joint_tables(mdp, policy):
    """Per state, the ``A * W`` pairs ``(a, s')``, their alias thresholds and alias columns."""
    t = mdp.transitions
    S, A, W = t.next.shape
    j_action = np.repeat(np.arange(A), W)[None, :].repeat(S, axis=0)
    j_next = t.next.reshape(S, A * W).copy()
    j_prob = (policy[:, :, None] * t.prob).reshape(S, A * W)
    threshold, alias = alias_rows(j_prob)
    return j_action, j_next, np.ascontiguousarray(threshold), np.ascontiguousarray(alias)


def _best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark, print ns/update per variant and the ratio to the reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2_000_000, help="updates per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per variant (best)")
    args = parser.parse_args(argv)
    steps = args.steps

    mdp = garnet(NUM_STATES, NUM_ACTIONS, BRANCHING, gamma=GAMMA, seed=SEED)
    policy = behavior_policy("uniform", NUM_STATES, NUM_ACTIONS, agent=0, num_agents=1, seed=SEED)
    reward = np.array(mdp.R)
    shape = (NUM_STATES, NUM_ACTIONS)
    dense_p, dense_pi = cumulative(mdp.P), cumulative(policy)
    tables = {s: (next_state_table(mdp.transitions, s), action_table(policy, s))
              for s in ("cdf", "alias")}
    joint = joint_tables(mdp, policy)
    warmup()
    uniforms = np.random.default_rng(SEED).random((steps, 2))
    fresh = lambda: (np.zeros(shape), np.zeros(shape, dtype=np.int64))  # noqa: E731

    # warm every compiled variant, then check dense == sparse cdf bit for bit
    q1, c1 = fresh()
    s1 = dense_async_q(q1, c1, reward, GAMMA, LEARNING_RATE, dense_p, dense_pi, 0, uniforms)
    q2, c2 = fresh()
    p, pi = tables["cdf"]
    s2 = async_q_steps(q2, c2, reward, GAMMA, LEARNING_RATE, p.kind, p.next, p.value, p.alias,
                       pi.value, pi.alias, 0, uniforms)
    if not (np.array_equal(q1, q2) and np.array_equal(c1, c2) and s1 == s2):
        raise SystemExit("dense and sparse cdf kernels disagree")
    joint_alias_q(*fresh(), reward, GAMMA, LEARNING_RATE, *joint, 0, 10, SEED)

    results: dict[str, float] = {}

    def time_kernel(label, call):
        results[label] = _best_time(call, args.repeats) / steps * 1e9

    time_kernel("dense cdf (before), kernel only", lambda: dense_async_q(
        *fresh(), reward, GAMMA, LEARNING_RATE, dense_p, dense_pi, 0, uniforms))
    for sampler, (p, pi) in tables.items():
        time_kernel(f"sparse {sampler}, kernel only" if sampler == "cdf" else
                    f"{sampler}, kernel only", lambda p=p, pi=pi: async_q_steps(
                        *fresh(), reward, GAMMA, LEARNING_RATE, p.kind, p.next, p.value,
                        p.alias, pi.value, pi.alias, 0, uniforms))
    time_kernel("dense cdf (before), with rng.random", lambda: dense_async_q(
        *fresh(), reward, GAMMA, LEARNING_RATE, dense_p, dense_pi, 0,
        np.random.default_rng(SEED).random((steps, 2))))
    for sampler, (p, pi) in tables.items():
        label = f"sparse {sampler}" if sampler == "cdf" else sampler
        time_kernel(f"{label}, run_async_q (with rng.random)", lambda p=p, pi=pi: run_async_q(
            *fresh(), reward, GAMMA, LEARNING_RATE, p, pi, 0, steps,
            np.random.default_rng(SEED)))
    time_kernel("joint alias (reference, RNG in registers)", lambda: joint_alias_q(
        *fresh(), reward, GAMMA, LEARNING_RATE, *joint, 0, steps, SEED))

    load = os.getloadavg()
    print(f"garnet {NUM_STATES}x{NUM_ACTIONS} (branching {BRANCHING}), async Q-learning, "
          f"{steps:,} updates, best of {args.repeats}; load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    for label, ns in results.items():
        print(f"{label:48s} {ns:7.2f} ns/update")
    reference = results["joint alias (reference, RNG in registers)"]
    best = min(results["sparse cdf, run_async_q (with rng.random)"],
               results["alias, run_async_q (with rng.random)"])
    ratio = best / reference
    print(f"ratio: best of cdf/alias (driver, with RNG) / reference = {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
