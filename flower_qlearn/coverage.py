"""How often agents' behavior policies visit each (s, a) in the long run: exact coverage.

Why: importance averaging (ALGORITHMS.md section 4) can only help on entries that some agent
visits; an entry that every agent's trajectory visits a fraction ``mu`` of the time gets about
``mu * tau`` updates per round from all agents together. The smallest such fraction over
``(s, a)`` says how rare the rarest entry is, and is computed here exactly from ``P`` and the
policies, not estimated from trajectories.

Agent ``k`` follows ``pi_k`` from the initial distribution ``mu0``; its long-run visitation is
the Cesaro limit ``d_k(s) pi_k(a | s)`` with ``d_k = lim_n (1/n) sum_{t<n} mu0 P_k^t`` and
``P_k(s, s') = sum_a pi_k(a | s) P(s' | s, a)``. The federation's coverage is the mean over
agents, ``mu(s, a) = (1/K) sum_k d_k(s) pi_k(a | s)`` (each agent runs its own chain for the
same number of steps). Core module: no Flower, no Hydra.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "ABEL_DISCOUNT",
    "federation_coverage",
    "min_coverage",
    "policy_transitions",
    "visitation",
]

#: ``beta`` of the Abel mean ``(1 - beta) mu0 (I - beta P)^-1`` that stands for the Cesaro
#: limit. It handles reducible and periodic chains alike (the Cesaro limit from ``mu0``
#: always exists); its deviation from the limit is ``O((1 - beta) * mixing time)``.
ABEL_DISCOUNT = 1.0 - 1e-9


def policy_transitions(P: np.ndarray, policy: np.ndarray) -> np.ndarray:
    """State-to-state kernel ``P_pi(s, s') = sum_a pi(a | s) P(s' | s, a)``, shape ``(S, S)``."""
    P = np.asarray(P, dtype=np.float64)
    policy = np.asarray(policy, dtype=np.float64)
    if P.ndim != 3 or P.shape[0] != P.shape[2] or policy.shape != P.shape[:2]:
        raise ValueError(
            f"P must be (S, A, S) and policy (S, A); got {P.shape} and {policy.shape}"
        )
    return np.einsum("sa,sat->st", policy, P)


def visitation(
    P: np.ndarray,
    policy: np.ndarray,
    initial: np.ndarray,
    *,
    discount: float = ABEL_DISCOUNT,
) -> np.ndarray:
    """Long-run fraction of steps a trajectory under ``policy`` from ``initial`` spends at (s, a).

    Parameters
    ----------
    P : np.ndarray
        ``(S, A, S)`` transition probabilities.
    policy : np.ndarray
        ``(S, A)`` row-stochastic behavior policy.
    initial : np.ndarray
        ``(S,)`` distribution of the first state.
    discount : float
        ``beta`` in (0, 1) of the Abel mean (module docstring); the default stands for the
        long-run (Cesaro) limit.

    Returns
    -------
    np.ndarray
        ``(S, A)`` non-negative, summing to 1: ``d(s) * policy(a | s)``.
    """
    if not 0.0 < discount < 1.0:
        raise ValueError(f"discount must be in (0, 1), got {discount}")
    kernel = policy_transitions(P, policy)
    initial = np.asarray(initial, dtype=np.float64)
    if initial.shape != (kernel.shape[0],):
        raise ValueError(f"initial must have shape ({kernel.shape[0]},), got {initial.shape}")
    # d^T (I - beta P_pi) = (1 - beta) mu0^T, solved as (I - beta P_pi)^T d = (1 - beta) mu0.
    system = np.eye(kernel.shape[0]) - discount * kernel
    d = np.linalg.solve(system.T, (1.0 - discount) * initial)
    d = np.clip(d, 0.0, None)
    d /= d.sum()
    return d[:, None] * np.asarray(policy, dtype=np.float64)


def federation_coverage(
    P: np.ndarray,
    policies: Sequence[np.ndarray],
    initial: np.ndarray,
    *,
    discount: float = ABEL_DISCOUNT,
) -> np.ndarray:
    """Mean over agents of their long-run (s, a) visitation (:func:`visitation`), ``(S, A)``."""
    if not len(policies):
        raise ValueError("policies must hold at least one (S, A) policy")
    return np.mean([visitation(P, pi, initial, discount=discount) for pi in policies], axis=0)


def min_coverage(
    P: np.ndarray,
    policies: Sequence[np.ndarray],
    initial: np.ndarray,
    *,
    discount: float = ABEL_DISCOUNT,
) -> float:
    """``min_{s, a}`` of :func:`federation_coverage`: the visit rate of the rarest entry.

    Uniform coverage of ``S x A`` gives ``1 / (S A)``; 0 means some entry is never tried by any
    agent in the long run (its Q-value never moves from the initial table).
    """
    return float(federation_coverage(P, policies, initial, discount=discount).min())
