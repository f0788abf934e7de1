"""Tests for strategies/: pure aggregation functions, reply validation, Flower layer."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import pytest
from flower_helpers import (
    CallbackGrid,
    NodeListGrid,
    error_reply,
    instruction,
    reply,
    task_identity,
)
from flower_qlearn.strategies import (
    ArraySpec,
    EqualAveraging,
    ImportanceAveraging,
    InvalidReply,
    QTableStrategy,
    equal_average,
    importance_average,
    importance_weights,
    parse_reply,
    split_replies,
)
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

S, A = 3, 2
LR = 0.3


pytestmark = pytest.mark.usefixtures("flower_identity")


# ---------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------


def test_equal_average_hand_computed():
    tables = np.array(
        [
            [[0.0, 3.0], [6.0, -3.0]],
            [[3.0, 0.0], [0.0, 3.0]],
            [[6.0, 6.0], [3.0, 9.0]],
        ]
    )
    expected = np.array([[3.0, 3.0], [3.0, 3.0]])
    np.testing.assert_array_equal(equal_average(tables), expected)


def test_equal_average_is_not_weighted_and_rejects_bad_shapes():
    tables = np.stack([np.zeros((2, 2)), np.ones((2, 2))])
    np.testing.assert_array_equal(equal_average(tables), np.full((2, 2), 0.5))
    with pytest.raises(ValueError):
        equal_average(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        equal_average(np.zeros((0, 2, 2)))


def test_importance_weights_two_agents_hand_computed():
    # lr = 0.5: raw weight (1 - lr)^(-N) = 2^N.
    counts = np.array([[[0, 1], [2, 3]], [[0, 3], [1, 3]]])
    weights = importance_weights(counts, learning_rate=0.5)
    expected_agent0 = np.array([[1 / 2, 2 / (2 + 8)], [4 / (4 + 2), 1 / 2]])
    np.testing.assert_allclose(weights[0], expected_agent0, rtol=1e-15)
    np.testing.assert_allclose(weights[1], 1 - expected_agent0, rtol=1e-15)


def test_importance_weights_match_raw_formula():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 20, size=(4, S, A))
    for lr in (0.01, 0.1, 0.3, 0.9):
        raw = (1 - lr) ** (-counts.astype(float))
        expected = raw / raw.sum(axis=0)
        np.testing.assert_allclose(importance_weights(counts, lr), expected, rtol=1e-12)


def test_importance_weights_do_not_overflow():
    # 2^100000 overflows float64; the log-space softmax must give the exact limits.
    with np.errstate(over="ignore"):
        assert np.isinf(np.power(2.0, 1e5))
    counts = np.array([100_000, 100_000 - 1]).reshape(2, 1, 1)
    weights = importance_weights(counts, learning_rate=0.5)
    assert np.all(np.isfinite(weights))
    np.testing.assert_allclose(weights.ravel(), [1 / 1.5, 0.5 / 1.5], rtol=1e-14)

    weights = importance_weights(np.array([100_000, 0]).reshape(2, 1, 1), learning_rate=0.5)
    assert np.all(np.isfinite(weights))
    assert weights[0, 0, 0] == 1.0
    assert 0.0 <= weights[1, 0, 0] < 1e-300


def test_importance_weights_unsigned_counts_do_not_wrap():
    counts = np.array([[[0, 1], [2, 3]], [[0, 3], [1, 3]]], dtype=np.uint32)
    np.testing.assert_array_equal(
        importance_weights(counts, 0.5), importance_weights(counts.astype(np.int64), 0.5)
    )


def test_importance_weights_learning_rate_one_is_the_limit():
    counts = np.array([3, 5, 5, 0]).reshape(4, 1, 1)
    np.testing.assert_array_equal(importance_weights(counts, 1.0).ravel(), [0, 0.5, 0.5, 0])
    # The limit is approached continuously as lr -> 1.
    np.testing.assert_allclose(
        importance_weights(counts, 1 - 1e-9).ravel(), [0, 0.5, 0.5, 0], atol=1e-15
    )
    unvisited = np.zeros((4, 1, 1), dtype=np.int64)
    np.testing.assert_array_equal(importance_weights(unvisited, 1.0), np.full((4, 1, 1), 0.25))


def test_importance_weights_unvisited_entries_get_one_over_k():
    counts = np.zeros((5, S, A), dtype=np.int64)
    counts[2, 0, 0] = 7  # one visited entry
    weights = importance_weights(counts, LR)
    unvisited = np.ones((S, A), dtype=bool)
    unvisited[0, 0] = False
    np.testing.assert_allclose(weights[:, unvisited], 0.2, rtol=1e-15)

    # Where every agent still holds the broadcast value, the entry is unchanged.
    rng = np.random.default_rng(1)
    broadcast = rng.normal(size=(S, A))
    tables = np.stack([broadcast] * 5)
    tables[2, 0, 0] = 42.0
    average = importance_average(tables, counts, LR)
    np.testing.assert_allclose(average[unvisited], broadcast[unvisited], rtol=1e-15)


def test_importance_average_is_the_plain_numpy_expression_bit_for_bit():
    """importance_weights/importance_average (in place, no copy of int64 counts) give exactly
    the plain expressions' numbers: softmax of (N - max N) * -log1p(-lr), then sum(w * Q);
    for int64, unsigned and float counts and lr = 1; the inputs are left as they were."""
    rng = np.random.default_rng(7)
    tables = rng.normal(size=(6, 40, 3))
    for counts in (rng.integers(0, 60, size=(6, 40, 3)),
                   rng.integers(0, 60, size=(6, 40, 3)).astype(np.uint16),
                   rng.integers(0, 60, size=(6, 40, 3)).astype(np.float64)):
        before = counts.copy()
        for lr in (0.05, 0.5, 1.0):
            wide = counts.astype(np.int64 if counts.dtype.kind in "iu" else np.float64)
            excess = wide - wide.max(axis=0, keepdims=True)
            raw = ((excess == 0).astype(np.float64) if lr == 1.0
                   else np.exp(excess.astype(np.float64) * -math.log1p(-lr)))
            weights = raw / raw.sum(axis=0, keepdims=True)
            assert np.array_equal(importance_weights(counts, lr), weights)
            assert np.array_equal(importance_average(tables, counts, lr),
                                  np.sum(weights * tables, axis=0))
        assert np.array_equal(counts, before) and counts.dtype == before.dtype


def test_the_value_bound_refuses_exactly_what_max_abs_exceeds():
    """A reply is refused by the value bound iff max |q| > bound (the check takes max and min
    instead of building |q|): at the bound, just above it, on either sign."""
    from flower_qlearn.strategies.validation import ArraySpec, _check_array

    spec = ArraySpec("q", (2, 2), "float")
    for extreme in (100.0, -100.0, np.nextafter(100.0, 200.0), -np.nextafter(100.0, 200.0),
                    99.5, -0.0):
        q = np.array([[0.5, -1.0], [extreme, 3.0]])
        if np.max(np.abs(q)) > 100.0:
            with pytest.raises(InvalidReply, match=r"\|value\| .* > bound 100"):
                _check_array(q, spec, 100.0)
        else:
            assert _check_array(q, spec, 100.0) is q


def test_importance_weights_sum_to_one():
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 5_000, size=(6, 4, 3))
    for lr in (1e-4, 0.05, 0.5, 0.99, 1.0):
        weights = importance_weights(counts, lr)
        assert np.all(weights >= 0)
        np.testing.assert_allclose(weights.sum(axis=0), 1.0, rtol=1e-14)


def test_importance_average_hand_computed():
    tables = np.array([[[1.0, 10.0]], [[3.0, 20.0]]])  # (K=2, S=1, A=2)
    counts = np.array([[[1, 0]], [[0, 0]]])
    # lr = 0.5: entry 0 weights (2, 1)/3; entry 1 unvisited -> (1/2, 1/2).
    expected = np.array([[(2 * 1.0 + 1 * 3.0) / 3, 15.0]])
    np.testing.assert_allclose(importance_average(tables, counts, 0.5), expected, rtol=1e-15)


@pytest.mark.parametrize("lr", [0.0, -0.1, 1.5])
def test_importance_weights_reject_bad_learning_rate(lr):
    with pytest.raises(ValueError):
        importance_weights(np.zeros((2, 1, 1), dtype=np.int64), lr)


def test_importance_rejects_bad_counts():
    with pytest.raises(ValueError):
        importance_weights(np.array([[[-1]], [[0]]]), LR)
    with pytest.raises(ValueError):
        importance_average(np.zeros((2, S, A)), np.zeros((3, S, A), dtype=int), LR)


# ---------------------------------------------------------------------------
# Flower layer
# ---------------------------------------------------------------------------


def global_arrays(q: np.ndarray | None = None) -> ArrayRecord:
    return ArrayRecord({"q": Array(np.zeros((S, A)) if q is None else q)})


#: The round every test instruction asks for: 90 Markovian local steps.
ROUND = {"client.local_steps": 90, "client.sampling": "markovian"}


def good_arrays(node_id: int) -> dict[str, np.ndarray]:
    """A valid reply payload whose values depend on the node id (counts of a ROUND)."""
    rng = np.random.default_rng(node_id)
    return {
        "q": rng.uniform(0, 5, size=(S, A)),
        "counts": rng.multinomial(90, np.full(S * A, 1 / (S * A))).reshape(S, A),
    }


def send(strategy: QTableStrategy, node_ids: list[int], server_round: int = 1) -> list[Message]:
    """configure_train over a node-list grid, then stamp ids as a Grid push would."""
    messages = strategy.configure_train(
        server_round, global_arrays(), ConfigRecord(ROUND), NodeListGrid(node_ids)
    )
    for message in messages:
        message.metadata.__dict__["_message_id"] = f"ins-{message.metadata.dst_node_id}"
    return messages


def expected_aggregate(strategy: QTableStrategy, node_ids: list[int]) -> np.ndarray:
    """The pure function applied to the good payloads of `node_ids` (sorted order)."""
    payloads = [good_arrays(node_id) for node_id in sorted(node_ids)]
    tables = np.stack([p["q"] for p in payloads])
    if isinstance(strategy, ImportanceAveraging):
        return importance_average(tables, np.stack([p["counts"] for p in payloads]), LR)
    return equal_average(tables)


def test_configure_train_one_message_per_node():
    strategy = EqualAveraging(S, A)
    config = ConfigRecord({"local_steps": 10})
    arrays = global_arrays(np.arange(S * A, dtype=np.float64).reshape(S, A))
    messages = strategy.configure_train(2, arrays, config, NodeListGrid([30, 10, 20]))

    assert [m.metadata.dst_node_id for m in messages] == [10, 20, 30]
    for message in messages:
        assert message.metadata.message_type == "train"
        assert message.metadata.group_id == "2"
        sent_config = message.content["config"]
        assert sent_config["server-round"] == 2
        assert sent_config["local_steps"] == 10
        np.testing.assert_array_equal(message.content["arrays"]["q"].numpy(), arrays["q"].numpy())
    assert "server-round" not in config  # the caller's config is not mutated


@pytest.mark.parametrize("strategy_cls", [EqualAveraging, ImportanceAveraging])
def test_aggregate_train_equals_pure_function(strategy_cls):
    strategy = make_strategy(strategy_cls)
    node_ids = [7, 3, 5]
    messages = send(strategy, node_ids)
    # Replies arrive in a scrambled order; the aggregate must not depend on it.
    replies = [
        reply(m, good_arrays(m.metadata.dst_node_id), {"num_samples": 10 * i})
        for i, m in enumerate(reversed(messages), start=1)
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)

    np.testing.assert_allclose(
        arrays["q"].numpy(), expected_aggregate(strategy, node_ids), rtol=1e-15
    )
    assert arrays["q"].dtype == "float64"
    assert metrics["accepted"] == 3
    assert metrics["rejected"] == 0
    assert metrics["missing"] == 0
    assert metrics["kept_previous"] == 0
    assert metrics["num_samples"] == 90  # the server's local_steps, not the clients' 10..30
    q_bytes = len(Array(np.zeros((S, A))).data)
    assert metrics["bytes_down"] == 3 * q_bytes
    assert metrics["bytes_up"] == sum(
        len(a.data) for r in replies for a in r.content["arrays"].values()
    )


def make_strategy(strategy_cls, **kwargs) -> QTableStrategy:
    if strategy_cls is ImportanceAveraging:
        return ImportanceAveraging(S, A, LR, **kwargs)
    return strategy_cls(S, A, **kwargs)


def with_arrays(**changes: np.ndarray | None) -> Callable[[Message], Message]:
    """A bad reply: the node's good payload with some arrays replaced (None = dropped)."""

    def build(to: Message) -> Message:
        arrays = good_arrays(to.metadata.dst_node_id)
        for name, value in changes.items():
            if value is None:
                del arrays[name]
            else:
                arrays[name] = value
        return reply(to, arrays, {"num_samples": 1})

    return build


def nan_q() -> np.ndarray:
    q = np.ones((S, A))
    q[1, 1] = np.nan
    return q


BAD_REPLIES: dict[str, tuple[Callable[[Message], Message], str]] = {
    "flower error": (lambda to: error_reply(to, code=7, reason="boom"), "code 7"),
    "no arrays record": (lambda to: reply(to, None, {"num_samples": 1}), "no ArrayRecord"),
    "arrays is not an ArrayRecord": (
        lambda to: Message(RecordDict({"arrays": MetricRecord({"q": 1.0})}), reply_to=to),
        "no ArrayRecord",
    ),
    "missing q": (with_arrays(q=None), "missing array 'q'"),
    "missing counts": (with_arrays(counts=None), "missing array 'counts'"),
    "wrong shape": (with_arrays(q=np.ones((S + 1, A))), "shape"),
    "float32": (with_arrays(q=np.ones((S, A), dtype=np.float32)), "float32"),
    "nan": (with_arrays(q=nan_q()), "NaN"),
    "inf": (with_arrays(q=np.full((S, A), np.inf)), "Inf"),
    "beyond value bound": (with_arrays(q=np.full((S, A), 1e6)), "bound"),
    "negative counts": (with_arrays(counts=-np.ones((S, A), dtype=np.int64)), "negative"),
    "float counts": (with_arrays(counts=np.ones((S, A))), "integer dtype"),
    "bool counts": (with_arrays(counts=np.ones((S, A), dtype=bool)), "integer dtype"),
}


@pytest.mark.parametrize("kind", list(BAD_REPLIES))
def test_bad_reply_is_rejected_and_not_averaged(kind, caplog):
    build_bad, reason_part = BAD_REPLIES[kind]
    strategy = ImportanceAveraging(S, A, LR, value_bound=100.0)
    messages = send(strategy, [1, 2, 3, 4])
    bad_node = 2
    replies = [
        build_bad(m)
        if m.metadata.dst_node_id == bad_node
        else reply(m, good_arrays(m.metadata.dst_node_id))
        for m in messages
    ]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, replies)

    np.testing.assert_allclose(
        arrays["q"].numpy(), expected_aggregate(strategy, [1, 3, 4]), rtol=1e-15
    )
    assert (metrics["accepted"], metrics["rejected"], metrics["missing"]) == (3, 1, 0)
    assert len(strategy.rejections) == 1
    server_round, node_id, reason = strategy.rejections[0]
    assert (server_round, node_id) == (1, bad_node)
    assert reason_part in reason
    assert "\n" not in reason
    assert any(
        f"node {bad_node}" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )


def test_equal_averaging_rejects_bad_q_too():
    strategy = EqualAveraging(S, A)
    messages = send(strategy, [1, 2, 3])
    replies = [reply(m, good_arrays(m.metadata.dst_node_id)) for m in messages[:2]]
    replies.append(with_arrays(q=np.ones((S, A), dtype=np.float32))(messages[2]))
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["q"].numpy(), expected_aggregate(strategy, [1, 2]))
    assert metrics["rejected"] == 1


def test_missing_and_duplicate_replies():
    strategy = EqualAveraging(S, A)
    messages = send(strategy, [1, 2, 3, 4])
    replies = [reply(m, good_arrays(m.metadata.dst_node_id)) for m in messages[:2]]
    replies.append(reply(messages[0], {"q": np.full((S, A), 99.0)}))  # node 1 answers twice
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["q"].numpy(), expected_aggregate(strategy, [1, 2]))
    # Nodes 3 and 4 never answered; node 1's second reply is rejected, not counted twice.
    assert (metrics["accepted"], metrics["rejected"], metrics["missing"]) == (2, 1, 2)
    assert strategy.rejections == [(1, 1, "duplicate reply from this node")]


def test_too_few_valid_replies_keep_previous(caplog):
    strategy = EqualAveraging(S, A, min_replies=3)
    messages = send(strategy, [1, 2, 3, 4])
    replies = [
        reply(messages[0], good_arrays(1)),
        reply(messages[1], good_arrays(2)),
        error_reply(messages[2]),
    ]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(5, replies)
    assert arrays is None
    assert metrics["kept_previous"] == 1
    assert (metrics["accepted"], metrics["rejected"], metrics["missing"]) == (2, 1, 1)
    assert any("previous global Q" in r.getMessage() for r in caplog.records)


def test_all_replies_bad_never_raises():
    strategy = EqualAveraging(S, A)
    messages = send(strategy, [1, 2])
    arrays, metrics = strategy.aggregate_train(1, [error_reply(m) for m in messages])
    assert arrays is None
    assert metrics["kept_previous"] == 1
    arrays, metrics = strategy.aggregate_train(2, [])
    assert arrays is None
    assert metrics["missing"] == 2


def test_parse_reply_and_split_replies_directly():
    to = instruction(RecordDict(), node_id=9)
    specs = [ArraySpec("q", (S, A), "float"), ArraySpec("counts", (S, A), "count")]
    update = parse_reply(reply(to, good_arrays(9), {"num_samples": 4, "loss": 0.5}), specs)
    assert update.node_id == 9
    assert update.arrays["counts"].dtype == np.int64
    assert update.metrics == {"num_samples": 4, "loss": 0.5}
    assert update.num_bytes == sum(len(Array(v).data) for v in good_arrays(9).values())

    with pytest.raises(InvalidReply, match=r"code 3.*disk full"):
        parse_reply(error_reply(to, code=3, reason="disk full"), specs)

    a, b = instruction(RecordDict(), node_id=5), instruction(RecordDict(), node_id=2)
    updates, rejected = split_replies(
        [reply(a, good_arrays(5)), reply(b, good_arrays(2)), error_reply(to)], specs
    )
    assert [u.node_id for u in updates] == [2, 5]
    assert [node for node, _ in rejected] == [9]

    with pytest.raises(ValueError):
        ArraySpec("q", (S, A), "complex")


@pytest.mark.parametrize(
    "kwargs", [{"num_states": 0}, {"num_actions": -1}, {"min_replies": 0}, {"value_bound": 0.0}]
)
def test_constructor_validation(kwargs):
    params = {"num_states": S, "num_actions": A, **kwargs}
    with pytest.raises(ValueError):
        EqualAveraging(params.pop("num_states"), params.pop("num_actions"), **params)


def test_importance_constructor_validation_and_specs():
    with pytest.raises(ValueError):
        ImportanceAveraging(S, A, learning_rate=0.0)
    specs = ImportanceAveraging(S, A, 0.5).reply_specs
    assert [(s.name, s.shape, s.kind) for s in specs] == [
        ("q", (S, A), "float"),
        ("counts", (S, A), "count"),
    ]
    assert [s.name for s in EqualAveraging(S, A).reply_specs] == ["q"]


def test_summary_logs_class_and_parameters(caplog):
    with caplog.at_level(logging.INFO, logger="flwr"):
        ImportanceAveraging(S, A, 0.25, min_replies=2).summary()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "ImportanceAveraging" in text
    assert "learning_rate: 0.25" in text
    assert "min_replies: 2" in text


def test_flower_strategy_start_keeps_previous_q_on_a_failed_round():
    """Flower's own Strategy.start drives the class; a round with no valid reply keeps Q."""
    node_ids = [1, 2, 3]

    def respond(message: Message) -> Message:
        server_round = message.content["config"]["server-round"]
        if server_round == 2:  # every client fails in round 2
            return error_reply(message, reason="crashed")
        q = message.content["arrays"]["q"].numpy() + message.metadata.dst_node_id
        return reply(message, {"q": q}, {"num_samples": 10})

    grid = CallbackGrid(node_ids, respond)
    strategy = EqualAveraging(S, A)
    result = strategy.start(grid, global_arrays(), num_rounds=3)

    # Round 1: 0 + mean(1, 2, 3) = 2; round 2 keeps 2; round 3: 2 + 2 = 4.
    np.testing.assert_allclose(result.arrays["q"].numpy(), np.full((S, A), 4.0))
    round3 = [m for m in grid.sent if m.content["config"]["server-round"] == 3]
    np.testing.assert_allclose(round3[0].content["arrays"]["q"].numpy(), np.full((S, A), 2.0))
    assert result.train_metrics_clientapp[1]["kept_previous"] == 0
    assert result.train_metrics_clientapp[2]["kept_previous"] == 1
    assert result.train_metrics_clientapp[2]["rejected"] == 3
    assert [r[:2] for r in strategy.rejections] == [(2, 1), (2, 2), (2, 3)]


class LateNodesGrid(NodeListGrid):
    """Nodes register one at a time, as SuperNodes do after the ServerApp has started."""

    def __init__(self, node_ids):
        super().__init__(node_ids)
        self.calls = 0

    def get_node_ids(self):
        self.calls += 1
        return list(super().get_node_ids())[: self.calls]


def test_configure_train_waits_for_the_expected_nodes():
    with task_identity():
        grid = LateNodesGrid([11, 12, 13])
        strategy = EqualAveraging(2, 2, min_available_nodes=3, wait_timeout=5)
        messages = strategy.configure_train(1, ArrayRecord({"q": Array(np.zeros((2, 2)))}),
                                            ConfigRecord({}), grid)
        assert [m.metadata.dst_node_id for m in messages] == [11, 12, 13]
        # with a short timeout it goes ahead with the nodes that are there
        grid = LateNodesGrid([11, 12, 13])
        grid.calls = -10**6  # never grows
        strategy = EqualAveraging(2, 2, min_available_nodes=3, wait_timeout=0.1)
        assert strategy.configure_train(1, ArrayRecord({"q": Array(np.zeros((2, 2)))}),
                                        ConfigRecord({}), grid) == []


def test_load_all_imports_every_module_of_the_package():
    """registry.load_all (its module list read once per process) imports each module that
    pkgutil lists in the strategies package."""
    import pkgutil
    import sys

    from flower_qlearn.strategies import registry

    registry.load_all()
    package = sys.modules[registry.__name__.rpartition(".")[0]]
    listed = [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    assert list(registry._package_modules()) == listed and len(listed) > 5
    assert all(name in sys.modules for name in listed)
