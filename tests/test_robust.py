"""Robust aggregation (strategies/robust.py): hand-computed values, bare re-implementations,
``robust=none`` bit-identical to the plain rules, DASA's defences, and an end-to-end poisoned
run through the real apps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flower_helpers import NodeListGrid, reply, stamp
from flower_qlearn.strategies import robust
from flower_qlearn.strategies.dasa import rule
from flower_qlearn.strategies.dasa.rule import Defence, Operator
from flower_qlearn.strategies.equal import EqualAveraging, equal_average
from flower_qlearn.strategies.importance import ImportanceAveraging, importance_average
from flower_qlearn.strategies.robust import Robust
from flwr.app import Array, ArrayRecord, ConfigRecord

from flower_qlearn import config as fq_config
from flower_qlearn import run_experiment

# ------------------------------------------------------------------------------------------
# Bare re-implementations: one entry at a time, plain Python lists.
# ------------------------------------------------------------------------------------------


def bare_k(n: int, f: float) -> int:
    return int(math.floor(f * n + 1e-9))


def bare_trimmed_mean(column: list[float], f: float) -> float:
    k = bare_k(len(column), f)
    kept = sorted(column)[k : len(column) - k]
    return sum(kept) / len(kept)


def bare_weighted_median(column: list[float], weights: list[float]) -> float:
    pairs = sorted(
        ((v, i, w) for i, (v, w) in enumerate(zip(column, weights, strict=True)) if w > 0)
    )
    total = sum(w for _, _, w in pairs)
    acc, lower, upper = 0.0, None, None
    for v, _, w in pairs:
        acc += w
        if lower is None and 2 * acc >= total:
            lower = v
        if upper is None and 2 * acc > total:
            upper = v
    return (lower + upper) / 2


def bare_robust_importance(column, counts, lr, method, f) -> float:
    agents = [i for i, c in enumerate(counts) if c > 0] or list(range(len(counts)))

    def weights(group):  # (1 - lr)^(-N_i), scaled by (1 - lr)^(max N): lr = 1 is the limit
        top = max(counts[i] for i in group)
        return {i: (1 - lr) ** (top - counts[i]) for i in group}

    if method == "median":
        weight = weights(agents)
        return bare_weighted_median([column[i] for i in agents], [weight[i] for i in agents])
    ordered = sorted(agents, key=lambda i: (column[i], i))
    k = bare_k(len(ordered), f)
    kept = ordered[k : len(ordered) - k]
    weight = weights(kept)
    total = sum(weight[i] for i in kept)
    return sum(weight[i] / total * column[i] for i in kept)


def _per_entry(fn, *arrays):
    k, *shape = arrays[0].shape
    out = np.empty(shape)
    for idx in np.ndindex(*shape):
        out[idx] = fn(*[[a[(j, *idx)] for j in range(k)] for a in arrays])
    return out


# ------------------------------------------------------------------------------------------
# The pure functions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "f", "k"),
    [(20, 0.1, 2), (10, 0.1, 1), (9, 0.1, 0), (1, 0.1, 0), (2, 0.49, 0), (3, 0.49, 1),
     (20, 0.0, 0), (30, 0.1, 3), (10, 0.3, 3), (7, 0.2, 1), (100, 0.49, 49)],
)
def test_num_trimmed_is_floor_of_fraction_times_n(n, f, k):
    assert robust.num_trimmed(n, f) == k
    assert n - 2 * k >= 1


def test_trimmed_mean_and_median_by_hand():
    values = np.array([[1.0], [2.0], [3.0], [100.0]])
    assert robust.trimmed_mean(values, 0.25)[0] == 2.5  # k=1: mean(2, 3)
    assert robust.trimmed_mean(values, 0.1)[0] == 26.5  # k=0: the plain mean
    assert robust.median(values)[0] == 2.5  # even n: mean of the two middle values
    assert robust.median(values[:3])[0] == 2.0
    ties = np.array([[5.0], [5.0], [5.0], [1.0]])
    assert robust.trimmed_mean(ties, 0.25)[0] == 5.0  # sorted 1,5,5,5 -> keep 5,5


def test_trimmed_mean_matches_a_bare_reimplementation():
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 5, 10, 20):
        values = rng.normal(size=(n, 3, 4))
        values[:, 0, 0] = 1.5  # all tied
        for f in (0.0, 0.1, 0.25, 0.49):
            expected = _per_entry(lambda c, f=f: bare_trimmed_mean(c, f), values)
            np.testing.assert_allclose(robust.trimmed_mean(values, f), expected, rtol=1e-13)


def test_no_trimming_is_the_plain_mean_bit_for_bit():
    values = np.random.default_rng(0).normal(size=(9, 5, 2))
    for f in (0.0, 0.1):  # 0.1 * 9 < 1: nothing trimmed
        got = robust.trimmed_mean(values, f)
        assert np.array_equal(got, values.mean(axis=0))
        assert np.array_equal(got, equal_average(values))
    assert np.array_equal(robust.combine(values, "none", 0.3), equal_average(values))


def test_weighted_median_by_hand_and_equal_weights_give_the_median():
    assert robust.weighted_median(np.array([1.0, 2.0, 3.0]), np.array([0.2, 0.2, 0.6])) == 3.0
    assert robust.weighted_median(np.array([1.0, 3.0]), np.array([0.5, 0.5])) == 2.0
    assert robust.weighted_median(np.array([3.0, 1.0, 2.0]), np.array([0.0, 1.0, 1.0])) == 1.5
    values = np.random.default_rng(1).normal(size=(6, 4, 3))
    np.testing.assert_array_equal(
        robust.weighted_median(values, np.ones_like(values)), np.median(values, axis=0)
    )
    weights = np.random.default_rng(2).random(values.shape)
    expected = _per_entry(bare_weighted_median, values, weights)
    np.testing.assert_allclose(robust.weighted_median(values, weights), expected, rtol=1e-13)


@pytest.mark.parametrize("method", ["trimmed_mean", "median"])
@pytest.mark.parametrize("lr", [0.05, 0.5, 1.0])
def test_robust_importance_matches_a_bare_reimplementation(method, lr):
    rng = np.random.default_rng(7)
    k = 12
    tables = rng.normal(size=(k, 4, 3))
    counts = rng.integers(0, 4, size=(k, 4, 3)) * (rng.random((k, 4, 3)) < 0.6)
    counts[:, 0, 0] = 0  # nobody visited: every agent is a candidate
    counts[:, 1, 0] = 0
    counts[2, 1, 0] = 5  # a single visitor takes the entry
    tables[:, 2, 2] = 0.25  # ties
    for f in (0.0, 0.1, 0.25):
        got = robust.robust_importance_average(tables, counts, lr, method, f)
        expected = _per_entry(
            lambda c, n, f=f: bare_robust_importance(c, n, lr, method, f), tables, counts
        )
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert got[1, 0] == tables[2, 1, 0]


def test_robust_importance_trims_an_attacker_among_the_visitors():
    tables = np.full((10, 1, 1), 2.0)
    tables[0] = 1000.0  # the attacker visited too
    counts = np.ones((10, 1, 1), dtype=np.int64)
    got = robust.robust_importance_average(tables, counts, 0.1, "trimmed_mean", 0.1)
    assert got[0, 0] == 2.0
    plain = importance_average(tables, counts, 0.1)
    assert plain[0, 0] == pytest.approx(2.0 + 998.0 / 10)


# ------------------------------------------------------------------------------------------
# The strategies: robust=none is today's rule bit for bit (real Flower messages)
# ------------------------------------------------------------------------------------------


STEPS = 12  # Markovian local steps of the round: each agent's counts sum to it


def _replies(strategy, tables, counts=None):
    """Instructions from the strategy's own configure_train, answered by agents 0..K-1."""
    node_ids = [100 + k for k in range(len(tables))]
    config = ConfigRecord({"client.local_steps": STEPS, "client.sampling": "markovian"})
    arrays = ArrayRecord({"q": Array(np.zeros(tables.shape[1:]))})
    sent = strategy.configure_train(1, arrays, config, NodeListGrid(node_ids))
    out = []
    for k, message in enumerate(sorted(sent, key=lambda m: m.metadata.dst_node_id)):
        stamp(message)
        payload = {"q": tables[k]} if counts is None else {"q": tables[k], "counts": counts[k]}
        out.append(reply(message, payload, {"num_samples": STEPS, "partition_id": k}))
    return out


def test_strategies_robust_none_is_bit_identical_and_robust_is_the_pure_function(
    flower_identity,
):
    rng = np.random.default_rng(11)
    tables = rng.random((20, 3, 2))
    counts = np.stack([rng.multinomial(STEPS, np.full(6, 1 / 6)).reshape(3, 2)
                       for _ in range(20)])
    eq = EqualAveraging(3, 2, value_bound=10.0, min_available_nodes=20, wait_timeout=0.0)
    arrays, _ = eq.aggregate_train(1, _replies(eq, tables))
    assert np.array_equal(arrays["q"].numpy(), equal_average(tables))
    im = ImportanceAveraging(3, 2, learning_rate=0.1, value_bound=10.0, min_available_nodes=20,
                             wait_timeout=0.0)
    arrays, _ = im.aggregate_train(1, _replies(im, tables, counts))
    assert np.array_equal(arrays["q"].numpy(), importance_average(tables, counts, 0.1))
    for method in ("trimmed_mean", "median"):
        eq = EqualAveraging(3, 2, value_bound=10.0, robust=Robust(method, 0.1),
                            min_available_nodes=20, wait_timeout=0.0)
        arrays, _ = eq.aggregate_train(1, _replies(eq, tables))
        expected = _per_entry(
            (lambda c: bare_trimmed_mean(c, 0.1)) if method == "trimmed_mean" else np.median,
            tables,
        )
        np.testing.assert_allclose(arrays["q"].numpy(), expected, rtol=1e-13)
        im = ImportanceAveraging(3, 2, learning_rate=0.1, value_bound=10.0,
                                 robust=Robust(method, 0.1), min_available_nodes=20,
                                 wait_timeout=0.0)
        arrays, _ = im.aggregate_train(1, _replies(im, tables, counts))
        expected = _per_entry(
            lambda c, n, m=method: bare_robust_importance(c, n, 0.1, m, 0.1), tables, counts
        )
        np.testing.assert_allclose(arrays["q"].numpy(), expected, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# DASA's defences (the pure rule)
# ------------------------------------------------------------------------------------------


def test_dasa_no_defence_is_the_plain_mean_step_bit_for_bit():
    rng = np.random.default_rng(5)
    theta = rng.random((3, 2))
    ops = {i: Operator(0, rng.normal(size=(3, 2))) for i in range(6)}
    step = rule.dasa_step(theta, 0, ops, {0: theta}, 6, 2.0, 0.5)
    expected = theta + 2.0 * np.mean(np.stack([ops[i].g for i in range(3)]), axis=0)
    assert np.array_equal(step.theta, expected)
    # Honest-sized operators and an iterate inside the range: the defence changes no bit.
    wide = Defence(Robust(), operator_bound=1e6, value_range=(-1e6, 1e6))
    assert np.array_equal(rule.dasa_step(theta, 0, ops, {0: theta}, 6, 2.0, 0.5, "l2",
                                         wide).theta, expected)


def test_dasa_defence_clips_trims_and_projects_by_hand():
    theta = np.zeros((1, 2))
    ops = {i: Operator(0, np.array([[1.0, 0.0]])) for i in range(4)}
    ops[0] = Operator(0, np.array([[30.0, 40.0]]))  # l1 norm 70 -> clipped to 7: [3, 4]
    assert np.array_equal(rule.clip_operator(ops[0].g, 7.0), np.array([[3.0, 4.0]]))
    assert rule.clip_operator(ops[1].g, 7.0) is ops[1].g
    defence = Defence(Robust("trimmed_mean", 0.25), operator_bound=7.0, value_range=(-1.0, 1.0))
    # ceil(8/2) = 4 used agents 0..3 (all delay errors 0); k = 1, so 2k = 2 whole operators
    # are dropped: the per-entry median is [1, 0], l1 distances 6, 0, 0, 0 -> drop agent 0 and
    # (tie) the higher index 3; mean of agents 1, 2 = [1, 0]. Step 2: [2, 0] -> projected [1, 0].
    step = rule.dasa_step(theta, 0, ops, {0: theta}, 8, 2.0, 0.5, "l2", defence)
    assert np.array_equal(step.theta, np.array([[1.0, 0.0]]))
    assert step.used == (0, 1, 2, 3)
    median = Defence(Robust("median"))
    step = rule.delayed_step(theta, 0, ops, 8, 1.0, median)
    assert np.array_equal(step.theta, np.array([[1.0, 0.0]]))  # per entry: [1, 0]


def bare_farthest_trimmed_mean(arrays: list[np.ndarray], f: float) -> np.ndarray:
    n = len(arrays)
    k = bare_k(n, f)
    med = np.array([sorted(col)[(n - 1) // 2] / 2 + sorted(col)[n // 2] / 2
                    for col in zip(*[a.ravel() for a in arrays], strict=True)])
    dist = [sum(abs(x - m) for x, m in zip(a.ravel(), med, strict=True)) for a in arrays]
    keep = sorted(sorted(range(n), key=lambda i: (dist[i], i))[: n - 2 * k])
    return sum(arrays[i] for i in keep) / len(keep)


def test_whole_operator_trim_matches_a_bare_reimplementation():
    rng = np.random.default_rng(4)
    for n in (1, 3, 10, 11):
        ops = rng.normal(size=(n, 3, 2)) * (rng.random((n, 3, 2)) < 0.3)  # sparse
        ops[-1] = 9.0  # an attacker
        for f in (0.0, 0.1, 0.2, 0.4):
            got = robust.farthest_trimmed_mean(ops, f)
            np.testing.assert_allclose(got, bare_farthest_trimmed_mean(list(ops), f),
                                       rtol=1e-13, atol=1e-15)
            if robust.num_trimmed(n, f) == 0:
                assert np.array_equal(got, ops.mean(axis=0))
            else:
                assert np.all(got < 9.0)


# ------------------------------------------------------------------------------------------
# Config rules
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["equal", "importance", "average_reward", "dasa"])
@pytest.mark.parametrize(
    ("override", "field"),
    [("strategy.robust=mean", "strategy.robust"), ("strategy.trim_fraction=0.5",
                                                   "strategy.trim_fraction"),
     ("strategy.trim_fraction=-0.1", "strategy.trim_fraction")],
)
def test_bad_robust_settings_are_refused_in_one_line(strategy, override, field, tmp_path):
    with pytest.raises(fq_config.ConfigError) as info:
        run_experiment([f"strategy={strategy}", override, f"output_dir={tmp_path}"])
    message = str(info.value)
    assert field in message and "\n" not in message
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------
# End to end: one attacker of 10 through the real apps (in-process engine)
# ------------------------------------------------------------------------------------------

POISONED = ["strategy=equal", "num_clients=10", "num_rounds=15", "client.local_steps=20",
            "log_every=0", "figures=false"]


def test_trimmed_mean_keeps_a_poisoned_run_near_the_honest_one(tmp_path):
    def final(name, *extra):
        result = run_experiment(POISONED + list(extra) + [f"output_dir={tmp_path / name}"])
        assert all(row["rejected"] == 0 for row in result.history)  # in bound: all accepted
        return result.history[-1]["normalized_q_error"]

    honest = final("honest")
    attack = ["client.attack=max_value", "client.attack_agents=[3]"]
    undefended = final("none", *attack)
    trimmed = final("trimmed", *attack, "strategy.robust=trimmed_mean")
    assert trimmed <= 2 * honest
    assert undefended >= 2 * honest and undefended >= 2 * trimmed


def test_dasa_honest_runs_are_unchanged_by_its_defences_and_trimming_stops_an_attacker(
    tmp_path, monkeypatch
):
    from flower_qlearn.strategies.dasa import spec

    # 10 agents: R_t holds 5, so trim_fraction 0.2 trims k = 1 (2 whole operators of 5).
    base = ["strategy=dasa", "num_clients=10", "num_rounds=150", "strategy.trim_fraction=0.2",
            "log_every=0", "figures=false"]
    defended = run_experiment(base + [f"output_dir={tmp_path / 'a'}"])
    with monkeypatch.context() as patch:
        patch.setattr(spec, "defence_of", lambda *args: rule.NO_DEFENCE)
        bare = run_experiment(base + [f"output_dir={tmp_path / 'b'}"])
    assert np.array_equal(defended.q_table, bare.q_table)  # clip and projection never bind
    attack = ["client.attack=max_value", "client.attack_agents=[0]"]
    none = run_experiment(base + attack + [f"output_dir={tmp_path / 'c'}"])
    trimmed = run_experiment(base + attack + ["strategy.robust=trimmed_mean",
                                              f"output_dir={tmp_path / 'd'}"])
    honest = defended.history[-1]["normalized_q_error"]
    assert trimmed.history[-1]["normalized_q_error"] <= 2 * honest
    assert none.history[-1]["normalized_q_error"] >= 2 * trimmed.history[-1]["normalized_q_error"]
