"""Build real Flower messages in tests, the way Flower's own runtime does.

Flower's `Message` constructor reads the process's `TaskIdentity` (set by the ServerApp
runtime, or by `run_simulation`), and the Grid stamps a message id on every instruction
when it is pushed. These helpers do the same so that tests exercise genuine `Message`
objects: instructions from `Message(content, dst_node_id, message_type)` and replies from
`Message(content, reply_to=instruction)` / `Message(Error(...), reply_to=instruction)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from uuid import uuid4

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


@contextmanager
def task_identity(run_id: int = 1234) -> Iterator[None]:
    """Set the ServerApp's task identity as `run_simulation` does, restore it on exit."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def stamp(message: Message) -> Message:
    """Give a message the id a Grid assigns on push (InMemoryGrid uses a uuid4)."""
    message.metadata.__dict__["_message_id"] = str(uuid4())
    return message


def instruction(
    content: RecordDict, node_id: int, server_round: int = 1, message_type: str = "train"
) -> Message:
    """A pushed server-to-node instruction message (needs `task_identity`)."""
    message = Message(
        content, dst_node_id=node_id, message_type=message_type, group_id=str(server_round)
    )
    return stamp(message)


def reply(
    to: Message,
    arrays: dict[str, np.ndarray] | None = None,
    metrics: dict[str, int | float] | None = None,
) -> Message:
    """A client reply carrying ``"arrays"`` and/or ``"metrics"`` records (None = omitted)."""
    records: dict[str, ArrayRecord | MetricRecord] = {}
    if arrays is not None:
        records["arrays"] = ArrayRecord({name: Array(value) for name, value in arrays.items()})
    if metrics is not None:
        records["metrics"] = MetricRecord(metrics)
    return stamp(Message(RecordDict(records), reply_to=to))


def error_reply(to: Message, code: int = 0, reason: str = "client failed") -> Message:
    """A Flower error reply, as the SuperNode sends when the ClientApp raises."""
    return stamp(Message(Error(code=code, reason=reason), reply_to=to))


class NodeListGrid(Grid):
    """Test double for the node list only: `get_node_ids` works, messaging does not."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self.node_ids = list(node_ids)
        self._run = Run.create_empty(run_id=1234)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, *args: object, **kwargs: object) -> Message:
        raise NotImplementedError("deprecated in flwr; build Message(...) directly")

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        raise NotImplementedError


class CallbackGrid(NodeListGrid):
    """Synchronous grid that answers each instruction with ``respond(instruction)``.

    ``respond`` returns a reply Message, or None to simulate a node that never answers.
    Enough to drive Flower's `Strategy.start` in a unit test.
    """

    def __init__(
        self, node_ids: Iterable[int], respond: Callable[[Message], Message | None]
    ) -> None:
        super().__init__(node_ids)
        self.respond = respond
        self.sent: list[Message] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for message in messages:
            self.sent.append(stamp(message))
            answer = self.respond(message)
            if answer is not None:
                replies.append(answer)
        return replies
