"""Compiled rounds of the batched engine: every agent of many jobs in one call.

One call runs round ``r`` of the ``q_learning`` client task (:func:`~flower_qlearn.strategies.
equal.q_learning`) for ``J`` jobs x ``K`` agents: it seeds each agent's PCG64 from
``SeedSequence([seed_j, k, r])`` (:mod:`flower_qlearn.pcg64`, numpy's exact streams), draws the
round's uniforms as the drivers of :mod:`flower_qlearn.kernels` do, and calls the SAME ``@njit``
step loops (``async_q_steps``, ``sync_q_steps``). Generator streams concatenate, so one draw of
all the round's uniforms equals the drivers' chunked draws.

The only place that knows the kernels' signatures and the environment's tables is the adapter
at the top (:func:`env_tables`, :func:`_markov_steps`, :func:`_generative_steps`): a change of
the kernel API is local to it.

numba's on-disk cache is keyed on each function's own source file: after editing the ``@njit``
loops of kernels.py, samplers.py or sampling.py, delete
``flower_qlearn/__pycache__/batched_kernels.*.nb[ic]`` too, or these rounds keep the old code.
"""

from __future__ import annotations

import numpy as np

from flower_qlearn.jit import njit
from flower_qlearn.kernels import async_q_steps, average_reward_steps, sync_q_steps
from flower_qlearn.pcg64 import fill_random, seed_pcg64
from flower_qlearn.samplers import as_action_table, as_next_state_table
from flower_qlearn.sampling import generative_next_states

__all__ = ["ENV_TABLES", "average_reward_round", "env_tables", "q_learning_round"]


# --------------------------------------------------------------------------- kernel adapter

#: The arrays of an :class:`~flower_qlearn.agent.AgentEnv` the compiled round reads, in the
#: order of :func:`q_learning_round`'s table arguments.
ENV_TABLES = ("reward", "p_next", "p_value", "p_alias", "pi_value", "pi_alias")


def env_tables(env) -> tuple[int, tuple[np.ndarray, ...]]:
    """The sampler kind of ``env`` and its arrays named by :data:`ENV_TABLES`."""
    p = as_next_state_table(env.p_cdf)
    pi = as_action_table(env.pi_cdf)
    if p.kind != pi.kind:
        raise ValueError("the transition and action tables use different samplers")
    return int(p.kind), (env.mdp.R, p.next, p.value, p.alias, pi.value, pi.alias)


@njit(cache=True)
def _markov_steps(q, counts, reward, gamma, lr, kind, p_next, p_value, p_alias, pi_value,
                  pi_alias, state, uniforms):
    """``run_async_q``'s work on pre-drawn ``(steps, 2)`` uniforms; returns the new state."""
    return async_q_steps(q, counts, reward, gamma, lr, kind, p_next, p_value, p_alias,
                         pi_value, pi_alias, state, uniforms)


@njit(cache=True)
def _generative_steps(q, reward, gamma, lr, kind, p_next, p_value, p_alias, uniforms,
                      next_states):
    """``run_sync_q``'s work on pre-drawn ``(steps, S, A)`` uniforms."""
    generative_next_states(kind, p_next, p_value, p_alias, uniforms, next_states)
    sync_q_steps(q, reward, gamma, lr, next_states)


# --------------------------------------------------------------------------- the round


def q_learning_round(
    q_global: np.ndarray,
    tables: np.ndarray,
    counts: np.ndarray,
    states: np.ndarray,
    seeds: np.ndarray,
    index: np.ndarray,
    kind: int,
    env_arrays: tuple[np.ndarray, ...],
    gamma: float,
    lr: float,
    steps: int,
    server_round: int,
    markovian: bool,
) -> None:
    """Round ``server_round`` of ``q_learning`` for all agents of all jobs, in place.

    Parameters
    ----------
    q_global : (J, S, A) float64
        Each job's global table (read).
    tables, counts : (K, J, S, A) float64 / int64
        Overwritten with each agent's local table and visit counts (agent-major, so that
        ``tables.reshape(K, J * S, A)`` is what a strategy's aggregation reads).
    states : (J, K) int64
        Markov states, advanced in place (unused for generative sampling).
    seeds : (J,) int64
        Each job's master seed.
    index : (6, J, K) int64
        Row of each stacked table (:data:`ENV_TABLES` order) that agent ``k`` of job ``j`` uses.
    kind : int
        Sampler of every table (``client.sampler``: cdf or alias).
    env_arrays : tuple
        The distinct tables of each kind of :data:`ENV_TABLES`, stacked along a new first axis.
    gamma, lr : float
        Discount and learning rate (the same for all jobs).
    steps : int
        Local steps ``client.local_steps``.
    server_round : int
        Flower's server round ``r`` (the third entropy word).
    markovian : bool
        True: ``client.sampling=markovian`` (asynchronous); False: generative (synchronous).
    """
    if markovian:
        _markov_round(q_global, tables, counts, states, seeds, index, kind, *env_arrays, gamma,
                      lr, steps, server_round)
    else:
        counts[...] = steps
        _generative_round(q_global, tables, seeds, index, kind, *env_arrays[:4], gamma, lr, steps,
                          server_round)


@njit(cache=True)
def _seed_agent(seed, agent, server_round, entropy, state, inc):
    """PCG64 of ``default_rng([seed, agent, server_round])`` into ``state``, ``inc``."""
    entropy[0] = seed
    entropy[1] = agent
    entropy[2] = server_round
    seed_pcg64(entropy, state, inc)


@njit(cache=True)
def _markov_round(q_global, tables, counts, states, seeds, index, kind, rewards, p_next, p_value,
                  p_alias, pi_value, pi_alias, gamma, lr, steps, server_round):
    """:func:`q_learning_round` with Markovian sampling (``run_async_q`` per agent)."""
    entropy = np.empty(3, dtype=np.int64)
    state = np.empty(2, dtype=np.uint64)
    inc = np.empty(2, dtype=np.uint64)
    uniforms = np.empty((steps, 2))
    for j in range(tables.shape[1]):
        for k in range(tables.shape[0]):
            _seed_agent(seeds[j], k, server_round, entropy, state, inc)
            fill_random(state, inc, uniforms)
            q = tables[k, j]
            q[:, :] = q_global[j]
            c = counts[k, j]
            c[:, :] = 0
            states[j, k] = _markov_steps(
                q, c, rewards[index[0, j, k]], gamma, lr, kind, p_next[index[1, j, k]],
                p_value[index[2, j, k]], p_alias[index[3, j, k]], pi_value[index[4, j, k]],
                pi_alias[index[5, j, k]], states[j, k], uniforms,
            )


@njit(cache=True)
def _generative_round(q_global, tables, seeds, index, kind, rewards, p_next, p_value, p_alias,
                      gamma, lr, steps, server_round):
    """:func:`q_learning_round` with generative sampling (``run_sync_q`` per agent)."""
    entropy = np.empty(3, dtype=np.int64)
    state = np.empty(2, dtype=np.uint64)
    inc = np.empty(2, dtype=np.uint64)
    num_states, num_actions = q_global.shape[1], q_global.shape[2]
    uniforms = np.empty((steps, num_states, num_actions))
    next_states = np.empty((steps, num_states, num_actions), dtype=np.int64)
    for j in range(tables.shape[1]):
        for k in range(tables.shape[0]):
            _seed_agent(seeds[j], k, server_round, entropy, state, inc)
            fill_random(state, inc, uniforms)
            q = tables[k, j]
            q[:, :] = q_global[j]
            _generative_steps(
                q, rewards[index[0, j, k]], gamma, lr, kind, p_next[index[1, j, k]],
                p_value[index[2, j, k]], p_alias[index[3, j, k]], uniforms, next_states,
            )


@njit(cache=True)
def _average_reward_steps(q, reward, gamma, v_frozen, step_sizes, kind, p_next, p_value, p_alias,
                          uniforms, next_states):
    """``run_average_reward``'s work on pre-drawn ``(T, S, A)`` uniforms."""
    generative_next_states(kind, p_next, p_value, p_alias, uniforms, next_states)
    average_reward_steps(q, reward, gamma, v_frozen, step_sizes, next_states)


@njit(cache=True)
def average_reward_round(q_global, tables, seeds, index, kind, rewards, p_next, p_value, p_alias,
                         gamma, step_sizes, server_round):
    """Round ``server_round`` of the ``average_reward`` task for all agents of all jobs.

    Each agent warm-starts from its job's ``q_global[j]``, freezes ``V = max_a q_global[j]``
    and runs ``len(step_sizes)`` synchronous steps with discount ``gamma`` (the period's).
    Arguments as :func:`q_learning_round`'s (``tables`` overwritten).
    """
    entropy = np.empty(3, dtype=np.int64)
    state = np.empty(2, dtype=np.uint64)
    inc = np.empty(2, dtype=np.uint64)
    num_jobs, num_states, num_actions = q_global.shape
    steps = step_sizes.shape[0]
    uniforms = np.empty((steps, num_states, num_actions))
    next_states = np.empty((steps, num_states, num_actions), dtype=np.int64)
    v_frozen = np.empty(num_states)
    for j in range(num_jobs):
        for s in range(num_states):
            best = q_global[j, s, 0]
            for a in range(1, num_actions):
                if q_global[j, s, a] > best:
                    best = q_global[j, s, a]
            v_frozen[s] = best
        for k in range(tables.shape[0]):
            _seed_agent(seeds[j], k, server_round, entropy, state, inc)
            fill_random(state, inc, uniforms)
            q = tables[k, j]
            q[:, :] = q_global[j]
            _average_reward_steps(
                q, rewards[index[0, j, k]], gamma, v_frozen, step_sizes, kind,
                p_next[index[1, j, k]], p_value[index[2, j, k]], p_alias[index[3, j, k]],
                uniforms, next_states,
            )
