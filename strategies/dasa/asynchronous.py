"""DASA's real asynchrony: a server loop over push/pull that never waits for a straggler."""

from __future__ import annotations

import time
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid

from ..base import wait_for_nodes
from ..protocol import Q
from ..registry import OnRound
from .strategy import DASA


def asynchronous_iterations(
    strategy: DASA,
    grid: Grid,
    arrays: ArrayRecord,
    train_config: ConfigRecord,
    num_rounds: int,
    *,
    start: int = 0,
    round_timeout: float | None = None,
    on_round: OnRound | None = None,
) -> ArrayRecord:
    """ServerApp loop of real asynchrony (``strategy.execution=async``); a ``Plan.loop``.

    Each server iteration is one tick: push ``theta_t`` to every connected node that is not
    computing, pull the replies that come in until no instruction is outstanding or ``tick_s``
    seconds have passed, then run the DASA iteration on whatever has arrived and record it. A
    node that has not answered keeps computing on the iterate it got; its operator counts when
    it lands, with its staleness in server iterations. A tick never waits longer than
    ``tick_s`` for a straggler once anything has arrived, so a slow client, or one that never
    answers, cannot stall the run. A tick in which nothing at all has arrived after ``tick_s``
    (start-up: Ray workers and SuperNodes take seconds) waits for the first reply up to the
    strategy's ``wait_timeout`` (the run's ``round_timeout``), and if none comes it is recorded
    as skipped (no new information, no step).

    A round loop (:class:`~flower_qlearn.strategies.registry.RoundLoop`) usable from any
    ServerApp: iterations ``start .. num_rounds - 1`` are recorded as server rounds
    ``start + 1 .. num_rounds`` through ``on_round`` (which returns the global arrays from then
    on); returns the final global arrays. ``round_timeout`` is not used: ``strategy.tick_s``
    and ``strategy.wait_timeout`` bound every tick.
    """
    pending: dict[str, int] = {}  # instruction message id -> node id
    poll_s = min(0.002, strategy.tick_s / 10)
    empty_tick_s = strategy.wait_timeout
    wait_for_nodes(grid, strategy.min_available_nodes, strategy.wait_timeout)
    log(INFO, "DASA async: tick %.3fs, rule %s", strategy.tick_s, strategy.rule)
    for t in range(start, num_rounds):
        start = time.monotonic()
        tick_end, give_up = start + strategy.tick_s, start + max(strategy.tick_s, empty_tick_s)
        busy = set(pending.values())
        idle = [n for n in sorted(int(n) for n in grid.get_node_ids()) if n not in busy]
        if idle:
            messages = strategy.instructions(t, arrays, train_config, idle)
            grid.push_messages(messages)
            pending.update({m.metadata.message_id: m.metadata.dst_node_id for m in messages})
        replies: list[Message] = []
        while True:
            for reply in grid.pull_messages(list(pending)):
                if pending.pop(reply.metadata.reply_to_message_id, None) is not None:
                    replies.append(reply)
            now = time.monotonic()
            if not pending or (replies and now >= tick_end) or now >= give_up:
                break
            time.sleep(poll_s)
        new_arrays, metrics = strategy.advance(
            t, arrays[Q].numpy(), replies, computing=len(pending), step_if_nothing_new=False
        )
        if on_round is not None:
            arrays = on_round(t + 1, new_arrays, metrics)
        elif new_arrays is not None:
            arrays = new_arrays
    return arrays
