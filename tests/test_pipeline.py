"""The Flower pipeline end to end: real ServerApp, ClientApp, strategies and Messages.

Every numeric check compares the federated run with an independent bare-NumPy re-implementation
of the algorithm (docs/ALGORITHMS.md sections 3-4) that calls the core kernels directly, without
Flower.
"""

from __future__ import annotations

import numpy as np
import pytest
from flower_qlearn.strategies import importance_average
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flower_qlearn import config as fq_config
from flower_qlearn import run_experiment
from flower_qlearn.agent import agent_env as _agent_env
from flower_qlearn.api import run_config_for
from flower_qlearn.client_app import handle_train
from flower_qlearn.experiment import run_server
from flower_qlearn.inprocess import InProcessGrid
from flower_qlearn.kernels import run_async_q, run_sync_q
from flower_qlearn.mdp import two_state
from flower_qlearn.solvers import optimal_q


def agent_env(cfg, agent, **node):
    """Agent ``agent``'s environment for the composed ``cfg`` (node-config values in ``node``)."""
    return _agent_env(fq_config.settings(cfg), agent, **node)


def bare_federated_q(cfg, num_rounds: int, strategy: str) -> np.ndarray:
    """Woo et al.'s FedSynQ / FedAsynQ without Flower: the same seeds, kernels and averaging."""
    k = cfg.num_clients
    envs = [agent_env(cfg, i) for i in range(k)]
    mdp = envs[0].mdp
    q_bar = np.zeros((mdp.num_states, mdp.num_actions))
    states = []
    for i in range(k):
        rng0 = np.random.default_rng([cfg.seed, i, 0])
        states.append(int(rng0.choice(mdp.num_states, p=mdp.initial)))
    lr, tau, gamma = cfg.client.learning_rate, cfg.client.local_steps, cfg.mdp.gamma
    for r in range(1, num_rounds + 1):
        tables, counts = [], []
        for i, env in enumerate(envs):
            q = q_bar.copy()
            n = np.zeros(q.shape, dtype=np.int64)
            rng = np.random.default_rng([cfg.seed, i, r])
            if cfg.client.sampling == "generative":
                run_sync_q(q, env.mdp.R, gamma, lr, env.p_cdf, tau, rng)
                n[:] = tau
            else:
                states[i] = run_async_q(
                    q, n, env.mdp.R, gamma, lr, env.p_cdf, env.pi_cdf, states[i], tau, rng
                )
            tables.append(q)
            counts.append(n)
        if strategy == "equal":
            q_bar = np.mean(tables, axis=0)
        else:
            q_bar = importance_average(np.array(tables), np.array(counts), lr)
    return q_bar


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=equal", "client=markovian", "client.behavior=disjoint"],
        ["strategy=importance", "client=markovian", "client.behavior=dirichlet"],
        ["strategy=equal", "client=generative"],
        ["strategy=importance", "mdp=garnet", "client.behavior=uniform"],
    ],
)
def test_federated_run_equals_bare_numpy_reimplementation(overrides, tmp_path):
    common = ["num_clients=5", "num_rounds=7", "client.local_steps=20", "log_every=0",
              "figures=false", "client.learning_rate=0.2", f"output_dir={tmp_path}"]
    result = run_experiment(common + overrides)
    cfg = fq_config.compose(common + overrides)
    expected = bare_federated_q(cfg, 7, cfg.strategy.name)
    np.testing.assert_array_equal(result.q_table, expected)
    # and the recorded error is the error of that table against the exact Q*
    q_star = optimal_q(agent_env(cfg, 0).mdp)
    assert result.history[-1]["q_error"] == pytest.approx(np.abs(expected - q_star).max(), 1e-12)
    assert [row["round"] for row in result.history] == list(range(1, 8))
    assert result.history[-1]["samples_per_agent"] == 7 * 20
    assert all(row["accepted"] == 5 and row["rejected"] == 0 for row in result.history)


def test_outputs_follow_the_design_contract(tmp_path):
    result = run_experiment(["num_clients=3", "num_rounds=4", f"output_dir={tmp_path}",
                             "log_every=0"])
    assert {p.name for p in tmp_path.iterdir()} >= {"metrics.csv", "summary.json",
                                                    "q_table.npy", "figures"}
    assert (tmp_path / "figures" / "error_vs_samples.png").stat().st_size > 1000
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:13] == ["round", "samples_per_agent", "q_error", "normalized_q_error",
                           "gain_error", "policy_gain_gap", "gamma", "accepted", "rejected",
                           "skipped", "bytes_up", "bytes_down", "wall_s"]
    row = result.history[0]
    assert row["gain_error"] is None and row["policy_gain_gap"] is None  # not applicable: empty
    assert row["normalized_q_error"] == pytest.approx(0.1 * row["q_error"])
    # bytes: 3 clients x (q + counts) of 2x10 8-byte entries up, the global q down to each
    assert row["bytes_down"] >= 3 * 2 * 10 * 8 and row["bytes_up"] >= 3 * 2 * 2 * 10 * 8
    assert result.summary["final"]["round"] == 4 and result.summary["strategy"] == "equal"


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    args = ["num_clients=3", "num_rounds=5", "log_every=0", "figures=false"]
    a = run_experiment(args + [f"output_dir={tmp_path / 'a'}"])
    b = run_experiment(args + [f"output_dir={tmp_path / 'b'}"])
    c = run_experiment(args + ["seed=1", f"output_dir={tmp_path / 'c'}"])
    np.testing.assert_array_equal(a.q_table, b.q_table)
    assert not np.array_equal(a.q_table, c.q_table)


# ------------------------------------------------------------------------------------------
# Bad clients: every kind of malformed reply is rejected and counted, never averaged in.
# ------------------------------------------------------------------------------------------


def corrupting_client(corrupt: dict[int, str]) -> ClientApp:
    """The real ClientApp, except that partitions in ``corrupt`` damage their reply."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        reply = handle_train(message, context)
        kind = corrupt.get(int(context.node_config["partition-id"]))
        if kind is None:
            return reply
        arrays = {k: v.numpy() for k, v in reply.content["arrays"].items()}
        if kind == "raise":
            raise RuntimeError("simulated client crash")
        if kind == "nan":
            arrays["q"] = arrays["q"].copy()
            arrays["q"][0, 0] = np.nan
        elif kind == "shape":
            arrays["q"] = arrays["q"][:, :-1].copy()
        elif kind == "dtype":
            arrays["q"] = arrays["q"].astype(np.float32)
        elif kind == "negative_counts":
            arrays["counts"] = -arrays["counts"]
        elif kind == "missing":
            del arrays["counts"]
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
            "metrics": reply.content["metrics"],
        })
        return Message(content, reply_to=message)

    return app


def run_with_client(client_app, overrides, tmp_path, disconnected=()):
    cfg = fq_config.compose(overrides)
    grid = InProcessGrid(client_app, cfg.num_clients, run_config_for(cfg, tmp_path))
    grid.disconnected.update(grid.get_node_ids()[i] for i in disconnected)
    history = run_server(grid, fq_config.settings(cfg), tmp_path)
    return cfg, history, np.load(tmp_path / "q_table.npy")


def test_bad_replies_are_rejected_counted_and_not_averaged(tmp_path):
    overrides = ["strategy=importance", "num_clients=8", "num_rounds=3", "log_every=0",
                 "figures=false", "client.local_steps=10"]
    corrupt = {1: "nan", 2: "shape", 3: "dtype", 4: "negative_counts", 5: "missing",
               6: "raise"}
    cfg, history, q = run_with_client(corrupting_client(corrupt), overrides, tmp_path,
                                      disconnected=[7])
    assert [(r["accepted"], r["rejected"], r["missing"]) for r in history] == [(1, 6, 1)] * 3
    # only agent 0 was ever averaged in: the global table is agent 0's local table every round
    env = agent_env(cfg, 0)
    expected = np.zeros_like(q)
    s = int(np.random.default_rng([cfg.seed, 0, 0]).choice(2, p=env.mdp.initial))
    for r in (1, 2, 3):
        counts = np.zeros(q.shape, dtype=np.int64)
        s = run_async_q(expected, counts, env.mdp.R, cfg.mdp.gamma, cfg.client.learning_rate,
                        env.p_cdf, env.pi_cdf, s, cfg.client.local_steps,
                        np.random.default_rng([cfg.seed, 0, r]))
    np.testing.assert_allclose(q, expected, rtol=0, atol=1e-15)


def test_too_few_valid_replies_keep_the_previous_global_table(tmp_path):
    overrides = ["num_clients=3", "num_rounds=2", "min_replies=3", "log_every=0",
                 "figures=false"]
    _, history, q = run_with_client(corrupting_client({0: "nan"}), overrides, tmp_path)
    assert all(r["kept_previous"] == 1 and r["accepted"] == 2 for r in history)
    np.testing.assert_array_equal(q, 0.0)  # never replaced: still the initial table


def test_two_state_ground_truth_matches_closed_form():
    # Independent check of the evaluation target: with a single action, Q* solves a 2x2 system.
    mdp = two_state(num_actions=1, gamma=0.9, seed=3)
    p, q = mdp.P[0, 0, 0], mdp.P[1, 0, 1]
    transition = np.array([[p, 1 - p], [1 - q, q]])
    v = np.linalg.solve(np.eye(2) - 0.9 * transition, np.array([0.0, 1.0]))
    np.testing.assert_allclose(optimal_q(mdp)[:, 0], v, atol=1e-10)


def test_node_config_gives_a_supernode_its_own_environment(tmp_path):
    # SuperNodes started with --node-config "partition-id=k heterogeneity=0.4 perturb-seed=7"
    from flower_qlearn.client_app import app as client_app
    from flower_qlearn.mdp import perturb

    overrides = ["num_clients=2", "num_rounds=3", "log_every=0", "figures=false"]
    cfg = fq_config.compose(overrides)
    node_configs = [{"heterogeneity": 0.4, "perturb-seed": 7}, {}]
    grid = InProcessGrid(client_app, 2, run_config_for(cfg, tmp_path),
                         node_configs=node_configs)
    run_server(grid, fq_config.settings(cfg), tmp_path)
    node0 = grid.contexts[grid.get_node_ids()[0]].node_config
    env0 = agent_env(cfg, 0, heterogeneity=node0["heterogeneity"],
                     perturb_seed=node0["perturb-seed"])
    expected = perturb(agent_env(cfg, 0).mdp, 0.4, seed=7)
    np.testing.assert_array_equal(env0.mdp.P, expected.P)
    np.testing.assert_array_equal(env0.mdp.R, expected.R)
    # the run used it: agent 0's trajectory differs from an identical-environment run
    same = run_experiment(overrides + [f"output_dir={tmp_path / 'same'}"])
    assert not np.array_equal(np.load(tmp_path / "q_table.npy"), same.q_table)
    with pytest.raises(ValueError, match="heterogeneity=1.5 is outside"):
        agent_env(cfg, 0, heterogeneity=1.5)
