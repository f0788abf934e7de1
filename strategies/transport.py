"""How a round's instructions reach the nodes and its replies come back: push, then pull often.

Why: Flower's ``HttpGrid.send_and_receive`` (the grid of a ServerApp on a SuperLink, deployment
and simulation runtimes alike) pushes the instructions and then pulls the replies every **3 s**,
so a round that the nodes answer in 1.5 s still takes until the next 3 s poll.
:func:`send_and_receive` does the same push and pull with the same ``timeout`` semantics but
pulls every :data:`PULL_INTERVAL_S` (0.1 s): a round ends within 0.1 s of its last reply. Every
synchronous round loop goes through it (:func:`~flower_qlearn.strategies.registry.
synchronous_rounds`, and Flower's own ``Strategy.start`` through
:meth:`QTableStrategy.start <flower_qlearn.strategies.base.QTableStrategy.start>`, which hands
it a :class:`FastPullGrid`). DASA's ``execution=async`` loop already pushes and pulls on its own
tick (:mod:`.dasa.asynchronous`).

A grid that is not one of Flower's 3 s pollers (the in-process :class:`~flower_qlearn.inprocess.
InProcessGrid`, whose ``send_and_receive`` runs the ClientApps and bounds them by the round's
budget; a test grid) keeps its own ``send_and_receive``: only the waiting changes, never who is
asked or which replies count, so the numbers are the same on every engine.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore.run import Run

#: Seconds between two pulls while replies are outstanding (Flower's ``HttpGrid``: 3 s).
PULL_INTERVAL_S = 0.1

_HTTP_GRID_MODULE = "flwr.superlink.grid.http_grid"  # where Flower's HttpGrid lives (1.42)


def polls_slowly(grid: Grid) -> bool:
    """Whether ``grid.send_and_receive`` is Flower's ``HttpGrid`` one (a pull every 3 s).

    A subclass that overrides ``send_and_receive`` (e.g. a test grid that injects a fault
    there) keeps its own. Flower's module is looked up, not imported: importing it costs
    ~1.8 s (SQLAlchemy), and a grid of that class cannot exist before it is imported.
    """
    module = sys.modules.get(_HTTP_GRID_MODULE)
    if module is None:
        return False
    return getattr(type(grid), "send_and_receive", None) is module.HttpGrid.send_and_receive


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float | None = None,
    pull_interval: float = PULL_INTERVAL_S,
) -> list[Message]:
    """``grid.send_and_receive(messages, timeout=timeout)``, pulling every ``pull_interval`` s.

    Push every message, then pull the replies until each has one or ``timeout`` seconds have
    passed (None: no limit), as Flower's does; replies come in arrival order (the strategies
    sort them). A grid that :func:`polls_slowly` not is asked through its own method.

    Parameters
    ----------
    grid
        The run's grid.
    messages
        The round's instructions.
    timeout
        Seconds to wait for the replies after the push (the run's ``round_timeout``).
    pull_interval
        Seconds between two pulls, > 0.

    Returns
    -------
    list[Message]
        The replies that arrived in time.
    """
    if not polls_slowly(grid):
        return list(grid.send_and_receive(messages, timeout=timeout))
    if not pull_interval > 0:
        raise ValueError(f"pull_interval must be > 0, got {pull_interval}")
    # Flower's push gives None for a message it could not push: nothing to wait for.
    pending = {mid for mid in grid.push_messages(messages) if mid}
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    replies: list[Message] = []
    while pending:
        arrived = list(grid.pull_messages(sorted(pending)))
        replies.extend(arrived)
        pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
        left = None if deadline is None else deadline - time.monotonic()
        if not pending or (left is not None and left <= 0):
            break
        time.sleep(pull_interval if left is None else min(pull_interval, left))
    return replies


class FastPullGrid(Grid):
    """A view of ``grid`` whose ``send_and_receive`` is :func:`send_and_receive`.

    Everything else is the wrapped grid's own, so a loop written against Flower's ``Grid``
    (Flower's ``Strategy.start``) gets replies within ``pull_interval`` of their arrival.
    Build it with :func:`fast_pulls`.
    """

    def __init__(self, grid: Grid, pull_interval: float = PULL_INTERVAL_S) -> None:
        self.grid = grid
        self.pull_interval = float(pull_interval)

    def set_run(self, run: Run) -> None:  # noqa: D102
        self.grid.set_run(run)

    @property
    def run(self) -> Run:  # noqa: D102
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:  # noqa: D102 - deprecated in Flower
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """:func:`send_and_receive` over the wrapped grid."""
        return send_and_receive(
            self.grid, messages, timeout=timeout, pull_interval=self.pull_interval
        )


def fast_pulls(grid: Grid) -> Grid:
    """``grid`` itself unless it :func:`polls_slowly`; else a :class:`FastPullGrid` over it."""
    return FastPullGrid(grid) if polls_slowly(grid) else grid
