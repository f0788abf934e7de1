"""Monte-Carlo evaluation of the greedy policy in the real Gymnasium environment
(docs/beyond_the_papers.md item 6).

The exact finite-horizon return from the tabular model is checked against a backward recursion
written directly on Gymnasium's own table ``env.unwrapped.P`` (raw rewards, ``done`` flags: no
rescaling, no absorbing states), and the Monte-Carlo estimate against that exact value within
its confidence interval, on fixed policies.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from flower_qlearn import config as fq_config
from flower_qlearn import run_experiment
from flower_qlearn.gym_mdp import _resolve_env_id
from flower_qlearn.mc_eval import (
    PolicyEvaluator,
    ci_half_width,
    episode_returns,
    exact_return,
    gym_spec,
)
from flower_qlearn.mdp import make_mdp
from flower_qlearn.schema import ConfigError
from flower_qlearn.solvers import greedy_policy, optimal_q

MDPS = {
    "frozenlake": {"name": "frozenlake", "gamma": 0.95, "terminal": "absorbing",
                   "map_name": "4x4", "is_slippery": True},
    "taxi": {"name": "taxi", "gamma": 0.95, "terminal": "absorbing"},
    "cliffwalking": {"name": "cliffwalking", "gamma": 0.95, "terminal": "absorbing"},
}


def table_return(mdp_settings: dict, policy: np.ndarray, horizon: int) -> float:
    """E[sum of raw rewards over at most ``horizon`` steps], by backward recursion on env.P."""
    env_id, kwargs = gym_spec(mdp_settings)
    env = gymnasium.make(_resolve_env_id(env_id, gymnasium.registry), **kwargs)
    table, start = env.unwrapped.P, env.unwrapped.initial_state_distrib
    env.close()
    value = np.zeros(len(table))
    for _ in range(horizon):
        value = np.array([
            sum(p * (r + (0.0 if done else value[nxt])) for p, nxt, r, done in table[s][policy[s]])
            for s in range(len(table))
        ])
    return float(np.dot(start, value))


def policies(mdp_settings: dict) -> dict[str, np.ndarray]:
    mdp = make_mdp(**mdp_settings)
    rng = np.random.default_rng(1)
    return {"optimal": greedy_policy(optimal_q(mdp)),
            "random": rng.integers(mdp.num_actions, size=mdp.num_states)}


@pytest.mark.parametrize("name", list(MDPS))
def test_exact_return_equals_recursion_on_gymnasium_table(name):
    settings = MDPS[name]
    evaluator = PolicyEvaluator(settings, make_mdp(**settings), 1, 1, 100, 0)
    for policy in policies(settings).values():
        exact = exact_return(evaluator.mdp, policy, evaluator.r_min, evaluator.span, 60)
        assert exact == pytest.approx(table_return(settings, policy, 60), abs=1e-9)


@pytest.mark.parametrize("name", ["frozenlake", "taxi"])
def test_monte_carlo_estimate_agrees_with_exact_value_within_its_ci(name):
    settings = MDPS[name]
    evaluator = PolicyEvaluator(settings, make_mdp(**settings), 3000, 1, 100, seed=0)
    for label, policy in policies(settings).items():
        returns = episode_returns(evaluator.env, policy, 3000, seed=123)
        exact = table_return(settings, policy, 100)
        half = ci_half_width(returns)  # Student-t 95%: the seeds are fixed, so no flakiness
        assert abs(returns.mean() - exact) <= half, (label, returns.mean(), exact, half)
        assert half < 0.05 * max(1.0, abs(exact)), label  # and the interval is informative


def test_per_round_metric_every_n_rounds_in_a_federated_run(tmp_path):
    result = run_experiment(["mdp=frozenlake", "client=generative", "num_clients=2",
                             "num_rounds=10", "client.local_steps=20", "mc_episodes=200",
                             "mc_every=5", "log_every=0", "figures=false",
                             f"output_dir={tmp_path}"])
    rows = {row["round"]: row for row in result.history}
    assert [r for r, row in rows.items() if row.get("mc_success_rate") is not None] == [5, 10]
    settings = fq_config.settings(fq_config.compose(["mdp=frozenlake"]))
    evaluator = PolicyEvaluator(settings["mdp"], make_mdp(**settings["mdp"]), 200, 5, 100, 0)
    again = evaluator(10, result.q_table)
    for key in ("mc_success_rate", "mc_success_rate_ci", "exact_success_rate"):
        assert rows[10][key] == pytest.approx(again[key], abs=0, rel=1e-15)
    assert rows[10]["exact_success_rate"] == pytest.approx(
        table_return(settings["mdp"], greedy_policy(result.q_table), 100), abs=1e-9)


def test_off_by_default(tmp_path):
    result = run_experiment(["mdp=frozenlake", "num_clients=2", "num_rounds=2", "log_every=0",
                             "figures=false", f"output_dir={tmp_path}"])
    assert not any(key.startswith("mc_") and value is not None
                   for key, value in result.history[-1].items())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["mc_episodes=10"], "mc_episodes"),  # two_state has no Gymnasium environment
        (["mdp=taxi", "mdp.terminal=reset", "mc_episodes=10"], "mc_episodes"),
        (["mdp=taxi", "mc_episodes=-1"], "mc_episodes"),
        (["mdp=taxi", "mc_episodes=5", "mc_every=0"], "mc_every"),
        (["mdp=taxi", "mc_episodes=5", "mc_max_steps=0"], "mc_max_steps"),
        (["mdp=taxi", "mc_episodes=5", "engine=batched"], "mc_episodes"),
    ],
)
def test_bad_values_are_refused_with_one_line(overrides, field):
    with pytest.raises(ConfigError) as info:
        fq_config.compose(overrides)
    assert field in str(info.value) and "\n" not in str(info.value)
