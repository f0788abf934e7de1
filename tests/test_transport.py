"""Replies pulled every 0.1 s instead of Flower's 3 s poll: same replies, same numbers.

The grid here is Flower's real ``HttpGrid`` class (so its own ``send_and_receive``, the 3 s
poller, is inherited untouched) whose push and pull go to the real ClientApps through an
in-process grid, each reply becoming visible only at its second pull, as a reply that is still
on its way to the SuperLink. Flower's ``time.sleep`` in that module is made to fail the test:
any round that falls back to Flower's 3 s poll is caught.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from flower_qlearn.strategies import EqualAveraging, transport
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.superlink.grid import HttpGrid
from flwr.superlink.grid import http_grid as flower_http_grid

from flower_qlearn import config as fq_config
from flower_qlearn import run_experiment
from flower_qlearn.api import run_config_for
from flower_qlearn.client_app import app as client_app
from flower_qlearn.inprocess import FIRST_NODE_ID, InProcessGrid, run_server_app
from flower_qlearn.outputs import RunResult
from flower_qlearn.server_app import app as server_app

EXPERIMENT = ["strategy=importance", "num_clients=3", "num_rounds=3", "figures=false"]


class LaggingHttpGrid(HttpGrid):
    """Flower's ``HttpGrid`` whose SuperLink is an in-process grid; replies show on pull 2."""

    def __init__(self, inner: InProcessGrid, lag: int = 2) -> None:  # no SuperLink to dial
        self.inner, self.lag = inner, lag
        self.pulls: dict[str, int] = {}  # message id -> pulls so far
        self.pull_calls = 0

    def set_run(self, run) -> None:
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def get_node_ids(self):
        return self.inner.get_node_ids()

    def push_messages(self, messages):
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids):
        self.pull_calls += 1
        ready = []
        for mid in message_ids:
            self.pulls[mid] = self.pulls.get(mid, 0) + 1
            if self.pulls[mid] >= self.lag:
                ready.append(mid)
        return self.inner.pull_messages(ready)


@pytest.fixture
def no_flower_poll(monkeypatch):
    """Fail if Flower's HttpGrid.send_and_receive sleeps (its 3 s poll)."""

    def refuse(seconds: float) -> None:
        raise AssertionError(f"Flower's {seconds} s send_and_receive poll was used")

    clock = SimpleNamespace(time=time.time, sleep=refuse)  # that module's `time` only
    monkeypatch.setattr(flower_http_grid, "time", clock)


def _grid(cfg, run_config) -> InProcessGrid:
    return InProcessGrid(client_app, int(cfg.num_clients), run_config)


def test_polls_slowly_only_for_flowers_http_grid():
    cfg = fq_config.compose(EXPERIMENT)
    inner = _grid(cfg, {})
    assert transport.polls_slowly(LaggingHttpGrid(inner))
    assert not transport.polls_slowly(inner)  # runs the ClientApps: its own method
    assert transport.fast_pulls(inner) is inner
    assert isinstance(transport.fast_pulls(LaggingHttpGrid(inner)), transport.FastPullGrid)


def test_server_app_over_http_grid_equals_inprocess_bit_for_bit(tmp_path, no_flower_poll):
    """The ServerApp's round loop on Flower's HttpGrid: pulled fast, numbers unchanged."""
    cfg = fq_config.compose(EXPERIMENT)
    run_config = run_config_for(cfg, tmp_path / "http")
    grid = LaggingHttpGrid(_grid(cfg, run_config))
    run_server_app(server_app, grid, run_config)
    over_http = RunResult.load(tmp_path / "http")
    inproc = run_experiment([*EXPERIMENT, f"output_dir={tmp_path / 'inproc'}"])
    np.testing.assert_array_equal(over_http.q_table, inproc.q_table)
    assert [r["q_error"] for r in over_http.history] == [r["q_error"] for r in inproc.history]
    assert [r["accepted"] for r in over_http.history] == [3, 3, 3]
    # Every round: one pull found nothing, the next (after a 0.1 s sleep) all 3 replies.
    assert grid.pull_calls == 2 * 3


def test_flower_strategy_start_is_pulled_fast_and_unchanged(tmp_path, no_flower_poll):
    """A user's ServerApp calling Flower's ``Strategy.start`` on our strategy gets fast pulls."""
    cfg = fq_config.compose(EXPERIMENT)
    shape = (int(cfg.mdp.num_states), int(cfg.mdp.num_actions))
    results = []
    for wrap in (LaggingHttpGrid, lambda g: g):
        grid = wrap(_grid(cfg, {}))
        q0 = ArrayRecord({"q": Array(np.zeros(shape))})
        result = EqualAveraging(*shape).start(
            grid, q0, num_rounds=2, train_config=ConfigRecord({"seed": 7})
        )
        results.append(result.arrays["q"].numpy())
    np.testing.assert_array_equal(results[0], results[1])
    assert np.abs(results[0]).sum() > 0  # the agents did learn something


def test_timeout_returns_the_replies_that_came(no_flower_poll):
    """A node that never answers: the others' replies come back once ``timeout`` is spent."""
    cfg = fq_config.compose(EXPERIMENT)
    inner = _grid(cfg, {})
    inner.disconnected.add(FIRST_NODE_ID + 1)
    strategy = EqualAveraging(int(cfg.mdp.num_states), int(cfg.mdp.num_actions))
    q0 = ArrayRecord({"q": Array(np.zeros(strategy.shape))})
    messages = strategy.configure_train(1, q0, ConfigRecord({}), inner)
    replies = transport.send_and_receive(
        LaggingHttpGrid(inner), messages, timeout=0.3, pull_interval=0.05
    )
    assert sorted(r.metadata.src_node_id for r in replies) == [FIRST_NODE_ID, FIRST_NODE_ID + 2]


def test_pull_interval_must_be_positive():
    cfg = fq_config.compose(EXPERIMENT)
    with pytest.raises(ValueError, match="pull_interval"):
        transport.send_and_receive(LaggingHttpGrid(_grid(cfg, {})), [], pull_interval=0)
