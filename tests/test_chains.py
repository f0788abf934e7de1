"""flower_qlearn.chains: the sparse chain computations against dense exact ones.

References: the dense linear solves (the solvers' original path), the transitive closure of
the transition graph by repeated squaring, Cesaro averages of matrix powers, and the dense
least-squares stationary distribution.
"""

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from flower_qlearn import chains


def _random_chain(rng: np.random.Generator) -> np.ndarray:
    """A chain with up to three closed classes and transient states leaking into them."""
    S = int(rng.integers(2, 40))
    classes = int(rng.integers(1, 4))
    label = rng.integers(0, classes + 1, S)  # label == classes: transient
    P = np.zeros((S, S))
    for s in range(S):
        pool = np.flatnonzero(label == label[s]) if label[s] < classes else np.arange(S)
        nxt = rng.choice(pool, size=min(pool.size, int(rng.integers(1, 4))), replace=False)
        P[s, nxt] = rng.random(nxt.size) + 0.01
        P[s] /= P[s].sum()
    return P


def _closure(P: np.ndarray) -> np.ndarray:
    reach = (P > 0) | np.eye(P.shape[0], dtype=bool)
    while True:
        step = (reach.astype(float) @ reach.astype(float)) > 0
        if np.array_equal(step, reach):
            return reach
        reach = step


def _cesaro(P: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(1/n) sum_{k<n} P^k r for n = 2^20, by doubling (error O(1/n))."""
    total, power = np.eye(len(r)), P.copy()
    for _ in range(20):
        total, power = total + total @ power, power @ power
    return total @ r / 2**20


def test_sparse_gains_match_the_dense_solves_on_random_multichain_chains():
    rng = np.random.default_rng(0)
    for _ in range(150):
        P = _random_chain(rng)
        r = rng.random(P.shape[0])
        dense = chains.gain_vector(P, r)
        sparse = chains.gain_vector(csr_matrix(P), r)
        np.testing.assert_allclose(sparse, dense, rtol=0, atol=chains.GAIN_TOL)
        np.testing.assert_allclose(dense, _cesaro(P, r), rtol=0, atol=1e-4)


def test_sparse_gain_of_a_periodic_chain_with_a_transient_state():
    # 0 -> 1 -> 2 -> 0 (period 3, paying 0.9, 0, 0.3), 3 absorbing (0.5), 4 leaks into both.
    P = np.zeros((5, 5))
    P[0, 1] = P[1, 2] = P[2, 0] = P[3, 3] = 1.0
    P[4, [0, 3, 4]] = [0.25, 0.25, 0.5]
    r = np.array([0.9, 0.0, 0.3, 0.5, 1.0])
    g = chains.gain_vector(csr_matrix(P), r)
    np.testing.assert_allclose(g, [0.4, 0.4, 0.4, 0.5, 0.45], rtol=0, atol=1e-12)


def test_reachable_max_equals_the_max_over_the_transitive_closure():
    rng = np.random.default_rng(1)
    for _ in range(150):
        P = _random_chain(rng)
        values = rng.standard_normal(P.shape[0])
        expected = np.where(_closure(P), values[None, :], -np.inf).max(axis=1)
        np.testing.assert_array_equal(chains.reachable_max(csr_matrix(P), values), expected)
        np.testing.assert_array_equal(chains.reachable_max(P, values), expected)


def test_reachable_max_on_a_long_chain_of_components():
    # s -> s + 1 only: S components in a line, S levels of the condensation.
    S = 3000
    P = csr_matrix((np.ones(S - 1), (np.arange(S - 1), np.arange(1, S))), shape=(S, S))
    values = np.random.default_rng(2).standard_normal(S)
    expected = np.maximum.accumulate(values[::-1])[::-1]
    np.testing.assert_array_equal(chains.reachable_max(P, values), expected)


def test_sparse_stationary_distribution_matches_the_dense_one():
    rng = np.random.default_rng(3)
    checked = 0
    while checked < 40:
        P = _random_chain(rng)
        if len(chains.recurrent_classes(P)) != 1:
            continue
        dense = chains.stationary_distribution(P)
        sparse = chains.stationary_distribution(csr_matrix(P))
        np.testing.assert_allclose(sparse, dense, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sparse @ P, sparse, rtol=0, atol=1e-12)
        checked += 1
    cycle = csr_matrix(np.roll(np.eye(4), 1, axis=1))  # periodic: the lazy chain converges
    np.testing.assert_allclose(chains.stationary_distribution(cycle), 0.25, atol=1e-15)


def test_sparse_stationary_distribution_refuses_two_closed_classes():
    with pytest.raises(ValueError, match="more than one stationary distribution"):
        chains.stationary_distribution(csr_matrix(np.eye(2)))


def test_sparse_iterations_report_a_budget_overrun(monkeypatch):
    monkeypatch.setattr(chains, "MAX_ITERATIONS", 2)
    slow = np.array([[0.99, 0.01], [0.001, 0.999]])
    with pytest.raises(RuntimeError, match="gain of a recurrent class did not converge"):
        chains.gain_vector(csr_matrix(slow), np.array([0.0, 1.0]))
    with pytest.raises(RuntimeError, match="stationary distribution did not converge"):
        chains.stationary_distribution(csr_matrix(slow))
