"""Compiled local Q-learning loops: the hot path of every client.

Two layers, following ALGORITHMS.md sections 2, 5 and 6; this module holds the first, and the
drivers are :mod:`flower_qlearn.kernel_drivers` (importable from here too):

- ``@njit`` loops (:func:`sync_q_steps`, :func:`async_q_steps`, :func:`average_reward_steps`,
  :func:`q_operator_batch`) over plain float64/int64 C-contiguous arrays. They update in place
  and trust their input: no checks, no Python objects, no allocation per step.
- plain-Python drivers (``run_*``, in :mod:`flower_qlearn.kernel_drivers`) that validate
  arguments, draw the randomness from a numpy Generator in chunks of :data:`CHUNK_SIZE`
  uniforms (bounded memory for long runs) and call the loops. The random-number convention is
  the one of :mod:`flower_qlearn.sampling`, and Generator streams concatenate, so results do
  not depend on the chunk size and an async run follows exactly the trajectory
  :class:`~flower_qlearn.sampling.MarkovChain` would sample.

Call :func:`~flower_qlearn.kernel_drivers.warmup` once per process before timing anything: it
compiles (or loads from the on-disk cache) every loop.
"""

from __future__ import annotations

import numpy as np

from flower_qlearn.jit import njit

# numba's on-disk cache is keyed on each function's own source file: after editing the njit
# helpers in sampling.py, delete flower_qlearn/__pycache__/kernels.*.nb[ic] or these kernels
# keep running the old helpers.
from flower_qlearn.samplers import SAMPLER_ALIAS, SAMPLER_CDF, draw_markov_step, rows_are_short

__all__ = [
    "CHUNK_SIZE",  # noqa: F822 - the drivers' names, provided by __getattr__ (kernel_drivers)
    "async_q_steps",
    "average_reward_steps",
    "q_operator_batch",
    "run_async_q",  # noqa: F822
    "run_average_reward",  # noqa: F822
    "run_q_operator",  # noqa: F822
    "run_sync_q",  # noqa: F822
    "sync_q_steps",
    "warmup",  # noqa: F822
]

#: The drivers' names, importable from here as before (``from flower_qlearn.kernels import
#: run_async_q``); they live in :mod:`flower_qlearn.kernel_drivers`, which imports this module.
_DRIVERS = ("CHUNK_SIZE", "run_async_q", "run_average_reward", "run_q_operator", "run_sync_q",
            "warmup")

# --------------------------------------------------------------------------- compiled loops


@njit(cache=True)
def sync_q_steps(
    q: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    learning_rate: float,
    next_states: np.ndarray,
) -> None:
    """Synchronous Q-learning steps, in place (ALGORITHMS.md section 2).

    For each ``t``: ``V = max_a q`` taken before the step, then for every ``(s, a)``:
    ``q[s, a] <- (1 - lr) q[s, a] + lr (reward[s, a] + gamma V[next_states[t, s, a]])``.
    ``next_states`` is ``(T, S, A)`` int64.
    """
    num_states, num_actions = q.shape
    values = np.empty(num_states)
    keep = 1.0 - learning_rate
    for t in range(next_states.shape[0]):
        for s in range(num_states):
            best = q[s, 0]
            for a in range(1, num_actions):
                if q[s, a] > best:
                    best = q[s, a]
            values[s] = best
        for s in range(num_states):
            for a in range(num_actions):
                target = reward[s, a] + gamma * values[next_states[t, s, a]]
                q[s, a] = keep * q[s, a] + learning_rate * target


@njit(cache=True)
def async_q_steps(
    q: np.ndarray,
    counts: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    learning_rate: float,
    kind: int,
    p_next: np.ndarray,
    p_value: np.ndarray,
    p_alias: np.ndarray,
    pi_value: np.ndarray,
    pi_alias: np.ndarray,
    state: int,
    uniforms: np.ndarray,
) -> int:
    """Asynchronous Q-learning along a Markov trajectory, in place (ALGORITHMS.md section 2).

    Step ``t`` from ``s``: ``a ~ pi(. | s)`` with ``uniforms[t, 0]``, ``s' ~ P(. | s, a)`` with
    ``uniforms[t, 1]`` (:func:`~flower_qlearn.samplers.markov_step` on the fields of a
    :class:`~flower_qlearn.samplers.NextStateTable` and an
    :class:`~flower_qlearn.samplers.ActionTable` of the same ``kind``);
    ``q[s, a] <- (1 - lr) q[s, a] + lr (reward[s, a] + gamma max_b q[s', b])`` and
    ``counts[s, a] += 1``. Returns the state after the last step.

    ``kind`` is tested once, outside the loop: each branch inlines the loop with a constant
    sampler, so the compiler drops the other sampler's code (a per-step test cost 2x); so is
    whether every cdf row is short (:func:`~flower_qlearn.samplers.rows_are_short`: then each
    draw counts without testing its row's length, ~10 % of the loop).
    """
    if kind == SAMPLER_CDF:
        if rows_are_short(pi_value, p_value):
            return _async_loop(
                q, counts, reward, gamma, learning_rate, SAMPLER_CDF, True, p_next, p_value,
                p_alias, pi_value, pi_alias, state, uniforms,
            )
        return _async_loop(
            q, counts, reward, gamma, learning_rate, SAMPLER_CDF, False, p_next, p_value,
            p_alias, pi_value, pi_alias, state, uniforms,
        )
    return _async_loop(
        q, counts, reward, gamma, learning_rate, SAMPLER_ALIAS, False, p_next, p_value, p_alias,
        pi_value, pi_alias, state, uniforms,
    )


@njit(cache=True, inline="always")
def _async_loop(
    q: np.ndarray,
    counts: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    learning_rate: float,
    kind: int,
    short_rows: bool,
    p_next: np.ndarray,
    p_value: np.ndarray,
    p_alias: np.ndarray,
    pi_value: np.ndarray,
    pi_alias: np.ndarray,
    state: int,
    uniforms: np.ndarray,
) -> int:
    """The loop of :func:`async_q_steps` (inlined there with constant ``kind`` and
    ``short_rows``)."""
    num_actions = q.shape[1]
    keep = 1.0 - learning_rate
    for t in range(uniforms.shape[0]):
        action, next_state = draw_markov_step(
            kind, short_rows, p_next, p_value, p_alias, pi_value, pi_alias, state,
            uniforms[t, 0], uniforms[t, 1],
        )
        best = q[next_state, 0]
        for b in range(1, num_actions):
            if q[next_state, b] > best:
                best = q[next_state, b]
        target = reward[state, action] + gamma * best
        q[state, action] = keep * q[state, action] + learning_rate * target
        counts[state, action] += 1
        state = next_state
    return state


@njit(cache=True)
def average_reward_steps(
    q: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    v_frozen: np.ndarray,
    step_sizes: np.ndarray,
    next_states: np.ndarray,
) -> None:
    """Local steps of federated average-reward Q-learning, in place (ALGORITHMS.md section 5).

    For each ``t`` and every ``(s, a)``:
    ``q[s, a] <- (1 - eta_t) q[s, a] + eta_t ((1 - gamma) reward[s, a] + gamma v_frozen[s'])``
    with ``eta_t = step_sizes[t]`` and ``s' = next_states[t, s, a]``. ``v_frozen`` is the
    global value of the last communication, fixed during the call.
    """
    num_states, num_actions = q.shape
    scale = 1.0 - gamma
    for t in range(next_states.shape[0]):
        eta = step_sizes[t]
        keep = 1.0 - eta
        for s in range(num_states):
            for a in range(num_actions):
                target = scale * reward[s, a] + gamma * v_frozen[next_states[t, s, a]]
                q[s, a] = keep * q[s, a] + eta * target


@njit(cache=True)
def _q_operator_sum(
    theta: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    kind: int,
    p_next: np.ndarray,
    p_value: np.ndarray,
    p_alias: np.ndarray,
    pi_value: np.ndarray,
    pi_alias: np.ndarray,
    state: int,
    uniforms: np.ndarray,
    total: np.ndarray,
) -> int:
    """Add the TD errors of ``len(uniforms)`` chain transitions into ``total``; return the state.

    Kept separate from the division by ``B`` so the driver can accumulate over chunks and get
    bit-identical sums whatever the chunk size. ``kind`` and short rows are tested once (see
    :func:`async_q_steps`).
    """
    if kind == SAMPLER_CDF:
        if rows_are_short(pi_value, p_value):
            return _q_operator_loop(
                theta, reward, gamma, SAMPLER_CDF, True, p_next, p_value, p_alias, pi_value,
                pi_alias, state, uniforms, total,
            )
        return _q_operator_loop(
            theta, reward, gamma, SAMPLER_CDF, False, p_next, p_value, p_alias, pi_value,
            pi_alias, state, uniforms, total,
        )
    return _q_operator_loop(
        theta, reward, gamma, SAMPLER_ALIAS, False, p_next, p_value, p_alias, pi_value,
        pi_alias, state, uniforms, total,
    )


@njit(cache=True, inline="always")
def _q_operator_loop(
    theta: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    kind: int,
    short_rows: bool,
    p_next: np.ndarray,
    p_value: np.ndarray,
    p_alias: np.ndarray,
    pi_value: np.ndarray,
    pi_alias: np.ndarray,
    state: int,
    uniforms: np.ndarray,
    total: np.ndarray,
) -> int:
    """The loop of :func:`_q_operator_sum` (inlined there with constant ``kind`` and
    ``short_rows``)."""
    num_actions = theta.shape[1]
    for t in range(uniforms.shape[0]):
        action, next_state = draw_markov_step(
            kind, short_rows, p_next, p_value, p_alias, pi_value, pi_alias, state,
            uniforms[t, 0], uniforms[t, 1],
        )
        best = theta[next_state, 0]
        for b in range(1, num_actions):
            if theta[next_state, b] > best:
                best = theta[next_state, b]
        total[state, action] += reward[state, action] + gamma * best - theta[state, action]
        state = next_state
    return state


@njit(cache=True)
def q_operator_batch(
    theta: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    kind: int,
    p_next: np.ndarray,
    p_value: np.ndarray,
    p_alias: np.ndarray,
    pi_value: np.ndarray,
    pi_alias: np.ndarray,
    state: int,
    uniforms: np.ndarray,
):
    """DASA's Q-learning operator on a batch of chain transitions (ALGORITHMS.md section 6).

    With ``B = len(uniforms)`` consecutive transitions ``(s_j, a_j, s'_j)`` from ``state``:
    ``g(s, a) = (1/B) sum_j 1{(s_j, a_j) = (s, a)} (r_j + gamma max_b theta(s'_j, b)
    - theta(s_j, a_j))``. ``theta`` is not modified. Returns ``(g, final_state)``.
    """
    total = np.zeros(theta.shape)
    state = _q_operator_sum(
        theta, reward, gamma, kind, p_next, p_value, p_alias, pi_value, pi_alias, state,
        uniforms, total,
    )
    if uniforms.shape[0] > 0:
        total /= uniforms.shape[0]
    return total, state


def __getattr__(name: str):
    if name in _DRIVERS:
        from flower_qlearn import kernel_drivers

        return getattr(kernel_drivers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
