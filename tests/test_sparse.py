"""Sparse transition storage and the ``client.sampler`` tables (issue 11 items 3 and 4).

Sparse successor rows must give the same samples, trajectories and Q* as the dense tables they
replace, bit for bit; alias tables must sample from P (chi-square) and drive Q-learning to Q*;
the solvers' sparse path must agree with the dense one and with pymdptoolbox.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.stats import chi2

from flower_qlearn import config as fq_config
from flower_qlearn import schema, solvers
from flower_qlearn.agent import agent_env
from flower_qlearn.kernels import run_async_q, run_q_operator, run_sync_q
from flower_qlearn.mdp import TabularMDP, garnet, make_mdp, perturb, riverswim, two_state
from flower_qlearn.samplers import (
    SAMPLER_ALIAS,
    action_table,
    alias_rows,
    as_next_state_table,
    next_state_table,
)
from flower_qlearn.sampling import behavior_policy, cumulative, generative_next_states
from flower_qlearn.transitions import Transitions


def _hand_made() -> TabularMDP:
    """Zero entries first, inside and last; a probability too small to move the cumsum."""
    P = np.zeros((3, 2, 3))
    P[0, 0] = [0.0, 0.25, 0.75]
    P[0, 1] = [0.5, 0.0, 0.5]
    P[1, 0] = [1.0 - 1e-17, 1e-17, 0.0]  # 1e-17 is absorbed: 1 - 1e-17 == 1.0 in float64
    P[1, 1] = [0.0, 0.0, 1.0]
    P[2, 0] = [0.1, 0.2, 0.7]
    P[2, 1] = [0.0, 1.0, 0.0]
    return TabularMDP(P, np.full((3, 2), 0.5), 0.9, np.full(3, 1 / 3), "hand")


FAMILIES = {
    "hand_made": _hand_made,
    "two_state": lambda: two_state(num_actions=5, seed=3),
    "garnet": lambda: garnet(30, 4, 5, seed=1),
    "garnet_b1": lambda: garnet(12, 3, 1, seed=2),
    "garnet_full": lambda: garnet(6, 2, 6, seed=4),
    "garnet_floyd": lambda: garnet(40, 3, 4, seed=5, successors="floyd"),
    "riverswim": lambda: riverswim(7),
    "perturbed": lambda: perturb(garnet(8, 2, 2, seed=6), 0.3, seed=7),
    "frozenlake": lambda: make_mdp("frozenlake", gamma=0.9),
    "taxi": lambda: make_mdp("taxi", gamma=0.9),
    "cliffwalking": lambda: make_mdp("cliffwalking", gamma=0.9),
}


def _edge_uniforms(dense_cdf: np.ndarray, rng: np.random.Generator, steps: int) -> np.ndarray:
    """Uniforms ``(steps, S, A)``: random, plus exact CDF values and their float neighbours
    (the ties of ``searchsorted(side="right")``), 0 and the largest double below 1."""
    S, A, _ = dense_cdf.shape
    u = rng.random((steps, S, A))
    pick = rng.integers(0, dense_cdf.shape[2], size=(steps, S, A))
    exact = np.take_along_axis(dense_cdf[None].repeat(steps, 0), pick[..., None], -1)[..., 0]
    exact = np.minimum(exact, np.nextafter(1.0, 0.0))
    u[0::4] = exact[0::4]
    u[1::4] = np.nextafter(exact[1::4], 0.0)
    u[2, :, :] = 0.0
    u[3, :, :] = np.nextafter(1.0, 0.0)
    return u


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_cdf_draws_equal_dense_searchsorted(family):
    mdp = FAMILIES[family]()
    dense = cumulative(mdp.P)  # the dense table every number used to come from
    table = next_state_table(mdp.transitions, "cdf")
    uniforms = _edge_uniforms(dense, np.random.default_rng(0), 40)
    out = np.empty(uniforms.shape, dtype=np.int64)
    generative_next_states(table.kind, table.next, table.value, table.alias, uniforms, out)
    S, A = mdp.num_states, mdp.num_actions
    expected = np.empty_like(out)
    for s in range(S):
        for a in range(A):
            expected[:, s, a] = np.searchsorted(dense[s, a], uniforms[:, s, a], side="right")
    np.testing.assert_array_equal(out, expected)
    # the stored values are the dense cumulative values at the successors, bit for bit
    real = mdp.transitions.prob > 0
    gathered = np.take_along_axis(dense, table.next, axis=-1)
    np.testing.assert_array_equal(table.value[real], gathered[real])
    # and converting a dense cdf array gives the same draws (the drivers' compatibility path)
    converted = as_next_state_table(dense)
    again = np.empty_like(out)
    generative_next_states(0, converted.next, converted.value, converted.alias, uniforms, again)
    np.testing.assert_array_equal(again, expected)


def _dense_async_reference(q, counts, reward, gamma, lr, P, policy, state, uniforms):
    """Asynchronous Q-learning in plain Python on the dense cumulative tables."""
    p_cdf, pi_cdf = cumulative(P), cumulative(policy)
    for u_action, u_next in uniforms:
        action = int(np.searchsorted(pi_cdf[state], u_action, side="right"))
        nxt = int(np.searchsorted(p_cdf[state, action], u_next, side="right"))
        target = reward[state, action] + gamma * q[nxt].max()
        q[state, action] = (1.0 - lr) * q[state, action] + lr * target
        counts[state, action] += 1
        state = nxt
    return state


@pytest.mark.parametrize("family", ["hand_made", "garnet", "riverswim", "taxi", "perturbed"])
def test_q_learning_on_sparse_tables_equals_the_dense_loop(family):
    mdp = FAMILIES[family]()
    S, A = mdp.num_states, mdp.num_actions
    policy = behavior_policy("dirichlet", S, A, agent=0, num_agents=1, seed=2, alpha=0.5)
    steps = 3000
    q, counts = np.zeros((S, A)), np.zeros((S, A), dtype=np.int64)
    final = run_async_q(q, counts, mdp.R, mdp.gamma, 0.3, next_state_table(mdp.transitions),
                        action_table(policy), 0, steps, np.random.default_rng(9))
    q_ref, counts_ref = np.zeros((S, A)), np.zeros((S, A), dtype=np.int64)
    uniforms = np.random.default_rng(9).random((steps, 2))
    final_ref = _dense_async_reference(q_ref, counts_ref, mdp.R, mdp.gamma, 0.3, mdp.P, policy,
                                       0, uniforms)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(counts, counts_ref)
    assert final == final_ref
    # synchronous steps and DASA's operator: sparse table vs the dense cdf array, same numbers
    q1, q2 = np.zeros((S, A)), np.zeros((S, A))
    run_sync_q(q1, mdp.R, mdp.gamma, 0.2, next_state_table(mdp.transitions), 5,
               np.random.default_rng(1))
    run_sync_q(q2, mdp.R, mdp.gamma, 0.2, cumulative(mdp.P), 5, np.random.default_rng(1))
    np.testing.assert_array_equal(q1, q2)
    g1, s1 = run_q_operator(q, mdp.R, mdp.gamma, next_state_table(mdp.transitions),
                            action_table(policy), 0, 200, np.random.default_rng(2))
    g2, s2 = run_q_operator(q, mdp.R, mdp.gamma, cumulative(mdp.P), cumulative(policy), 0, 200,
                            np.random.default_rng(2))
    np.testing.assert_array_equal(g1, g2)
    assert s1 == s2


def _old_dense_garnet(S, A, b, seed):
    """The original construction: dense argsort of S * A * S keys."""
    rng = np.random.default_rng(seed)
    successors = np.argsort(rng.random((S, A, S)), axis=-1)[..., :b]
    cuts = np.sort(rng.random((S, A, b - 1)), axis=-1)
    edges = np.concatenate([np.zeros((S, A, 1)), cuts, np.ones((S, A, 1))], axis=-1)
    P = np.zeros((S, A, S))
    np.put_along_axis(P, successors, np.diff(edges, axis=-1), axis=-1)
    return P, rng.random((S, A))


@pytest.mark.parametrize(("S", "A", "b", "seed"),
                         [(10, 3, 3, 0), (100, 10, 10, 1), (7, 2, 7, 3), (1, 1, 1, 0)])
def test_chunked_argsort_garnet_is_the_original_mdp(S, A, b, seed, monkeypatch):
    import flower_qlearn.mdp as mdp_module

    monkeypatch.setattr(mdp_module, "_KEY_CHUNK", 7 * A * S)  # several chunks, one ragged
    P, R = _old_dense_garnet(S, A, b, seed)
    mdp = garnet(S, A, b, seed=seed)
    np.testing.assert_array_equal(mdp.P, P)
    np.testing.assert_array_equal(mdp.R, R)


def test_floyd_garnet_has_b_distinct_uniform_successors():
    S, A, b = 50, 4, 6
    mdp = garnet(S, A, b, seed=0, successors="floyd")
    nxt = mdp.transitions.next
    assert np.all(np.diff(nxt, axis=-1) > 0)  # b distinct, sorted
    np.testing.assert_allclose(mdp.transitions.row_sums(), 1.0, atol=1e-12)
    # each state is a successor of about b / S of the rows: chi-square over many seeds
    hits = np.zeros(S)
    for seed in range(20):
        hits += np.bincount(garnet(S, A, b, seed=seed, successors="floyd").transitions.next
                            .ravel(), minlength=S)
    expected = hits.sum() / S
    statistic = float(((hits - expected) ** 2 / expected).sum())
    assert statistic < chi2.ppf(0.999, S - 1)


@pytest.mark.parametrize("build", [lambda: garnet(40, 3, 4, seed=2), lambda: riverswim(9),
                                   lambda: garnet(30, 2, 3, seed=1, successors="floyd")])
def test_sparse_and_dense_built_mdps_are_equal_and_give_the_same_q_star(build):
    sparse = build()
    dense = TabularMDP(np.array(sparse.P), sparse.R, sparse.gamma, sparse.initial, sparse.name)
    assert sparse == dense
    np.testing.assert_array_equal(solvers.optimal_q(sparse), solvers.optimal_q(dense))


@pytest.mark.parametrize("family", ["garnet", "riverswim", "taxi", "two_state"])
def test_sparse_solver_path_matches_the_dense_solver(family, monkeypatch):
    mdp = FAMILIES[family]()
    dense_q = solvers.optimal_q(mdp)
    monkeypatch.setattr(solvers, "DENSE_MAX_STATES", 0)  # force the sparse path
    sparse_q = solvers.optimal_q(mdp)
    np.testing.assert_allclose(sparse_q, dense_q, rtol=0, atol=1e-10)
    policy = behavior_policy("dirichlet", mdp.num_states, mdp.num_actions, agent=0,
                             num_agents=1, seed=0)
    sparse_v = solvers.policy_value(mdp, policy)
    monkeypatch.setattr(solvers, "DENSE_MAX_STATES", 10**9)
    np.testing.assert_allclose(sparse_v, solvers.policy_value(mdp, policy), rtol=0, atol=1e-10)


def test_sparse_solver_path_matches_pymdptoolbox(monkeypatch):
    mdptoolbox = pytest.importorskip("mdptoolbox.mdp")
    mdp = garnet(25, 3, 4, seed=8)
    reference = mdptoolbox.PolicyIteration(np.transpose(mdp.P, (1, 0, 2)), mdp.R, mdp.gamma)
    reference.run()
    monkeypatch.setattr(solvers, "DENSE_MAX_STATES", 0)
    q = solvers.optimal_q(mdp)
    np.testing.assert_allclose(q.max(axis=1), np.asarray(reference.V), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(q.argmax(axis=1), np.asarray(reference.policy))


def _chi_square_statistic(draws: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    counts = np.bincount(draws, minlength=probs.size)
    support = probs > 0
    assert counts[~support].sum() == 0  # never a zero-probability outcome
    expected = draws.size * probs[support]
    return float(((counts[support] - expected) ** 2 / expected).sum()), int(support.sum()) - 1


def test_alias_draws_follow_P_and_a_wrong_table_fails():
    mdp = garnet(6, 3, 5, seed=3)
    table = next_state_table(mdp.transitions, "alias")
    assert table.kind == SAMPLER_ALIAS
    n = 60_000
    uniforms = np.random.default_rng(11).random((n, 6, 3))
    out = np.empty(uniforms.shape, dtype=np.int64)
    generative_next_states(table.kind, table.next, table.value, table.alias, uniforms, out)
    threshold = chi2.ppf(1 - 1e-4, 4)
    for s in range(6):
        for a in range(3):
            stat, dof = _chi_square_statistic(out[:, s, a], mdp.P[s, a])
            assert stat < chi2.ppf(1 - 1e-4, dof), (s, a, stat)
    # the test has power: the same draws from a table built for another row fail
    wrong_threshold, wrong_alias = alias_rows(mdp.transitions.prob[:, :, ::-1])
    bad = np.empty_like(out)
    generative_next_states(SAMPLER_ALIAS, table.next, wrong_threshold, wrong_alias, uniforms, bad)
    stat, _ = _chi_square_statistic(bad[:, 0, 0], mdp.P[0, 0])
    assert stat > 10 * threshold


def test_alias_action_table_follows_the_policy():
    policy = behavior_policy("dirichlet", 4, 6, agent=0, num_agents=1, seed=1, alpha=0.3)
    table = action_table(policy, "alias")
    P = np.zeros((4, 6, 4))
    P[:, :, 0] = 1.0
    mdp = TabularMDP(P, np.zeros((4, 6)), 0.5, np.full(4, 0.25))
    counts = np.zeros((4, 6), dtype=np.int64)
    # every transition returns to state 0: counts[0] are the action draws of pi(. | 0)
    run_async_q(np.zeros((4, 6)), counts, mdp.R, 0.5, 0.1,
                next_state_table(mdp.transitions, "alias"), table, 0, 50_000,
                np.random.default_rng(3))
    stat, dof = _chi_square_statistic(np.repeat(np.arange(6), counts[0]), policy[0])
    assert stat < chi2.ppf(1 - 1e-4, dof)


def test_alias_q_learning_converges_to_q_star():
    mdp = garnet(5, 2, 3, gamma=0.9, seed=0)
    policy = behavior_policy("uniform", 5, 2, agent=0, num_agents=1, seed=0)
    p, pi = next_state_table(mdp.transitions, "alias"), action_table(policy, "alias")
    q, counts = np.zeros((5, 2)), np.zeros((5, 2), dtype=np.int64)
    rng, state = np.random.default_rng(0), 0
    for lr in (0.05, 0.01, 0.002, 0.0005, 0.0002):
        steps = int(10 / (lr * (1 - mdp.gamma))) * 10
        state = run_async_q(q, counts, mdp.R, mdp.gamma, lr, p, pi, state, steps, rng)
    assert np.max(np.abs(q - solvers.optimal_q(mdp))) < 0.05


def test_one_shared_table_per_mdp_and_own_tables_when_perturbed():
    settings = fq_config.compose(["mdp=garnet", "num_clients=3"])
    envs = [agent_env(settings, k) for k in range(3)]
    assert envs[0].p_cdf is envs[1].p_cdf is envs[2].p_cdf  # one read-only table
    assert not envs[0].p_cdf.value.flags.writeable
    alias = agent_env(fq_config.compose(["mdp=garnet", "client.sampler=alias"]), 0)
    assert alias.p_cdf.kind == SAMPLER_ALIAS and alias.pi_cdf.kind == SAMPLER_ALIAS
    hetero = fq_config.compose(["mdp=garnet", "num_clients=2", "client.heterogeneity=0.5"])
    assert agent_env(hetero, 0).p_cdf is not agent_env(hetero, 1).p_cdf


@pytest.mark.parametrize(("override", "field"), [
    ("client.sampler=fast", "client.sampler"),
    ("mdp.successors=random", "mdp.successors"),
])
def test_bad_sampler_or_successors_is_refused_by_a_rule(override, field):
    base = ["mdp=garnet"] if field.startswith("mdp") else []
    with pytest.raises(schema.ConfigError, match=field):
        fq_config.compose([*base, override])


def test_perturbing_a_kernel_too_large_for_dense_is_refused():
    with pytest.raises(schema.ConfigError, match="client.heterogeneity"):
        fq_config.compose(["mdp=garnet", "mdp.num_states=5000", "mdp.num_actions=10",
                           "client.heterogeneity=0.1"])


def test_transitions_refuse_a_dense_copy_too_large():
    big = Transitions(np.zeros((20_000, 1, 1), dtype=np.int64), np.ones((20_000, 1, 1)), 20_000)
    with pytest.raises(MemoryError, match="dense P"):
        big.to_dense()


@pytest.mark.slow
def test_garnet_with_100k_states_builds_and_solves_within_memory():
    code = textwrap.dedent("""
        import resource
        from flower_qlearn.mdp import garnet
        from flower_qlearn.samplers import next_state_table
        from flower_qlearn.solvers import optimal_q
        mdp = garnet(100_000, 10, 10, seed=0, successors="floyd")
        next_state_table(mdp.transitions)
        q = optimal_q(mdp)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, q.shape, float(q.max()))
    """)
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code],
                         capture_output=True, text=True, check=True, timeout=600).stdout.split()
    peak_mib = int(out[0]) / 1024
    # The bound for a whole run (K = 20 agents included) is 2 GiB; building and solving
    # alone measured 0.9-1.1 GiB (the fresh CI venv: 1132 MiB), a dense table would need 745 GiB.
    assert peak_mib < 2048, f"peak RSS {peak_mib:.0f} MiB"
    assert 0.0 < float(out[-1]) <= 10.0  # Q* in [0, 1 / (1 - gamma)]


# ---------------------------------------------------------------- sparse end to end (chains)


@pytest.mark.parametrize("family", ["hand_made", "garnet", "garnet_floyd", "riverswim", "taxi"])
def test_markov_chain_on_the_sparse_lists_walks_the_dense_trajectory(family):
    from flower_qlearn.sampling import MarkovChain

    mdp = FAMILIES[family]()
    policy = behavior_policy("dirichlet", mdp.num_states, mdp.num_actions, agent=0,
                             num_agents=1, seed=4)
    dense = MarkovChain(np.array(mdp.P), policy, 0, np.random.default_rng(9))
    sparse = MarkovChain(mdp.transitions, policy, 0, np.random.default_rng(9))
    for steps in (1, 37, 500):
        for a, b in zip(dense.sample(steps), sparse.sample(steps), strict=True):
            np.testing.assert_array_equal(a, b)
    restored = MarkovChain.restore(mdp.transitions, policy, sparse.snapshot())
    for a, b in zip(dense.sample(50), restored.sample(50), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["garnet", "two_state", "maze"])
@pytest.mark.parametrize("members", [1, 3, 20])
def test_averaged_environment_is_the_dense_mean_bit_for_bit(name, members):
    from flower_qlearn.families import averaged_mdp, member_settings

    sizes = {"garnet": {"num_states": 30, "num_actions": 3, "branching": 4},
             "two_state": {"num_actions": 4}, "maze": {}}[name]
    family = [make_mdp(**member_settings({"name": name, "gamma": 0.9, "seed": 5, **sizes}, k))
              for k in range(members)]
    average = averaged_mdp(family)
    assert average._dense is None  # built from the sparse lists
    np.testing.assert_array_equal(average.P, np.mean([m.P for m in family], axis=0))
    np.testing.assert_array_equal(average.R, np.mean([m.R for m in family], axis=0))


@pytest.mark.parametrize("features", ["random", "tabular"])
def test_td_problem_on_the_sparse_path_matches_the_dense_one(features, monkeypatch):
    from flower_qlearn import td

    mdp = garnet(40, 2, 3, seed=2, gamma=0.8)
    policy = np.full((40, 2), 0.5)
    phi = td.feature_matrix(features, 40, 3 if features == "random" else None, seed=0)
    dense = td.td_problem(mdp, policy, phi)
    monkeypatch.setattr(solvers, "DENSE_MAX_STATES", 0)
    sparse = td.td_problem(mdp, policy, phi)
    assert not isinstance(sparse.chain, np.ndarray)  # a CSR chain: no (S, S) array
    np.testing.assert_allclose(sparse.mu, dense.mu, rtol=0, atol=1e-13)
    np.testing.assert_allclose(sparse.A, dense.A, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sparse.theta_star, dense.theta_star, rtol=1e-9, atol=1e-11)
    assert sparse.omega == pytest.approx(dense.omega, rel=1e-9)


# S = 6000, A = 3: a dense P has 1.08e8 entries, beyond DENSE_LIMIT, so any dense read fails.
_LARGE = ["mdp=garnet", "mdp.num_states=6000", "mdp.num_actions=3", "mdp.branching=3",
          "figures=false"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "metric"),
    [
        (["+experiment=avg_garnet", "strategy.num_epochs=2"], "gain_error"),
        (["+experiment=dasa_td_speedup", "num_rounds=3", "strategy.num_features=3"],
         "theta_error"),
        (["client.environment=own", "num_clients=2", "num_rounds=2", "client.local_steps=10"],
         "q_error"),
    ],
    ids=["average_reward", "dasa_td_linear", "own_environments"],
)
def test_runs_beyond_a_dense_kernel_use_the_sparse_path(overrides, metric, tmp_path):
    from flower_qlearn import run_experiment

    result = run_experiment([*overrides, *_LARGE, f"output_dir={tmp_path}"])
    values = [row[metric] for row in result.history]
    assert len(values) >= 2 and all(np.isfinite(v) and v >= 0 for v in values)


@pytest.mark.parametrize("family", ["hand_made", "garnet_floyd", "riverswim", "taxi"])
def test_generative_model_on_the_sparse_lists_draws_the_dense_samples(family):
    from flower_qlearn.sampling import GenerativeModel

    mdp = FAMILIES[family]()
    dense = GenerativeModel(np.array(mdp.P)).sample(np.random.default_rng(3), 40)
    sparse = GenerativeModel(mdp.transitions).sample(np.random.default_rng(3), 40)
    np.testing.assert_array_equal(dense, sparse)
