"""Tests of issue 14 items 3-5: exact coverage, Flower message sizes, bytes as an x axis, and
the experiment configs of the synchronization-period, communication-cost and
importance-averaging stress sweeps.

Coverage is checked against closed forms, an eigenvector solve and long simulated
trajectories; message sizes against ``np.save``, a rebuild of the message from exactly the
bytes counted, Flower's own object store, and the strategies' reported ``bytes_up`` /
``bytes_down`` of a real in-process run.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from flower_helpers import instruction, reply, task_identity
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore

from flower_qlearn import config as fq_config
from flower_qlearn import coverage, message_size, sweeps
from flower_qlearn.mdp import garnet
from flower_qlearn.sampling import MarkovChain, behavior_policy
from flower_qlearn.sweep_curves import x_column
from flower_qlearn.sweep_jobs import Job

# --- coverage ---------------------------------------------------------------------------------


def test_visitation_of_a_two_state_chain_is_the_closed_form():
    # One action; leave 0 with prob a, leave 1 with prob b: stationary (b, a) / (a + b).
    a, b = 0.3, 0.1
    P = np.array([[[1 - a, a]], [[b, 1 - b]]])
    mu = coverage.visitation(P, np.ones((2, 1)), np.array([1.0, 0.0]))
    np.testing.assert_allclose(mu[:, 0], [b / (a + b), a / (a + b)], atol=1e-8)


def test_visitation_equals_the_eigenvector_of_an_irreducible_chain():
    mdp = garnet(num_states=12, num_actions=3, branching=4, gamma=0.9, seed=3)
    pi = behavior_policy("dirichlet", 12, 3, agent=1, num_agents=4, seed=5, alpha=0.5)
    kernel = np.einsum("sa,sat->st", pi, mdp.P)  # a bare re-implementation of P_pi
    values, vectors = np.linalg.eig(kernel.T)
    d = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
    d /= d.sum()
    mu = coverage.visitation(mdp.P, pi, mdp.initial)
    np.testing.assert_allclose(mu, d[:, None] * pi, atol=1e-7)
    assert mu.sum() == pytest.approx(1.0)


def test_visitation_from_a_reducible_start_stays_in_its_closed_class():
    # State 0 absorbs; state 1 falls into 0 with prob 1/2 per step; state 2 is its own class.
    P = np.zeros((3, 2, 3))
    P[0, :, 0] = 1.0
    P[1, :, [0, 1]] = 0.5
    P[2, :, 2] = 1.0
    pi = np.full((3, 2), 0.5)
    mu = coverage.visitation(P, pi, np.array([0.0, 1.0, 0.0]))
    np.testing.assert_allclose(mu, [[0.5, 0.5], [0, 0], [0, 0]], atol=1e-7)
    assert coverage.min_coverage(P, [pi], np.array([0.0, 1.0, 0.0])) == pytest.approx(0, abs=1e-7)


def test_federation_coverage_matches_long_simulated_trajectories():
    mdp = garnet(num_states=6, num_actions=3, branching=3, gamma=0.9, seed=1)
    policies = [
        behavior_policy("dirichlet", 6, 3, agent=k, num_agents=3, seed=0, alpha=0.3)
        for k in range(3)
    ]
    steps = 400_000
    empirical = np.zeros((6, 3))
    for k, pi in enumerate(policies):
        chain = MarkovChain(mdp.P, pi, 0, np.random.default_rng(k))
        states, actions, _ = chain.sample(steps)
        np.add.at(empirical, (states, actions), 1.0 / (steps * len(policies)))
    initial = np.eye(6)[0]
    exact = coverage.federation_coverage(mdp.P, policies, initial)
    # Markov-chain noise of 400k steps per agent: a few 1e-3 at most on these fractions.
    np.testing.assert_allclose(empirical, exact, atol=4e-3)
    assert coverage.min_coverage(mdp.P, policies, initial) == pytest.approx(exact.min())


def test_disjoint_groups_cover_each_action_from_its_own_chain():
    # G = A = 2 groups, K = 4: agents 0, 2 always play action 0, agents 1, 3 action 1. So
    # mu(s, a) = d_a(s) / 2 with d_a the stationary law of the chain that always plays a.
    mdp = garnet(num_states=5, num_actions=2, branching=5, gamma=0.9, seed=0)
    policies = [behavior_policy("disjoint", 5, 2, agent=k, num_agents=4, seed=0) for k in range(4)]
    mu = coverage.federation_coverage(mdp.P, policies, mdp.initial)
    for a in range(2):
        values, vectors = np.linalg.eig(mdp.P[:, a, :].T)
        d = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
        np.testing.assert_allclose(mu[:, a], d / d.sum() / 2, atol=1e-8)


def test_coverage_rejects_bad_shapes():
    with pytest.raises(ValueError, match="initial must have shape"):
        coverage.visitation(np.ones((2, 1, 2)) / 2, np.ones((2, 1)), np.ones(3) / 3)
    with pytest.raises(ValueError, match="policy"):
        coverage.policy_transitions(np.ones((2, 1, 2)) / 2, np.ones((3, 1)))


# --- message sizes ----------------------------------------------------------------------------


def _npy_bytes(a: np.ndarray) -> int:
    buffer = io.BytesIO()
    np.save(buffer, a, allow_pickle=False)
    return len(buffer.getvalue())


def _messages():
    q = np.arange(12.0).reshape(4, 3)
    counts = np.arange(12, dtype=np.int64).reshape(4, 3)
    with task_identity():
        ins = instruction(
            RecordDict(
                {
                    "arrays": ArrayRecord({"q": Array(q)}),
                    "config": ConfigRecord({"task": "q_learning", "client.local_steps": 50}),
                }
            ),
            node_id=7,
            server_round=3,
        )
        rep = reply(ins, arrays={"q": q, "counts": counts}, metrics={"num_samples": 50})
    return ins, rep, q, counts


def test_payload_is_the_npy_bytes_of_every_array():
    ins, rep, q, counts = _messages()
    assert message_size.payload_bytes(ins) == _npy_bytes(q)
    assert message_size.payload_bytes(rep) == _npy_bytes(q) + _npy_bytes(counts)
    # The strategies' own count of a reply is the same number.
    from flower_qlearn.strategies.validation import payload_bytes as strategy_payload

    assert message_size.payload_bytes(rep) == strategy_payload(rep)


def test_object_bytes_are_exactly_what_rebuilds_the_message():
    ins, rep, q, counts = _messages()
    for message in (ins, rep):
        objects = get_all_nested_objects(message)
        contents = {oid: obj.deflate() for oid, obj in objects.items()}
        rebuilt = inflate_object_from_contents(message.object_id, dict(contents))
        np.testing.assert_array_equal(rebuilt.content["arrays"]["q"].numpy(), q)
        # What a SuperNode stores for the message (object store of Flower's own runtime).
        store = InMemoryObjectStore()
        store.preregister(1234, get_object_tree(message))
        for oid, content in contents.items():
            store.put(oid, content)
        stored = sum(len(store.get(oid)) for oid in objects)
        size = message_size.measure(message)
        announce = size.objects - stored
        assert 0 < announce < 400  # the content-free metadata protobuf
        assert size.objects > size.proto > size.payload
    size = message_size.measure(ins)
    assert set(size.records) == {"arrays", "config"}
    assert size.records["arrays"] > _npy_bytes(q)
    with pytest.raises(TypeError, match="not a Flower record"):
        message_size.record_bytes({"q": 1})  # type: ignore[arg-type]
    assert isinstance(message_size.measure(rep).records["metrics"], int)
    assert message_size.record_bytes(MetricRecord({"x": 1.0})) > 0


def test_metered_run_reproduces_the_strategies_byte_counts(tmp_path):
    from flower_qlearn import api
    from flower_qlearn.client_app import app as client_app
    from flower_qlearn.inprocess import run_inprocess
    from flower_qlearn.outputs import read_metrics
    from flower_qlearn.server_app import app as server_app

    cfg = fq_config.compose(["strategy=importance", "mdp=garnet", "num_clients=3",
                             "num_rounds=4", "log_every=0", "figures=false"])
    meter = message_size.MeteredClientApp(client_app)
    run_inprocess(server_app, meter, 3, api.run_config_for(cfg, tmp_path))
    rows = read_metrics(tmp_path / "metrics.csv")
    assert len(meter.log) == 2 * 3 * 4
    for row in rows:
        r = str(row["round"])
        up = [s for g, d, s in meter.log if g == r and d == "up"]
        down = [s for g, d, s in meter.log if g == r and d == "down"]
        assert len(up) == len(down) == 3
        assert sum(s.payload for s in up) == row["bytes_up"]
        assert sum(s.payload for s in down) == row["bytes_down"]
        assert all(s.objects > s.payload for s in up + down)


# --- cumulative bytes as an x axis --------------------------------------------------------------


def _job(path: str, up: list[float | None], down: list[float], err: list[float]) -> Job:
    rows = [
        {"round": i + 1, "samples_per_agent": 10 * (i + 1), "bytes_up": u, "bytes_down": d,
         "normalized_q_error": e}
        for i, (u, d, e) in enumerate(zip(up, down, err, strict=True))
    ]
    return Job(Path(path), {"seed": path}, {}, rows)


def test_cumulative_bytes_axis_is_the_running_total_of_up_and_down():
    a = _job("0", [10, None, 10], [5, 5, 5], [0.5, 0.4, 0.1])
    b = _job("1", [10, None, 10], [5, 5, 5], [0.3, 0.2, 0.3])
    np.testing.assert_array_equal(x_column(a, "cumulative_bytes"), [15, 20, 35])
    curve = sweeps.aggregate([a, b], "normalized_q_error", "cumulative_bytes")
    np.testing.assert_array_equal(curve.x, [15, 20, 35])
    np.testing.assert_allclose(curve.mean, [0.4, 0.3, 0.2])
    np.testing.assert_array_equal(curve.rounds, [1, 2, 3])


# --- the experiment configs compose, every sweep job validates ------------------------------------


def _sweep_values(name: str, key: str) -> list[str]:
    import yaml

    text = (fq_config.config_dir() / "experiment" / f"{name}.yaml").read_text()
    value = str(yaml.safe_load(text)["hydra"]["sweeper"]["params"][key])
    return [v.strip() for v in value.replace("},{", "}|{").split("|")]


@pytest.mark.parametrize("name", ["beyond_sync_period", "beyond_sync_period_fedsynq"])
def test_every_sync_period_job_spends_the_same_budget(name):
    budgets = set()
    for period in _sweep_values(name, "period"):
        cfg = fq_config.compose([f"+experiment={name}", f"period={period}"])
        budgets.add(cfg.client.local_steps * cfg.num_rounds)
    assert budgets == {1000}


def test_every_behavior_of_the_stress_sweep_resolves_and_validates():
    seen = set()
    for value in _sweep_values("beyond_imavg_breaks", "behaviors"):
        cfg = fq_config.compose(["+experiment=beyond_imavg_breaks", f"behaviors={value}"])
        seen.add((cfg.client.behavior, cfg.client.behavior_alpha, cfg.client.behavior_groups))
    assert ("disjoint", 1.0, 4) in seen and ("dirichlet", 0.01, None) in seen
    assert len(seen) == 6


def test_comm_cost_sweep_composes_for_every_strategy():
    from flower_qlearn import cli

    cli.prevalidate(["+experiment=beyond_comm_cost", "-m"])
    cfg = fq_config.compose(["+experiment=beyond_comm_cost", "strategy=dasa"])
    assert cfg.plot.x == "cumulative_bytes" and cfg.strategy.name == "dasa"
