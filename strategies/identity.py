"""Identity and round consistency on the server side: who may reply, and as which agent.

Identity is the server's, never the client's (:func:`screen_replies`, which every strategy
calls): a reply counts only if it answers an instruction the server sent (its
``reply_to_message_id``, from the node the instruction went to, with the instruction's group
id and message type, recorded by :class:`Outbox`), and the agent it stands for is the one the
server recorded for its node (:class:`PartitionMap`: fixed at the node's first valid reply,
never changed, one node per partition). Strategy-specific checks (visit counts consistent with
the round, DASA's echoed iteration) plug in as a ``check`` function. Payload checks are
:func:`~.validation.parse_reply`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID

from .protocol import ITERATION, PARTITION_ID
from .validation import ArraySpec, ClientUpdate, InvalidReply, parse_reply

# --- who may reply: the instructions the server sent ------------------------------------------


@dataclass(frozen=True)
class Sent:
    """What the server sent one node: what a reply to it must match.

    Parameters
    ----------
    node_id : int
        The instruction's ``dst_node_id``: the only node whose reply counts.
    group_id : str
        The instruction's group id (the server round); the reply must carry the same.
    message_type : str
        The instruction's message type (``"train"``); the reply must carry the same.
    iteration : int, optional
        DASA: the iteration of the iterate sent (the operator must say the same).
    """

    node_id: int
    group_id: str
    message_type: str
    iteration: int | None = None


class Outbox:
    """The instructions the server has sent and not yet seen answered, by message id.

    Flower gives a message its id when the grid pushes it (``InMemoryGrid`` and the in-process
    grid: a uuid4, ``HttpGrid``: the message's object id) by setting it on the very object the
    strategy returned, so the outbox keeps those objects and reads their ids when replies come.
    A synchronous strategy :meth:`clear`s it at each round (only this round's instructions
    count); DASA's asynchronous loop keeps instructions outstanding until answered.
    """

    def __init__(self) -> None:
        self._unstamped: list[tuple[Message, int | None]] = []
        self._sent: dict[str, Sent] = {}
        self._answered: dict[str, Sent] = {}

    def add(self, messages: Iterable[Message], iteration: int | None = None) -> None:
        """Record instructions about to be pushed (``iteration``: DASA's ``t``)."""
        self._unstamped.extend((message, iteration) for message in messages)

    def clear(self) -> None:
        """Forget every instruction: a new synchronous round starts."""
        self._unstamped, self._sent, self._answered = [], {}, {}

    def forget_answered(self) -> None:
        """Forget answered instructions (bounds memory; a late duplicate is then a reply to no
        instruction: rejected all the same)."""
        self._answered = {}

    def outstanding(self) -> dict[str, Sent]:
        """Sent instructions not yet answered, by message id (ids read as pushed)."""
        unstamped = []
        for message, iteration in self._unstamped:
            meta = message.metadata
            if not meta.message_id:  # not pushed (yet): no reply can refer to it
                unstamped.append((message, iteration))
                continue
            self._sent[meta.message_id] = Sent(
                int(meta.dst_node_id), meta.group_id, meta.message_type, iteration
            )
        self._unstamped = unstamped
        return dict(self._sent)

    def nodes(self) -> set[int]:
        """Nodes sent an instruction (answered or not) since the last :meth:`clear`."""
        sent = [s.node_id for s in self.outstanding().values()]
        sent += [s.node_id for s in self._answered.values()]
        return set(sent) | {int(m.metadata.dst_node_id) for m, _ in self._unstamped}

    def match(self, replies: Iterable[Message]) -> Matched:
        """:func:`match_replies` against the outstanding instructions; matched ones are answered."""
        matched = match_replies(replies, self.outstanding(), self._answered)
        for message, sent in matched.replies:
            mid = message.metadata.reply_to_message_id
            self._answered[mid] = self._sent.pop(mid, sent)
        return matched


@dataclass
class Matched:
    """The replies of :func:`match_replies`: matched, rejected, and who answered for itself."""

    replies: list[tuple[Message, Sent]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)
    unavailable: list[tuple[int, str]] = field(default_factory=list)


def match_replies(
    replies: Iterable[Message],
    sent: Mapping[str, Sent],
    answered: Mapping[str, Sent] | None = None,
) -> Matched:
    """Keep only replies to instructions the server sent; reject and count the rest.

    A reply is matched to the instruction whose message id is its ``reply_to_message_id``; it
    is rejected if there is none (a reply nobody asked for, or to an earlier round), if it
    comes from another node than the instruction went to, if its group id (round) or message
    type differ from the instruction's, or if that instruction was already answered
    (``answered``, or earlier in ``replies``). A SuperLink's own error reply for an instruction
    (``src_node_id`` 1: node unavailable) is neither: its node gave no reply (``unavailable``).

    Returns
    -------
    Matched
        ``replies``: (reply, its instruction) in arrival order; ``rejected``: ``(node, reason)``;
        ``answered``: nodes that replied to an instruction sent to them (accepted or not), so
        ``missing = sent nodes - answered``; ``unavailable``: ``(node, reason)`` of link notices.
    """
    out = Matched()
    done = dict(answered or {})  # message id -> instruction already answered
    for message in replies:
        meta = message.metadata
        src, mid = int(meta.src_node_id), meta.reply_to_message_id
        instruction = done.get(mid) or sent.get(mid)
        if instruction is None:
            out.rejected.append((src, "reply to no instruction the server sent this round"))
            continue
        if src != instruction.node_id:
            if src == SUPERLINK_NODE_ID and message.has_error():
                out.unavailable.append((instruction.node_id, message.error.reason))
            else:
                out.rejected.append(
                    (src, f"reply to an instruction sent to node {instruction.node_id}")
                )
            continue
        out.answered.add(src)
        if mid in done:
            out.rejected.append((src, "duplicate reply from this node"))
        elif meta.group_id != instruction.group_id:
            out.rejected.append(
                (src, f"reply group id {meta.group_id!r}, instruction's {instruction.group_id!r}")
            )
        elif meta.message_type != instruction.message_type:
            out.rejected.append(
                (src, f"reply message type {meta.message_type!r}, instruction's "
                 f"{instruction.message_type!r}")
            )
        else:
            out.replies.append((message, instruction))
            done[mid] = instruction
    return out


# --- which agent a node is: the server's map ----------------------------------------------------


def assign_partition(
    by_node: Mapping[int, int],
    node_id: int,
    claimed: float | int | None,
    num_partitions: int | None,
) -> int:
    """The partition (agent) of ``node_id`` for a valid reply claiming ``claimed``.

    Rules: a claim must be an integer in ``0 .. num_partitions - 1`` (``num_partitions`` None:
    any integer >= 0); a node already recorded keeps its partition (a different claim is
    refused); a partition recorded for another node is refused. A reply that claims nothing
    (a user's ClientApp that does not report ``partition_id``) gets its node's recorded
    partition, or else the lowest free one.

    Raises
    ------
    InvalidReply
        With the reason, one line.
    """
    held = {p: n for n, p in by_node.items()}
    if claimed is None:
        if node_id in by_node:
            return by_node[node_id]
        limit = num_partitions if num_partitions is not None else len(held) + 1
        free = [p for p in range(limit) if p not in held]
        if not free:
            raise InvalidReply(f"claims no {PARTITION_ID} and all {limit} partitions are held")
        return free[0]
    if not float(claimed).is_integer() or claimed < 0 or (
        num_partitions is not None and claimed >= num_partitions
    ):
        top = "" if num_partitions is None else f"..{num_partitions - 1}"
        raise InvalidReply(f"{PARTITION_ID} {claimed} is not a partition of this run (0{top})")
    partition = int(claimed)
    if node_id in by_node and by_node[node_id] != partition:
        raise InvalidReply(
            f"claims {PARTITION_ID} {partition}, but this node is partition {by_node[node_id]}"
        )
    if held.get(partition, node_id) != node_id:
        raise InvalidReply(f"claims {PARTITION_ID} {partition}, held by node {held[partition]}")
    return partition


class PartitionMap:
    """The server's node id -> partition map: fixed at a node's first valid reply.

    Parameters
    ----------
    num_partitions : int, optional
        The run's number of agents (``num_clients``); None: any partition id >= 0.
    """

    def __init__(self, num_partitions: int | None = None) -> None:
        if num_partitions is not None and num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1 or None, got {num_partitions}")
        self.num_partitions = num_partitions
        self.by_node: dict[int, int] = {}

    def claim(self, node_id: int, claimed: float | int | None) -> int:
        """Record (or check) ``node_id``'s partition; :func:`assign_partition` decides."""
        partition = assign_partition(self.by_node, node_id, claimed, self.num_partitions)
        self.by_node[int(node_id)] = partition
        return partition


# --- one round's replies, screened ------------------------------------------------------------


@dataclass
class Screened:
    """Outcome of :func:`screen_replies`: the updates to use and the counts of the round."""

    updates: list[ClientUpdate]
    rejected: list[tuple[int, str]]
    answered: set[int]
    unavailable: list[tuple[int, str]]


def screen_replies(
    replies: Iterable[Message],
    outbox: Outbox,
    specs: Sequence[ArraySpec],
    partitions: PartitionMap,
    value_bound: float | None = None,
    check: Callable[[ClientUpdate], None] | None = None,
) -> Screened:
    """Every check a reply must pass before a strategy uses it, in order.

    1. it answers an instruction in ``outbox`` (:meth:`Outbox.match`);
    2. its payload is valid (:func:`parse_reply` with ``specs`` and ``value_bound``);
    3. ``check(update)`` passes (a strategy's own rule, raising :class:`InvalidReply`);
    4. it is its node's only valid reply of the call;
    5. its node's partition is consistent (:meth:`PartitionMap.claim`, new nodes in node-id
       order so that the outcome does not depend on arrival order).

    Returns
    -------
    Screened
        ``updates`` sorted by the server's partition (then node id), with ``partition`` and
        ``sent`` set: the same agents give bit-identical aggregates on every engine.
    """
    matched = outbox.match(replies)
    rejected = list(matched.rejected)
    valid: list[ClientUpdate] = []
    for message, sent in matched.replies:
        try:
            update = replace(parse_reply(message, specs, value_bound), sent=sent)
            if check is not None:
                check(update)
        except InvalidReply as exc:
            rejected.append((int(message.metadata.src_node_id), str(exc)))
            continue
        valid.append(update)
    updates, duplicates = split_updates(valid)
    rejected += duplicates
    placed = []
    for update in sorted(updates, key=lambda u: u.node_id):
        try:
            partition = partitions.claim(update.node_id, update.metrics.get(PARTITION_ID))
        except InvalidReply as exc:
            rejected.append((update.node_id, str(exc)))
            continue
        placed.append(replace(update, partition=partition))
    placed.sort(key=lambda u: (u.partition, u.node_id))
    return Screened(placed, rejected, matched.answered, matched.unavailable)


def split_updates(
    updates: Iterable[ClientUpdate],
) -> tuple[list[ClientUpdate], list[tuple[int, str]]]:
    """Keep each node's first valid update; a further one is a rejected duplicate."""
    by_node: dict[int, ClientUpdate] = {}
    rejected = []
    for update in updates:
        if update.node_id in by_node:
            rejected.append((update.node_id, "duplicate reply from this node"))
        else:
            by_node[update.node_id] = update
    return list(by_node.values()), rejected


# --- round-consistency rules a strategy plugs in as ``check`` ----------------------------------


def check_visit_counts(counts: np.ndarray, local_steps: int, sampling: str) -> None:
    """Visit counts must be those of a round of ``local_steps`` steps.

    ``generative``: every entry is updated once per step, so every count is ``local_steps``.
    ``markovian``: one entry per step along the trajectory, so the counts sum to
    ``local_steps`` exactly (the kernel has no early stop). Anything else was not produced by
    the round the server asked for (e.g. one count of 1e18 that would hand its entry to the
    client under importance weights).
    """
    if sampling == "generative":
        if counts.size and not np.all(counts == local_steps):
            raise InvalidReply(
                f"counts are not all {local_steps} (generative sampling, {local_steps} steps)"
            )
        return
    largest = int(np.max(counts, initial=0))
    if largest > local_steps:  # also keeps the sum below from overflowing
        raise InvalidReply(
            f"counts have an entry {largest} > the round's local_steps={local_steps}"
        )
    total = int(np.sum(counts, dtype=np.int64))
    if total != local_steps:
        raise InvalidReply(
            f"counts sum to {total}, not the round's local_steps={local_steps} (markovian)"
        )


def check_iteration(update: ClientUpdate) -> None:
    """DASA: the operator's echoed ``iteration`` must be the one the server sent this node."""
    if update.sent is None or update.sent.iteration is None:
        return
    if ITERATION not in update.metrics:
        raise InvalidReply(f"reply metrics lack {ITERATION!r}")
    echoed = update.metrics[ITERATION]
    if echoed != update.sent.iteration:
        raise InvalidReply(
            f"operator says {ITERATION} {echoed}, but the node was sent iteration "
            f"{update.sent.iteration}"
        )
