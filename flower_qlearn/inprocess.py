"""The embedded in-process engine: real Flower messages through real apps, in one process.

:class:`InProcessGrid` is a :class:`flwr.serverapp.Grid` that hands every pushed ``Message``
straight to the real ``ClientApp`` of its destination node, each node keeping one persistent
``Context`` (so per-agent state survives across rounds exactly as on a SuperNode). The
ServerApp, the strategy and the ClientApp are the same objects that run under Ray or on a
SuperLink; only the transport differs, which is why the engines give identical numbers for the
same config and seed. :func:`run_inprocess` runs any ServerApp with any ClientApp this way.
"""

from __future__ import annotations

import logging
import secrets
import threading
import traceback
from collections.abc import Iterable, Mapping, Sequence
from uuid import uuid4

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY, SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger("flower_qlearn")

#: Node ids of the in-process engine: deterministic, so logs and checkpoints are reproducible.
FIRST_NODE_ID = 1001


class InProcessGrid(Grid):
    """A Flower ``Grid`` that runs each pushed message through a ``ClientApp`` in this process.

    Parameters
    ----------
    client_app
        The real ClientApp (the same object ``flwr`` would load on a SuperNode).
    num_nodes
        Number of virtual SuperNodes; node ``i`` gets ``partition-id = i``.
    run_config
        The Flower run config every node's ``Context`` sees (carries the Hydra overrides).
    node_configs
        Optional extra node config per partition (deployment-style per-node settings).
    concurrent
        False (default): ``push_messages`` runs each ClientApp before returning (deterministic,
        fastest). True: each pushed message runs in its own daemon thread and its reply becomes
        pullable when done, so slow clients are really slow and ``push``/``pull`` loops (DASA's
        ``execution=async``) see genuine asynchrony in-process. ``send_and_receive`` then waits
        for the replies up to its timeout.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict,
        node_configs: Sequence[dict] | None = None,
        run_id: int | None = None,
        concurrent: bool = False,
    ) -> None:
        self.client_app = client_app
        self.concurrent = bool(concurrent)
        self._replied = threading.Condition()  # guards _replies and _running (concurrent mode)
        self._running: set[str] = set()  # ids of instructions whose ClientApp is still running
        self._run = Run.create_empty(run_id if run_id is not None else secrets.randbits(63))
        self._node_ids = [FIRST_NODE_ID + i for i in range(num_nodes)]
        self.contexts: dict[int, Context] = {}
        for i, node_id in enumerate(self._node_ids):
            node_config = {PARTITION_ID_KEY: i, NUM_PARTITIONS_KEY: num_nodes}
            if node_configs is not None:
                node_config.update(node_configs[i])
            self.contexts[node_id] = Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config=node_config,
                state=RecordDict(),
                run_config=dict(run_config),
            )
        self._replies: dict[str, Message] = {}
        self.disconnected: set[int] = set()  # nodes that receive nothing (fault injection)
        # Messages created on the server side read the task identity (as run_simulation sets it).
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    # --- Grid API -------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:  # noqa: D102 - the run is fixed at construction
        self._run = run

    @property
    def run(self) -> Run:  # noqa: D102
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        """Deprecated in Flower; kept for the abstract interface."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now; the reply waits to be pulled."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid4().hex
            ids.append(msg.metadata.message_id)
            node_id = msg.metadata.dst_node_id
            if node_id in self.disconnected:
                continue
            if node_id not in self.contexts:
                reply = Message(
                    Error(ErrorCode.UNKNOWN, f"no node with id {node_id}"), reply_to=msg
                )
            elif self.concurrent:
                with self._replied:
                    self._running.add(msg.metadata.message_id)
                threading.Thread(
                    target=self._deliver_later, args=(msg, self.contexts[node_id]), daemon=True
                ).start()
                continue
            else:
                reply = self._deliver(msg, self.contexts[node_id])
            reply.metadata.__dict__["_message_id"] = uuid4().hex
            with self._replied:
                self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return (and forget) the replies available for ``message_ids``."""
        with self._replied:
            return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push and pull: synchronous mode has every reply ready as soon as the push returns;
        concurrent mode waits until the pushed ClientApps have all returned or ``timeout``."""
        ids = list(self.push_messages(messages))
        if self.concurrent:
            with self._replied:
                self._replied.wait_for(lambda: self._running.isdisjoint(ids), timeout)
        return self.pull_messages(ids)

    # --- checkpoint support ---------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """Every node's ``Context.state`` config records as plain dicts, by partition id."""
        state = {}
        for ctx in self.contexts.values():
            records = {name: dict(rec) for name, rec in ctx.state.config_records.items()}
            state[int(ctx.node_config[PARTITION_ID_KEY])] = records
        return state

    def restore_state(self, state: dict) -> None:
        """Put back what :meth:`checkpoint_state` saved (the agents' Markov states, ...)."""
        for ctx in self.contexts.values():
            records = state.get(int(ctx.node_config[PARTITION_ID_KEY]), {})
            for name, values in records.items():
                ctx.state.config_records[name] = ConfigRecord(values)

    # --- internals ------------------------------------------------------------------------
    def _deliver_later(self, msg: Message, context: Context) -> None:
        # Concurrent mode: runs in the message's own daemon thread (a client that never returns
        # cannot keep the process alive).
        reply = self._deliver(msg, context)
        reply.metadata.__dict__["_message_id"] = uuid4().hex
        with self._replied:
            self._replies[msg.metadata.message_id] = reply
            self._running.discard(msg.metadata.message_id)
            self._replied.notify_all()

    def _deliver(self, msg: Message, context: Context) -> Message:
        # A ClientApp exception becomes an error reply, as Flower's simulation worker does, so a
        # crashing client is counted by the strategy instead of killing the run.
        try:
            return self.client_app(message=msg, context=context)
        except Exception as exc:  # noqa: BLE001
            log.debug("ClientApp raised on node %s:\n%s", context.node_id, traceback.format_exc())
            return Message(
                Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                reply_to=msg,
            )


def run_server_app(server_app: ServerApp, grid: Grid, run_config: dict) -> None:
    """Run ``server_app`` over ``grid`` in this process, with a SuperLink-side ``Context``."""
    context = Context(
        run_id=grid.run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=dict(run_config),
    )
    server_app(grid, context)


def run_inprocess(
    server_app: ServerApp,
    client_app: ClientApp,
    num_supernodes: int,
    run_config: Mapping | None = None,
    node_configs: Sequence[Mapping] | None = None,
    *,
    concurrent: bool = False,
) -> InProcessGrid:
    """Run ``server_app`` with ``client_app`` on ``num_supernodes`` in-process nodes (no Ray).

    Any ServerApp and ClientApp work, ours or a user's: the apps exchange real Flower
    ``Message`` objects through an :class:`InProcessGrid`. Node ``i`` gets the node config
    ``partition-id = i``, ``num-partitions = num_supernodes`` plus ``node_configs[i]``; every
    ``Context`` sees ``run_config``. ``concurrent=True`` runs each ClientApp call in its own
    thread (real asynchrony). Returns the grid (its ``contexts`` hold each node's state).
    """
    if num_supernodes < 1:
        raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
    if node_configs is not None and len(node_configs) != num_supernodes:
        raise ValueError(
            f"node_configs has {len(node_configs)} entries for {num_supernodes} supernodes"
        )
    grid = InProcessGrid(
        client_app,
        num_supernodes,
        dict(run_config or {}),
        node_configs=[dict(c) for c in node_configs] if node_configs is not None else None,
        concurrent=concurrent,
    )
    run_server_app(server_app, grid, dict(run_config or {}))
    return grid
