"""Identity on the server side: who may reply, which agent a node is, what a round asked for.

Every test drives real Flower ``Message`` objects (instructions from the strategies'
``configure_train``, stamped as a Grid push stamps them; replies built with
``Message(..., reply_to=instruction)``) through the real strategies, and checks the aggregate
against a hand computation or a bare re-implementation without Flower.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from flower_helpers import NodeListGrid, error_reply, instruction, reply, stamp
from flower_qlearn.strategies import (
    DASA,
    EqualAveraging,
    ImportanceAveraging,
    equal_average,
    importance_average,
)
from flower_qlearn.strategies.identity import (
    Outbox,
    assign_partition,
    check_visit_counts,
    screen_replies,
)
from flower_qlearn.strategies.validation import InvalidReply, check_metrics
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID

from flower_qlearn import config as fq_config
from flower_qlearn import run_experiment
from flower_qlearn.agent import agent_env
from flower_qlearn.api import run_config_for
from flower_qlearn.client_app import handle_train
from flower_qlearn.experiment import run_server
from flower_qlearn.inprocess import FIRST_NODE_ID, InProcessGrid, run_server_app
from flower_qlearn.kernels import run_async_q
from flower_qlearn.outputs import RunResult

pytestmark = pytest.mark.usefixtures("flower_identity")

S, A = 2, 3
STEPS = 12
ROUND = {"client.local_steps": STEPS, "client.sampling": "markovian"}
NODES = [11, 12, 13]


def q_of(node: int, server_round: int = 1) -> np.ndarray:
    """A local table in [0, 3] that depends on the node and the round."""
    return np.random.default_rng([node, server_round]).uniform(0, 3, size=(S, A))


def counts_of(node: int, server_round: int = 1) -> np.ndarray:
    """Markovian visit counts of a round of STEPS steps (they sum to STEPS)."""
    rng = np.random.default_rng([node, server_round, 7])
    return rng.multinomial(STEPS, np.full(S * A, 1 / (S * A))).reshape(S, A)


def send(strategy, node_ids=NODES, server_round: int = 1, config=ROUND) -> dict[int, Message]:
    """The round's instructions, stamped as a Grid push stamps them, by destination node."""
    arrays = ArrayRecord({"q": Array(np.zeros(strategy.shape))})
    messages = strategy.configure_train(
        server_round, arrays, ConfigRecord(dict(config)), NodeListGrid(node_ids)
    )
    return {m.metadata.dst_node_id: stamp(m) for m in messages}


def honest(to: Message, partition: int, server_round: int = 1, **metrics) -> Message:
    node = to.metadata.dst_node_id
    return reply(
        to,
        {"q": q_of(node, server_round), "counts": counts_of(node, server_round)},
        {"partition_id": partition, "num_samples": STEPS, **metrics},
    )


def forge(message: Message, **fields) -> Message:
    """Overwrite metadata fields as a forged or corrupted reply would carry them."""
    for name, value in fields.items():
        message.metadata.__dict__[f"_{name}"] = value
    return message


# --- who may reply -------------------------------------------------------------------------------


def test_only_replies_to_this_rounds_instructions_count_and_missing_is_right():
    strategy = EqualAveraging(S, A, num_partitions=3)
    sent = send(strategy)
    never_sent = instruction(RecordDict(), node_id=99)  # a stranger's own "instruction"
    replies = [honest(sent[11], 0), honest(sent[12], 1), honest(never_sent, 2)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = equal_average(np.stack([q_of(11), q_of(12)]))
    np.testing.assert_array_equal(arrays["q"].numpy(), expected)
    # The stranger is rejected; node 13 gave no reply of its own: missing (before: hidden).
    assert (metrics["accepted"], metrics["rejected"], metrics["missing"]) == (2, 1, 1)
    assert strategy.rejections == [(1, 99, "reply to no instruction the server sent this round")]

    # Round 2: node 13's late reply to its round-1 instruction is not a round-2 reply.
    late = honest(sent[13], 2)
    sent2 = send(strategy, server_round=2)
    replies = [honest(sent2[11], 0, 2), honest(sent2[12], 1, 2), late]
    arrays, metrics = strategy.aggregate_train(2, replies)
    np.testing.assert_array_equal(
        arrays["q"].numpy(), equal_average(np.stack([q_of(11, 2), q_of(12, 2)]))
    )
    assert (metrics["accepted"], metrics["rejected"], metrics["missing"]) == (2, 1, 1)
    assert strategy.rejections[-1][:2] == (2, 13)


def test_a_reply_must_come_from_its_node_with_the_instructions_group_and_type():
    strategy = EqualAveraging(S, A, num_partitions=3)
    sent = send(strategy)
    replies = [
        forge(honest(sent[11], 0), src_node_id=12),  # node 12 answering node 11's instruction
        forge(honest(sent[12], 1), group_id="7"),  # another round's group
        forge(honest(sent[13], 2), message_type="evaluate"),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is None
    reasons = [reason for _, _, reason in strategy.rejections]
    assert reasons == [
        "reply to an instruction sent to node 11",
        "reply group id '7', instruction's '1'",
        "reply message type 'evaluate', instruction's 'train'",
    ]
    # Nodes 12 and 13 answered their own instructions (badly): rejected. Node 11 is missing.
    assert (metrics["accepted"], metrics["rejected"], metrics["missing"]) == (0, 3, 1)


def test_a_second_reply_to_one_instruction_is_a_duplicate():
    strategy = EqualAveraging(S, A)
    sent = send(strategy, [11, 12])
    replies = [honest(sent[11], 0), honest(sent[12], 1), honest(sent[12], 1)]
    _, metrics = strategy.aggregate_train(1, replies)
    assert (metrics["accepted"], metrics["rejected"], metrics["missing"]) == (2, 1, 0)
    assert strategy.rejections == [(1, 12, "duplicate reply from this node")]


def test_the_superlinks_node_unavailable_reply_makes_the_node_missing_not_rejected():
    strategy = EqualAveraging(S, A)
    sent = send(strategy, [11, 12])
    notice = forge(
        error_reply(sent[12], code=5, reason="node offline"), src_node_id=SUPERLINK_NODE_ID
    )
    _, metrics = strategy.aggregate_train(1, [honest(sent[11], 0), notice])
    assert (metrics["accepted"], metrics["rejected"], metrics["missing"]) == (1, 0, 1)


def test_message_ids_are_read_when_pushed_as_flowers_grids_set_them():
    outbox = Outbox()
    message = Message(RecordDict(), dst_node_id=5, message_type="train", group_id="3")
    outbox.add([message])
    assert outbox.outstanding() == {}  # not pushed yet: no id, nothing can answer it
    stamp(message)  # what push_messages does, on the same object
    (sent,) = outbox.outstanding().values()
    assert (sent.node_id, sent.group_id, sent.message_type) == (5, "3", "train")


def test_the_inprocess_grid_stamps_ids_and_replies_like_flower(tmp_path):
    """InProcessGrid, like InMemoryGrid: ids set on the pushed objects, replies refer to them."""
    cfg = fq_config.compose(["num_clients=3", "client.local_steps=5"])
    client = ClientApp()
    client.train()(handle_train)
    grid = InProcessGrid(client, 3, run_config_for(cfg, tmp_path))
    strategy = EqualAveraging(cfg.mdp.num_states, cfg.mdp.num_actions, num_partitions=3)
    plan_config = ConfigRecord({"task": "q_learning", "client.local_steps": 5})
    arrays = ArrayRecord({"q": Array(np.zeros(strategy.shape))})
    messages = strategy.configure_train(4, arrays, plan_config, grid)
    replies = list(grid.send_and_receive(messages))
    by_id = {m.metadata.message_id: m for m in messages}
    assert len(by_id) == 3 and "" not in by_id
    for r in replies:
        asked = by_id[r.metadata.reply_to_message_id]
        assert r.metadata.src_node_id == asked.metadata.dst_node_id
        assert r.metadata.group_id == "4" and r.metadata.message_type == "train"
    _, metrics = strategy.aggregate_train(4, replies)
    assert (metrics["accepted"], metrics["rejected"], metrics["missing"]) == (3, 0, 0)
    assert strategy.partitions.by_node == {1001: 0, 1002: 1, 1003: 2}


# --- which agent a node is -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("by_node", "node", "claimed", "expected"),
    [
        ({}, 5, 2, 2),
        ({5: 2}, 5, 2, 2),
        ({5: 2}, 5, None, 2),  # no claim: the recorded partition
        ({5: 0, 6: 2}, 7, None, 1),  # no claim, new node: the lowest free partition
        ({5: 2}, 5, 1, "this node is partition 2"),  # a node never changes partition
        ({5: 2}, 6, 2, "held by node 5"),  # one node per partition
        ({}, 5, 3, "not a partition of this run (0..2)"),
        ({}, 5, -1, "not a partition of this run"),
        ({}, 5, 0.5, "not a partition of this run"),
        ({5: 0, 6: 1, 7: 2}, 8, None, "all 3 partitions are held"),
    ],
)
def test_assign_partition(by_node, node, claimed, expected):
    if isinstance(expected, int):
        assert assign_partition(by_node, node, claimed, 3) == expected
    else:
        with pytest.raises(InvalidReply, match=re.escape(expected)):
            assign_partition(by_node, node, claimed, 3)


def test_the_server_keeps_each_nodes_partition_and_aggregates_in_its_order():
    strategy = ImportanceAveraging(S, A, 0.3, num_partitions=3)
    claims = {11: 2, 12: 0, 13: 1}
    sent = send(strategy)
    _, metrics = strategy.aggregate_train(1, [honest(sent[n], p) for n, p in claims.items()])
    assert metrics["accepted"] == 3 and strategy.partitions.by_node == claims

    # Round 2: node 11 claims agent 0 (held by node 12): refused, agent 0 stays node 12's.
    sent = send(strategy, server_round=2)
    replies = [honest(sent[11], 0, 2), honest(sent[12], 0, 2), honest(sent[13], 1, 2)]
    arrays, metrics = strategy.aggregate_train(2, replies)
    assert (metrics["accepted"], metrics["rejected"], metrics["missing"]) == (2, 1, 0)
    assert strategy.rejections == [(2, 11, "claims partition_id 0, but this node is partition 2")]
    nodes = [12, 13]  # partition order
    expected = importance_average(
        np.stack([q_of(n, 2) for n in nodes]), np.stack([counts_of(n, 2) for n in nodes]), 0.3
    )
    np.testing.assert_array_equal(arrays["q"].numpy(), expected)

    screened = screen_replies(
        [honest(m, claims[n], 3) for n, m in send(strategy, server_round=3).items()],
        strategy.outbox, strategy.reply_specs, strategy.partitions,
    )
    assert [(u.partition, u.node_id) for u in screened.updates] == [(0, 12), (1, 13), (2, 11)]


def test_a_new_node_cannot_take_a_held_or_extra_partition():
    strategy = EqualAveraging(S, A, num_partitions=3)
    sent = send(strategy)
    strategy.aggregate_train(1, [honest(sent[n], p) for p, n in enumerate(NODES)])
    sent = send(strategy, [*NODES, 14, 15], server_round=2)  # two strangers join
    replies = [honest(sent[n], p, 2) for p, n in enumerate(NODES)]
    replies += [honest(sent[14], 0, 2), honest(sent[15], 3, 2)]
    arrays, metrics = strategy.aggregate_train(2, replies)
    np.testing.assert_array_equal(
        arrays["q"].numpy(), equal_average(np.stack([q_of(n, 2) for n in NODES]))
    )
    assert (metrics["accepted"], metrics["rejected"], metrics["missing"]) == (3, 2, 0)
    assert [r[1:] for r in strategy.rejections] == [
        (14, "claims partition_id 0, held by node 11"),
        (15, "partition_id 3 is not a partition of this run (0..2)"),
    ]


def test_two_new_nodes_claiming_one_partition_lowest_node_id_wins_whatever_the_order():
    for order in ([12, 11], [11, 12]):
        strategy = EqualAveraging(S, A, num_partitions=2)
        sent = send(strategy, [11, 12])
        strategy.aggregate_train(1, [honest(sent[n], 0) for n in order])
        assert strategy.partitions.by_node == {11: 0}
        assert [r[1] for r in strategy.rejections] == [12]


# --- what the round asked for --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (10**400, "too large for a float"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (1e18, "not a finite number"),
        (-(10**16), "not a finite number"),
    ],
)
def test_absurd_metrics_are_rejected_and_never_crash(value, reason):
    strategy = EqualAveraging(S, A, num_partitions=3)
    sent = send(strategy)
    bad = reply(sent[13], {"q": q_of(13)}, {"partition_id": 2, "num_samples": value})
    replies = [honest(sent[11], 0), honest(sent[12], 1), bad]
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = equal_average(np.stack([q_of(11), q_of(12)]))
    np.testing.assert_array_equal(arrays["q"].numpy(), expected)
    assert (metrics["accepted"], metrics["rejected"]) == (2, 1)
    assert reason in strategy.rejections[0][2]
    assert metrics["num_samples"] == STEPS
    with pytest.raises(InvalidReply, match="'x'"):
        check_metrics({"x": value})
    assert check_metrics({"x": 1e15, "y": -3}) == {"x": 1e15, "y": -3}


def test_num_samples_is_what_the_server_asked_for_not_the_clients_claim():
    strategy = EqualAveraging(S, A)
    sent = send(strategy, [11, 12])
    replies = [honest(sent[11], 0, num_samples=10**9), honest(sent[12], 1, num_samples=0)]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["num_samples"] == STEPS
    sent = send(strategy, [11, 12], server_round=2, config={"client.local_steps": 3})
    _, metrics = strategy.aggregate_train(2, [error_reply(m) for m in sent.values()])
    assert "num_samples" not in metrics  # nothing accepted: no samples


@pytest.mark.parametrize(
    ("sampling", "counts", "ok"),
    [
        ("markovian", np.array([[STEPS, 0, 0], [0, 0, 0]]), True),
        ("markovian", np.array([[STEPS - 1, 0, 0], [0, 0, 0]]), False),
        ("markovian", np.full((S, A), 83_333), False),  # every entry "visited" a lot
        ("markovian", np.array([[10**18, 0, 0], [0, 0, 0]]), False),  # one entry taken over
        ("generative", np.full((S, A), STEPS), True),
        ("generative", np.array([[STEPS, STEPS, STEPS], [STEPS, STEPS, STEPS + 1]]), False),
    ],
)
def test_visit_counts_must_be_those_of_the_round(sampling, counts, ok):
    strategy = ImportanceAveraging(S, A, 0.5)
    config = {"client.local_steps": STEPS, "client.sampling": sampling}
    sent = send(strategy, [11, 12], config=config)
    good = np.full((S, A), STEPS) if sampling == "generative" else counts_of(11)
    replies = [
        reply(sent[11], {"q": q_of(11), "counts": good}, {"partition_id": 0}),
        reply(sent[12], {"q": q_of(12), "counts": counts}, {"partition_id": 1}),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["accepted"] == (2 if ok else 1)
    if not ok:
        np.testing.assert_array_equal(arrays["q"].numpy(), q_of(11))
        with pytest.raises(InvalidReply, match="counts"):
            check_visit_counts(counts, STEPS, sampling)


def test_the_value_bound_is_one_sided_where_the_theory_says_so():
    from flower_qlearn.strategies import registry

    from flower_qlearn.agent import experiment_mdp

    registry.load_all()
    floors = {}
    for name in ("equal", "importance", "average_reward", "dasa"):
        settings = fq_config.settings(fq_config.compose([f"strategy={name}", "mdp=garnet"]))
        plan = registry.STRATEGIES[name].build(settings, experiment_mdp(settings["mdp"]))
        floors[name] = {spec.name: spec.low for spec in plan.strategy.reply_specs}
    # Q >= 0 for Q-learning from 0 with rewards in [0, 1] (average reward: normalized Q in
    # [0, 1]); visit counts are integers >= 0 anyway; DASA's operator g is signed.
    assert floors == {
        "equal": {"q": 0.0},
        "importance": {"q": 0.0, "counts": None},
        "average_reward": {"q": 0.0},
        "dasa": {"g": None},
    }
    strategy = EqualAveraging(S, A, value_floor=0.0)
    sent = send(strategy, [11, 12])
    below = q_of(12)
    below[1, 2] = -1e-12
    arrays, metrics = strategy.aggregate_train(
        1, [reply(sent[11], {"q": np.zeros((S, A))}), reply(sent[12], {"q": below})]
    )
    np.testing.assert_array_equal(arrays["q"].numpy(), np.zeros((S, A)))  # 0 itself is fine
    assert "lower bound 0.0" in strategy.rejections[0][2]


# --- DASA: the iteration is the server's record, the agent slot the server's map -----------------


def operator(to: Message, partition: int, g: float, iteration: int | None = None) -> Message:
    t = int(to.content["config"]["iteration"]) if iteration is None else iteration
    return reply(to, {"g": np.full((S, A), g)}, {"partition_id": partition, "iteration": t})


def test_dasa_takes_the_iteration_it_sent_and_the_agent_it_recorded():
    strategy = DASA(S, A, num_agents=3, rule="delayed", step_size=1.0)
    arrays = ArrayRecord({"q": Array(np.zeros((S, A)))})
    grid = NodeListGrid(NODES)
    sent = {m.metadata.dst_node_id: stamp(m) for m in strategy.configure_train(1, arrays, {}, grid)}
    replies = [operator(sent[n], p, p + 1.0) for p, n in enumerate(NODES)]
    new, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(new["q"].numpy(), np.full((S, A), 2.0))  # mean of 1, 2, 3

    sent = {m.metadata.dst_node_id: stamp(m) for m in strategy.configure_train(2, new, {}, grid)}
    replies = [
        operator(sent[11], 0, 10.0),
        operator(sent[12], 0, 50.0),  # node 12 (agent 1) claims agent 0's slot
        operator(sent[13], 2, 70.0, iteration=0),  # a false (older) iteration
    ]
    new, metrics = strategy.aggregate_train(2, replies)
    assert (metrics["accepted"], metrics["rejected"]) == (1, 2)
    reasons = [reason for _, _, reason in strategy.rejections]
    assert reasons == [
        "operator says iteration 0, but the node was sent iteration 1",
        "claims partition_id 0, but this node is partition 1",
    ]
    # Agent 0's operator is node 11's; agents 1 and 2 keep their iteration-0 operators.
    assert {a: (op.computed_at, op.g[0, 0]) for a, op in strategy.buffer.freshest.items()} == {
        0: (1, 10.0), 1: (0, 2.0), 2: (0, 3.0)
    }
    np.testing.assert_array_equal(new["q"].numpy(), np.full((S, A), 2.0 + 15.0 / 3))


def test_dasa_async_style_instructions_keep_their_own_iteration_per_node():
    strategy = DASA(S, A, num_agents=2, rule="delayed", step_size=1.0, execution="async")
    theta = ArrayRecord({"q": Array(np.zeros((S, A)))})
    (to_a,) = [stamp(m) for m in strategy.instructions(0, theta, ConfigRecord({}), [11])]
    (to_b,) = [stamp(m) for m in strategy.instructions(1, theta, ConfigRecord({}), [12])]
    _, metrics = strategy.advance(1, np.zeros((S, A)), [operator(to_a, 0, 1.0, iteration=1)])
    assert metrics["rejected"] == 1  # node 11 was sent iteration 0
    _, metrics = strategy.advance(2, np.zeros((S, A)), [operator(to_b, 1, 1.0)])
    assert metrics["accepted"] == 1 and strategy.buffer.freshest[1].computed_at == 1


# --- end to end: a lying ClientApp among honest ones, through the real apps ----------------------


def lying_client(lies: dict[int, dict]) -> ClientApp:
    """The real ClientApp, with the reply metrics of some agents overwritten."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        answer = handle_train(message, context)
        agent = int(context.node_config["partition-id"])
        if agent not in lies or answer.has_error():
            return answer
        metrics = dict(answer.content["metrics"])
        arrays = {k: v.numpy() for k, v in answer.content["arrays"].items()}
        metrics.update(lies[agent].get("metrics", {}))
        arrays.update(lies[agent].get("arrays", {}))
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord(metrics),
        })
        return Message(content, reply_to=message)

    return app


def bare_equal_q(cfg, agents: list[int], num_rounds: int) -> np.ndarray:
    """FedAsynQ-EqAvg over ``agents`` only, without Flower (the kernels, seeds of the run)."""
    settings = fq_config.settings(cfg)
    envs = {k: agent_env(settings, k) for k in agents}
    mdp = envs[agents[0]].mdp
    q_bar = np.zeros((mdp.num_states, mdp.num_actions))
    states = {
        k: int(np.random.default_rng([cfg.seed, k, 0]).choice(mdp.num_states, p=mdp.initial))
        for k in agents
    }
    c = cfg.client
    for r in range(1, num_rounds + 1):
        tables = []
        for k in agents:
            q, n, env = q_bar.copy(), np.zeros(q_bar.shape, dtype=np.int64), envs[k]
            states[k] = run_async_q(q, n, env.mdp.R, cfg.mdp.gamma, c.learning_rate, env.p_cdf,
                                    env.pi_cdf, states[k], c.local_steps,
                                    np.random.default_rng([cfg.seed, k, r]))
            tables.append(q)
        q_bar = np.mean(tables, axis=0)
    return q_bar


def test_a_client_impersonating_another_agent_is_refused_every_round(tmp_path):
    overrides = ["strategy=equal", "num_clients=3", "num_rounds=3", "log_every=0",
                 "figures=false", "client.local_steps=20", "client.behavior=uniform"]
    cfg = fq_config.compose(overrides)
    # Agent 2 says it is agent 0 and claims 10^18 samples.
    app = lying_client({2: {"metrics": {"partition_id": 0, "num_samples": 10**18}}})
    grid = InProcessGrid(app, 3, run_config_for(cfg, tmp_path))
    history = run_server(grid, fq_config.settings(cfg), tmp_path)
    assert [(r["accepted"], r["rejected"], r["missing"]) for r in history] == [(2, 1, 0)] * 3
    assert [r["samples_per_agent"] for r in history] == [20, 40, 60]
    np.testing.assert_allclose(
        np.load(tmp_path / "q_table.npy"), bare_equal_q(cfg, [0, 1], 3), rtol=0, atol=1e-15
    )


def test_inflated_visit_counts_are_refused_end_to_end(tmp_path):
    overrides = ["strategy=importance", "num_clients=2", "num_rounds=2", "log_every=0",
                 "figures=false", "client.local_steps=20"]
    cfg = fq_config.compose(overrides)
    huge = np.zeros((cfg.mdp.num_states, cfg.mdp.num_actions), dtype=np.int64)
    huge[0, 0] = 10**18
    grid = InProcessGrid(lying_client({1: {"arrays": {"counts": huge}}}), 2,
                         run_config_for(cfg, tmp_path))
    history = run_server(grid, fq_config.settings(cfg), tmp_path)
    assert [(r["accepted"], r["rejected"]) for r in history] == [(1, 1)] * 2
    # Only agent 0 was averaged in: the importance average of one table is that table.
    np.testing.assert_allclose(
        np.load(tmp_path / "q_table.npy"), bare_equal_q(cfg, [0], 2), rtol=0, atol=1e-15
    )


class StrangersJoinGrid(InProcessGrid):
    """The in-process grid, where strangers' nodes join after round ``after``, as anyone who can
    register a key with a SuperLink can join its federation mid-run (docs/deployment.md).

    ``strangers`` maps a node id to the partition-id of its node config; each runs the real
    ClientApp with its own Context.
    """

    def __init__(self, *args, strangers: dict[int, int], after: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.strangers, self.after, self.rounds = dict(strangers), after, 0
        for node_id, partition in strangers.items():
            self.contexts[node_id] = Context(
                run_id=self.run.run_id,
                node_id=node_id,
                node_config={"partition-id": partition, "num-partitions": len(self._node_ids)},
                state=RecordDict(),
                run_config=dict(self.contexts[FIRST_NODE_ID].run_config),
            )

    def get_node_ids(self):
        joined = list(self.strangers) if self.rounds >= self.after else []
        return [*super().get_node_ids(), *joined]

    def send_and_receive(self, messages, *, timeout=None):
        self.rounds += 1
        return super().send_and_receive(messages, timeout=timeout)


@pytest.mark.parametrize("strategy", ["importance", "dasa"])
def test_strangers_joining_mid_run_are_refused_and_the_numbers_are_the_honest_runs(
    strategy, tmp_path
):
    """A duplicate of agent 0 (a lower node id than the honest one) and an extra agent 3 join
    after round 1: refused every round, never averaged in; the run equals the honest run."""
    from flower_qlearn.client_app import app as client_app
    from flower_qlearn.server_app import app as server_app

    overrides = [f"strategy={strategy}", "num_clients=3", "num_rounds=4", "log_every=0",
                 "figures=false", "client.local_steps=20"]
    cfg = fq_config.compose(overrides)
    run_config = run_config_for(cfg, tmp_path / "attacked")
    grid = StrangersJoinGrid(client_app, 3, run_config, strangers={7: 0, 8: 3}, after=1)
    run_server_app(server_app, grid, run_config)
    attacked = RunResult.load(tmp_path / "attacked")
    honest = run_experiment([*overrides, f"output_dir={tmp_path / 'honest'}"])

    np.testing.assert_array_equal(attacked.q_table, honest.q_table)
    traffic = {"wall_s", "rejected", "bytes_up", "bytes_down"}
    strip = [{k: v for k, v in row.items() if k not in traffic} for row in attacked.history]
    assert strip == [{k: v for k, v in row.items() if k not in traffic} for row in honest.history]
    assert [(r["accepted"], r["rejected"], r["missing"]) for r in attacked.history] == [
        (3, 0, 0), (3, 2, 0), (3, 2, 0), (3, 2, 0)
    ]
