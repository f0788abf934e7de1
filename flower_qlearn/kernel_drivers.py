"""Drivers of the compiled loops of :mod:`flower_qlearn.kernels`: what every client calls.

Plain-Python functions (``run_*``) that validate their arguments
(:mod:`flower_qlearn.kernel_checks`), draw the randomness from a numpy Generator in chunks of
:data:`CHUNK_SIZE` uniforms (bounded memory for long runs) and call the ``@njit`` loops. The
random-number convention is the one of :mod:`flower_qlearn.sampling`, and Generator streams
concatenate, so results do not depend on the chunk size and an async run follows exactly the
trajectory :class:`~flower_qlearn.sampling.MarkovChain` would sample.

Call :func:`warmup` once per process before timing anything: it compiles (or loads from the
on-disk cache) every loop.
"""

from __future__ import annotations

import numpy as np

from flower_qlearn import kernel_checks as check
from flower_qlearn.jit import compile_all, interpreted
from flower_qlearn.kernels import (
    _q_operator_sum,
    async_q_steps,
    average_reward_steps,
    q_operator_batch,
    sync_q_steps,
)
from flower_qlearn.sampling import draw_next_states

__all__ = ["CHUNK_SIZE", "run_async_q", "run_average_reward", "run_q_operator", "run_sync_q",
           "warmup"]

# Uniforms drawn per chunk (512 KiB of float64): large enough that the Python overhead per
# chunk is negligible, small enough that long runs never hold all their samples in memory.
CHUNK_SIZE = 1 << 16


def _steps_per_chunk(draws_per_step: int) -> int:
    return max(1, CHUNK_SIZE // max(1, draws_per_step))


def run_sync_q(
    q: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    learning_rate: float,
    p_cdf: np.ndarray,
    num_steps: int,
    rng: np.random.Generator,
) -> None:
    """Run ``num_steps`` synchronous Q-learning steps with a generative model, in place.

    Next states are drawn as by :class:`~flower_qlearn.sampling.GenerativeModel`, so the
    result equals ``sync_q_steps(q, ..., GenerativeModel(P).sample(rng, num_steps))``.

    Parameters
    ----------
    q : np.ndarray
        ``(S, A)`` float64 C-contiguous Q-table, updated in place.
    reward : np.ndarray
        ``(S, A)`` rewards.
    gamma : float
        Discount in ``[0, 1)``.
    learning_rate : float
        Constant step size in ``(0, 1]``.
    p_cdf : NextStateTable or np.ndarray
        Sampling table of ``P`` (``AgentEnv.p_cdf``: ``cdf`` or ``alias``), or a dense
        ``(S, A, S)`` cumulative table (``sampling.cumulative(P)``; same draws as ``cdf``).
    num_steps : int
        Number of synchronous steps (each draws ``S * A`` next states).
    rng : np.random.Generator
        Source of randomness.
    """
    shape = check.q_shape(q, "q")
    check.in_place(q, "q", shape, np.float64)
    reward = check.read_only(reward, "reward", shape)
    p_table = check.next_state_table(p_cdf, shape)
    gamma = check.gamma(gamma)
    learning_rate = check.learning_rate(learning_rate)
    remaining = check.count(num_steps, "num_steps")
    chunk = _steps_per_chunk(shape[0] * shape[1])
    with interpreted(remaining * shape[0] * shape[1]):
        while remaining > 0:
            steps = min(chunk, remaining)
            sync_q_steps(q, reward, gamma, learning_rate, draw_next_states(p_table, rng, steps))
            remaining -= steps


def run_async_q(
    q: np.ndarray,
    counts: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    learning_rate: float,
    p_cdf: np.ndarray,
    pi_cdf: np.ndarray,
    state: int,
    num_steps: int,
    rng: np.random.Generator,
) -> int:
    """Run ``num_steps`` asynchronous Q-learning steps along a Markov trajectory, in place.

    The trajectory is the one ``MarkovChain(P, policy, state, rng).sample(num_steps)`` gives
    from the same Generator state.

    Parameters
    ----------
    q : np.ndarray
        ``(S, A)`` float64 C-contiguous Q-table, updated in place.
    counts : np.ndarray
        ``(S, A)`` int64 C-contiguous visit counters, incremented in place.
    reward : np.ndarray
        ``(S, A)`` rewards.
    gamma : float
        Discount in ``[0, 1)``.
    learning_rate : float
        Constant step size in ``(0, 1]``.
    p_cdf : NextStateTable or np.ndarray
        Sampling table of ``P`` (``AgentEnv.p_cdf``: ``cdf`` or ``alias``), or a dense
        ``(S, A, S)`` cumulative table (``sampling.cumulative(P)``; same draws as ``cdf``).
    pi_cdf : ActionTable or np.ndarray
        Sampling table of the behavior policy (``AgentEnv.pi_cdf``, same sampler as
        ``p_cdf``) or a dense ``(S, A)`` cumulative policy (``sampling.cumulative(policy)``).
    state : int
        Current state of the trajectory.
    num_steps : int
        Number of transitions.
    rng : np.random.Generator
        Source of randomness (two uniforms per step).

    Returns
    -------
    int
        The state after the last step (the next round starts there).
    """
    shape = check.q_shape(q, "q")
    check.in_place(q, "q", shape, np.float64)
    check.in_place(counts, "counts", shape, np.int64)
    reward = check.read_only(reward, "reward", shape)
    p = check.next_state_table(p_cdf, shape)
    pi = check.action_table(pi_cdf, shape, p.kind)
    gamma = check.gamma(gamma)
    learning_rate = check.learning_rate(learning_rate)
    state = check.state(state, shape[0])
    remaining = check.count(num_steps, "num_steps")
    chunk = _steps_per_chunk(2)
    with interpreted(remaining):
        while remaining > 0:
            steps = min(chunk, remaining)
            uniforms = rng.random((steps, 2))
            state = async_q_steps(
                q, counts, reward, gamma, learning_rate, p.kind, p.next, p.value, p.alias,
                pi.value, pi.alias, state, uniforms,
            )
            remaining -= steps
    return int(state)


def run_average_reward(
    q: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    v_frozen: np.ndarray,
    step_sizes: np.ndarray,
    p_cdf: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Run ``len(step_sizes)`` average-reward local steps with a generative model, in place.

    Parameters
    ----------
    q : np.ndarray
        ``(S, A)`` float64 C-contiguous normalized Q-table, updated in place.
    reward : np.ndarray
        ``(S, A)`` rewards.
    gamma : float
        The epoch's discount ``gamma_e`` in ``[0, 1)``.
    v_frozen : np.ndarray
        ``(S,)`` global value ``Vbar`` of the last communication.
    step_sizes : np.ndarray
        ``(T,)`` step sizes ``eta_t`` in ``(0, 1]``, one per step.
    p_cdf : NextStateTable or np.ndarray
        Sampling table of ``P`` (``AgentEnv.p_cdf``: ``cdf`` or ``alias``), or a dense
        ``(S, A, S)`` cumulative table (``sampling.cumulative(P)``; same draws as ``cdf``).
    rng : np.random.Generator
        Source of randomness (drawn as by ``GenerativeModel.sample``).
    """
    shape = check.q_shape(q, "q")
    check.in_place(q, "q", shape, np.float64)
    reward = check.read_only(reward, "reward", shape)
    v_frozen = check.read_only(v_frozen, "v_frozen", (shape[0],))
    p_table = check.next_state_table(p_cdf, shape)
    gamma = check.gamma(gamma)
    step_sizes = np.ascontiguousarray(step_sizes, dtype=np.float64)
    if step_sizes.ndim != 1:
        raise ValueError(f"step_sizes must be one-dimensional, got shape {step_sizes.shape}")
    if not np.all((step_sizes > 0.0) & (step_sizes <= 1.0)):
        raise ValueError("step_sizes must all be in (0, 1]")
    chunk = _steps_per_chunk(shape[0] * shape[1])
    with interpreted(step_sizes.shape[0] * shape[0] * shape[1]):
        for start in range(0, step_sizes.shape[0], chunk):
            etas = step_sizes[start : start + chunk]
            next_states = draw_next_states(p_table, rng, etas.shape[0])
            average_reward_steps(q, reward, gamma, v_frozen, etas, next_states)


def run_q_operator(
    theta: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    p_cdf: np.ndarray,
    pi_cdf: np.ndarray,
    state: int,
    batch_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """DASA's operator ``g(theta)`` from ``batch_size`` fresh transitions of the agent's chain.

    Parameters
    ----------
    theta : np.ndarray
        The current iterate, as a ``(S, A)`` Q-table or its flattening ``(S * A,)``
        (the shape of ``reward`` decides ``S`` and ``A``). Not modified.
    reward : np.ndarray
        ``(S, A)`` rewards.
    gamma : float
        Discount in ``[0, 1)``.
    p_cdf : NextStateTable or np.ndarray
        Sampling table of ``P`` (``AgentEnv.p_cdf``: ``cdf`` or ``alias``), or a dense
        ``(S, A, S)`` cumulative table (``sampling.cumulative(P)``; same draws as ``cdf``).
    pi_cdf : ActionTable or np.ndarray
        Sampling table of the behavior policy (``AgentEnv.pi_cdf``, same sampler as
        ``p_cdf``) or a dense ``(S, A)`` cumulative policy (``sampling.cumulative(policy)``).
    state : int
        Current state of the agent's chain.
    batch_size : int
        Number of transitions ``B >= 1``.
    rng : np.random.Generator
        Source of randomness (two uniforms per transition, as ``MarkovChain``).

    Returns
    -------
    tuple
        ``(g, final_state)``: ``g`` float64 with the shape of ``theta``; the chain's new state.
    """
    reward = np.ascontiguousarray(reward, dtype=np.float64)
    shape = check.q_shape(reward, "reward")
    reward = check.read_only(reward, "reward", shape)
    theta_in = np.asarray(theta)
    if theta_in.shape not in (shape, (shape[0] * shape[1],)):
        raise ValueError(f"theta must have shape {shape} or ({shape[0] * shape[1]},)")
    theta_2d = check.read_only(theta_in.reshape(shape), "theta", shape)
    p = check.next_state_table(p_cdf, shape)
    pi = check.action_table(pi_cdf, shape, p.kind)
    gamma = check.gamma(gamma)
    state = check.state(state, shape[0])
    batch_size = check.count(batch_size, "batch_size", minimum=1)
    total = np.zeros(shape)
    chunk = _steps_per_chunk(2)
    with interpreted(batch_size):
        for start in range(0, batch_size, chunk):
            uniforms = rng.random((min(chunk, batch_size - start), 2))
            state = _q_operator_sum(
                theta_2d, reward, gamma, p.kind, p.next, p.value, p.alias, pi.value, pi.alias,
                state, uniforms, total,
            )
    total /= batch_size
    return total.reshape(theta_in.shape), int(state)


def warmup() -> None:
    """Compile (or load from numba's disk cache) every loop on tiny inputs.

    Clients call this at start-up so that compilation is not counted in round times. After
    it the process runs its kernels compiled only (:mod:`flower_qlearn.jit`).
    """
    compile_all()
    rng = np.random.default_rng(0)
    P = np.full((2, 2, 2), 0.5)
    p_cdf = np.cumsum(P, axis=-1)
    pi_cdf = np.array([[0.5, 1.0], [0.5, 1.0]])
    reward = np.zeros((2, 2))
    q = np.zeros((2, 2))
    counts = np.zeros((2, 2), dtype=np.int64)
    run_sync_q(q, reward, 0.5, 0.5, p_cdf, 1, rng)
    run_async_q(q, counts, reward, 0.5, 0.5, p_cdf, pi_cdf, 0, 1, rng)
    run_average_reward(q, reward, 0.5, np.zeros(2), np.array([0.5]), p_cdf, rng)
    run_q_operator(q, reward, 0.5, p_cdf, pi_cdf, 0, 1, rng)
    p, pi = check.next_state_table(p_cdf, (2, 2)), check.action_table(pi_cdf, (2, 2), 0)
    q_operator_batch(
        q, reward, 0.5, p.kind, p.next, p.value, p.alias, pi.value, pi.alias, 0,
        rng.random((1, 2)),
    )
    # the alias sampler's specializations (same array types: compiled once, but warm them)
    from flower_qlearn.samplers import action_table, next_state_table
    from flower_qlearn.transitions import Transitions

    p_alias = next_state_table(Transitions.from_dense(P), "alias")
    pi_alias = action_table(np.full((2, 2), 0.5), "alias")
    run_async_q(q, counts, reward, 0.5, 0.5, p_alias, pi_alias, 0, 1, rng)
