"""DASA on TD(0) with linear features (docs/dasa_td.md): the features, the exact TD fixed
point, the td_operator client task, one DASA iteration by hand, and both execution modes.

Every number is checked against an independent computation: bare loops for the operator, the
inverse-CDF chain written out with ``np.searchsorted``, the stationary distribution from an
eigenvector, ``theta* = V_pi`` for tabular features, and a long-run average of the operator.
"""

from __future__ import annotations

import numpy as np
import pytest
from flower_helpers import CallbackGrid, reply
from flower_qlearn.strategies import DASA
from flwr.app import Array, ArrayRecord, ConfigRecord

from flower_qlearn import config as fq_config
from flower_qlearn import run_experiment
from flower_qlearn.mdp import make_mdp
from flower_qlearn.td import (
    feature_matrix,
    run_td_operator,
    stationary_distribution,
    td_operator,
    td_problem,
)

GAMMA, S, A, D = 0.8, 6, 2, 3


def garnet(num_states: int = S) -> object:
    return make_mdp("garnet", num_states=num_states, num_actions=A, branching=3, gamma=GAMMA)


UNIFORM = np.full((S, A), 1.0 / A)


def independent_truth(mdp, policy, phi):
    """A, b, theta*, omega built state by state, D from the eigenvector of P_pi^T at 1."""
    n = mdp.num_states
    chain = np.zeros((n, n))
    reward = np.zeros(n)
    for s in range(n):
        for a in range(mdp.num_actions):
            chain[s] += policy[s, a] * mdp.P[s, a]
            reward[s] += policy[s, a] * mdp.R[s, a]
    values, vectors = np.linalg.eig(chain.T)
    mu = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
    mu = mu / mu.sum()
    a_mat = np.zeros((phi.shape[1], phi.shape[1]))
    b_vec = np.zeros(phi.shape[1])
    for s in range(n):
        expected_next = sum(chain[s, t] * phi[t] for t in range(n))
        a_mat += mu[s] * np.outer(phi[s], phi[s] - mdp.gamma * expected_next)
        b_vec += mu[s] * phi[s] * reward[s]
    return chain, reward, mu, a_mat, b_vec, np.linalg.solve(a_mat, b_vec)


def bare_transitions(mdp, policy, state, rng, num):
    """The chain by inverse CDF: action with the first uniform, next state with the second."""
    u = rng.random((num, 2))
    xs, us, ys = [], [], []
    for j in range(num):
        a = int(np.searchsorted(np.cumsum(policy[state]), u[j, 0], side="right"))
        nxt = int(np.searchsorted(np.cumsum(mdp.P[state, a]), u[j, 1], side="right"))
        xs.append(state), us.append(a), ys.append(nxt)
        state = nxt
    return xs, us, ys, state


def bare_operator(phi, theta, xs, rewards, ys, gamma):
    g = np.zeros(phi.shape[1])
    for x, r, y in zip(xs, rewards, ys, strict=True):
        g += phi[x] * (r + gamma * phi[y] @ theta - phi[x] @ theta)
    return g / len(xs)


# ---------------------------------------------------------------------------------------------
# Core: features, operator, fixed point
# ---------------------------------------------------------------------------------------------


def test_features_random_rows_have_unit_norm_and_are_seeded_tabular_is_identity():
    phi = feature_matrix("random", 7, 4, seed=3)
    assert phi.shape == (7, 4) and not phi.flags.writeable
    np.testing.assert_allclose(np.linalg.norm(phi, axis=1), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(phi, feature_matrix("random", 7, 4, seed=3))
    assert not np.allclose(phi, feature_matrix("random", 7, 4, seed=4))
    np.testing.assert_array_equal(feature_matrix("tabular", 5, None, 0), np.eye(5))
    assert feature_matrix("random", 5, None, 0).shape == (5, 5)
    with pytest.raises(ValueError, match="tabular"):
        feature_matrix("tabular", 5, 3, 0)


def test_operator_equals_a_bare_loop():
    rng = np.random.default_rng(7)
    phi = feature_matrix("random", S, D, 1)
    theta = rng.normal(size=D)
    xs, ys = rng.integers(0, S, 50), rng.integers(0, S, 50)
    rewards = rng.random(50)
    np.testing.assert_allclose(
        td_operator(phi, theta, xs, rewards, ys, GAMMA),
        bare_operator(phi, theta, xs, rewards, ys, GAMMA),
        rtol=1e-13,
        atol=1e-15,
    )


def test_run_td_operator_walks_the_package_chain_convention():
    mdp, phi = garnet(), feature_matrix("random", S, D, 1)
    theta = np.array([0.3, -0.2, 0.5])
    g, final = run_td_operator(theta, phi, mdp, UNIFORM, 2, 40, np.random.default_rng([5, 1, 3]))
    xs, us, ys, state = bare_transitions(mdp, UNIFORM, 2, np.random.default_rng([5, 1, 3]), 40)
    rewards = [mdp.R[x, u] for x, u in zip(xs, us, strict=True)]
    np.testing.assert_allclose(g, bare_operator(phi, theta, xs, rewards, ys, GAMMA), rtol=1e-13)
    assert final == state


def test_fixed_point_matches_an_independent_solve():
    mdp, phi = garnet(), feature_matrix("random", S, D, 2)
    problem = td_problem(mdp, UNIFORM, phi)
    chain, reward, mu, a_mat, b_vec, theta_star = independent_truth(mdp, UNIFORM, phi)
    np.testing.assert_allclose(problem.chain, chain, atol=1e-15)
    np.testing.assert_allclose(problem.mu, mu, rtol=1e-10)
    np.testing.assert_allclose(problem.A, a_mat, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(problem.b, b_vec, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(problem.theta_star, theta_star, rtol=1e-10)
    # omega: <A x, x> >= omega |x|^2 for every x, with equality at the eigenvector.
    xs = np.random.default_rng(0).normal(size=(2000, D))
    quad = np.einsum("ij,jk,ik->i", xs, a_mat, xs) / np.einsum("ij,ij->i", xs, xs)
    assert problem.omega > 0 and quad.min() >= problem.omega - 1e-12
    assert quad.min() <= problem.omega * 1.05


def test_tabular_fixed_point_is_the_value_of_the_behavior_policy():
    mdp = garnet()
    problem = td_problem(mdp, UNIFORM, feature_matrix("tabular", S, None, 0))
    p_pi = UNIFORM[:, :, None] * mdp.P
    v_pi = np.linalg.solve(np.eye(S) - GAMMA * p_pi.sum(axis=1), (UNIFORM * mdp.R).sum(axis=1))
    np.testing.assert_allclose(problem.theta_star, v_pi, rtol=1e-10)


def test_long_run_average_of_the_operator_vanishes_at_theta_star():
    mdp, phi = garnet(), feature_matrix("random", S, D, 2)
    problem = td_problem(mdp, UNIFORM, phi)
    rng = np.random.default_rng(11)
    g_star, _ = run_td_operator(problem.theta_star, phi, mdp, UNIFORM, 0, 200_000, rng)
    g_zero, _ = run_td_operator(np.zeros(D), phi, mdp, UNIFORM, 0, 200_000, rng)
    # Markov noise of 2e5 steps: a few 1e-3 relative; a wrong fixed point is off by O(1).
    assert np.linalg.norm(g_star) < 0.03 * np.linalg.norm(problem.b)
    np.testing.assert_allclose(g_zero, problem.b, atol=0.03 * np.linalg.norm(problem.b))


def test_stationary_distribution_refuses_two_closed_classes():
    with pytest.raises(ValueError, match="more than one"):
        stationary_distribution(np.eye(2))


# ---------------------------------------------------------------------------------------------
# One DASA iteration by hand, on a (d,) iterate
# ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("flower_identity")
def test_one_dasa_iteration_by_hand_on_a_vector_iterate():
    g = {0: [1.0, 0.0, 2.0], 1: [3.0, 2.0, 0.0], 2: [-1.0, 1.0, 1.0], 3: [9.0, 9.0, 9.0]}

    def respond(message):
        agent = message.metadata.dst_node_id - 101
        t = int(message.content["config"]["iteration"])
        return reply(message, {"g": np.array(g[agent])}, {"partition_id": agent, "iteration": t})

    strategy = DASA(S, A, num_agents=4, step_size=0.5, epsilon=0.0, shape=(3,), task="td_operator")
    grid = CallbackGrid([101, 102, 103, 104], respond)
    arrays = ArrayRecord({"q": Array(np.array([1.0, 1.0, 1.0]))})
    messages = strategy.configure_train(1, arrays, ConfigRecord({}), grid)
    assert {m.content["config"]["task"] for m in messages} == {"td_operator"}
    new, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    # No delays: every e_i = 0, R_t = the ceil(4/2) = 2 lowest ids {0, 1}:
    # theta_1 = (1, 1, 1) + 0.5 * mean((1, 0, 2), (3, 2, 0)) = (2, 1.5, 1.5).
    np.testing.assert_array_equal(new["q"].numpy(), [2.0, 1.5, 1.5])
    assert metrics["used"] == 2 and metrics["skipped"] == 0
    # A reply of the Q-table's shape is refused.
    g[3] = np.ones((S, A))
    strategy.aggregate_train(2, grid.send_and_receive(strategy.configure_train(2, new, {}, grid)))
    assert any("shape" in reason for _, _, reason in strategy.rejections)


# ---------------------------------------------------------------------------------------------
# End to end through the real ClientApp
# ---------------------------------------------------------------------------------------------

TD = [
    "strategy=dasa",
    "strategy.operator=td_linear",
    "strategy.num_features=3",
    "strategy.feature_seed=2",
    "strategy.step_size=null",
    "mdp=garnet",
    f"mdp.num_states={S}",
    f"mdp.num_actions={A}",
    "mdp.branching=3",
    f"mdp.gamma={GAMMA}",
    "num_clients=4",
    "log_every=0",
    "figures=false",
]


def test_first_iteration_end_to_end_equals_a_hand_computation(tmp_path):
    cfg = fq_config.compose(TD + ["num_rounds=1"])
    result = run_experiment(TD + ["num_rounds=1", f"output_dir={tmp_path}"])
    mdp, phi = garnet(), feature_matrix("random", S, 3, 2)
    *_, a_mat, _, theta_star = independent_truth(mdp, UNIFORM, phi)
    omega = np.linalg.eigvalsh((a_mat + a_mat.T) / 2).min()
    alpha = omega / 4.0  # step_size null: omega / omega_divisor (default 4)
    ops = []
    for i in range(4):
        start = np.random.default_rng([cfg.seed, i, 0]).choice(S, p=mdp.initial)
        xs, us, ys, _ = bare_transitions(
            mdp, UNIFORM, start, np.random.default_rng([cfg.seed, i, 1]), 10
        )
        rewards = [mdp.R[x, u] for x, u in zip(xs, us, strict=True)]
        ops.append(bare_operator(phi, np.zeros(3), xs, rewards, ys, GAMMA))
    theta_1 = alpha * (ops[0] + ops[1]) / 2  # DASA, no delays: agents 0 and 1 (ties: lower ids)
    np.testing.assert_allclose(result.q_table, theta_1, rtol=1e-12, atol=1e-15)
    row = result.history[0]
    assert row["theta_error"] == pytest.approx(np.sum((theta_1 - theta_star) ** 2), rel=1e-10)
    assert row.get("q_error") is None  # not a Q-table: the metric does not apply
    assert result.summary["ground_truth"]["omega"] == pytest.approx(omega, rel=1e-10)


def test_simulated_run_converges_is_deterministic_and_resumes(tmp_path):
    common = TD + [
        "delay=stragglers",
        "delay.num_stragglers=1",
        "delay.low=3",
        "delay.high=8",
        "strategy.omega_divisor=1",
        "strategy.epsilon=1.0",
    ]
    full = run_experiment(common + ["num_rounds=150", f"output_dir={tmp_path / 'full'}"])
    errors = [r["theta_error"] for r in full.history]
    assert full.q_table.shape == (3,) and errors[-1] < 0.1 * errors[0]
    assert np.load(tmp_path / "full" / "q_table.npy").shape == (3,)
    run_experiment(
        common + ["num_rounds=50", "checkpoint_every=50", f"output_dir={tmp_path / 'a'}"]
    )
    resumed = run_experiment(
        common + ["num_rounds=150", f"resume={tmp_path / 'a'}", f"output_dir={tmp_path / 'b'}"]
    )
    np.testing.assert_array_equal(resumed.q_table, full.q_table)


def test_q_learning_rows_have_no_theta_error(tmp_path):
    overrides = [o for o in TD if "strategy.operator" not in o and "step_size" not in o]
    row = run_experiment(overrides + ["num_rounds=2", f"output_dir={tmp_path}"]).history[-1]
    assert row["q_error"] is not None and row.get("theta_error") is None


def test_tabular_features_converge_to_the_value_function(tmp_path):
    overrides = [o for o in TD if "num_features" not in o and "feature_seed" not in o]
    result = run_experiment(
        overrides
        + [
            "strategy.features=tabular",
            "strategy.omega_divisor=0.25",
            "strategy.rule=nondelayed",
            "num_rounds=300",
            f"output_dir={tmp_path}",
        ]
    )
    assert result.q_table.shape == (S,)
    errors = [r["theta_error"] for r in result.history]
    assert errors[-1] < 0.1 * errors[0]


def test_async_in_process_runs_td(tmp_path):
    overrides = TD + [
        "strategy.execution=async",
        "strategy.rule=dasa",
        "strategy.tick_s=0.02",
        "round_timeout=0.5",
        "engine.concurrent=true",
        "client.slow_agents=[3]",
        "client.slow_sleep_s=0.1",
        "num_rounds=40",
        f"output_dir={tmp_path}",
    ]
    history = run_experiment(overrides).history
    assert len(history) == 40 and all("theta_error" in r for r in history)
    assert history[-1]["theta_error"] < history[0]["theta_error"]


@pytest.mark.slow
def test_ray_engine_gives_the_in_process_numbers(tmp_path):
    overrides = TD + ["delay=uniform", "delay.high=3", "num_rounds=8"]
    local = run_experiment(overrides + [f"output_dir={tmp_path / 'local'}"])
    ray = run_experiment(
        overrides
        + ["engine=ray", "engine.num_cpus_per_client=0.5", f"output_dir={tmp_path / 'ray'}"]
    )
    np.testing.assert_array_equal(ray.q_table, local.q_table)
    assert [r["theta_error"] for r in ray.history] == [r["theta_error"] for r in local.history]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["strategy.operator=sarsa"], "strategy.operator='sarsa'"),
        (["strategy.features=fourier"], "strategy.features='fourier'"),
        (["strategy.num_features=7"], "strategy.num_features=7"),
        (["strategy.features=tabular", "strategy.num_features=3"], "strategy.num_features=3"),
        (["strategy.omega_divisor=0"], "strategy.omega_divisor=0"),
        (["client.behavior=dirichlet"], "client.behavior='dirichlet'"),
        (["client.heterogeneity=0.5"], "client.heterogeneity=0.5"),
    ],
)
def test_bad_td_config_fails_with_one_line_naming_the_field(extra, message):
    with pytest.raises(fq_config.ConfigError) as info:
        fq_config.compose(TD + extra)
    assert message in str(info.value) and "\n" not in str(info.value)
