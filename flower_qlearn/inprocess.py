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
import queue
import secrets
import threading
import time
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
        False (default): ``push_messages`` runs the ClientApp calls one at a time, in order,
        before returning (deterministic). True: each pushed message runs in its own daemon
        thread and its reply becomes pullable when done, so slow clients are really slow and
        ``push``/``pull`` loops (DASA's ``execution=async``) see genuine asynchrony in-process.
    call_timeout
        Seconds the server waits for the calls of one ``push_messages`` (None: no limit);
        ``send_and_receive`` uses its own ``timeout`` (the round's budget) instead.

    Faults are survived as on a SuperNode. A ClientApp that raises (any exception,
    ``SystemExit`` included; not ``KeyboardInterrupt``, which stops the run) or returns
    something that is not a ``Message`` gets a Flower error reply. The round's timeout holds in
    both modes: the sequential mode runs each call in a worker thread and stops waiting when
    the round's budget is spent; a call that overruns is abandoned (its node has no reply this
    round: it counts as missing), and a node whose call is still running gets no further
    message (it is skipped, hence missing) until that call returns; its late reply is then
    pullable like any other. Messages whose turn comes after the budget is spent are not
    delivered.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict,
        node_configs: Sequence[dict] | None = None,
        run_id: int | None = None,
        concurrent: bool = False,
        call_timeout: float | None = None,
    ) -> None:
        self.client_app = client_app
        self.concurrent = bool(concurrent)
        self.call_timeout = None if call_timeout is None else float(call_timeout)
        # Guards _replies, _running, _busy and _interrupt (the worker threads write them).
        self._replied = threading.Condition()
        self._running: set[str] = set()  # ids of instructions whose ClientApp is still running
        self._busy: dict[int, str] = {}  # node id -> id of its call still running (or hung)
        self._interrupt: BaseException | None = None  # a client's KeyboardInterrupt, re-raised
        self._worker: _Worker | None = None  # the sequential mode's call thread
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
        """Deliver each message to its node's ClientApp now; the reply waits to be pulled.

        Sequential mode: the calls run before this returns, within ``call_timeout`` in all.
        """
        return self._push(messages, self._deadline(self.call_timeout))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return (and forget) the replies available for ``message_ids``."""
        with self._replied:
            self._raise_interrupt()
            return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push and pull within ``timeout`` seconds (None: ``call_timeout``): the sequential
        mode stops calling (and waiting for) ClientApps when it is spent; the concurrent mode
        waits until the pushed ClientApps have all returned or it is spent."""
        deadline = self._deadline(self.call_timeout if timeout is None else timeout)
        ids = list(self._push(messages, deadline))
        if self.concurrent:
            with self._replied:
                self._replied.wait_for(
                    lambda: self._running.isdisjoint(ids) or self._interrupt is not None,
                    None if deadline is None else max(deadline - time.monotonic(), 0.0),
                )
        return self.pull_messages(ids)

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + float(timeout)

    def _push(self, messages: Iterable[Message], deadline: float | None) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid4().hex
            message_id = msg.metadata.message_id
            ids.append(message_id)
            node_id = msg.metadata.dst_node_id
            if node_id in self.disconnected:
                continue
            if node_id not in self.contexts:
                error = Error(ErrorCode.UNKNOWN, f"no node with id {node_id}")
                self._store(msg, Message(error, reply_to=msg))
                continue
            with self._replied:
                self._raise_interrupt()
                if node_id in self._busy:  # its previous call has not returned: skip the node
                    log.debug("node %s busy: message %s not delivered", node_id, message_id)
                    continue
                self._busy[node_id] = message_id
                if self.concurrent:
                    self._running.add(message_id)
            if self.concurrent:
                threading.Thread(
                    target=self._deliver_later, args=(msg, self.contexts[node_id]), daemon=True
                ).start()
            else:
                self._call_in_order(msg, self.contexts[node_id], deadline)
        return ids

    def _store(self, msg: Message, reply: Message) -> None:
        reply.metadata.__dict__["_message_id"] = uuid4().hex
        with self._replied:
            self._replies[msg.metadata.message_id] = reply

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
    def _call_in_order(self, msg: Message, context: Context, deadline: float | None) -> None:
        """Sequential mode: run one call in the worker thread, wait for it up to ``deadline``.

        The calls still run one at a time and in order, so runs are deterministic; only the
        waiting is bounded. A call still running at the deadline is abandoned: its worker
        thread finishes it (storing the late reply) and then ends; the next call gets a new
        worker.
        """
        node_id = context.node_id
        if deadline is not None and time.monotonic() >= deadline:
            with self._replied:  # the round's budget is spent: not delivered
                self._busy.pop(node_id, None)
            return
        call = _Call(msg, context)
        with self._replied:  # an idle worker ends under this lock (_Worker.run)
            if self._worker is None:
                self._worker = _Worker(self)
            self._worker.calls.put(call)
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        call.done.wait(remaining)
        with self._replied:
            if not call.done.is_set():
                call.abandoned = True
                self._worker = None
                log.warning(
                    "node %s: ClientApp call still running after the round's timeout; "
                    "abandoned (the node gets no message until it returns)", node_id
                )
                return
            self._raise_interrupt()

    def _finish(self, msg: Message, context: Context, reply: Message | None) -> None:
        """A call has returned (in any thread): store its reply, free its node."""
        if reply is not None:
            reply.metadata.__dict__["_message_id"] = uuid4().hex
        with self._replied:
            if reply is not None:
                self._replies[msg.metadata.message_id] = reply
            if self._busy.get(context.node_id) == msg.metadata.message_id:
                del self._busy[context.node_id]
            self._running.discard(msg.metadata.message_id)
            self._replied.notify_all()

    def _deliver_later(self, msg: Message, context: Context) -> None:
        # Concurrent mode: runs in the message's own daemon thread (a client that never returns
        # cannot keep the process alive).
        try:
            reply = self._deliver(msg, context)
        except KeyboardInterrupt as exc:
            with self._replied:
                self._interrupt = exc
            reply = None
        self._finish(msg, context, reply)

    def _raise_interrupt(self) -> None:
        # Holding self._replied: a ClientApp's KeyboardInterrupt stops the run, from the main
        # thread, as Ctrl-C does.
        if self._interrupt is not None:
            exc, self._interrupt = self._interrupt, None
            raise exc

    def _deliver(self, msg: Message, context: Context) -> Message:
        # A ClientApp failure becomes an error reply, as on a SuperNode, so a crashing client
        # is counted by the strategy instead of ending the run: any exception, SystemExit and
        # other BaseExceptions included, except KeyboardInterrupt (Ctrl-C must stop the run).
        try:
            reply = self.client_app(message=msg, context=context)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            log.debug("ClientApp raised on node %s:\n%s", context.node_id, traceback.format_exc())
            return Message(
                Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                reply_to=msg,
            )
        if not isinstance(reply, Message):
            return Message(
                Error(
                    ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                    f"ClientApp returned a {type(reply).__name__}, not a Message",
                ),
                reply_to=msg,
            )
        return reply


class _Call:
    """One ClientApp call of the sequential mode, handed to the worker thread."""

    __slots__ = ("abandoned", "context", "done", "msg")

    def __init__(self, msg: Message, context: Context) -> None:
        self.msg, self.context = msg, context
        self.done = threading.Event()
        self.abandoned = False


class _Worker(threading.Thread):
    """The sequential mode's call thread: runs the calls it is given one at a time, in order.

    When the grid abandons its current call (timeout), the worker finishes that call and ends;
    an idle worker ends after ``IDLE_S`` (the grid starts a new one when needed), so finished
    runs leave no thread behind. A daemon thread: a client that never returns cannot keep the
    process alive.
    """

    IDLE_S = 2.0

    def __init__(self, grid: InProcessGrid) -> None:
        super().__init__(name="inprocess-clientapp", daemon=True)
        self.grid = grid
        self.calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self.start()

    def run(self) -> None:
        grid = self.grid
        while True:
            try:
                call = self.calls.get(timeout=self.IDLE_S)
            except queue.Empty:
                with grid._replied:
                    if self.calls.empty():
                        if grid._worker is self:
                            grid._worker = None
                        return
                continue
            try:
                reply = grid._deliver(call.msg, call.context)
            except KeyboardInterrupt as exc:
                with grid._replied:
                    grid._interrupt = exc
                reply = None
            grid._finish(call.msg, call.context, reply)
            with grid._replied:
                call.done.set()
                if call.abandoned:
                    return


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
    round_timeout: float | None = None,
) -> InProcessGrid:
    """Run ``server_app`` with ``client_app`` on ``num_supernodes`` in-process nodes (no Ray).

    Any ServerApp and ClientApp work, ours or a user's: the apps exchange real Flower
    ``Message`` objects through an :class:`InProcessGrid`. Node ``i`` gets the node config
    ``partition-id = i``, ``num-partitions = num_supernodes`` plus ``node_configs[i]``; every
    ``Context`` sees ``run_config``. ``concurrent=True`` runs each ClientApp call in its own
    thread (real asynchrony). ``round_timeout`` (default: the run config's ``round_timeout``,
    if any) bounds the wait for the calls of one ``push_messages``; ``send_and_receive`` is
    bounded by its own timeout. Returns the grid (its ``contexts`` hold each node's state).
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
        call_timeout=_round_timeout(run_config) if round_timeout is None else round_timeout,
    )
    run_server_app(server_app, grid, dict(run_config or {}))
    return grid


def _round_timeout(run_config: Mapping | None) -> float | None:
    """The run config's ``round_timeout`` (flower-qlearn's key), if it is a number > 0."""
    value = (run_config or {}).get("round_timeout")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
