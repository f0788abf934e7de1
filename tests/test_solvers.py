"""Tests of the exact solvers, each against an independent computation.

Independent references: pymdptoolbox (PolicyIteration, RelativeValueIteration), brute force
over all deterministic policies, a linear program for the optimal gain (scipy HiGHS), and
Cesaro averages of matrix powers for the gain of a fixed policy.
"""

import itertools
import warnings

import numpy as np
import pytest
from scipy.optimize import linprog

from flower_qlearn import solvers
from flower_qlearn.mdp import TabularMDP, from_gymnasium, garnet, make_mdp, riverswim, two_state
from flower_qlearn.solvers import (
    NonConstantGainError,
    greedy_policy,
    optimal_gain,
    optimal_q,
    optimal_value,
    policy_gain,
    policy_q,
    policy_value,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pymdptoolbox imports emit old-style warnings
    import mdptoolbox.mdp as mdptoolbox


def _all_policies(mdp: TabularMDP):
    for actions in itertools.product(range(mdp.num_actions), repeat=mdp.num_states):
        yield np.array(actions, dtype=np.int64)


def _bellman_residual(mdp: TabularMDP, q: np.ndarray) -> float:
    return float(np.abs(mdp.R + mdp.gamma * mdp.P @ q.max(axis=1) - q).max())


def _lp_gain(mdp: TabularMDP) -> float:
    """Optimal gain as the LP over stationary state-action frequencies (Puterman, Sec. 8.8)."""
    S, A = mdp.num_states, mdp.num_actions
    # Balance: sum_a x(s', a) = sum_{s, a} x(s, a) P(s' | s, a); normalization sum x = 1.
    balance = np.kron(np.eye(S), np.ones((1, A))) - mdp.P.reshape(S * A, S).T
    equalities = np.vstack([balance, np.ones((1, S * A))])
    rhs = np.zeros(S + 1)
    rhs[-1] = 1.0
    result = linprog(-mdp.R.ravel(), A_eq=equalities, b_eq=rhs, bounds=(0, None), method="highs")
    assert result.success
    return -result.fun


def _two_absorbing_states() -> TabularMDP:
    """State 0 splits into absorbing state 1 (reward 1) and absorbing state 2 (reward 0)."""
    P = np.zeros((3, 2, 3))
    P[0, 0, [1, 2]] = 0.5
    P[0, 1, 0] = 1.0
    P[1, :, 1] = P[2, :, 2] = 1.0
    R = np.array([[0.0, 0.2], [1.0, 1.0], [0.0, 0.0]])
    return TabularMDP(P, R, 0.9, np.array([1.0, 0.0, 0.0]), name="multichain")


# ---------------------------------------------------------------- discounted


@pytest.mark.parametrize(
    "mdp",
    [
        garnet(10, 3, 3, gamma=0.9, seed=0),
        garnet(50, 5, 5, gamma=0.99, seed=1),
        garnet(100, 10, 3, gamma=0.9, seed=2),
        two_state(10, gamma=0.9, seed=0),
        two_state(3, gamma=0.5, seed=7),
    ],
    ids=lambda m: m.name,
)
def test_optimal_q_matches_pymdptoolbox_policy_iteration(mdp):
    reference = mdptoolbox.PolicyIteration(np.transpose(mdp.P, (1, 0, 2)), mdp.R, mdp.gamma)
    reference.run()
    v_ref = np.asarray(reference.V)
    q = optimal_q(mdp)
    np.testing.assert_allclose(q.max(axis=1), v_ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(q, mdp.R + mdp.gamma * mdp.P @ v_ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(optimal_value(mdp), v_ref, rtol=0, atol=1e-9)
    assert _bellman_residual(mdp, q) < 1e-9


@pytest.mark.parametrize(
    "mdp",
    [garnet(4, 3, 2, gamma=0.9, seed=s) for s in range(3)]
    + [garnet(5, 2, 5, gamma=0.95, seed=3), two_state(4, gamma=0.9, seed=1), riverswim(6, 0.9)],
    ids=lambda m: m.name,
)
def test_optimal_q_is_the_max_over_deterministic_policies(mdp):
    brute = np.max([policy_q(mdp, pi) for pi in _all_policies(mdp)], axis=0)
    np.testing.assert_allclose(optimal_q(mdp), brute, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["frozenlake", "taxi", "cliffwalking"])
def test_optimal_q_bellman_residual_on_gymnasium(name):
    mdp = make_mdp(name, gamma=0.95)
    q = optimal_q(mdp)
    assert _bellman_residual(mdp, q) < 1e-9
    # The greedy policy of Q* is optimal: its exact value equals V*.
    np.testing.assert_allclose(policy_value(mdp, greedy_policy(q)), q.max(axis=1), atol=1e-9)


def test_optimal_q_near_one_discount_stays_accurate():
    mdp = garnet(30, 4, 3, gamma=0.999, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the float64 floor must not trigger a warning
        q = optimal_q(mdp)
    assert _bellman_residual(mdp, q) < 1e-9


def test_greedy_policy_breaks_ties_to_lowest_index():
    q = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 1.0, 3.0]])
    policy = greedy_policy(q)
    np.testing.assert_array_equal(policy, [0, 1, 0])
    assert policy.dtype == np.int64
    with pytest.raises(ValueError, match="shape"):
        greedy_policy(np.zeros(3))


def test_policy_value_matches_truncated_series_and_mixtures():
    mdp = garnet(6, 3, 3, gamma=0.8, seed=4)
    rng = np.random.default_rng(0)
    stochastic = rng.dirichlet(np.ones(3), size=6)
    P_pi = np.einsum("sa,sat->st", stochastic, mdp.P)
    r_pi = (stochastic * mdp.R).sum(axis=1)
    series, discount_power = np.zeros(6), np.eye(6)
    for _ in range(300):  # 0.8^300 ~ 1e-29: the Neumann series is converged
        series += discount_power @ r_pi
        discount_power = mdp.gamma * discount_power @ P_pi
    np.testing.assert_allclose(policy_value(mdp, stochastic), series, atol=1e-12)
    q = policy_q(mdp, stochastic)
    np.testing.assert_allclose((stochastic * q).sum(axis=1), series, atol=1e-12)
    # A one-hot stochastic matrix equals the deterministic policy.
    deterministic = np.array([2, 0, 1, 1, 0, 2])
    np.testing.assert_allclose(
        policy_value(mdp, np.eye(3)[deterministic]), policy_value(mdp, deterministic)
    )


def test_policy_validation():
    mdp = garnet(4, 2, 2, seed=0)
    with pytest.raises(ValueError, match=r"policy\[2\] = 5 is not an action"):
        policy_value(mdp, np.array([0, 1, 5, 0]))
    with pytest.raises(ValueError, match="integers"):
        policy_value(mdp, np.zeros(4))
    with pytest.raises(ValueError, match=r"policy\[1\] sums to"):
        policy_value(mdp, np.array([[1.0, 0.0], [0.5, 0.6], [1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        policy_gain(mdp, np.zeros(3, dtype=int))


# ---------------------------------------------------------------- average reward

@pytest.fixture(params=["dense", "sparse"])
def solver_path(request, monkeypatch):
    """Every average-reward test runs on both solver paths: the dense linear solves and the
    sparse iterations of flower_qlearn.chains (which large MDPs take)."""
    limit = 10**9 if request.param == "dense" else 0
    monkeypatch.setattr(solvers, "DENSE_MAX_STATES", limit)
    return request.param



def _cesaro_gain(P_chain: np.ndarray, r_chain: np.ndarray, start: np.ndarray) -> float:
    """(1/n) sum_{k<n} start P^k r for n = 2^20, by doubling: error O(1/n)."""
    total, power = np.eye(len(r_chain)), P_chain.copy()  # sum of P^k for k < 1, and P^1
    for _ in range(20):
        total, power = total + total @ power, power @ power  # now k < 2n, and P^{2n}
    return float(start @ total @ r_chain) / 2**20


@pytest.mark.usefixtures("solver_path")
def test_policy_gain_matches_cesaro_average_on_multichain_periodic_chain():
    # States 0-1: a period-2 recurrent class; 2: absorbing; 3-4: transient, leaking into both.
    P = np.zeros((5, 1, 5))
    P[0, 0, 1] = P[1, 0, 0] = P[2, 0, 2] = 1.0
    P[3, 0, [0, 3, 4]] = [0.3, 0.2, 0.5]
    P[4, 0, [2, 3]] = [0.6, 0.4]
    R = np.array([[1.0], [0.2], [0.7], [0.0], [0.9]])
    mdp = TabularMDP(P, R, 0.9, np.eye(5)[3])
    policy = np.zeros(5, dtype=np.int64)
    for start in [np.eye(5)[3], np.eye(5)[4], np.eye(5)[1], np.full(5, 0.2)]:
        expected = _cesaro_gain(P[:, 0], R[:, 0], start)
        assert policy_gain(mdp, policy, initial=start) == pytest.approx(expected, abs=1e-5)
    # Default start is mdp.initial; the periodic class alone averages to 0.6.
    expected = _cesaro_gain(P[:, 0], R[:, 0], mdp.initial)
    assert policy_gain(mdp, policy) == pytest.approx(expected, abs=1e-5)
    assert policy_gain(mdp, policy, initial=np.eye(5)[0]) == pytest.approx(0.6, abs=1e-12)


@pytest.mark.usefixtures("solver_path")
def test_policy_gain_unichain_is_stationary_average_from_any_start():
    mdp = garnet(12, 3, 4, seed=8)
    rng = np.random.default_rng(1)
    stochastic = rng.dirichlet(np.ones(3), size=12)
    P_chain = np.einsum("sa,sat->st", stochastic, mdp.P)
    r_chain = (stochastic * mdp.R).sum(axis=1)
    expected = _cesaro_gain(P_chain, r_chain, mdp.initial)
    assert policy_gain(mdp, stochastic) == pytest.approx(expected, abs=1e-6)
    assert policy_gain(mdp, stochastic, initial=np.eye(12)[5]) == pytest.approx(expected, abs=1e-6)


def _small_frozenlake_reset() -> TabularMDP:
    return from_gymnasium("FrozenLake-v1", terminal="reset", desc=["SFF", "FHG"])


@pytest.mark.parametrize(
    "mdp",
    [
        garnet(4, 3, 4, seed=0),
        garnet(5, 2, 5, seed=1),
        riverswim(6),
        two_state(3, seed=2),
        _small_frozenlake_reset(),
    ],
    ids=lambda m: m.name,
)
@pytest.mark.usefixtures("solver_path")
def test_optimal_gain_is_the_max_over_deterministic_policies(mdp):
    brute = max(policy_gain(mdp, pi) for pi in _all_policies(mdp))
    rho, h = optimal_gain(mdp)
    assert rho == pytest.approx(brute, abs=1e-9)
    assert rho == pytest.approx(_lp_gain(mdp), abs=1e-8)


@pytest.mark.parametrize(
    "mdp",
    [
        garnet(10, 3, 10, seed=3),
        garnet(30, 5, 3, seed=4),
        riverswim(6),
        make_mdp("frozenlake", gamma=0.9, terminal="reset"),
        make_mdp("taxi", gamma=0.9, terminal="reset"),
    ],
    ids=lambda m: m.name,
)
@pytest.mark.usefixtures("solver_path")
def test_optimal_gain_matches_pymdptoolbox_and_lp(mdp):
    rho, h = optimal_gain(mdp)
    assert rho == pytest.approx(_lp_gain(mdp), abs=1e-8)
    if mdp.num_states <= 100:  # pymdptoolbox's RVI is slow on Taxi
        reference = mdptoolbox.RelativeValueIteration(
            np.transpose(mdp.P, (1, 0, 2)), mdp.R, epsilon=1e-8
        )
        reference.run()
        assert rho == pytest.approx(reference.average_reward, abs=1e-7)
    # h solves the original (not the transformed) optimality equation, normalized h[0] = 0.
    residual = h + rho - (mdp.R + mdp.P @ h).max(axis=1)
    assert np.abs(residual).max() < 1e-9
    assert h[0] == 0.0
    # Its greedy policy is gain-optimal.
    policy = greedy_policy(mdp.R + mdp.P @ h)
    assert policy_gain(mdp, policy) == pytest.approx(rho, abs=1e-8)


@pytest.mark.usefixtures("solver_path")
def test_optimal_gain_handles_periodic_mdps_and_ignores_gamma():
    # A deterministic 3-cycle (period 3) paying 1 once per lap, or a self-loop paying 0.2.
    P = np.zeros((3, 2, 3))
    for s in range(3):
        P[s, 0, (s + 1) % 3] = 1.0
        P[s, 1, s] = 1.0
    R = np.array([[1.0, 0.2], [0.0, 0.2], [0.0, 0.2]])
    mdp = TabularMDP(P, R, 0.9, np.full(3, 1 / 3))
    rho, h = optimal_gain(mdp)
    assert rho == pytest.approx(1 / 3, abs=1e-9)
    np.testing.assert_allclose(h, [0.0, -2 / 3, -1 / 3], atol=1e-9)
    rho_other, h_other = optimal_gain(mdp.with_gamma(0.1))
    assert rho_other == rho and np.array_equal(h_other, h)


@pytest.mark.usefixtures("solver_path")
def test_optimal_gain_constant_despite_multiple_recurrent_classes():
    # Not weakly communicating, but both absorbing states pay 0.5: rho* = 0.5 everywhere.
    P = np.zeros((3, 2, 3))
    P[0, 0, 1] = P[0, 1, 2] = 1.0
    P[1, :, 1] = P[2, :, 2] = 1.0
    R = np.array([[0.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    rho, _ = optimal_gain(TabularMDP(P, R, 0.9, np.full(3, 1 / 3)))
    assert rho == pytest.approx(0.5, abs=1e-9)


@pytest.mark.usefixtures("solver_path")
def test_optimal_gain_rejects_non_constant_gain():
    mdp = _two_absorbing_states()
    with pytest.raises(NonConstantGainError, match="per-state gains range from 0 to 1"):
        optimal_gain(mdp)
    assert issubclass(NonConstantGainError, ValueError)
    # policy_gain is still defined there: the Cesaro limit from the start state.
    assert policy_gain(mdp, np.array([0, 0, 0])) == pytest.approx(0.5, abs=1e-12)
    assert policy_gain(mdp, np.array([1, 0, 0])) == pytest.approx(0.2, abs=1e-12)


@pytest.mark.usefixtures("solver_path")
def test_optimal_gain_reports_non_convergence():
    with pytest.raises(RuntimeError, match="did not reach span"):
        optimal_gain(riverswim(6), max_iter=3)
