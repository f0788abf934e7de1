"""Exact ground truth for a :class:`~flower_qlearn.mdp.TabularMDP`: ``Q*``, ``rho*``, ``h*``.

Every error metric of the project is measured against these functions, so they favour
exactness over speed: discounted problems are solved by policy iteration with exact linear
solves and certified by the Bellman residual; average-reward problems by relative value
iteration on the aperiodic transform, with a certificate that the optimal gain is constant;
fixed policies by direct linear solves. Above :data:`DENSE_MAX_STATES` states every solver
runs on the sparse transition lists, no ``(S, S)`` array is built, and each keeps a
certificate: the discounted ones by iterative policy evaluation and the same Bellman residual,
the average-reward ones by relative value iteration on the sparse lists and the certified
iterations of :mod:`flower_qlearn.chains` for fixed policies' gains. NumPy and SciPy only.
"""

from __future__ import annotations

import warnings

import numpy as np

from flower_qlearn.chains import gain_vector, reachable_max
from flower_qlearn.mdp import TabularMDP

__all__ = [
    "NonConstantGainError",
    "greedy_policy",
    "optimal_gain",
    "optimal_q",
    "optimal_value",
    "policy_chain",
    "policy_gain",
    "policy_q",
    "policy_value",
]


class NonConstantGainError(ValueError):
    """The optimal average reward differs across states (a multichain MDP).

    Then no scalar ``rho*`` exists, and the average-reward metrics are undefined.
    """


def _policy_matrix(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """Return ``policy`` as an ``(S, A)`` stochastic matrix, validating either accepted form."""
    policy = np.asarray(policy)
    S, A = mdp.num_states, mdp.num_actions
    if policy.shape == (S,):
        if not np.issubdtype(policy.dtype, np.integer):
            raise ValueError(f"a deterministic policy must hold integers, got {policy.dtype}")
        if policy.min() < 0 or policy.max() >= A:
            bad = int(np.flatnonzero((policy < 0) | (policy >= A))[0])
            raise ValueError(f"policy[{bad}] = {policy[bad]} is not an action in [0, {A})")
        matrix = np.zeros((S, A))
        matrix[np.arange(S), policy] = 1.0
        return matrix
    if policy.shape == (S, A):
        matrix = np.asarray(policy, dtype=np.float64)
        if not np.all(np.isfinite(matrix)) or matrix.min() < 0:
            raise ValueError("a stochastic policy must be finite and non-negative")
        sums = matrix.sum(axis=1)
        if np.any(np.abs(sums - 1.0) > 1e-9):
            bad = int(np.flatnonzero(np.abs(sums - 1.0) > 1e-9)[0])
            raise ValueError(f"policy[{bad}] sums to {sums[bad]:.12g}, expected 1 (tol 1e-9)")
        return matrix
    raise ValueError(
        f"policy must have shape (S,) = ({S},) or (S, A) = {(S, A)}, got {policy.shape}"
    )


#: Up to this many states the discounted solvers use dense arrays and exact ``np.linalg.solve``
#: (the original code path, bit for bit); above it they use the sparse transition lists,
#: iterative policy evaluation and the same certified Bellman residual.
DENSE_MAX_STATES = 1000


def _sparse(mdp: TabularMDP) -> bool:
    return mdp.num_states > DENSE_MAX_STATES


def _sparse_policy_chain(mdp: TabularMDP, policy: np.ndarray):
    """``P_pi`` as an ``(S, S)`` CSR matrix and ``r_pi`` (S,), from the sparse lists."""
    S, A = mdp.num_states, mdp.num_actions
    policy = np.asarray(policy)
    if policy.shape == (S,):
        _policy_matrix(mdp, policy)  # validates
        rows = np.arange(S) * A + policy
        return mdp.transitions.to_csr()[rows], mdp.R[np.arange(S), policy]
    from scipy.sparse import csr_matrix  # large MDPs only: ~0.1 s of import for the others

    matrix = _policy_matrix(mdp, policy)
    weights = csr_matrix(
        (matrix.reshape(-1), (np.repeat(np.arange(S), A), np.arange(S * A))), shape=(S, S * A)
    )
    return (weights @ mdp.transitions.to_csr()).tocsr(), np.einsum("sa,sa->s", matrix, mdp.R)


def _sparse_policy_value(
    mdp: TabularMDP, policy: np.ndarray, guess: np.ndarray | None = None
) -> np.ndarray:
    """``V^pi``, the fixed point of ``V = r_pi + gamma P_pi V``, by iterating that map.

    The map is a ``gamma``-contraction in the sup norm, so from any start the error falls by
    ``gamma`` per sparse product (``||V_k - V^pi|| <= gamma / (1 - gamma) ||V_k - V_{k-1}||``);
    iteration stops at float64 rounding noise. Policy iteration warm-starts it with the
    previous policy's values. Accuracy is certified by ``optimal_q``'s Bellman residual, not
    assumed. (No BLAS calls: Krylov solvers' dot products oversubscribe shared cores.)
    """
    P_pi, r_pi = _sparse_policy_chain(mdp, policy)
    value = np.zeros(mdp.num_states) if guess is None else np.array(guess, dtype=np.float64)
    floor = 2 * np.finfo(np.float64).eps * max(1.0, float(np.abs(r_pi).max()) / (1 - mdp.gamma))
    change = np.inf
    for _ in range(100_000):
        new = r_pi + mdp.gamma * (P_pi @ value)
        previous, change = change, float(np.abs(new - value).max())
        value = new
        if change <= floor or (change >= previous and change <= 1e3 * floor):
            break
    return value


def policy_chain(mdp: TabularMDP, policy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the Markov chain ``P_pi`` (S, S) and reward ``r_pi`` (S,) induced by ``policy``.

    Above :data:`DENSE_MAX_STATES` states ``P_pi`` is a CSR matrix (:mod:`flower_qlearn.chains`
    takes either).
    """
    if _sparse(mdp):
        return _sparse_policy_chain(mdp, policy)
    matrix = _policy_matrix(mdp, policy)
    return np.einsum("sa,sat->st", matrix, mdp.P), np.einsum("sa,sa->s", matrix, mdp.R)


def _bellman_q(mdp: TabularMDP, q: np.ndarray) -> np.ndarray:
    """Bellman optimality operator: ``(T Q)(s, a) = r(s, a) + gamma E[max_b Q(s', b)]``."""
    if _sparse(mdp):
        return mdp.R + mdp.gamma * mdp.transitions.expect(q.max(axis=1))
    return mdp.R + mdp.gamma * (mdp.P @ q.max(axis=1))


def greedy_policy(q: np.ndarray) -> np.ndarray:
    """Greedy deterministic policy ``argmax_a q(s, a)``; ties go to the lowest action index.

    Parameters
    ----------
    q : np.ndarray
        Action values, shape ``(S, A)``.

    Returns
    -------
    np.ndarray
        Shape ``(S,)``, dtype int64.
    """
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"q must have shape (S, A), got shape {q.shape}")
    return np.argmax(q, axis=1).astype(np.int64)


def policy_value(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """Discounted value ``V^pi`` by solving ``(I - gamma P_pi) V = r_pi`` exactly.

    Above :data:`DENSE_MAX_STATES` states: by fixed-point iteration on the sparse lists, to
    float64 rounding (``||V - V^pi|| <= gamma / (1 - gamma)`` times the last change).

    Parameters
    ----------
    mdp : TabularMDP
        The environment (its ``gamma`` is used).
    policy : np.ndarray
        Deterministic ``(S,)`` integer actions or stochastic ``(S, A)`` matrix.

    Returns
    -------
    np.ndarray
        ``V^pi``, shape ``(S,)``.
    """
    if _sparse(mdp):
        return _sparse_policy_value(mdp, policy)
    P_pi, r_pi = policy_chain(mdp, policy)
    return np.linalg.solve(np.eye(mdp.num_states) - mdp.gamma * P_pi, r_pi)


def policy_q(
    mdp: TabularMDP, policy: np.ndarray, value_guess: np.ndarray | None = None
) -> np.ndarray:
    """Action values ``Q^pi(s, a) = r(s, a) + gamma sum_s' P(s'|s, a) V^pi(s')``, shape (S, A).

    ``value_guess`` (sparse path only) warm-starts the iterative evaluation of ``V^pi``.
    """
    if _sparse(mdp):
        value = _sparse_policy_value(mdp, policy, value_guess)
        return mdp.R + mdp.gamma * mdp.transitions.expect(value)
    return mdp.R + mdp.gamma * (mdp.P @ policy_value(mdp, policy))


def optimal_q(mdp: TabularMDP, tol: float = 1e-10) -> np.ndarray:
    """Optimal action values ``Q*`` by policy iteration (Howard 1960) with exact solves.

    Policy iteration ends at an optimal policy in finitely many steps; its ``Q`` then solves
    ``Q = T Q`` up to the rounding of the linear solve. The result is certified by the
    Bellman residual: ``||Q - Q*||_inf <= ||T Q - Q||_inf / (1 - gamma)``. Stopping value
    iteration on the span instead would return ``Q*`` plus an unknown constant.

    Parameters
    ----------
    mdp : TabularMDP
        The environment (its ``gamma`` is used).
    tol : float
        Target sup-norm error. A ``RuntimeWarning`` reports a certified bound above it,
        unless the bound is at the float64 floor ``~16 eps max|Q| / (1 - gamma)`` (reached
        only for ``gamma`` very close to 1), below which no float64 result can be certified.

    Returns
    -------
    np.ndarray
        ``Q*``, shape ``(S, A)``.
    """
    S = mdp.num_states
    rows = np.arange(S)
    policy = greedy_policy(mdp.R)  # myopic start: usually a few improvements from optimal
    guess = None
    for _ in range(10 * S * mdp.num_actions + 100):  # PI needs far fewer; guard only
        q = policy_q(mdp, policy, guess)  # guess: warm start of the sparse evaluation
        current = q[rows, policy]
        best = q.max(axis=1)
        # Switch only on a real improvement, so rounding noise cannot make PI cycle.
        improve = best > current + 1e-13 * max(1.0, float(np.abs(best).max()))
        if not improve.any():
            break
        policy = np.where(improve, greedy_policy(q), policy)
        guess = best
    else:  # pragma: no cover - policy iteration is finite; this is a safety net
        raise RuntimeError("policy iteration did not converge")
    bound = float(np.abs(_bellman_q(mdp, q) - q).max()) / (1.0 - mdp.gamma)
    # Evaluating T Q alone rounds at ~eps * max|Q|: no float64 certificate goes below that.
    floor = 16 * np.finfo(np.float64).eps * max(1.0, float(np.abs(q).max())) / (1 - mdp.gamma)
    if bound > max(tol, floor):
        warnings.warn(
            f"optimal_q: certified sup-norm error {bound:.3g} exceeds tol {tol:.3g}",
            RuntimeWarning,
            stacklevel=2,
        )
    return q


def optimal_value(mdp: TabularMDP) -> np.ndarray:
    """Optimal state values ``V*(s) = max_a Q*(s, a)``, shape (S,)."""
    return optimal_q(mdp).max(axis=1)


def policy_gain(mdp: TabularMDP, policy: np.ndarray, initial: np.ndarray | None = None) -> float:
    """Average reward of a fixed policy started from ``initial``, computed exactly.

    ``rho^pi = initial^T P* r_pi`` where ``P* = lim (1/n) sum_{k<n} P_pi^k`` is the Cesaro
    limit (it exists for periodic chains too). On a unichain policy this is the usual
    stationary-distribution average, the same from every start; when the chain has several
    recurrent classes, each class's gain is weighted by the probability that the chain,
    started from ``initial``, is absorbed in it. Stationary and absorption probabilities are
    linear solves; above :data:`DENSE_MAX_STATES` states, certified sparse iterations to
    ``1e-12`` (:func:`flower_qlearn.chains.gain_vector`).

    Parameters
    ----------
    mdp : TabularMDP
        The environment (``gamma`` is ignored).
    policy : np.ndarray
        Deterministic ``(S,)`` integer actions or stochastic ``(S, A)`` matrix.
    initial : np.ndarray or None
        Start distribution, default ``mdp.initial``.

    Returns
    -------
    float
        The long-run average reward, in ``[0, 1]``.
    """
    start = mdp.initial if initial is None else np.asarray(initial, dtype=np.float64)
    if start.shape != (mdp.num_states,):
        raise ValueError(f"initial must have shape ({mdp.num_states},), got {start.shape}")
    P_chain, r_chain = policy_chain(mdp, policy)
    return float(start @ gain_vector(P_chain, r_chain))


def optimal_gain(
    mdp: TabularMDP, tol: float = 1e-9, max_iter: int = 10**6
) -> tuple[float, np.ndarray]:
    """Optimal average reward ``rho*`` and bias ``h*`` by relative value iteration (RVI).

    RVI (White 1963; Puterman 1994, Sec. 8.5) runs on the aperiodic transform
    ``P' = 0.5 I + 0.5 P`` with the same rewards: every policy keeps its stationary
    distributions, hence its gain, so ``rho*`` and the optimal policies are unchanged, while
    the self-loops make value iteration converge on periodic MDPs too. With
    ``d_n = T' V_n - V_n``, ``min d_n <= rho* <= max d_n`` holds at every iteration for MDPs
    with constant optimal gain; iteration stops when ``span(d_n) <= tol`` and returns the
    midpoint, so ``|rho - rho*| <= tol / 2``.

    The bias of the transformed problem, ``h'``, solves ``h' + rho = max_a [r + P' h']``;
    substituting ``P'`` shows that ``h = h' / 2`` solves the original optimality equation
    ``h + rho = max_a [r + P h]``. The returned ``h`` is that one, normalized to ``h[0] = 0``,
    with Bellman residual ``|h + rho - max_a (r + P h)| <= tol``.

    A non-constant optimal gain (multichain MDPs) is certified, not guessed: the gain vector
    ``g`` of the current greedy policy is a lower bound on the optimal gain per state, and
    ``max d_n`` over the states reachable from ``s`` is an upper bound on the optimal gain of
    ``s``; when a lower bound exceeds another state's upper bound, the error is raised.

    Above :data:`DENSE_MAX_STATES` states the same iteration runs on the sparse lists
    (``P' V = 0.5 V + 0.5 P V``, one product per step) and the certificate's reach comes from
    the components' condensation (:func:`flower_qlearn.chains.reachable_max`).

    Parameters
    ----------
    mdp : TabularMDP
        The environment; its ``gamma`` is ignored.
    tol : float
        Stopping threshold on ``span(d_n)``.
    max_iter : int
        Iteration budget; exceeding it raises ``RuntimeError``.

    Returns
    -------
    rho : float
        The optimal gain.
    h : np.ndarray
        A bias vector of the original MDP, shape ``(S,)``, with ``h[0] = 0``.

    Raises
    ------
    NonConstantGainError
        The optimal gain differs across states; the message gives the per-state range.
    """
    lazy_q = _lazy_q(mdp)
    value = np.zeros(mdp.num_states)  # kept relative, value[0] = 0, so it stays bounded
    for iteration in range(1, max_iter + 1):
        q = lazy_q(value)
        new_value = q.max(axis=1)
        diff = new_value - value  # d_n = T' V_n - V_n
        span = float(diff.max() - diff.min())
        if span <= tol:
            # V_n (not V_{n+1}) is the one whose residual the span bounds.
            return 0.5 * float(diff.max() + diff.min()), 0.5 * value
        # The certificate costs a few linear solves: only when convergence is slow.
        if iteration == 100 or iteration % 1000 == 0 or iteration == max_iter:
            _certify_non_constant_gain(mdp, q, diff, tol)
        value = new_value - new_value[0]
    raise RuntimeError(
        f"optimal_gain: relative value iteration did not reach span {tol:g} in {max_iter} "
        f"iterations (span {span:.3g})"
    )


def _lazy_q(mdp: TabularMDP):
    """``value -> r + P' value`` with ``P' = 0.5 I + 0.5 P`` (dense up to DENSE_MAX_STATES)."""
    if _sparse(mdp):
        expect = mdp.transitions.expect
        return lambda value: mdp.R + 0.5 * expect(value) + 0.5 * value[:, None]
    P_lazy = 0.5 * mdp.P + 0.5 * np.eye(mdp.num_states)[:, None, :]
    return lambda value: mdp.R + P_lazy @ value


def _action_graph(mdp: TabularMDP):
    """``(S, S)`` matrix whose nonzeros are the transitions of some action (any layout)."""
    if _sparse(mdp):
        return mdp.transitions.state_graph()
    return mdp.P.sum(axis=1)


def _certify_non_constant_gain(
    mdp: TabularMDP, q: np.ndarray, diff: np.ndarray, tol: float
) -> None:
    """Raise :class:`NonConstantGainError` if the bounds prove the optimal gain non-constant."""
    P_chain, r_chain = policy_chain(mdp, greedy_policy(q))
    lower = gain_vector(P_chain, r_chain)  # gain of one policy <= optimal gain, per state
    upper = reachable_max(_action_graph(mdp), diff)  # >= optimal gain, per state
    if lower.max() > upper.min() + max(tol, 1e-12):
        raise NonConstantGainError(
            "optimal gain is not constant across states: per-state gains range from "
            f"{lower.min():.6g} to {lower.max():.6g} (greedy policy of relative value "
            f"iteration; state {int(upper.argmin())} has gain at most {upper.min():.6g}, "
            f"state {int(lower.argmax())} at least {lower.max():.6g})"
        )
