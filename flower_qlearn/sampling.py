"""What a client sees of the MDP: a generative model, a Markov chain, behavior policies.

The two sampling modes of ALGORITHMS.md section 1 are implemented here on plain arrays, so
that the compiled loops in :mod:`flower_qlearn.kernels` and the Python-level samplers share
one random-number convention and produce the same numbers from the same Generator:

- every categorical draw is an inverse-CDF lookup of one uniform ``u`` in ``[0, 1)`` on a
  cumulative table (the first index whose cumulative probability is ``> u``, i.e.
  ``np.searchsorted(cdf_row, u, side="right")``);
- the generative model draws ``rng.random((T, S, A))``, one uniform per ``(t, s, a)``;
- a Markov chain draws ``rng.random((T, 2))``: per step, column 0 picks the action from the
  behavior policy, column 1 the next state. Steps are interleaved, so drawing a trajectory in
  chunks gives the same stream as drawing it at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flower_qlearn.jit import njit

from .samplers import (
    SAMPLER_ALIAS,
    SAMPLER_CDF,
    NextStateTable,
    as_action_table,
    as_next_state_table,
    inverse_cdf,
    markov_step,
    next_state,
    next_state_table,
)
from .transitions import Transitions

__all__ = [
    "BEHAVIORS",
    "SAMPLINGS",
    "GenerativeModel",
    "MarkovChain",
    "behavior_policy",
    "cumulative",
    "draw_next_states",
    "generative_next_states",
    "inverse_cdf",
    "markov_step",
]

BEHAVIORS = ("uniform", "disjoint", "dirichlet", "epsilon_greedy")
#: How a client samples (ALGORITHMS.md section 1): its own Markovian trajectory under its
#: behavior policy (asynchronous), or one next state for every (s, a) (synchronous).
SAMPLINGS = ("markovian", "generative")

# Tolerance on row sums: builders and Dirichlet draws are normalized up to rounding only.
_ROW_SUM_ATOL = 1e-6


def cumulative(P: np.ndarray) -> np.ndarray:
    """Turn probability rows into cumulative rows for inverse-CDF sampling.

    Each row is divided by its own sum after the cumulative sum, which makes the entry of the
    last positive-probability index, and every entry after it, exactly ``1.0`` (``x / x == 1``
    in IEEE arithmetic). A uniform in ``[0, 1)`` therefore never runs off the end of a row and
    never selects a trailing zero-probability outcome because of rounding.

    Parameters
    ----------
    P : np.ndarray
        Array of shape ``(..., n)`` whose last axis holds probabilities (non-negative, summing
        to 1 up to ``1e-6``).

    Returns
    -------
    np.ndarray
        Float64, C-contiguous array of the same shape; ``out[..., -1] == 1.0`` exactly.

    Raises
    ------
    ValueError
        If ``P`` is 0-dimensional, has an empty last axis, or has rows that are not
        probability vectors.
    """
    P = np.asarray(P, dtype=np.float64)
    if P.ndim < 1 or P.shape[-1] == 0:
        raise ValueError(f"P must have shape (..., n) with n >= 1, got shape {P.shape}")
    if not np.all(np.isfinite(P)) or np.any(P < 0):
        raise ValueError("P must contain finite, non-negative probabilities")
    cdf = np.cumsum(P, axis=-1)
    totals = cdf[..., -1:]
    if np.any(np.abs(totals - 1.0) > _ROW_SUM_ATOL):
        worst = float(np.max(np.abs(totals - 1.0)))
        raise ValueError(f"rows of P must sum to 1 (largest deviation {worst:.3g})")
    cdf /= totals
    return np.ascontiguousarray(cdf)


@njit(cache=True)
def generative_next_states(
    kind: int, p_next: np.ndarray, p_value: np.ndarray, p_alias: np.ndarray,
    uniforms: np.ndarray, out: np.ndarray,
) -> None:
    """Fill ``out[t, s, a]`` with the draw of ``uniforms[t, s, a]`` from ``P(. | s, a)``.

    Writes into ``out`` so that no ``(T, S, A, S)`` comparison table is ever built. ``kind``
    is tested once, outside the loop (each branch inlines it with a constant sampler).
    """
    if kind == SAMPLER_CDF:
        _generative_loop(SAMPLER_CDF, p_next, p_value, p_alias, uniforms, out)
    else:
        _generative_loop(SAMPLER_ALIAS, p_next, p_value, p_alias, uniforms, out)


@njit(cache=True, inline="always")
def _generative_loop(kind, p_next, p_value, p_alias, uniforms, out) -> None:
    num_steps, num_states, num_actions = uniforms.shape
    for t in range(num_steps):
        for s in range(num_states):
            for a in range(num_actions):
                out[t, s, a] = next_state(kind, p_next, p_value, p_alias, s, a, uniforms[t, s, a])


@njit(cache=True)
def _trajectory(
    kind: int,
    p_next: np.ndarray,
    p_value: np.ndarray,
    p_alias: np.ndarray,
    pi_value: np.ndarray,
    pi_alias: np.ndarray,
    state: int,
    uniforms: np.ndarray,
    states: np.ndarray,
    actions: np.ndarray,
    next_states: np.ndarray,
) -> int:
    """Run the chain for ``len(uniforms)`` steps, recording every transition.

    Returns the state after the last step.
    """
    for t in range(uniforms.shape[0]):
        action, nxt = markov_step(
            kind, p_next, p_value, p_alias, pi_value, pi_alias, state, uniforms[t, 0],
            uniforms[t, 1],
        )
        states[t] = state
        actions[t] = action
        next_states[t] = nxt
        state = nxt
    return state


def draw_next_states(
    p_table: NextStateTable | np.ndarray, rng: np.random.Generator, num_steps: int
) -> np.ndarray:
    """Draw generative-model next states (see :class:`GenerativeModel`).

    Shared by :meth:`GenerativeModel.sample` and the synchronous drivers in
    :mod:`flower_qlearn.kernels`, so both consume the Generator identically.

    Parameters
    ----------
    p_table : NextStateTable or np.ndarray
        Sampling table of ``P`` (:func:`~flower_qlearn.samplers.next_state_table`), or a dense
        ``(S, A, S)`` cumulative table (from :func:`cumulative`; same draws).
    rng : np.random.Generator
        Source of the ``num_steps * S * A`` uniforms.
    num_steps : int
        Number of independent sweeps over all ``(s, a)``.

    Returns
    -------
    np.ndarray
        ``(num_steps, S, A)`` int64 next states.
    """
    table = as_next_state_table(p_table)
    num_states, num_actions = table.next.shape[0], table.next.shape[1]
    uniforms = rng.random((num_steps, num_states, num_actions))
    out = np.empty((num_steps, num_states, num_actions), dtype=np.int64)
    generative_next_states(table.kind, table.next, table.value, table.alias, uniforms, out)
    return out


def _check_transitions(P: np.ndarray) -> np.ndarray:
    """Validate a ``(S, A, S)`` transition array and return it as float64."""
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 3 or P.shape[0] != P.shape[2] or P.shape[0] == 0 or P.shape[1] == 0:
        raise ValueError(f"P must have shape (S, A, S) with S, A >= 1, got shape {P.shape}")
    return P


def _cdf_table(P: np.ndarray | Transitions) -> tuple[np.ndarray, NextStateTable]:
    """``(p_cdf, table)`` of a dense kernel or of the sparse lists (their shared ``cdf`` table,
    which draws the same states as the dense cumulative rows, bit for bit)."""
    if isinstance(P, Transitions):
        table = next_state_table(P, "cdf")
        return table.value, table
    p_cdf = cumulative(_check_transitions(P))
    return p_cdf, as_next_state_table(p_cdf)


def _check_steps(num_steps: int) -> int:
    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
    return int(num_steps)


class GenerativeModel:
    """Synchronous sampling: one independent next state for every ``(s, a)`` per step.

    This is the generative model of ALGORITHMS.md section 1 (cost ``S * A`` samples per step).

    Parameters
    ----------
    P : np.ndarray or Transitions
        ``(S, A, S)`` transition probabilities, or the sparse lists ``mdp.transitions`` (the
        same draws, bit for bit; no dense table is built).

    Attributes
    ----------
    p_cdf : np.ndarray
        ``cumulative(P)`` (``(S, A, W)`` on the sparse lists), the table the draws are made on.
    """

    def __init__(self, P: np.ndarray | Transitions) -> None:
        self.p_cdf, self._table = _cdf_table(P)

    def sample(self, rng: np.random.Generator, num_steps: int = 1) -> np.ndarray:
        """Draw ``(num_steps, S, A)`` int64 next states, ``out[t, s, a] ~ P(. | s, a)``."""
        return draw_next_states(self._table, rng, _check_steps(num_steps))


def _agent_rng(seed: int, agent: int) -> np.random.Generator:
    """Generator seeded from ``(seed, agent)``: independent streams per agent, reproducible."""
    return np.random.default_rng([seed, agent])


def behavior_policy(
    kind: str,
    num_states: int,
    num_actions: int,
    *,
    agent: int,
    num_agents: int,
    seed: int,
    alpha: float = 1.0,
    epsilon: float = 0.1,
    reference: np.ndarray | None = None,
    num_groups: int | None = None,
) -> np.ndarray:
    """Behavior policy of one agent, from the families of ALGORITHMS.md section 1.

    Heterogeneous behavior across agents is what importance averaging is designed for, so each
    family is parameterized by the agent's index and seeded per agent.

    Parameters
    ----------
    kind : str
        One of :data:`BEHAVIORS`:

        - ``"uniform"``: ``1 / A`` everywhere;
        - ``"disjoint"``: agent ``k`` plays uniformly over ``{a : a mod G == k mod G}`` with
          ``G = num_groups`` or ``min(num_agents, num_actions)``: no agent covers every action
          (when ``G > 1``) but all agents together do;
        - ``"dirichlet"``: each row ``~ Dir(alpha * ones(A))``, seeded from ``(seed, agent)``;
          small ``alpha`` means strongly heterogeneous agents;
        - ``"epsilon_greedy"``: ``1 - epsilon`` on ``reference[s]`` plus ``epsilon / A``
          uniform; the default reference is a random deterministic policy seeded from
          ``(seed, agent)``.
    num_states, num_actions : int
        ``S`` and ``A``.
    agent : int
        0-based index of the agent, ``0 <= agent < num_agents``.
    num_agents : int
        Number of agents ``K``.
    seed : int
        Non-negative base seed.
    alpha : float
        Dirichlet concentration, ``> 0``.
    epsilon : float
        Exploration mass of ``epsilon_greedy``, in ``[0, 1]``.
    reference : np.ndarray, optional
        ``(S,)`` integer reference policy of ``epsilon_greedy``.
    num_groups : int, optional
        Number of action groups ``G`` of ``disjoint``, ``1 <= G <= A``.

    Returns
    -------
    np.ndarray
        ``(S, A)`` float64 row-stochastic matrix.

    Raises
    ------
    ValueError
        On an unknown ``kind`` or an argument outside its allowed range.
    """
    if kind not in BEHAVIORS:
        raise ValueError(f"kind must be one of {BEHAVIORS}, got {kind!r}")
    if num_states < 1 or num_actions < 1:
        raise ValueError(
            f"num_states and num_actions must be >= 1, got {num_states} and {num_actions}"
        )
    if num_agents < 1:
        raise ValueError(f"num_agents must be >= 1, got {num_agents}")
    if not 0 <= agent < num_agents:
        raise ValueError(f"agent must be in [0, num_agents={num_agents}), got {agent}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    shape = (num_states, num_actions)

    if kind == "uniform":
        return np.full(shape, 1.0 / num_actions)

    if kind == "disjoint":
        groups = min(num_agents, num_actions) if num_groups is None else num_groups
        if not 1 <= groups <= num_actions:
            raise ValueError(f"num_groups must be in [1, num_actions={num_actions}], got {groups}")
        allowed = np.arange(num_actions) % groups == agent % groups
        row = allowed / np.count_nonzero(allowed)
        return np.ascontiguousarray(np.broadcast_to(row, shape), dtype=np.float64)

    rng = _agent_rng(seed, agent)
    if kind == "dirichlet":
        policy = rng.dirichlet(np.full(num_actions, float(alpha)), size=num_states)
        # Renormalize: tiny alpha gives rows whose float sum can be off by an ulp or two.
        return policy / policy.sum(axis=1, keepdims=True)

    # epsilon_greedy
    if reference is None:
        reference = rng.integers(0, num_actions, size=num_states)
    reference = np.asarray(reference)
    if (
        reference.shape != (num_states,)
        or not np.issubdtype(reference.dtype, np.integer)
        or np.any(reference < 0)
        or np.any(reference >= num_actions)
    ):
        raise ValueError(
            f"reference must be an integer array of shape ({num_states},) with values in "
            f"[0, {num_actions}), got dtype {reference.dtype} and shape {reference.shape}"
        )
    policy = np.full(shape, epsilon / num_actions)
    policy[np.arange(num_states), reference] += 1.0 - epsilon
    return policy


def _plain(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays in a bit-generator state to JSON types."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


class MarkovChain:
    """A trajectory under a fixed behavior policy that can be saved and resumed exactly.

    The asynchronous setting of ALGORITHMS.md section 1: ``a_t ~ policy(. | s_t)``,
    ``s_{t+1} ~ P(. | s_t, a_t)``. The chain's position and its Generator are client state
    that persists across rounds, hence :meth:`snapshot` / :meth:`restore`.

    Parameters
    ----------
    P : np.ndarray or Transitions
        ``(S, A, S)`` transition probabilities, or the sparse lists ``mdp.transitions`` (the
        same trajectory, bit for bit; no dense table is built).
    policy : np.ndarray
        ``(S, A)`` row-stochastic behavior policy.
    state : int
        Initial state.
    rng : np.random.Generator
        Generator the trajectory consumes (two uniforms per step).

    Attributes
    ----------
    state : int
        Current state; advances with :meth:`sample`.
    rng : np.random.Generator
    p_cdf, pi_cdf : np.ndarray
        Cumulative tables of ``P`` (``(S, A, S)``, or ``(S, A, W)`` on the sparse lists) and
        ``policy``.
    """

    def __init__(
        self,
        P: np.ndarray | Transitions,
        policy: np.ndarray,
        state: int,
        rng: np.random.Generator,
    ) -> None:
        self.p_cdf, p_table = _cdf_table(P)
        shape = p_table.next.shape[:2]
        policy = np.asarray(policy, dtype=np.float64)
        if policy.shape != shape:
            raise ValueError(f"policy must have shape {shape}, got {policy.shape}")
        if int(state) != state or not 0 <= state < shape[0]:
            raise ValueError(f"state must be an integer in [0, {shape[0]}), got {state!r}")
        self.pi_cdf = cumulative(policy)
        self._tables = (p_table, as_action_table(self.pi_cdf))
        self.state = int(state)
        self.rng = rng

    def sample(self, num_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance the chain ``num_steps`` steps.

        Returns
        -------
        tuple of np.ndarray
            ``(states, actions, next_states)``, each ``(num_steps,)`` int64, with
            ``states[t + 1] == next_states[t]``.
        """
        num_steps = _check_steps(num_steps)
        uniforms = self.rng.random((num_steps, 2))
        states = np.empty(num_steps, dtype=np.int64)
        actions = np.empty(num_steps, dtype=np.int64)
        next_states = np.empty(num_steps, dtype=np.int64)
        p, pi = self._tables
        self.state = int(
            _trajectory(
                p.kind, p.next, p.value, p.alias, pi.value, pi.alias, self.state, uniforms,
                states, actions, next_states,
            )
        )
        return states, actions, next_states

    def snapshot(self) -> dict:
        """JSON-serializable ``{"state": int, "rng": bit_generator.state}`` of the chain."""
        return {"state": int(self.state), "rng": _plain(self.rng.bit_generator.state)}

    @classmethod
    def restore(
        cls, P: np.ndarray | Transitions, policy: np.ndarray, snapshot: dict
    ) -> MarkovChain:
        """Rebuild a chain from :meth:`snapshot`; it continues exactly where the original was."""
        rng_state = snapshot["rng"]
        bit_generator = getattr(np.random, rng_state["bit_generator"])()
        bit_generator.state = rng_state
        return cls(P, policy, snapshot["state"], np.random.Generator(bit_generator))
