"""Tests of flower_qlearn.kernels: exact agreement with plain-Python loops, and convergence."""

import numpy as np
import pytest

from flower_qlearn import kernels
from flower_qlearn.kernels import (
    async_q_steps,
    average_reward_steps,
    q_operator_batch,
    run_async_q,
    run_average_reward,
    run_q_operator,
    run_sync_q,
    sync_q_steps,
)
from flower_qlearn.mdp import garnet, two_state
from flower_qlearn.samplers import action_table, next_state_table
from flower_qlearn.sampling import GenerativeModel, MarkovChain, behavior_policy, cumulative
from flower_qlearn.solvers import optimal_q
from flower_qlearn.transitions import Transitions

S, A, GAMMA = 5, 3, 0.9


@pytest.fixture(scope="module")
def problem():
    """A small random MDP, a heterogeneous behavior policy and a random Q-table."""
    rng = np.random.default_rng(123)
    P = rng.dirichlet(np.ones(S), size=(S, A))
    reward = rng.random((S, A))
    policy = behavior_policy("dirichlet", S, A, agent=0, num_agents=1, seed=1)
    q0 = rng.normal(size=(S, A))
    return P, reward, policy, q0


# --------------------------------------------------------------------------- reference loops
# Written in plain Python/NumPy, with the same floating-point operations in the same order as
# the compiled loops, so agreement must be exact.


def reference_sync(q, reward, gamma, lr, next_states):
    q = q.copy()
    for t in range(next_states.shape[0]):
        values = q.max(axis=1)
        q = (1 - lr) * q + lr * (reward + gamma * values[next_states[t]])
    return q


def reference_async(q, reward, gamma, lr, states, actions, next_states):
    q = q.copy()
    counts = np.zeros(q.shape, dtype=np.int64)
    for s, a, s_next in zip(states, actions, next_states, strict=True):
        q[s, a] = (1 - lr) * q[s, a] + lr * (reward[s, a] + gamma * max(q[s_next]))
        counts[s, a] += 1
    return q, counts


def reference_average_reward(q, reward, gamma, v_frozen, step_sizes, next_states):
    q = q.copy()
    for t, eta in enumerate(step_sizes):
        q = (1 - eta) * q + eta * ((1 - gamma) * reward + gamma * v_frozen[next_states[t]])
    return q


def reference_q_operator(theta, reward, gamma, states, actions, next_states):
    g = np.zeros(theta.shape)
    for s, a, s_next in zip(states, actions, next_states, strict=True):
        g[s, a] += reward[s, a] + gamma * max(theta[s_next]) - theta[s, a]
    return g / len(states)


# --------------------------------------------------------------------------- exactness


def test_sync_q_steps_equals_reference(problem):
    P, reward, _, q0 = problem
    next_states = GenerativeModel(P).sample(np.random.default_rng(0), 200)
    q = q0.copy()
    sync_q_steps(q, reward, GAMMA, 0.3, next_states)
    np.testing.assert_array_equal(q, reference_sync(q0, reward, GAMMA, 0.3, next_states))


def test_async_q_steps_follows_the_markov_chain(problem):
    P, reward, policy, q0 = problem
    chain = MarkovChain(P, policy, state=2, rng=np.random.default_rng(4))
    states, actions, next_states = chain.sample(3000)
    expected_q, expected_counts = reference_async(
        q0, reward, GAMMA, 0.2, states, actions, next_states
    )
    q, counts = q0.copy(), np.zeros((S, A), dtype=np.int64)
    uniforms = np.random.default_rng(4).random((3000, 2))  # the chain's own uniforms
    p, pi = next_state_table(Transitions.from_dense(P)), action_table(policy)
    final = async_q_steps(
        q, counts, reward, GAMMA, 0.2, p.kind, p.next, p.value, p.alias, pi.value, pi.alias, 2,
        uniforms,
    )
    np.testing.assert_array_equal(q, expected_q)
    np.testing.assert_array_equal(counts, expected_counts)
    assert final == chain.state


@pytest.mark.parametrize(("num_states", "num_actions"), [(260, 2), (3, 260)])
def test_the_markov_kernels_follow_the_chain_on_long_rows(num_states, num_actions):
    """Rows longer than the counting limit (bisected: async_q_steps's and q_operator_batch's
    loop that tests each row's length, not the short-rows one) give the chain's transitions."""
    rng = np.random.default_rng(num_states * num_actions)
    P = rng.dirichlet(np.full(num_states, 0.3), size=(num_states, num_actions))
    reward = rng.random((num_states, num_actions))
    policy = behavior_policy("dirichlet", num_states, num_actions, agent=0, num_agents=1, seed=2)
    q0 = rng.normal(size=(num_states, num_actions))
    chain = MarkovChain(P, policy, state=1, rng=np.random.default_rng(8))
    states, actions, next_states = chain.sample(2000)
    uniforms = np.random.default_rng(8).random((2000, 2))  # the chain's own uniforms
    p, pi = next_state_table(Transitions.from_dense(P)), action_table(policy)
    assert max(p.value.shape[-1], pi.value.shape[-1]) > 256
    q, counts = q0.copy(), np.zeros(q0.shape, dtype=np.int64)
    final = async_q_steps(q, counts, reward, GAMMA, 0.2, p.kind, p.next, p.value, p.alias,
                          pi.value, pi.alias, 1, uniforms)
    expected_q, expected_counts = reference_async(q0, reward, GAMMA, 0.2, states, actions,
                                                  next_states)
    np.testing.assert_array_equal(q, expected_q)
    np.testing.assert_array_equal(counts, expected_counts)
    assert final == chain.state
    g, final = q_operator_batch(q0, reward, GAMMA, p.kind, p.next, p.value, p.alias, pi.value,
                                pi.alias, 1, uniforms)
    np.testing.assert_array_equal(
        g, reference_q_operator(q0, reward, GAMMA, states, actions, next_states))
    assert final == chain.state


def test_average_reward_steps_equals_reference(problem):
    P, reward, _, q0 = problem
    rng = np.random.default_rng(5)
    v_frozen = rng.random(S)
    step_sizes = 1.0 / (1.0 + 0.1 * np.arange(150))
    next_states = GenerativeModel(P).sample(rng, 150)
    q = q0.copy()
    average_reward_steps(q, reward, GAMMA, v_frozen, step_sizes, next_states)
    expected = reference_average_reward(q0, reward, GAMMA, v_frozen, step_sizes, next_states)
    np.testing.assert_array_equal(q, expected)


def test_q_operator_batch_equals_reference(problem):
    P, reward, policy, theta = problem
    chain = MarkovChain(P, policy, state=0, rng=np.random.default_rng(6))
    transitions = chain.sample(40)
    theta_before = theta.copy()
    p, pi = next_state_table(Transitions.from_dense(P)), action_table(policy)
    g, final = q_operator_batch(
        theta,
        reward,
        GAMMA,
        p.kind,
        p.next,
        p.value,
        p.alias,
        pi.value,
        pi.alias,
        0,
        np.random.default_rng(6).random((40, 2)),
    )
    np.testing.assert_array_equal(g, reference_q_operator(theta, reward, GAMMA, *transitions))
    np.testing.assert_array_equal(theta, theta_before)  # theta is not modified
    assert final == chain.state


# --------------------------------------------------------------------------- drivers


def test_drivers_equal_sampler_plus_loop(problem):
    """The drivers consume the Generator exactly like GenerativeModel and MarkovChain."""
    P, reward, policy, q0 = problem
    p_cdf, pi_cdf = cumulative(P), cumulative(policy)

    q = q0.copy()
    run_sync_q(q, reward, GAMMA, 0.1, p_cdf, 100, np.random.default_rng(1))
    next_states = GenerativeModel(P).sample(np.random.default_rng(1), 100)
    np.testing.assert_array_equal(q, reference_sync(q0, reward, GAMMA, 0.1, next_states))

    q, counts = q0.copy(), np.zeros((S, A), dtype=np.int64)
    rng = np.random.default_rng(2)
    final = run_async_q(q, counts, reward, GAMMA, 0.1, p_cdf, pi_cdf, 3, 1000, rng)
    chain = MarkovChain(P, policy, 3, np.random.default_rng(2))
    expected_q, expected_counts = reference_async(q0, reward, GAMMA, 0.1, *chain.sample(1000))
    np.testing.assert_array_equal(q, expected_q)
    np.testing.assert_array_equal(counts, expected_counts)
    assert final == chain.state
    # The driver left the Generator where the chain left its own.
    assert rng.bit_generator.state == chain.rng.bit_generator.state

    g, final = run_q_operator(q0, reward, GAMMA, p_cdf, pi_cdf, 1, 64, np.random.default_rng(3))
    chain = MarkovChain(P, policy, 1, np.random.default_rng(3))
    np.testing.assert_array_equal(g, reference_q_operator(q0, reward, GAMMA, *chain.sample(64)))
    assert final == chain.state


def run_all_drivers(problem):
    P, reward, policy, q0 = problem
    p_cdf, pi_cdf = cumulative(P), cumulative(policy)
    rng = np.random.default_rng(99)
    q_sync = q0.copy()
    run_sync_q(q_sync, reward, GAMMA, 0.1, p_cdf, 37, rng)
    q_async, counts = q0.copy(), np.zeros((S, A), dtype=np.int64)
    state = run_async_q(q_async, counts, reward, GAMMA, 0.1, p_cdf, pi_cdf, 0, 301, rng)
    q_avg = q0.copy()
    v = np.random.default_rng(1).random(S)
    run_average_reward(q_avg, reward, GAMMA, v, np.linspace(1.0, 0.01, 23), p_cdf, rng)
    g, final = run_q_operator(q0, reward, GAMMA, p_cdf, pi_cdf, state, 55, rng)
    return q_sync, q_async, counts, state, q_avg, g, final


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 64, 1000])
def test_drivers_do_not_depend_on_the_chunk_size(problem, monkeypatch, chunk_size):
    expected = run_all_drivers(problem)
    monkeypatch.setattr(kernels, "CHUNK_SIZE", chunk_size)
    for got, want in zip(run_all_drivers(problem), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_run_q_operator_accepts_a_flat_theta(problem):
    P, reward, policy, q0 = problem
    args = (reward, GAMMA, cumulative(P), cumulative(policy), 2, 30)
    g_flat, s_flat = run_q_operator(q0.ravel(), *args, np.random.default_rng(8))
    g, s = run_q_operator(q0, *args, np.random.default_rng(8))
    assert g_flat.shape == (S * A,) and s_flat == s
    np.testing.assert_array_equal(g_flat, g.ravel())


def test_drivers_accept_read_only_mdp_arrays():
    mdp = garnet(4, 2, 2, gamma=0.9, seed=0)  # TabularMDP arrays are frozen
    q = np.zeros((4, 2))
    run_sync_q(q, mdp.R, mdp.gamma, 0.5, cumulative(mdp.P), 3, np.random.default_rng(0))
    assert np.all(q > 0)


def test_drivers_reject_bad_arguments(problem):
    P, reward, policy, q0 = problem
    p_cdf, pi_cdf = cumulative(P), cumulative(policy)
    rng = np.random.default_rng(0)
    counts = np.zeros((S, A), dtype=np.int64)
    q = q0.copy()
    with pytest.raises(ValueError, match="learning_rate"):
        run_sync_q(q, reward, GAMMA, 0.0, p_cdf, 1, rng)
    with pytest.raises(ValueError, match="learning_rate"):
        run_async_q(q, counts, reward, GAMMA, 1.5, p_cdf, pi_cdf, 0, 1, rng)
    with pytest.raises(ValueError, match="gamma"):
        run_sync_q(q, reward, 1.0, 0.1, p_cdf, 1, rng)
    with pytest.raises(ValueError, match="q must be a writeable C-contiguous float64"):
        run_sync_q(q.astype(np.float32), reward, GAMMA, 0.1, p_cdf, 1, rng)
    with pytest.raises(ValueError, match="q must be a writeable C-contiguous float64"):
        run_sync_q(np.asfortranarray(np.zeros((S, A))), reward, GAMMA, 0.1, p_cdf, 1, rng)
    with pytest.raises(ValueError, match="counts"):
        run_async_q(q, counts.astype(np.int32), reward, GAMMA, 0.1, p_cdf, pi_cdf, 0, 1, rng)
    with pytest.raises(ValueError, match="reward must have shape"):
        run_sync_q(q, reward[:, :2], GAMMA, 0.1, p_cdf, 1, rng)
    with pytest.raises(ValueError, match="p_cdf must be a cumulative table"):
        run_sync_q(q, reward, GAMMA, 0.1, P, 1, rng)  # probabilities, not cumulative
    with pytest.raises(ValueError, match="pi_cdf"):
        run_async_q(q, counts, reward, GAMMA, 0.1, p_cdf, policy, 0, 1, rng)
    with pytest.raises(ValueError, match="state"):
        run_async_q(q, counts, reward, GAMMA, 0.1, p_cdf, pi_cdf, S, 1, rng)
    with pytest.raises(ValueError, match="num_steps"):
        run_async_q(q, counts, reward, GAMMA, 0.1, p_cdf, pi_cdf, 0, -1, rng)
    with pytest.raises(ValueError, match="step_sizes"):
        run_average_reward(q, reward, GAMMA, np.zeros(S), np.array([0.5, 0.0]), p_cdf, rng)
    with pytest.raises(ValueError, match="v_frozen"):
        run_average_reward(q, reward, GAMMA, np.zeros(S + 1), np.array([0.5]), p_cdf, rng)
    with pytest.raises(ValueError, match="batch_size"):
        run_q_operator(q, reward, GAMMA, p_cdf, pi_cdf, 0, 0, rng)
    with pytest.raises(ValueError, match="theta"):
        run_q_operator(q[:2], reward, GAMMA, p_cdf, pi_cdf, 0, 1, rng)
    np.testing.assert_array_equal(q, q0)  # nothing ran


def test_warmup_compiles_every_kernel():
    kernels.warmup()
    for loop in (kernels.sync_q_steps, kernels.async_q_steps, kernels.average_reward_steps,
                 kernels.q_operator_batch):
        assert loop.signatures, f"{loop.__name__} was not compiled by warmup()"


# --------------------------------------------------------------------------- convergence

# Constant learning rates decreased in stages, each stage 10 time constants 1 / (lr (1 - gamma))
# long: the bias of the previous stage decays by e^-10 and the noise floor ends at that of the
# last, small, rate.
LEARNING_RATES = (0.05, 0.01, 0.002, 0.0005, 0.0002)
TOLERANCE = 0.05  # on ||Q - Q*||_inf, with Q* up to 1 / (1 - gamma) = 10


def staged_steps(lr, gamma):
    return int(10 / (lr * (1 - gamma)))


MDPS = {
    "two_state": lambda: two_state(num_actions=4, gamma=0.9, seed=0),
    "garnet": lambda: garnet(5, 2, 3, gamma=0.9, seed=0),
}


@pytest.mark.parametrize("name", MDPS)
def test_sync_q_learning_converges_to_q_star(name):
    mdp = MDPS[name]()
    q = np.zeros(mdp.R.shape)
    rng = np.random.default_rng(0)
    p_cdf = cumulative(mdp.P)
    for lr in LEARNING_RATES:
        run_sync_q(q, mdp.R, mdp.gamma, lr, p_cdf, staged_steps(lr, mdp.gamma), rng)
    assert np.max(np.abs(q - optimal_q(mdp))) < TOLERANCE


@pytest.mark.parametrize("name", MDPS)
def test_async_q_learning_converges_under_uniform_behavior(name):
    mdp = MDPS[name]()
    num_states, num_actions = mdp.R.shape
    policy = behavior_policy("uniform", num_states, num_actions, agent=0, num_agents=1, seed=0)
    q, counts = np.zeros(mdp.R.shape), np.zeros(mdp.R.shape, dtype=np.int64)
    rng, state = np.random.default_rng(0), 0
    p_cdf, pi_cdf = cumulative(mdp.P), cumulative(policy)
    for lr in LEARNING_RATES:
        # Each entry is visited about once every S * A steps.
        steps = staged_steps(lr, mdp.gamma) * num_states * num_actions
        state = run_async_q(q, counts, mdp.R, mdp.gamma, lr, p_cdf, pi_cdf, state, steps, rng)
    assert np.max(np.abs(q - optimal_q(mdp))) < TOLERANCE
    assert counts.sum() == sum(
        staged_steps(lr, mdp.gamma) * num_states * num_actions for lr in LEARNING_RATES
    )


def test_average_reward_converges_to_its_fixed_point():
    """With v_frozen fixed and eta_t = 1 / t the iterate is the sample mean of the targets."""
    mdp = garnet(6, 3, 3, gamma=0.8, seed=2)
    v_frozen = np.random.default_rng(0).random(6)
    num_steps = 50_000
    q = np.full(mdp.R.shape, 7.0)  # eta_1 = 1 forgets the start
    run_average_reward(
        q,
        mdp.R,
        mdp.gamma,
        v_frozen,
        1.0 / np.arange(1, num_steps + 1),
        cumulative(mdp.P),
        np.random.default_rng(1),
    )
    fixed_point = (1 - mdp.gamma) * mdp.R + mdp.gamma * mdp.P @ v_frozen
    # Standard deviation of the mean of num_steps i.i.d. targets, exactly from P.
    variance = mdp.P @ v_frozen**2 - (mdp.P @ v_frozen) ** 2
    sigma = mdp.gamma * np.sqrt(np.maximum(variance, 0.0) / num_steps)
    assert np.all(np.abs(q - fixed_point) <= 5 * sigma + 1e-12)


def test_q_operator_approaches_its_expectation_under_the_stationary_distribution():
    mdp = garnet(5, 2, 3, gamma=0.8, seed=3)
    policy = behavior_policy("dirichlet", 5, 2, agent=0, num_agents=1, seed=0, alpha=2.0)
    theta = np.random.default_rng(0).random((5, 2)) * 3
    g, _ = run_q_operator(
        theta,
        mdp.R,
        mdp.gamma,
        cumulative(mdp.P),
        cumulative(policy),
        0,
        400_000,
        np.random.default_rng(1),
    )
    # Stationary distribution of the state chain under the policy, then of the (s, a) pairs.
    chain = np.einsum("sa,sat->st", policy, mdp.P)
    eigenvalues, eigenvectors = np.linalg.eig(chain.T)
    mu = np.real(eigenvectors[:, np.argmin(np.abs(eigenvalues - 1))])
    mu /= mu.sum()
    expected = mu[:, None] * policy * (mdp.R + mdp.gamma * mdp.P @ theta.max(axis=1) - theta)
    np.testing.assert_allclose(g, expected, atol=0.01)
