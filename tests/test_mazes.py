"""Heterogeneous environments: random mazes, each agent on its own, the global objective, and
the two-phase step size (docs/beyond_the_papers.md, item 2).

Each rule is checked against an independent computation: a kernel worked out by hand, value
iteration written out in NumPy, and a bare re-implementation of synchronous FedQ on the
agents' own mazes with the round's step size.
"""

from __future__ import annotations

import numpy as np
import pytest

from flower_qlearn import config as fq_config
from flower_qlearn import run_experiment
from flower_qlearn.agent import agent_env, objective_mdp, round_rng
from flower_qlearn.families import averaged_mdp, member_seed, member_settings
from flower_qlearn.kernels import run_sync_q
from flower_qlearn.mazes import maze_kernel, random_maze
from flower_qlearn.mdp import make_mdp
from flower_qlearn.schema import ConfigError
from flower_qlearn.solvers import optimal_q
from flower_qlearn.step_sizes import round_learning_rate, two_phase_step_size


def bare_value_iteration(P: np.ndarray, R: np.ndarray, gamma: float) -> np.ndarray:
    """Q* by plain value iteration to machine precision (independent of solvers.optimal_q)."""
    q = np.zeros(R.shape)
    for _ in range(100_000):
        new = R + gamma * P @ q.max(axis=1)
        if np.abs(new - q).max() < 1e-13:
            return new
        q = new
    raise AssertionError("value iteration did not converge")


def test_maze_kernel_matches_a_hand_computed_2x2_maze():
    # 2x2, no walls: cells 0 1 / 2 3, goal 3. Clean moves from 0: left->0, up->0, right->1,
    # down->2. With slip 0.2 every action adds 0.2 * (1/4) to each of those four outcomes.
    P = maze_kernel(np.zeros((2, 2), dtype=bool), slip=0.2)
    slip_part = {0: 0.05 * 2, 1: 0.05, 2: 0.05}
    right = dict(slip_part)
    right[1] += 0.8
    np.testing.assert_allclose(P[0, 2, :3], [right[0], right[1], right[2]], atol=1e-15)
    down = dict(slip_part)
    down[2] += 0.8
    np.testing.assert_allclose(P[0, 3, :3], [down[0], down[1], down[2]], atol=1e-15)
    np.testing.assert_allclose(P[0, 0, 0], 0.8 + 0.1, atol=1e-15)  # left bumps the border
    np.testing.assert_array_equal(P[3, :, 0], 1.0)  # the goal resets to the start
    # a wall in cell 1 blocks the move right from 0: the agent stays
    walls = np.array([[False, True], [False, False]])
    assert maze_kernel(walls, slip=0.0)[0, 2, 0] == 1.0


def test_random_mazes_are_solvable_share_rewards_and_differ_in_kernels():
    mazes = [random_maze(25, wall_density=0.3, slip=0.1, gamma=0.9, seed=s) for s in range(20)]
    for maze in mazes:
        np.testing.assert_allclose(maze.P.sum(axis=-1), 1.0, atol=1e-12)
        # the goal is reachable: the start's optimal value is positive (reward only at the goal)
        assert optimal_q(maze)[0].max() > 0
        np.testing.assert_array_equal(maze.R, mazes[0].R)
    assert len({m.P.tobytes() for m in mazes}) == 20
    assert random_maze(25, seed=3) == random_maze(25, seed=3)


def test_global_objective_is_q_star_of_the_averaged_kernel():
    settings = fq_config.settings(fq_config.compose(
        ["mdp=maze", "client.environment=own", "num_clients=4", "mdp.gamma=0.9"]))
    members = [make_mdp(**member_settings(settings["mdp"], k)) for k in range(4)]
    P_bar = np.mean([m.P for m in members], axis=0)
    expected = bare_value_iteration(P_bar, members[0].R, 0.9)
    np.testing.assert_allclose(optimal_q(objective_mdp(settings)), expected, atol=1e-9)
    # each agent really is on its own maze, seeded by (mdp.seed, k)
    for k in range(4):
        env = agent_env(settings, k)
        assert env.mdp == random_maze(25, 0.2, 0.1, 0.9, seed=member_seed(0, k))
    # and the objective is not any single member's
    assert all(np.abs(optimal_q(m) - expected).max() > 1e-3 for m in members)
    with pytest.raises(ValueError, match="sizes or gamma"):
        averaged_mdp([members[0], random_maze(36, seed=1, gamma=0.9)])


def test_two_phase_step_size_by_hand():
    assert two_phase_step_size(0.5, 0.01, 400, 399) == 0.5
    assert two_phase_step_size(0.5, 0.01, 400, 400) == 0.01
    client = {"lr_schedule": "two_phase", "learning_rate": 0.5, "lr_after": 0.01,
              "lr_switch_step": 100, "local_steps": 50}
    # rounds start after 0, 50, 100, 150 local steps: phase 2 from round 3 on
    assert [round_learning_rate(client, r) for r in (1, 2, 3, 4)] == [0.5, 0.5, 0.01, 0.01]
    constant = {**client, "lr_schedule": "constant"}
    assert round_learning_rate(constant, 7) == 0.5


def bare_fedq_own_mazes(cfg, num_rounds: int) -> np.ndarray:
    """Synchronous FedQ, equal averaging, agent k on maze member k, two-phase step size.

    The agents' samplers come from ``agent_env`` (as in tests/test_pipeline.py), after checking
    that each one's MDP is the maze of seed ``member_seed(mdp.seed, k)`` built directly.
    """
    s = fq_config.settings(cfg)
    c = s["client"]
    envs = [agent_env(s, k) for k in range(s["num_clients"])]
    for k, env in enumerate(envs):
        m = s["mdp"]
        assert env.mdp == random_maze(m["num_states"], m["wall_density"], m["slip"],
                                      m["gamma"], seed=member_seed(m["seed"], k))
    q_bar = np.zeros((25, 4))
    for r in range(1, num_rounds + 1):
        steps_before = (r - 1) * c["local_steps"]
        lr = c["learning_rate"] if steps_before < c["lr_switch_step"] else c["lr_after"]
        tables = []
        for k, env in enumerate(envs):
            q = q_bar.copy()
            run_sync_q(q, env.mdp.R, env.mdp.gamma, lr, env.p_cdf, c["local_steps"],
                       round_rng(s["seed"], k, r))
            tables.append(q)
        q_bar = np.mean(tables, axis=0)
    return q_bar


def test_fedq_on_own_mazes_with_two_phase_equals_bare_reimplementation(tmp_path):
    overrides = ["mdp=maze", "client=generative", "client.environment=own", "num_clients=3",
                 "client.local_steps=4", "client.learning_rate=0.5", "mdp.gamma=0.9",
                 "client.lr_schedule=two_phase", "client.lr_switch_step=8",
                 "client.lr_after=0.05", "num_rounds=5", "log_every=0", "figures=false",
                 f"output_dir={tmp_path}"]
    result = run_experiment(overrides)
    expected = bare_fedq_own_mazes(fq_config.compose(overrides), 5)
    np.testing.assert_allclose(result.q_table, expected, rtol=0, atol=1e-12)
    members = [make_mdp(**member_settings(result.summary["config"]["mdp"], k)) for k in range(3)]
    q_star = bare_value_iteration(np.mean([m.P for m in members], axis=0), members[0].R, 0.9)
    assert result.history[-1]["q_error"] == pytest.approx(np.abs(expected - q_star).max(), 1e-9)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["mdp=maze", "mdp.wall_density=1.0"], "mdp.wall_density"),
        (["mdp=maze", "mdp.slip=-0.1"], "mdp.slip"),
        (["mdp=maze", "mdp.num_states=24"], "mdp.num_states"),
        (["mdp=riverswim", "client.environment=own"], "mdp.name"),
        (["client.environment=mine"], "client.environment"),
        (["client.lr_schedule=two_phase", "client.lr_after=0"], "client.lr_after"),
        (["client.lr_schedule=cosine"], "client.lr_schedule"),
        (["engine=batched", "client.lr_schedule=two_phase"], "client.lr_schedule"),
    ],
)
def test_bad_values_are_refused_with_one_line_naming_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        fq_config.compose(overrides)
    message = str(info.value)
    assert field in message and "\n" not in message
