"""The attack simulator (flower_qlearn/attacks.py): each attack against its definition, the
ranges against the server's own bounds, and the ClientApp path with real Flower messages: an
attacker's reply is in bound, so the server's validation accepts it."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from flower_helpers import instruction
from flower_qlearn.strategies.average_reward.strategy import AverageRewardQ
from flower_qlearn.strategies.base import VALUE_FLOOR, value_bound
from flower_qlearn.strategies.dasa.spec import operator_bound
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from flower_qlearn import attacks, run_experiment
from flower_qlearn import config as fq_config
from flower_qlearn.client_app import handle_train


def _range(bound):
    return (-bound, bound) if np.isscalar(bound) else tuple(bound)


X = np.array([[0.0, 1.0, -2.0], [3.5, 7.0, -7.0]])


def test_each_attack_against_its_definition():
    lo, hi = -7.0, 7.0
    np.testing.assert_array_equal(attacks.max_value(X, lo, hi), np.full(X.shape, 7.0))
    np.testing.assert_array_equal(attacks.min_value(X, lo, hi), np.full(X.shape, -7.0))
    np.testing.assert_array_equal(attacks.sign_flip(X, lo, hi), -X)
    # An asymmetric range reflects about its middle and stays inside it.
    flipped = attacks.sign_flip(np.array([0.0, 2.0, 10.0]), 0.0, 10.0)
    np.testing.assert_array_equal(flipped, np.array([10.0, 8.0, 0.0]))
    np.testing.assert_array_equal(attacks.sign_flip(X, -np.inf, np.inf), -X)
    rng = attacks.attack_rng(5, 3, 2)
    drawn = attacks.random_values(X, lo, hi, rng)
    expected = np.random.default_rng(
        np.random.SeedSequence([5, 3, 2, attacks.ATTACK_STREAM])
    ).uniform(lo, hi, size=X.shape)
    np.testing.assert_array_equal(drawn, expected)
    assert np.all((drawn >= lo) & (drawn < hi))
    assert attacks.attack_values("none", X, (lo, hi), rng) is X


def test_accepted_ranges_are_the_servers_bounds():
    gamma = 0.9
    assert attacks.accepted_range("q_learning", gamma) == (VALUE_FLOOR, value_bound(gamma))
    assert attacks.accepted_range("q_operator", gamma) == _range(operator_bound(gamma))
    default = inspect.signature(AverageRewardQ).parameters["value_bound"].default
    assert attacks.accepted_range("average_reward", gamma) == (VALUE_FLOOR, default)
    assert attacks.accepted_range("td_operator", gamma) == (-np.inf, np.inf)


def test_apply_attack_touches_only_the_attackers_values():
    settings = {"seed": 0, "mdp": {"gamma": 0.9},
                "client": {"attack": "max_value", "attack_agents": [1]}}
    arrays = {"q": X.copy(), "counts": np.array([[1, 2, 3], [4, 5, 6]])}
    honest = attacks.apply_attack(arrays, settings, "q_learning", 0, 1)
    assert honest["q"] is arrays["q"] and honest["counts"] is arrays["counts"]
    attacked = attacks.apply_attack(arrays, settings, "q_learning", 1, 1)
    np.testing.assert_array_equal(attacked["q"], np.full(X.shape, value_bound(0.9)))
    assert attacked["counts"] is arrays["counts"]  # visit counts stay honest


def _context(partition_id: int) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": partition_id},
                   state=RecordDict(), run_config={})


def _instruction(config: dict, shape=(2, 10)):
    content = RecordDict({"arrays": ArrayRecord({"q": Array(np.zeros(shape))}),
                          "config": ConfigRecord(config)})
    return instruction(content, node_id=7)


@pytest.mark.parametrize("attack", ["max_value", "min_value", "random", "sign_flip"])
def test_an_attackers_reply_is_in_bound_and_accepted_by_validation(attack, flower_identity):
    config = {"task": "q_learning", "server-round": 1, "client.attack": attack,
              "client.attack_agents": [1], "client.local_steps": 10, "mdp.gamma": 0.9}
    honest = handle_train(_instruction(config), _context(0))
    attacker = handle_train(_instruction(config), _context(1))
    assert not honest.has_error() and not attacker.has_error()
    lo, hi = attacks.accepted_range("q_learning", 0.9)
    q = attacker.content["arrays"]["q"].numpy()
    rng = attacks.attack_rng(0, 1, 1)
    clean = handle_train(_instruction({**config, "client.attack": "none"}), _context(1))
    expected = attacks.attack_values(attack, clean.content["arrays"]["q"].numpy(), (lo, hi), rng)
    np.testing.assert_array_equal(q, expected)
    np.testing.assert_array_equal(attacker.content["arrays"]["counts"].numpy(),
                                  clean.content["arrays"]["counts"].numpy())
    # Agent 0 is not an attacker: its reply is the honest one.
    np.testing.assert_array_equal(honest.content["arrays"]["q"].numpy(),
                                  handle_train(_instruction({**config, "client.attack": "none"}),
                                               _context(0)).content["arrays"]["q"].numpy())
    # In bound: the server's check accepts it (a whole run with an attacker rejects nothing:
    # tests/test_robust.py::test_trimmed_mean_keeps_a_poisoned_run_near_the_honest_one).
    assert np.all((q >= lo) & (q <= hi))


@pytest.mark.parametrize(
    ("key", "value"), [("client.attack", "flood"), ("client.attack_agents", [-1])]
)
def test_a_bad_attack_key_is_an_error_reply_naming_it(key, value, flower_identity):
    config = {"task": "q_learning", "server-round": 1, key: value}
    answer = handle_train(_instruction(config), _context(0))
    assert answer.has_error() and key in answer.error.reason


@pytest.mark.parametrize(
    "overrides",
    [["client.attack=flood"], ["client.attack_agents=[-2]"],
     ["strategy=dasa", "strategy.operator=td_linear", "client.attack=max_value",
      "mdp=garnet", "strategy.step_size=null"]],
)
def test_bad_attack_settings_are_refused_before_the_run(overrides, tmp_path):
    with pytest.raises(fq_config.ConfigError) as info:
        run_experiment(overrides + [f"output_dir={tmp_path}"])
    assert "client.attack" in str(info.value) and "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())
