"""Tests of flower_qlearn.sampling: the draws follow P and the policy, and are reproducible."""

import json

import numpy as np
import pytest

from flower_qlearn.samplers import cdf_index, rows_are_short
from flower_qlearn.sampling import (
    BEHAVIORS,
    GenerativeModel,
    MarkovChain,
    behavior_policy,
    cumulative,
    draw_next_states,
    inverse_cdf,
)


def random_mdp(num_states=4, num_actions=3, seed=0, zeros=True):
    """Random transitions; some entries forced to zero to check they are never sampled."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(num_states), size=(num_states, num_actions))
    if zeros:
        P[0, 0, -1] = 0.0  # trailing zero: rounding must not select it
        P[1, 0, 0] = 0.0  # leading zero
        P /= P.sum(axis=-1, keepdims=True)
    return P


def five_sigma(p, n):
    """Allowed |frequency - p| for n Bernoulli(p) draws: 5 standard deviations (plus rounding)."""
    return 5.0 * np.sqrt(p * (1.0 - p) / np.maximum(n, 1)) + 1e-12


# --------------------------------------------------------------------------- cumulative


def test_cumulative_matches_cumsum_and_ends_at_one():
    P = random_mdp()
    cdf = cumulative(P)
    assert cdf.dtype == np.float64 and cdf.flags.c_contiguous
    np.testing.assert_allclose(cdf, np.cumsum(P, axis=-1), atol=1e-12)
    assert np.all(cdf[..., -1] == 1.0)
    # The entries after the last positive probability are exactly 1 as well.
    assert cdf[0, 0, -2] == 1.0


def test_cumulative_rejects_non_probabilities():
    with pytest.raises(ValueError, match="sum to 1"):
        cumulative(np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="non-negative"):
        cumulative(np.array([1.5, -0.5]))
    with pytest.raises(ValueError, match="shape"):
        cumulative(np.zeros((2, 0)))


def test_inverse_cdf_is_searchsorted_right():
    cdf = np.array([0.25, 0.25, 0.5, 0.875, 1.0])
    # Exact cdf values are the edge cases of side="right".
    us = np.concatenate([[0.0, 0.25, 0.5, 0.875, 0.9999999], np.random.default_rng(1).random(200)])
    for u in us:
        assert inverse_cdf(cdf, u) == np.searchsorted(cdf, u, side="right")
    assert inverse_cdf(np.array([1.0]), 0.7) == 0


@pytest.mark.parametrize("n", [2, 255, 256, 257, 1000])
def test_inverse_cdf_on_short_and_long_rows(n):
    """Both search strategies (counting, bisection) agree with searchsorted, plateaus included."""
    rng = np.random.default_rng(n)
    probabilities = rng.random(n) * (rng.random(n) < 0.3)  # mostly zero-probability entries
    probabilities[n // 2] += 1.0
    cdf = cumulative(probabilities / probabilities.sum())
    # Uniforms lie in [0, 1): the row's own values (ties are the edge case) except the 1.0s.
    ties = cdf[cdf < 1.0]
    us = np.concatenate([rng.random(500), ties, [0.0, np.nextafter(1.0, 0.0)]])
    got = [inverse_cdf(cdf, u) for u in us]
    np.testing.assert_array_equal(got, np.searchsorted(cdf, us, side="right"))
    assert np.all(probabilities[got] > 0)
    # cdf_index: the same index, also when the caller says every row is short (it counts)
    np.testing.assert_array_equal([cdf_index(cdf, u, False) for u in us], got)
    if rows_are_short(cdf[None, :], cdf[None, None, :]):
        np.testing.assert_array_equal([cdf_index(cdf, u, True) for u in us], got)
    assert rows_are_short(cdf[None, :], np.ones((1, 1, 3))) == (n <= 256)
    assert rows_are_short(np.ones((1, 3)), cdf[None, None, :]) == (n <= 256)


# --------------------------------------------------------------------------- generative model


def test_generative_model_equals_searchsorted_on_the_same_uniforms():
    P = random_mdp()
    model = GenerativeModel(P)
    samples = model.sample(np.random.default_rng(3), num_steps=50)
    uniforms = np.random.default_rng(3).random((50, 4, 3))
    expected = np.empty_like(samples)
    for t in range(50):
        for s in range(4):
            for a in range(3):
                expected[t, s, a] = np.searchsorted(model.p_cdf[s, a], uniforms[t, s, a], "right")
    assert samples.dtype == np.int64 and samples.shape == (50, 4, 3)
    np.testing.assert_array_equal(samples, expected)


def test_generative_model_frequencies_match_P():
    P = random_mdp()
    num_steps = 20_000
    samples = GenerativeModel(P).sample(np.random.default_rng(7), num_steps)
    S, A = P.shape[:2]
    counts = np.zeros_like(P)
    for s in range(S):
        for a in range(A):
            counts[s, a] = np.bincount(samples[:, s, a], minlength=S)
    freq = counts / num_steps
    assert np.all(np.abs(freq - P) <= five_sigma(P, num_steps))
    assert counts[0, 0, -1] == 0 and counts[1, 0, 0] == 0  # zero-probability states never drawn


def test_generative_model_is_deterministic_and_chunkable():
    model = GenerativeModel(random_mdp())
    a = model.sample(np.random.default_rng(11), 30)
    b = model.sample(np.random.default_rng(11), 30)
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(11)
    chunks = np.concatenate([model.sample(rng, 13), draw_next_states(model.p_cdf, rng, 17)])
    np.testing.assert_array_equal(a, chunks)


def test_generative_model_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        GenerativeModel(np.full((2, 2, 3), 1 / 3))
    with pytest.raises(ValueError, match="num_steps"):
        GenerativeModel(random_mdp()).sample(np.random.default_rng(0), -1)


# --------------------------------------------------------------------------- Markov chain


def reference_trajectory(P, policy, state, uniforms):
    """Plain-Python chain with numpy's searchsorted, as the contract describes it."""
    p_cdf, pi_cdf = cumulative(P), cumulative(policy)
    out = []
    for u_action, u_next in uniforms:
        action = int(np.searchsorted(pi_cdf[state], u_action, side="right"))
        next_state = int(np.searchsorted(p_cdf[state, action], u_next, side="right"))
        out.append((state, action, next_state))
        state = next_state
    return np.array(out, dtype=np.int64).reshape(-1, 3).T


def test_markov_chain_equals_reference_on_the_same_uniforms():
    P = random_mdp()
    policy = behavior_policy("dirichlet", 4, 3, agent=0, num_agents=1, seed=0)
    chain = MarkovChain(P, policy, state=2, rng=np.random.default_rng(5))
    states, actions, next_states = chain.sample(500)
    expected = reference_trajectory(P, policy, 2, np.random.default_rng(5).random((500, 2)))
    for got, want in zip((states, actions, next_states), expected, strict=True):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(states[1:], next_states[:-1])
    assert chain.state == next_states[-1]


def test_markov_chain_frequencies_match_P_and_policy():
    P = random_mdp()
    S, A = P.shape[:2]
    policy = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.1, 0.8]])
    chain = MarkovChain(P, policy, state=0, rng=np.random.default_rng(9))
    states, actions, next_states = chain.sample(200_000)
    # Given (s, a), the next state is a fresh draw from P(. | s, a); given s, the action is a
    # fresh draw from policy(. | s): binomial tolerances apply to the conditional frequencies.
    n_sas = np.zeros((S, A, S))
    np.add.at(n_sas, (states, actions, next_states), 1)
    n_sa = n_sas.sum(axis=-1)
    n_s = n_sa.sum(axis=-1)
    assert np.all(n_sa > 1000)
    p_hat = n_sas / n_sa[..., None]
    assert np.all(np.abs(p_hat - P) <= five_sigma(P, n_sa[..., None]))
    pi_hat = n_sa / n_s[:, None]
    assert np.all(np.abs(pi_hat - policy) <= five_sigma(policy, n_s[:, None]))
    assert n_sas[0, 0, -1] == 0 and n_sas[1, 0, 0] == 0


def test_markov_chain_chunks_and_seed_give_the_same_trajectory():
    P = random_mdp()
    policy = behavior_policy("uniform", 4, 3, agent=0, num_agents=1, seed=0)
    whole = MarkovChain(P, policy, 1, np.random.default_rng(21)).sample(100)
    again = MarkovChain(P, policy, 1, np.random.default_rng(21)).sample(100)
    chunked = MarkovChain(P, policy, 1, np.random.default_rng(21))
    parts = [chunked.sample(n) for n in (1, 0, 36, 63)]
    for i in range(3):
        np.testing.assert_array_equal(whole[i], again[i])
        np.testing.assert_array_equal(whole[i], np.concatenate([p[i] for p in parts]))


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox])
def test_snapshot_restore_continues_identically(bit_generator):
    P = random_mdp()
    policy = behavior_policy("dirichlet", 4, 3, agent=1, num_agents=2, seed=4)
    uninterrupted = MarkovChain(P, policy, 3, np.random.Generator(bit_generator(8)))
    expected = uninterrupted.sample(150)

    chain = MarkovChain(P, policy, 3, np.random.Generator(bit_generator(8)))
    first = chain.sample(100)
    snapshot = json.loads(json.dumps(chain.snapshot()))  # must survive JSON (Context.state)
    assert snapshot["state"] == chain.state
    restored = MarkovChain.restore(P, policy, snapshot)
    second = restored.sample(50)
    for i in range(3):
        np.testing.assert_array_equal(expected[i], np.concatenate([first[i], second[i]]))
    assert restored.state == uninterrupted.state


def test_markov_chain_rejects_bad_arguments():
    P = random_mdp()
    with pytest.raises(ValueError, match="policy"):
        MarkovChain(P, np.full((4, 2), 0.5), 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="state"):
        MarkovChain(P, np.full((4, 3), 1 / 3), 4, np.random.default_rng(0))


# --------------------------------------------------------------------------- behavior policies


@pytest.mark.parametrize("kind", BEHAVIORS)
@pytest.mark.parametrize(("S", "A", "K"), [(1, 1, 1), (5, 3, 2), (4, 6, 10)])
def test_behaviors_are_row_stochastic(kind, S, A, K):
    for agent in range(K):
        policy = behavior_policy(kind, S, A, agent=agent, num_agents=K, seed=3, alpha=0.1)
        assert policy.shape == (S, A) and policy.dtype == np.float64
        assert np.all(policy >= 0)
        np.testing.assert_allclose(policy.sum(axis=1), 1.0, atol=1e-12)
        cumulative(policy)  # usable as a sampling table


@pytest.mark.parametrize(("A", "K", "groups"), [(4, 4, 4), (5, 2, 2), (3, 7, 3), (6, 3, 3)])
def test_disjoint_supports_partition_the_actions(A, K, groups):
    supports = [
        behavior_policy("disjoint", 3, A, agent=k, num_agents=K, seed=0)[0] > 0 for k in range(K)
    ]
    for k in range(K):
        expected = np.arange(A) % groups == k % groups
        np.testing.assert_array_equal(supports[k], expected)
    # Distinct groups are disjoint, and all agents together cover every action.
    for j in range(groups):
        for k in range(j + 1, groups):
            assert not np.any(supports[j] & supports[k])
    assert np.all(np.any(supports, axis=0))
    if K < A:
        assert all(s.sum() >= 2 for s in supports)


def test_disjoint_num_groups_override():
    policy = behavior_policy("disjoint", 2, 6, agent=1, num_agents=6, seed=0, num_groups=2)
    np.testing.assert_array_equal(policy[0], [0, 1 / 3, 0, 1 / 3, 0, 1 / 3])


def test_dirichlet_is_seeded_per_agent_and_heterogeneous():
    kw = {"num_agents": 3, "seed": 5, "alpha": 0.5}
    p0 = behavior_policy("dirichlet", 6, 4, agent=0, **kw)
    p1 = behavior_policy("dirichlet", 6, 4, agent=1, **kw)
    np.testing.assert_array_equal(p0, behavior_policy("dirichlet", 6, 4, agent=0, **kw))
    assert np.max(np.abs(p0 - p1)) > 0.1
    assert not np.allclose(p0, behavior_policy("dirichlet", 6, 4, agent=0, num_agents=3, seed=6))
    # Smaller alpha concentrates the rows: higher average max-probability.
    sharp = behavior_policy("dirichlet", 200, 4, agent=0, num_agents=1, seed=0, alpha=0.05)
    flat = behavior_policy("dirichlet", 200, 4, agent=0, num_agents=1, seed=0, alpha=50.0)
    assert sharp.max(axis=1).mean() > 0.8 > 0.4 > flat.max(axis=1).mean()


def test_epsilon_greedy_mass_on_reference():
    reference = np.array([2, 0, 1, 2])
    eps, A = 0.3, 3
    policy = behavior_policy(
        "epsilon_greedy", 4, A, agent=0, num_agents=1, seed=0, epsilon=eps, reference=reference
    )
    np.testing.assert_allclose(policy[np.arange(4), reference], 1 - eps + eps / A, atol=1e-15)
    off = np.ones((4, A), dtype=bool)
    off[np.arange(4), reference] = False
    np.testing.assert_allclose(policy[off], eps / A, atol=1e-15)
    # Default reference: a deterministic policy drawn per (seed, agent).
    default = behavior_policy("epsilon_greedy", 50, A, agent=1, num_agents=2, seed=0, epsilon=0.0)
    assert set(np.unique(default)) == {0.0, 1.0}
    other = behavior_policy("epsilon_greedy", 50, A, agent=0, num_agents=2, seed=0, epsilon=0.0)
    assert not np.array_equal(default, other)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "greedy"}, "kind must be one of"),
        ({"kind": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"kind": "epsilon_greedy", "epsilon": 1.5}, "epsilon"),
        ({"kind": "epsilon_greedy", "epsilon": -0.1}, "epsilon"),
        ({"kind": "uniform", "agent": 3}, "agent"),
        ({"kind": "uniform", "num_agents": 0, "agent": 0}, "num_agents"),
        ({"kind": "disjoint", "num_groups": 5}, "num_groups"),
        ({"kind": "epsilon_greedy", "reference": np.array([0, 1, 2])}, "reference"),
        ({"kind": "epsilon_greedy", "reference": np.array([0.0, 1.0])}, "reference"),
    ],
)
def test_behavior_policy_rejects_bad_arguments(kwargs, match):
    args = {"num_states": 2, "num_actions": 3, "agent": 0, "num_agents": 2, "seed": 0} | kwargs
    kind = args.pop("kind")
    with pytest.raises(ValueError, match=match):
        behavior_policy(kind, **args)
