"""Adaptive synchronization for importance averaging (docs/ALGORITHMS.md "Adaptive
synchronization"; docs/beyond_the_papers.md item 1).

The schedule's rule is checked on counts worked out by hand, and the federated run (real
Flower messages: the server sends each round's period in the instruction) against a bare
re-implementation that calls the kernels and `importance_average` directly.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from flower_qlearn.strategies import importance_average
from flower_qlearn.strategies.sync import SyncSchedule, doubling_period, stage_complete

from flower_qlearn import config as fq_config
from flower_qlearn import run_experiment
from flower_qlearn.agent import agent_env
from flower_qlearn.kernels import run_async_q
from flower_qlearn.schema import ConfigError


def test_doubling_period_and_stage_end_by_hand():
    assert [doubling_period(50, j, 1000) for j in range(6)] == [50, 100, 200, 400, 800, 1000]
    assert stage_complete(np.array([[3, 4], [5, 3]]), 3)
    assert not stage_complete(np.array([[3, 4], [5, 2]]), 3)
    with pytest.raises(ValueError):
        doubling_period(50, 0, 10)


def test_schedule_accumulates_collective_counts_over_a_stage():
    sync = SyncSchedule("doubling", 10, visits=4, max_steps=40)
    assert (sync.local_steps, sync.stage) == (10, 0)
    sync.observe(np.array([[2, 3], [1, 9]]))  # min 1 < 4: the stage goes on
    assert (sync.local_steps, sync.stage) == (10, 0)
    sync.observe(np.array([[2, 0], [3, 0]]))  # totals [[4, 3], [4, 9]]: min 3 < 4
    assert sync.stage == 0
    sync.observe(np.array([[0, 1], [0, 0]]))  # totals [[4, 4], [4, 9]]: the stage ends
    assert (sync.local_steps, sync.stage) == (20, 1)
    sync.observe(np.full((2, 2), 4))  # a fresh stage: 4 everywhere ends it at once
    sync.observe(np.full((2, 2), 4))
    assert (sync.local_steps, sync.stage) == (40, 3)  # capped at max_steps
    halving = SyncSchedule("doubling_halving", 10, visits=1, max_steps=40, initial_lr=0.2)
    rates = []
    for _ in range(4):
        rates.append((halving.local_steps, halving.learning_rate))
        halving.observe(np.ones((2, 2)))
    assert rates == [(10, 0.2), (20, 0.1), (40, 0.05), (40, 0.05)]
    constant = SyncSchedule("constant", 10)
    constant.observe(np.zeros((2, 2)))
    assert not constant.adaptive and constant.local_steps == 10


def bare_adaptive_imavg(cfg, num_rounds: int) -> tuple[np.ndarray, list[int], list[float]]:
    """FedAsynQ-ImAvg with the doubling rule written out, without Flower or SyncSchedule."""
    s = fq_config.settings(cfg)
    c, k = s["client"], s["num_clients"]
    envs = [agent_env(s, i) for i in range(k)]
    mdp = envs[0].mdp
    states = [int(np.random.default_rng([s["seed"], i, 0]).choice(mdp.num_states, p=mdp.initial))
              for i in range(k)]
    q_bar = np.zeros((mdp.num_states, mdp.num_actions))
    stage, collective, periods, rates = 0, np.zeros(q_bar.shape, dtype=np.int64), [], []
    for r in range(1, num_rounds + 1):
        tau = min(c["local_steps"] * 2**stage, c["sync_max_steps"])
        lr = c["learning_rate"]
        if c["sync"] == "doubling_halving":
            lr = c["learning_rate"] * c["local_steps"] / tau
        tables, counts = [], []
        for i, env in enumerate(envs):
            q, n = q_bar.copy(), np.zeros(q_bar.shape, dtype=np.int64)
            states[i] = run_async_q(q, n, mdp.R, mdp.gamma, lr, env.p_cdf, env.pi_cdf, states[i],
                                    tau, np.random.default_rng([s["seed"], i, r]))
            tables.append(q)
            counts.append(n)
        q_bar = importance_average(np.array(tables), np.array(counts), lr)
        collective += np.sum(counts, axis=0)
        if collective.min() >= c["sync_visits"]:
            stage, collective = stage + 1, np.zeros_like(collective)
        periods.append(tau)
        rates.append(lr)
    return q_bar, periods, rates


@pytest.mark.parametrize("schedule", ["doubling", "doubling_halving"])
def test_adaptive_run_equals_bare_reimplementation(schedule, tmp_path):
    overrides = ["strategy=importance", "num_clients=3", "client.local_steps=10",
                 "client.learning_rate=0.2", f"client.sync={schedule}", "client.sync_visits=2",
                 "client.sync_max_steps=80", "num_rounds=9", "log_every=0", "figures=false",
                 f"output_dir={tmp_path}"]
    result = run_experiment(overrides)
    expected, periods, rates = bare_adaptive_imavg(fq_config.compose(overrides), 9)
    np.testing.assert_array_equal(result.q_table, expected)
    assert [row["local_steps"] for row in result.history] == periods
    assert [row["learning_rate"] for row in result.history] == pytest.approx(rates)
    assert periods[0] == 10 and periods[-1] == 80 and len(set(periods)) == 4  # it did double
    assert result.history[-1]["samples_per_agent"] == sum(periods)
    assert [row["sync_stage"] for row in result.history] == sorted(
        row["sync_stage"] for row in result.history)


def test_constant_schedule_adds_nothing(tmp_path):
    result = run_experiment(["strategy=importance", "num_clients=2", "num_rounds=2",
                             "log_every=0", "figures=false", f"output_dir={tmp_path}"])
    assert "local_steps" not in result.history[-1] and "sync_stage" not in result.history[-1]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["strategy=importance", "client.sync=halving"], "client.sync"),
        (["strategy=equal", "client.sync=doubling"], "client.sync"),
        (["strategy=importance", "client.sync=doubling", "client.sync_visits=0"],
         "client.sync_visits"),
        (["strategy=importance", "client.sync=doubling", "client.sync_max_steps=10"],
         "client.sync_max_steps"),
        (["strategy=importance", "client.lr_schedule=two_phase"], "client.lr_schedule"),
        (["strategy=importance", "client.sync=doubling", "engine=batched"], "client.sync"),
    ],
)
def test_bad_schedules_are_refused_with_one_line(overrides, field):
    with pytest.raises(ConfigError) as info:
        fq_config.compose(overrides)
    assert field in str(info.value) and "\n" not in str(info.value)


def test_cli_refuses_a_bad_schedule_with_exit_2_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "flower_qlearn", "strategy=importance", "client.sync=sometimes"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "client.sync" in proc.stderr and "Traceback" not in proc.stderr
