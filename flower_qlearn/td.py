"""TD(0) with linear features: feature matrices, the behavior chain, its exact TD fixed point.

Policy evaluation of the agents' behavior policy ``pi`` on a tabular MDP with features
``phi(s) in R^d`` (rows of ``Phi``, shape ``(S, d)``): ``V(s) ~ phi(s)^T theta``. The chain
the agents sample is ``P_pi(s, s') = sum_a pi(a|s) P(s'|s, a)`` with rewards
``r_pi(s) = sum_a pi(a|s) R(s, a)``; its stationary distribution ``D`` weighs the states. The
mean TD(0) direction is ``b - A theta`` with

    A = Phi^T D (I - gamma P_pi) Phi,    b = Phi^T D r_pi,

so the TD fixed point is ``theta* = A^-1 b`` (Tsitsiklis and Van Roy, 1997). ``omega``, the
smallest eigenvalue of the symmetric part of ``A``, is the strong-monotonicity constant of the
operator (``<A x, x> >= omega ||x||^2``, ``omega >= (1 - gamma) lambda_min(Phi^T D Phi) > 0``
for full-rank features): DASA's step size for TD is ``alpha = omega / c`` (docs/dasa_td.md).

The batch operator of one agent (DASA's client task ``td_operator``) from ``B`` consecutive
transitions ``(s_j, a_j, s'_j)`` of its chain, rewards ``r_j = R(s_j, a_j)`` (expected rewards,
never sampled, as everywhere in this package):

    g(theta) = (1/B) sum_j phi(s_j) (r_j + gamma phi(s'_j)^T theta - phi(s_j)^T theta).

The transitions follow the package's random-number convention
(:class:`flower_qlearn.sampling.MarkovChain`: two uniforms per step, action then next state),
so an agent's chain is the one the Q-learning operator would walk from the same stream. No
Flower, no Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .chains import stationary_distribution
from .mdp import TabularMDP
from .sampling import MarkovChain
from .solvers import policy_chain

__all__ = [
    "FEATURES",
    "MAX_FEATURES",
    "TDProblem",
    "behavior_chain",
    "feature_matrix",
    "run_td_operator",
    "stationary_distribution",
    "td_operator",
    "td_problem",
]

#: Feature maps: ``random`` (Gaussian rows scaled to unit norm, seeded), ``tabular`` (identity).
FEATURES = ("random", "tabular")

#: Most features ``d`` a run may use: ``td_problem`` solves a dense ``d x d`` system and takes
#: the eigenvalues of its symmetric part (``O(d^3)``), and ``Phi`` is a dense ``(S, d)`` array.
MAX_FEATURES = 2000


def feature_matrix(kind: str, num_states: int, num_features: int | None, seed: int) -> np.ndarray:
    """The ``(S, d)`` feature matrix ``Phi`` (read-only; cached).

    ``random``: rows ``z_s / ||z_s||`` with ``z_s ~ N(0, I_d)`` from
    ``default_rng([seed, 0xFEA7])``, so every ``||phi(s)|| = 1`` (the operator's Lipschitz
    constant is then at most ``1 + gamma``). ``tabular``: the identity, ``d = S``
    (``num_features`` must be None or ``S``). ``num_features=None`` means ``S``.
    """
    d = num_states if num_features is None else int(num_features)
    return _features(str(kind), int(num_states), d, int(seed))


@lru_cache(maxsize=64)
def _features(kind: str, num_states: int, d: int, seed: int) -> np.ndarray:
    if kind not in FEATURES:
        raise ValueError(f"features={kind!r}; expected one of {', '.join(FEATURES)}")
    if num_states < 1 or d < 1:
        raise ValueError(f"need num_states >= 1 and num_features >= 1, got {num_states}, {d}")
    if kind == "tabular":
        if d != num_states:
            raise ValueError(f"tabular features have d = num_states = {num_states}, not {d}")
        phi = np.eye(num_states)
    else:
        z = np.random.default_rng([seed, 0xFEA7]).standard_normal((num_states, d))
        phi = z / np.linalg.norm(z, axis=1, keepdims=True)
    phi = np.ascontiguousarray(phi, dtype=np.float64)
    phi.setflags(write=False)
    return phi


def behavior_chain(mdp: TabularMDP, policy: np.ndarray):
    """``(P_pi, r_pi)``: the state chain ``(S, S)`` and mean rewards ``(S,)`` under ``policy``.

    ``P_pi`` is dense up to :data:`~flower_qlearn.solvers.DENSE_MAX_STATES` states, a CSR
    matrix built from the sparse lists above (no dense ``P`` is read).
    """
    return policy_chain(mdp, np.asarray(policy, dtype=np.float64))


@dataclass(frozen=True)
class TDProblem:
    """The exact quantities of TD(0) with features ``phi`` on the behavior chain.

    Attributes
    ----------
    phi : np.ndarray
        ``(S, d)`` features.
    chain, reward : np.ndarray
        ``P_pi`` ``(S, S)`` (a CSR matrix above ``DENSE_MAX_STATES`` states) and ``r_pi``
        ``(S,)``.
    mu : np.ndarray
        ``(S,)`` stationary distribution ``D`` of the chain.
    A, b : np.ndarray
        ``(d, d)`` and ``(d,)``: the mean operator is ``b - A theta``.
    theta_star : np.ndarray
        ``(d,)`` TD fixed point ``A^-1 b``.
    omega : float
        Smallest eigenvalue of ``(A + A^T) / 2``.
    gamma : float
    """

    phi: np.ndarray
    chain: np.ndarray
    reward: np.ndarray
    mu: np.ndarray
    A: np.ndarray
    b: np.ndarray
    theta_star: np.ndarray
    omega: float
    gamma: float

    def mean_operator(self, theta: np.ndarray) -> np.ndarray:
        """``gbar(theta) = b - A theta``, the expectation of ``g`` under ``D``."""
        return self.b - self.A @ np.asarray(theta, dtype=np.float64)


def td_problem(mdp: TabularMDP, policy: np.ndarray, phi: np.ndarray) -> TDProblem:
    """``A``, ``b``, ``theta*`` and ``omega`` of TD(0) with features ``phi`` under ``policy``.

    Raises ValueError if the features are linearly dependent (``A`` singular: e.g. ``d > S``).
    """
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim != 2 or phi.shape[0] != mdp.num_states:
        raise ValueError(f"phi must have shape ({mdp.num_states}, d), got {phi.shape}")
    if np.linalg.matrix_rank(phi) < phi.shape[1]:
        raise ValueError(
            f"the {phi.shape[1]} features are linearly dependent on {mdp.num_states} states "
            "(need num_features <= num_states and full-rank features)"
        )
    chain, reward = behavior_chain(mdp, policy)
    mu = stationary_distribution(chain)
    weighted = phi.T * mu  # Phi^T D
    A = weighted @ (phi - mdp.gamma * chain @ phi)
    b = weighted @ reward
    omega = float(np.linalg.eigvalsh((A + A.T) / 2).min())
    if not omega > 0:
        raise ValueError(
            f"omega = {omega:.3g}: some state has no stationary mass, TD(0) has no unique "
            "fixed point on these features"
        )
    return TDProblem(phi, chain, reward, mu, A, b, np.linalg.solve(A, b), omega, mdp.gamma)


def td_operator(
    phi: np.ndarray,
    theta: np.ndarray,
    states: np.ndarray,
    rewards: np.ndarray,
    next_states: np.ndarray,
    gamma: float,
) -> np.ndarray:
    """``g(theta) = (1/B) sum_j phi(s_j) (r_j + gamma phi(s'_j)^T theta - phi(s_j)^T theta)``."""
    features = phi[states]
    errors = rewards + gamma * (phi[next_states] @ theta) - features @ theta
    return features.T @ errors / len(states)


def run_td_operator(
    theta: np.ndarray,
    phi: np.ndarray,
    mdp: TabularMDP,
    policy: np.ndarray,
    state: int,
    batch_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """An agent's TD operator at ``theta`` from ``batch_size`` fresh transitions of its chain.

    Returns ``(g, final_state)``; ``g`` has shape ``(d,)``. Consumes ``rng`` as
    :class:`~flower_qlearn.sampling.MarkovChain` (and the Q-learning operator) do.
    """
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (phi.shape[1],):
        raise ValueError(f"theta must have shape ({phi.shape[1]},), got {theta.shape}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chain = MarkovChain(mdp.transitions, policy, int(state), rng)
    states, actions, next_states = chain.sample(int(batch_size))
    g = td_operator(phi, theta, states, mdp.R[states, actions], next_states, mdp.gamma)
    return g, chain.state
