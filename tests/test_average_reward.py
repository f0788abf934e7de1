"""Tests for federated average-reward Q-learning (ALGORITHMS.md section 5).

The schedule is checked against epochs written out by hand, the aggregation against a
hand-computed mean, and a whole run through the real Flower apps against an independent NumPy
re-implementation of the algorithm fed the same random draws (and against ``rho*``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from flower_helpers import CallbackGrid, reply
from flower_qlearn.strategies import AverageRewardQ, EpochSchedule, equal_average
from flower_qlearn.strategies.average_reward import build as build_average_reward
from flwr.app import Array, ArrayRecord, ConfigRecord

from flower_qlearn import run_experiment
from flower_qlearn.config import ConfigError, compose
from flower_qlearn.mdp import TabularMDP, make_mdp
from flower_qlearn.sampling import GenerativeModel
from flower_qlearn.solvers import NonConstantGainError, optimal_gain

# ---------------------------------------------------------------------------
# The schedule, by hand
# ---------------------------------------------------------------------------


def test_polynomial_schedule_by_hand():
    # K = 1, c_T = c_eta = 1: T_e = (e+1)^2, eta_e = log(T_e + 1) / T_e, C_e = {T_e}.
    s = EpochSchedule("polynomial", num_epochs=3, num_clients=1, c_T=1.0, c_eta=1.0)
    assert [s.one_minus_gamma(e) for e in (1, 2, 3)] == [1 / 2, 1 / 3, 1 / 4]
    np.testing.assert_allclose([s.gamma(e) for e in (1, 2, 3)], [1 / 2, 2 / 3, 3 / 4], rtol=1e-15)
    assert [s.epoch_length(e) for e in (1, 2, 3)] == [4, 9, 16]
    assert [s.communication_steps(e).tolist() for e in (1, 2, 3)] == [[4], [9], [16]]
    assert s.num_rounds == 3 and s.total_steps == 29
    rounds = list(s)
    assert [(p.round, p.epoch, p.step_offset, p.num_steps, p.epoch_end) for p in rounds] == [
        (1, 1, 0, 4, True),
        (2, 2, 0, 9, True),
        (3, 3, 0, 16, True),
    ]
    for p, (t_e, gamma) in zip(rounds, [(4, 0.5), (9, 2 / 3), (16, 0.75)], strict=True):
        np.testing.assert_allclose(p.step_sizes, np.full(t_e, math.log(t_e + 1) / t_e), rtol=1e-15)
        assert p.gamma == pytest.approx(gamma, abs=1e-15)


def test_polynomial_schedule_constants_and_agents():
    # K = 4, c_T = 2, c_eta = 0.5: T_e = ceil(2 (e+1)^2 / 4) = 2, 5, 8.
    s = EpochSchedule("polynomial", num_epochs=3, num_clients=4, c_T=2.0, c_eta=0.5)
    assert [s.epoch_length(e) for e in (1, 2, 3)] == [2, 5, 8]
    np.testing.assert_allclose(s.period(1).step_sizes, [0.5 * math.log(3) / 2] * 2, rtol=1e-15)
    np.testing.assert_allclose(s.period(3).step_sizes, [0.5 * math.log(9) / 8] * 8, rtol=1e-15)
    # The step size is capped at 1: T_1 = 1 gives log(2) c_eta = 6.93 without the cap.
    big = EpochSchedule("polynomial", num_epochs=1, num_clients=4, c_eta=10.0)
    assert big.epoch_length(1) == 1 and big.period(1).step_sizes.tolist() == [1.0]
    # Sanity counts of ALGORITHMS.md: 60 epochs give 77k, 19k, 4.9k steps for K = 1, 4, 16.
    totals = [EpochSchedule("polynomial", 60, k).total_steps for k in (1, 4, 16)]
    assert totals == [77530, 19405, 4877]
    assert all(EpochSchedule("polynomial", 60, k).num_rounds == 60 for k in (1, 4, 16))


def test_geometric_schedule_by_hand():
    # K = 1, c_T = c_eta = 1. Epoch 1: 1-gamma = 1/2, T = 8, tau = 8 // 2 = 4, C = {4, 8},
    # eta_t = 1 / (1 + t/2). Epoch 2: 1-gamma = 1/4, T = 64, tau = 16, eta_t = 1 / (1 + t/4).
    s = EpochSchedule("geometric", num_epochs=2, num_clients=1, c_T=1.0, c_eta=1.0)
    assert (s.gamma(1), s.gamma(2)) == (0.5, 0.75)
    assert (s.epoch_length(1), s.epoch_length(2)) == (8, 64)
    assert s.communication_steps(1).tolist() == [4, 8]
    assert s.communication_steps(2).tolist() == [16, 32, 48, 64]
    assert s.num_rounds == 6 and s.total_steps == 72
    p1, p2, p3 = s.period(1), s.period(2), s.period(3)
    np.testing.assert_allclose(p1.step_sizes, [2 / 3, 1 / 2, 2 / 5, 1 / 3], rtol=1e-15)
    np.testing.assert_allclose(p2.step_sizes, [2 / 7, 1 / 4, 2 / 9, 1 / 5], rtol=1e-15)
    assert (p1.epoch, p1.step_offset, p1.epoch_end) == (1, 0, False)
    assert (p2.epoch, p2.step_offset, p2.epoch_end) == (1, 4, True)
    assert (p3.epoch, p3.step_offset, p3.num_steps, p3.gamma) == (2, 0, 16, 0.75)
    np.testing.assert_allclose(p3.step_sizes, [4 / (4 + t) for t in range(1, 17)], rtol=1e-15)
    np.testing.assert_allclose(s.period(6).step_sizes, [4 / (4 + t) for t in range(49, 65)])


def test_geometric_schedule_uneven_last_period():
    # K = 3, c_eta = 2. Epoch 1: T = ceil(8/3) = 3, tau = max(1, 3 // 2) = 1, C = {1, 2, 3},
    # eta_t = 1 / (1 + (t/2) / 6). Epoch 2: T = ceil(64/3) = 22, tau = 22 // 4 = 5,
    # C = {5, 10, 15, 20, 22}: the last period has 2 steps; eta_t = 1 / (1 + (t/4) / 6).
    s = EpochSchedule("geometric", num_epochs=2, num_clients=3, c_eta=2.0)
    assert s.communication_steps(1).tolist() == [1, 2, 3]
    assert s.communication_steps(2).tolist() == [5, 10, 15, 20, 22]
    table = [(p.epoch, p.step_offset, p.num_steps) for p in s]
    assert table == [(1, 0, 1), (1, 1, 1), (1, 2, 1)] + [(2, o, 5) for o in (0, 5, 10, 15)] + [
        (2, 20, 2)
    ]
    np.testing.assert_allclose(s.period(2).step_sizes, [12 / 14], rtol=1e-15)
    np.testing.assert_allclose(s.period(8).step_sizes, [24 / 45, 24 / 46], rtol=1e-15)


def test_epoch_length_is_exact_and_rounds_do_not_grow_with_k():
    # 8^e / K is a whole number for K = 4, 16 (e >= 2): no spurious +1 from float rounding.
    assert EpochSchedule("geometric", 6, 16).epoch_length(6) == 8**6 // 16
    assert EpochSchedule("geometric", 3, 4, c_T=0.5).epoch_length(3) == 64
    rounds = [EpochSchedule("geometric", 6, k).num_rounds for k in (1, 4, 16)]
    assert rounds[0] == 2 + 4 + 8 + 16 + 32 + 64
    assert max(rounds) - min(rounds) <= 1  # only epoch 1 (T_1 = 1 step for K = 16) differs


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        EpochSchedule("linear", 3, 1)
    with pytest.raises(ValueError, match="num_epochs"):
        EpochSchedule("polynomial", 0, 1)
    with pytest.raises(ValueError, match="num_clients"):
        EpochSchedule("polynomial", 3, 0)
    with pytest.raises(ValueError, match="c_T"):
        EpochSchedule("polynomial", 3, 1, c_T=0.0)
    with pytest.raises(ValueError, match="c_eta"):
        EpochSchedule("polynomial", 3, 1, c_eta=-1.0)
    with pytest.raises(ValueError, match="communication rounds"):
        EpochSchedule("geometric", 25, 1)
    s = EpochSchedule("polynomial", 3, 1)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="server_round"):
            s.period(bad)
    with pytest.raises(ValueError, match="steps"):
        s.step_sizes(1, [5])


# ---------------------------------------------------------------------------
# The Flower strategy: messages, aggregation, metrics, checkpoint state
# ---------------------------------------------------------------------------


def test_strategy_sends_schedule_and_averages_by_hand(flower_identity):
    schedule = EpochSchedule("geometric", num_epochs=2, num_clients=3, c_eta=1.0)
    strategy = AverageRewardQ(2, 2, schedule)
    local = {
        1: np.array([[0.1, 0.4], [0.7, 0.2]]),
        2: np.array([[0.4, 0.4], [0.1, 0.5]]),
        3: np.array([[0.7, 0.1], [0.4, 0.8]]),
        4: np.array([[0.0, 0.0], [0.0, 7.0]]),  # beyond the [0, 1] bound: rejected
    }

    def respond(message):
        node = message.metadata.dst_node_id
        return reply(message, {"q": local[node]}, {"num_samples": 999, "partition_id": node})

    grid = CallbackGrid([1, 2, 3, 4], respond)
    qbar = np.full((2, 2), 0.25)
    messages = strategy.configure_train(
        2, ArrayRecord({"q": Array(qbar), "extra": Array(np.ones(3))}), ConfigRecord({}), grid
    )
    sent = messages[0].content
    assert list(sent["arrays"].keys()) == ["q"]
    np.testing.assert_array_equal(sent["arrays"]["q"].numpy(), qbar)
    conf = sent["config"]
    assert conf["task"] == "average_reward" and conf["server-round"] == 2
    # Round 2 = epoch 1 (K = 3: T_1 = 3, tau_1 = 1), its single step t = 2 after 1 step done:
    # eta = 1 / (1 + (1/2) 2/3) = 3/4.
    assert (conf["period.gamma"], conf["period.epoch"], conf["period.step_offset"]) == (0.5, 1, 1)
    assert len(conf["period.step_sizes"]) == 1  # one local step in this period
    assert conf["period.step_sizes"] == pytest.approx([3 / 4], rel=1e-15)

    new, metrics = strategy.aggregate_train(2, grid.send_and_receive(messages))
    expected = np.array([[0.4, 0.3], [0.4, 0.5]])  # mean of nodes 1..3, by hand
    np.testing.assert_allclose(new["q"].numpy(), expected, rtol=1e-15)
    np.testing.assert_array_equal(
        new["q"].numpy(), equal_average(np.stack([local[1], local[2], local[3]]))
    )
    assert (metrics["accepted"], metrics["rejected"]) == (3, 1)
    assert (metrics["gamma"], metrics["epoch"], metrics["epoch_end"]) == (0.5, 1, 0)
    assert metrics["num_samples"] == 1  # the schedule's local steps, not the clients' claim
    assert strategy.rejections[0][:2] == (2, 4)


def test_strategy_state_dict_round_trips_through_json():
    schedule = EpochSchedule("polynomial", num_epochs=4, num_clients=2, c_T=1.5, c_eta=0.7)
    strategy = AverageRewardQ(3, 2, schedule)
    strategy.rejections.append((3, 1002, "array 'q' contains NaN or Inf"))
    state = json.loads(json.dumps(strategy.state_dict()))
    fresh = AverageRewardQ(3, 2, EpochSchedule("polynomial", 4, 2, c_T=1.5, c_eta=0.7))
    fresh.load_state_dict(state)
    assert fresh.rejections == strategy.rejections
    other = AverageRewardQ(3, 2, EpochSchedule("polynomial", 5, 2, c_T=1.5, c_eta=0.7))
    with pytest.raises(ValueError, match="schedule"):
        other.load_state_dict(state)


# ---------------------------------------------------------------------------
# End to end through the real ClientApp / ServerApp, against an independent simulation
# ---------------------------------------------------------------------------


def _reference_run(
    mdp: TabularMDP, kind: str, num_epochs: int, num_agents: int, c_eta: float, seed: int
):
    """ALGORITHMS.md section 5 written directly in NumPy (schedule formulas inlined, K=agents).

    Uses the clients' random-number convention: agent k's draws of Flower round r come from
    ``default_rng([seed, k, r])`` through the generative model.
    """
    model = GenerativeModel(mdp.P)
    rho, _ = optimal_gain(mdp)
    qbar = np.zeros((mdp.num_states, mdp.num_actions))
    server_round = 0
    errors = []
    for e in range(1, num_epochs + 1):
        if kind == "polynomial":
            gap = 1.0 / (e + 1)
            length = math.ceil((e + 1) ** 2 / num_agents)
            comms = [length]
            etas = np.full(length, min(1.0, c_eta * math.log(length + 1) / length))
        else:
            gap = 2.0**-e
            length = math.ceil(8**e / num_agents)
            tau = max(1, length // 2**e)
            comms = sorted(set(range(tau, length + 1, tau)) | {length})
            etas = 1.0 / (1.0 + gap * np.arange(1, length + 1) / (c_eta * num_agents))
        gamma = 1.0 - gap
        start = 0
        for stop in comms:
            server_round += 1
            vbar = qbar.max(axis=1)
            tables = []
            for k in range(num_agents):
                rng = np.random.default_rng([seed, k, server_round])
                next_states = model.sample(rng, stop - start)
                q = qbar.copy()
                for t in range(stop - start):
                    eta = etas[start + t]
                    target = (1.0 - gamma) * mdp.R + gamma * vbar[next_states[t]]
                    q = (1.0 - eta) * q + eta * target
                tables.append(q)
            qbar = np.mean(tables, axis=0)
            errors.append(np.max(np.abs(qbar.max(axis=1) - rho)))
            start = stop
    return qbar, errors


C_ETA = 1.5  # not the default, so the constant is seen to travel from the config


@pytest.mark.parametrize(("kind", "epochs"), [("polynomial", 12), ("geometric", 3)])
def test_run_matches_independent_simulation_and_converges(tmp_path, kind, epochs):
    overrides = [
        "strategy=average_reward",
        f"strategy.schedule={kind}",
        f"strategy.num_epochs={epochs}",
        "mdp=garnet",
        "mdp.num_states=5",
        "mdp.num_actions=2",
        "mdp.branching=2",
        "num_clients=3",
        f"strategy.c_eta={C_ETA}",
        "seed=7",
        "figures=false",
        "log_every=0",
        f"output_dir={tmp_path}",
    ]
    result = run_experiment(overrides)
    mdp = make_mdp("garnet", gamma=0.9, num_states=5, num_actions=2, branching=2, seed=0)
    q_ref, err_ref = _reference_run(mdp, kind, epochs, 3, c_eta=C_ETA, seed=7)
    # Same draws, same arithmetic: agreement to rounding (the kernel is compiled code).
    np.testing.assert_allclose(result.q_table, q_ref, rtol=0, atol=1e-12)
    errors = [row["gain_error"] for row in result.history]
    np.testing.assert_allclose(errors, err_ref, rtol=0, atol=1e-12)
    schedule = EpochSchedule(kind, epochs, 3, c_eta=C_ETA)
    assert len(result.history) == schedule.num_rounds
    assert result.history[-1]["samples_per_agent"] == schedule.total_steps
    assert [row["gamma"] for row in result.history] == [p.gamma for p in schedule]
    # Converging: the last epoch's gain error is well below the first's.
    assert errors[-1] < 0.5 * errors[0]
    assert result.summary["objective"] == "average_reward"
    assert result.summary["num_rounds"] == schedule.num_rounds


def test_resume_from_checkpoint_continues_the_schedule_exactly(tmp_path):
    # Geometric, 2 epochs, K = 2: 2 + 4 = 6 rounds; the last checkpoint is after round 4 (epoch
    # 2, mid-epoch), so the resumed run must pick up the right period, gamma and step sizes.
    common = [
        "strategy=average_reward",
        "strategy.schedule=geometric",
        "strategy.num_epochs=2",
        "mdp=garnet",
        "mdp.num_states=4",
        "mdp.num_actions=2",
        "mdp.branching=2",
        "num_clients=2",
        "figures=false",
        "log_every=0",
    ]
    full = run_experiment([*common, "checkpoint_every=4", f"output_dir={tmp_path / 'a'}"])
    assert len(full.history) == 6
    resumed = run_experiment([*common, f"resume={tmp_path / 'a'}", f"output_dir={tmp_path / 'b'}"])
    assert resumed.summary["resumed_from"] == str(tmp_path / "a")
    np.testing.assert_array_equal(resumed.q_table, full.q_table)
    strip = [{k: v for k, v in row.items() if k != "wall_s"} for row in full.history]
    assert [{k: v for k, v in row.items() if k != "wall_s"} for row in resumed.history] == strip


# ---------------------------------------------------------------------------
# Multichain MDPs are refused before any round
# ---------------------------------------------------------------------------

# A 10-state garnet with one action and one successor per state is a deterministic functional
# graph whose cycles have different mean rewards: its optimal gain differs across states.
MULTICHAIN = ["mdp=garnet", "mdp.num_actions=1", "mdp.branching=1"]


def test_multichain_mdp_refused_by_config_validation():
    with pytest.raises(ConfigError, match="optimal gain is the same in every state"):
        compose(["strategy=average_reward", *MULTICHAIN])
    compose(["strategy=equal", *MULTICHAIN])  # the discounted strategies do not care


def test_multichain_mdp_refused_by_builder():
    # Two absorbing states with rewards 0 and 1, reached from state 0: gains 0 and 1.
    P = np.zeros((3, 1, 3))
    P[0, 0] = [0.0, 0.5, 0.5]
    P[1, 0, 1] = 1.0
    P[2, 0, 2] = 1.0
    mdp = TabularMDP(P, np.array([[0.0], [0.0], [1.0]]), 0.9, np.array([1.0, 0, 0]), "two_sinks")
    cfg = compose(["strategy=average_reward"])
    with pytest.raises(NonConstantGainError, match="two_sinks"):
        build_average_reward(cfg, mdp)


def test_cli_refuses_multichain_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "flower_qlearn", "strategy=average_reward", *MULTICHAIN],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "multichain" in lines[0] and lines[0].startswith("flower-qlearn")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("strategy.schedule=linear", "strategy.schedule"),
        ("strategy.num_epochs=0", "strategy.num_epochs"),
        ("strategy.c_T=0", "strategy.c_T"),
        ("strategy.c_eta=-1", "strategy.c_eta"),
    ],
)
def test_config_rules(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        compose(["strategy=average_reward", override])


def test_geometric_epochs_capped_and_experiments_compose():
    with pytest.raises(ConfigError, match=r"strategy\.num_epochs=13"):
        compose(
            ["strategy=average_reward", "strategy.schedule=geometric", "strategy.num_epochs=13"]
        )
    for name in ("garnet", "riverswim", "frozenlake"):
        cfg = compose([f"+experiment=avg_{name}"])
        assert (cfg.strategy.name, cfg.mdp.name, cfg.client.sampling) == (
            "average_reward",
            name,
            "generative",
        )
    assert compose(["+experiment=avg_frozenlake"]).mdp.terminal == "reset"


# ---------------------------------------------------------------------------
# Ray gives the same numbers as the in-process engine
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_matches_inprocess(tmp_path):
    common = [
        "strategy=average_reward",
        "strategy.num_epochs=4",
        "mdp=garnet",
        "mdp.num_states=4",
        "mdp.num_actions=2",
        "mdp.branching=2",
        "num_clients=2",
        "figures=false",
        "log_every=0",
    ]
    local = run_experiment([*common, f"output_dir={tmp_path / 'inprocess'}"])
    ray = run_experiment([*common, "engine=ray", f"output_dir={tmp_path / 'ray'}"])
    np.testing.assert_array_equal(ray.q_table, local.q_table)
    for a, b in zip(ray.history, local.history, strict=True):
        assert a["gain_error"] == b["gain_error"]
        assert a["samples_per_agent"] == b["samples_per_agent"]
