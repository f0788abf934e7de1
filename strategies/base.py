"""The Flower layer shared by every strategy: broadcast, validate replies, count, aggregate.

:class:`QTableStrategy` is the messaging part every strategy shares (the instruction with the
global table, waiting for nodes, the rejection log, no federated evaluation).
:class:`AveragingStrategy` adds the synchronous flow of the averaging strategies:
`aggregate_train` validates the replies (:mod:`.validation`) and hands the valid ones to
`aggregate`, which a subclass implements by calling its pure aggregation function (e.g.
`equal_average`). A bad client is logged and left out of the average; it never crashes the
round. DASA (:mod:`.dasa`) derives from :class:`QTableStrategy` directly: its iteration needs
more than one round's replies.
"""

from __future__ import annotations

import time
import weakref
from abc import abstractmethod
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from .identity import Outbox, PartitionMap, Screened, screen_replies
from .protocol import (
    ARRAYS,
    CONFIG,
    ITERATION,
    LOCAL_STEPS,
    NUM_SAMPLES,
    PARTITION_ID,
    SAMPLING,
    SERVER_ROUND,
    TASK,
    Q,
)
from .transport import fast_pulls
from .validation import ArraySpec, ClientUpdate, payload_bytes

# Per-round bookkeeping metrics; a client metric with one of these names is not averaged.
ROUND_METRICS = ("accepted", "rejected", "missing", "bytes_up", "bytes_down", "kept_previous")
#: Metrics the server owns: a client's value is never averaged into the round's (the server
#: computes ``num_samples`` from what it asked for; ``partition_id`` is the server's map).
SERVER_METRICS = (NUM_SAMPLES, PARTITION_ID, ITERATION)


class _NodeWatch:
    """What :func:`wait_for_nodes` remembers about one grid's nodes across rounds."""

    __slots__ = ("gave_up", "seen")

    def __init__(self) -> None:
        self.seen: set[int] = set()  # every node id the grid has listed
        self.gave_up = 0  # largest min_nodes a wait ran out for (the full set never came)


#: Per grid (weakly held): a grid is one run of one ServerApp.
_WATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WATCHES_BY_ID: dict[int, _NodeWatch] = {}  # grids that cannot be weakly referenced


def _watch(grid: Grid) -> _NodeWatch:
    try:
        return _WATCHES.setdefault(grid, _NodeWatch())
    except TypeError:
        return _WATCHES_BY_ID.setdefault(id(grid), _NodeWatch())


def wait_for_nodes(grid: Grid, min_nodes: int, timeout: float) -> list[int]:
    """Sorted ids of the connected nodes, after waiting up to ``timeout`` s for ``min_nodes``.

    The rule across calls (per grid; each round's `configure_train` calls this):

    - a node is *seen* once ``grid.get_node_ids()`` has listed it, and *lost* while it was seen
      and is not listed; lost nodes are never waited for: a call waits only until
      ``min_nodes - len(lost)`` nodes are connected (a lost node that comes back is used);
    - once a wait has run out for ``min_nodes`` (the full set was never reached), later calls
      with at most that many ``min_nodes`` do not wait at all: they go ahead at once with the
      nodes that are connected (nodes that join later are used from the round they appear).

    So a run that lost a node, or never had them all, waits at most one ``timeout`` in all,
    not one per round.
    """
    watch = _watch(grid)
    if watch.gave_up >= min_nodes:
        node_ids = sorted(grid.get_node_ids())
        watch.seen.update(node_ids)
        return node_ids
    deadline = time.monotonic() + timeout
    next_log = time.monotonic() + 5.0
    while True:
        node_ids = sorted(grid.get_node_ids())
        watch.seen.update(node_ids)
        lost = watch.seen.difference(node_ids)
        if len(node_ids) >= min_nodes - len(lost):
            if lost and len(node_ids) < min_nodes:
                log(INFO, "%d of %d nodes connected (%d lost: not waited for)",
                    len(node_ids), min_nodes, len(lost))
            break
        now = time.monotonic()
        if now >= deadline:
            log(WARNING, "Only %d of %d nodes connected after %.0fs; going ahead with them "
                "(and not waiting for missing nodes again)", len(node_ids), min_nodes, timeout)
            watch.gave_up = max(watch.gave_up, min_nodes)
            break
        if now >= next_log:
            log(INFO, "Waiting for nodes to connect: %d of %d", len(node_ids), min_nodes)
            next_log = now + 5.0
        time.sleep(0.05)
    return node_ids


class QTableStrategy(Strategy):
    """Broadcast the global Q-table with the task config; validate and count replies.

    Wire format (:mod:`.protocol`). Instruction: ``RecordDict({"arrays": ArrayRecord({"q":
    (S, A) float64}), "config": ConfigRecord({..., "server-round": r})})``, message type
    ``"train"``, group id ``str(r)``. Reply: ``RecordDict({"arrays": ArrayRecord({"q": ...,
    ...}), "metrics": MetricRecord({"num_samples": ..., ...})})``.

    Parameters
    ----------
    num_states, num_actions : int
        Shape ``(S, A)`` of the Q-table every reply must carry.
    min_replies : int, default 1
        Fewest valid replies needed to update the global Q-table; with fewer, the round
        keeps the previous one (`aggregate_train` returns ``None`` arrays).
    value_bound : float, optional
        Reject replies with any ``|Q(s, a)| > value_bound`` (e.g. ``1 / (1 - gamma)`` for
        rewards in ``[0, 1]``, plus slack). ``None`` checks only finiteness.
    min_available_nodes : int, default 1
        `configure_train` first waits (up to `wait_timeout` seconds) until this many nodes are
        connected: under Ray or on a SuperLink, nodes register after the ServerApp starts.
    wait_timeout : float, default 600
        Longest wait for `min_available_nodes`; then the round goes ahead with the nodes
        that are there (logged).
    value_floor : float, optional
        Reject replies with any ``Q(s, a) < value_floor``: ``0`` where the theory gives it
        (iterates from 0 with rewards in ``[0, 1]`` stay ``>= 0``). ``None``: no lower bound
        beyond `value_bound`.
    num_partitions : int, optional
        The run's number of agents: a reply's ``partition_id`` must be in
        ``0 .. num_partitions - 1`` (:class:`~.identity.PartitionMap`). None: any id >= 0.

    Attributes
    ----------
    task : str
        The client task this strategy's instructions ask for (the ConfigRecord's ``task``
        when the caller's config has none).
    rejections : list[tuple[int, int, str]]
        ``(server_round, node_id, reason)`` of every rejected reply so far.
    partitions : PartitionMap
        The server's node id -> partition map (aggregation order, DASA's agent slots).
    outbox : Outbox
        The instructions sent and not yet answered (only replies to them count).
    """

    task: str = "q_learning"

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        *,
        min_replies: int = 1,
        value_bound: float | None = None,
        min_available_nodes: int = 1,
        wait_timeout: float = 600.0,
        value_floor: float | None = None,
        num_partitions: int | None = None,
    ) -> None:
        if num_states < 1 or num_actions < 1:
            raise ValueError(
                f"num_states and num_actions must be positive, got {num_states}, {num_actions}"
            )
        if min_replies < 1:
            raise ValueError(f"min_replies must be >= 1, got {min_replies}")
        if value_bound is not None and not value_bound > 0:
            raise ValueError(f"value_bound must be positive or None, got {value_bound}")
        self.num_states = int(num_states)
        self.num_actions = int(num_actions)
        self.min_replies = int(min_replies)
        self.value_bound = None if value_bound is None else float(value_bound)
        self.min_available_nodes = int(min_available_nodes)
        self.wait_timeout = float(wait_timeout)
        self.rejections: list[tuple[int, int, str]] = []
        self.value_floor = None if value_floor is None else float(value_floor)
        self.partitions = PartitionMap(num_partitions)
        self.outbox = Outbox()
        # Set by configure_train, read by the following aggregate_train.
        self._num_sent = 0
        self._bytes_down = 0
        self._round_steps: tuple[int, str] | None = None  # (local_steps, sampling) asked

    @property
    def shape(self) -> tuple[int, int]:
        """Q-table shape ``(num_states, num_actions)``."""
        return (self.num_states, self.num_actions)

    @property
    def reply_specs(self) -> list[ArraySpec]:
        """Arrays every reply must carry; subclasses append what their rule needs."""
        return [ArraySpec(Q, self.shape, "float", low=self.value_floor)]

    def parameters(self) -> dict[str, object]:
        """Constructor parameters, for `summary`; subclasses add theirs."""
        return {
            "num_states": self.num_states,
            "num_actions": self.num_actions,
            "min_replies": self.min_replies,
            "value_bound": self.value_bound,
            "value_floor": self.value_floor,
            "num_partitions": self.partitions.num_partitions,
            "min_available_nodes": self.min_available_nodes,
        }

    def summary(self) -> None:
        """Log the strategy's class name and parameters."""
        log(INFO, "\t├──> %s", self.__class__.__name__)
        for name, value in self.parameters().items():
            log(INFO, "\t│\t├── %s: %s", name, value)

    def start(self, grid: Grid, *args, **kwargs) -> Result:
        """Flower's ``Strategy.start``, its replies pulled every 0.1 s instead of every 3 s.

        The one hook of :mod:`.transport` into Flower's loop (a user's ServerApp calling
        ``strategy.start(grid=grid, ...)``); our own round loops call it directly.
        """
        return super().start(fast_pulls(grid), *args, **kwargs)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Send the global Q-table and config (plus ``server-round``) to every node.

        The nodes are those :func:`wait_for_nodes` returns: it waits for
        `min_available_nodes` at most once per grid when some never connect, and never for
        nodes that were connected and are lost.
        """
        train_config = ConfigRecord(dict(config))
        train_config.setdefault(TASK, self.task)
        train_config[SERVER_ROUND] = server_round
        node_ids = wait_for_nodes(grid, self.min_available_nodes, self.wait_timeout)
        messages = [
            Message(
                RecordDict({ARRAYS: arrays, CONFIG: train_config}),
                dst_node_id=node_id,
                message_type=MessageType.TRAIN,
                group_id=str(server_round),
            )
            for node_id in node_ids
        ]
        self._num_sent = len(messages)
        self._bytes_down = len(messages) * sum(len(array.data) for array in arrays.values())
        self.outbox.clear()  # only this round's instructions may be answered
        self.outbox.add(messages)
        self._round_steps = round_steps(train_config)
        return messages

    # --- replies: identity and consistency (identity.screen_replies) ----------------------
    def check_update(self, update: ClientUpdate) -> None:
        """A strategy's own rule on a parsed reply (raise ``InvalidReply``); default: none."""

    def screen(self, server_round: int, replies: list[Message]) -> Screened:
        """Screen one call's replies (:func:`~.identity.screen_replies`); log the rejected."""
        screened = screen_replies(
            replies,
            self.outbox,
            self.reply_specs,
            self.partitions,
            self.value_bound,
            check=self.check_update,
        )
        for node_id, reason in screened.rejected:
            log(WARNING, "Round %s: rejected reply from node %s: %s", server_round, node_id, reason)
            self.rejections.append((server_round, node_id, reason))
        for node_id, reason in screened.unavailable:
            log(WARNING, "Round %s: node %s unavailable: %s", server_round, node_id, reason)
        return screened

    def missing(self, screened: Screened) -> int:
        """Nodes sent an instruction that gave no reply of their own (accepted or rejected)."""
        return len(self.outbox.nodes() - screened.answered)

    def samples_per_agent(self) -> int | None:
        """Local steps each agent was asked for this round (None: not known)."""
        return None if self._round_steps is None else self._round_steps[0]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """No federated evaluation: the server evaluates the global Q against ground truth."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """No federated evaluation (see `configure_evaluate`)."""
        return None


class AveragingStrategy(QTableStrategy):
    """A strategy whose new global table is a pure function of one round's valid replies.

    Subclasses implement :meth:`aggregate` (e.g. with `equal_average`); this class validates
    the replies, counts them, and keeps the previous table when fewer than ``min_replies``
    are valid.
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord]:
        """Validate replies and aggregate the valid ones into the new global Q-table.

        Returns ``(None, metrics)`` when fewer than `min_replies` replies are valid, which
        makes Flower's `Strategy.start` keep the previous global arrays.
        """
        replies = list(replies)
        screened = self.screen(server_round, replies)
        updates = screened.updates

        kept_previous = len(updates) < self.min_replies
        metrics = MetricRecord(
            {
                "accepted": len(updates),
                "rejected": len(screened.rejected),
                # Nodes sent an instruction that gave no reply of their own.
                "missing": self.missing(screened),
                # What the network carried, rejected payloads included.
                "bytes_up": sum(payload_bytes(message) for message in replies),
                "bytes_down": self._bytes_down,
                "kept_previous": int(kept_previous),
                **mean_client_metrics(updates),
            }
        )
        samples = self.samples_per_agent()
        if updates and samples is not None:  # what the server asked for, not the clients' claim
            metrics[NUM_SAMPLES] = samples
        if kept_previous:
            log(
                WARNING,
                "Round %s: %d valid replies < min_replies=%d; keeping the previous global Q",
                server_round,
                len(updates),
                self.min_replies,
            )
            return None, metrics

        q = np.ascontiguousarray(self.aggregate(updates), dtype=np.float64)
        if q.shape != self.shape:
            raise RuntimeError(f"{type(self).__name__}.aggregate returned shape {q.shape}")
        return ArrayRecord({Q: Array(q)}), metrics

    @abstractmethod
    def aggregate(self, updates: list[ClientUpdate]) -> np.ndarray:
        """Combine validated updates (at least `min_replies`) into an ``(S, A)`` Q-table."""


def mean_client_metrics(updates: list[ClientUpdate]) -> dict[str, float]:
    """Mean over the updates that report it of every numeric client metric.

    Metrics named like a per-round bookkeeping metric (`ROUND_METRICS`) or one the server
    owns (`SERVER_METRICS`) are skipped so a client cannot overwrite the server's numbers.
    """
    values: dict[str, list[float]] = {}
    for update in updates:
        for name, value in update.metrics.items():
            if name not in ROUND_METRICS and name not in SERVER_METRICS:
                values.setdefault(name, []).append(float(value))
    return {name: float(np.mean(vals)) for name, vals in values.items()}


# --- builders' shared pieces (composed settings -> constructor arguments) -------------------


def value_bound(gamma: float) -> float:
    """Largest ``|Q|`` a valid reply may carry for rewards in ``[0, 1]``.

    Q-learning iterates from 0 stay in ``[0, 1 / (1 - gamma)]``; a reply far outside is
    corrupt, not merely noisy (the slack admits transients of large step sizes).
    """
    return 2.0 / (1.0 - gamma) + 1.0


#: Lower bound of a valid reply's Q for rewards in ``[0, 1]``: iterates from ``Q = 0`` are
#: convex combinations ``(1 - eta) Q + eta (r + gamma max Q')`` of non-negative numbers, so
#: they stay ``>= 0`` exactly (also in floating point: products and sums of non-negative
#: numbers round to non-negative numbers). Average reward's normalized iterates too.
VALUE_FLOOR = 0.0


def common_args(settings, mdp) -> dict:
    """Keyword arguments every strategy gets from the composed settings."""
    return {
        "min_replies": int(settings["min_replies"]),
        "value_bound": value_bound(mdp.gamma),
        "value_floor": VALUE_FLOOR,
        "num_partitions": int(settings["num_clients"]),
        "min_available_nodes": int(settings["num_clients"]),
        "wait_timeout": float(settings["round_timeout"]),
    }


def round_steps(config: ConfigRecord) -> tuple[int, str] | None:
    """``(client.local_steps, client.sampling)`` an instruction's config asks for.

    A key the config leaves out is the client's conf default, as on the client side. None if
    the value is not a positive integer (the ClientApp refuses such an instruction anyway).
    """
    from flower_qlearn import defaults  # no Hydra: the ClientApp reads the same defaults

    client = None
    if LOCAL_STEPS not in config or SAMPLING not in config:
        client = defaults.group_defaults("client")
    steps = config[LOCAL_STEPS] if LOCAL_STEPS in config else client["local_steps"]
    sampling = config[SAMPLING] if SAMPLING in config else client["sampling"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        return None
    return steps, str(sampling)
