"""Reply validation: turn Flower reply messages into checked NumPy arrays.

A federated server must survive a misbehaving client. Every strategy in this package
runs each reply through `parse_reply` before anything is averaged, so one bad table
(wrong shape, wrong dtype, NaN, a Flower error) is rejected with a one-line reason
instead of silently poisoning the global Q-table or crashing the round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from .protocol import ARRAYS as ARRAYS_KEY
from .protocol import METRICS as METRICS_KEY
from .protocol import PARTITION_ID

ARRAY_KINDS = ("float", "count")


class InvalidReply(ValueError):
    """A client reply that cannot be aggregated; the message says why, in one line."""


@dataclass(frozen=True)
class ArraySpec:
    """What one array of a reply must look like.

    Parameters
    ----------
    name : str
        Key of the array inside the reply's ``"arrays"`` ArrayRecord (e.g. ``"q"``).
    shape : tuple[int, ...]
        Exact expected shape, e.g. ``(num_states, num_actions)``.
    kind : str
        ``"float"``: float64 and finite (and within ``value_bound`` if one is given);
        ``"count"``: any integer dtype with all entries >= 0 (returned as int64).
    """

    name: str
    shape: tuple[int, ...]
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ARRAY_KINDS:
            raise ValueError(f"ArraySpec kind must be one of {ARRAY_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class ClientUpdate:
    """One validated client reply.

    Parameters
    ----------
    node_id : int
        Flower node id of the replying client (``message.metadata.src_node_id``).
    arrays : dict[str, np.ndarray]
        Validated arrays by name, e.g. ``{"q": (S, A) float64, "counts": (S, A) int64}``.
    metrics : dict[str, float | int]
        Scalar entries of the reply's ``"metrics"`` MetricRecord (empty if absent).
    num_bytes : int
        Payload size of the reply's arrays: sum of ``len(Array.data)`` over its ArrayRecord.
    """

    node_id: int
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float | int]
    num_bytes: int


def payload_bytes(message: Message) -> int:
    """Bytes of array payload a reply carried (0 for error replies or no ArrayRecord)."""
    if message.has_error() or not message.has_content():
        return 0
    record = message.content.get(ARRAYS_KEY)
    if not isinstance(record, ArrayRecord):
        return 0
    return sum(len(array.data) for array in record.values())


def _check_array(array: np.ndarray, spec: ArraySpec, value_bound: float | None) -> np.ndarray:
    """Return the array (counts as int64) or raise InvalidReply naming what is wrong."""
    if array.shape != spec.shape:
        raise InvalidReply(f"array {spec.name!r} has shape {array.shape}, expected {spec.shape}")
    if spec.kind == "float":
        if array.dtype != np.float64:
            raise InvalidReply(f"array {spec.name!r} has dtype {array.dtype}, expected float64")
        if not np.all(np.isfinite(array)):
            raise InvalidReply(f"array {spec.name!r} contains NaN or Inf")
        if value_bound is not None and array.size and np.max(np.abs(array)) > value_bound:
            raise InvalidReply(
                f"array {spec.name!r} has |value| {np.max(np.abs(array)):.6g} > bound {value_bound}"
            )
        return array
    # kind == "count"
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidReply(
            f"array {spec.name!r} has dtype {array.dtype}, expected an integer dtype"
        )
    if array.size and np.min(array) < 0:
        raise InvalidReply(f"array {spec.name!r} has negative counts")
    if array.size and np.max(array) > np.iinfo(np.int64).max:  # only reachable for uint64
        raise InvalidReply(f"array {spec.name!r} has counts beyond int64")
    return array.astype(np.int64, copy=False)


def parse_reply(
    message: Message, specs: Sequence[ArraySpec], value_bound: float | None = None
) -> ClientUpdate:
    """Validate one reply message against `specs` and return its arrays and metrics.

    Parameters
    ----------
    message : Message
        A reply to a train instruction.
    specs : Sequence[ArraySpec]
        Arrays the reply must carry in its ``"arrays"`` ArrayRecord. Extra arrays are ignored.
    value_bound : float, optional
        If given, every ``"float"`` array must satisfy ``|value| <= value_bound``.

    Returns
    -------
    ClientUpdate

    Raises
    ------
    InvalidReply
        With a one-line reason: a Flower error reply, no content, no ``"arrays"`` record,
        a missing or undecodable array, wrong shape or dtype, NaN/Inf, a value beyond
        `value_bound`, negative counts.
    """
    if message.has_error():
        error = message.error
        raise InvalidReply(f"Flower error reply (code {error.code}): {error.reason}")
    if not message.has_content():
        raise InvalidReply("reply has no content")
    record = message.content.get(ARRAYS_KEY)
    if not isinstance(record, ArrayRecord):
        raise InvalidReply(f"reply has no ArrayRecord {ARRAYS_KEY!r}")

    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in record:
            raise InvalidReply(f"reply is missing array {spec.name!r}")
        try:
            array = record[spec.name].numpy()
        except Exception as exc:  # a corrupt payload is the client's fault, not the server's
            raise InvalidReply(f"array {spec.name!r} cannot be decoded: {exc}") from exc
        arrays[spec.name] = _check_array(array, spec, value_bound)

    metric_record = message.content.get(METRICS_KEY)
    metrics: dict[str, float | int] = {}
    if isinstance(metric_record, MetricRecord):
        # Lists are legal in a MetricRecord but have no meaningful cross-client mean.
        metrics = {k: v for k, v in metric_record.items() if isinstance(v, int | float)}

    return ClientUpdate(
        node_id=message.metadata.src_node_id,
        arrays=arrays,
        metrics=metrics,
        num_bytes=payload_bytes(message),
    )


def split_replies(
    replies: Iterable[Message], specs: Sequence[ArraySpec], value_bound: float | None = None
) -> tuple[list[ClientUpdate], list[tuple[int, str]]]:
    """Split replies into valid updates and rejections.

    Parameters
    ----------
    replies : Iterable[Message]
        Replies of one round.
    specs, value_bound
        Passed to `parse_reply`.

    Returns
    -------
    updates : list[ClientUpdate]
        Valid updates sorted by the client's ``partition_id`` metric (then node id), so the
        aggregation order (and thus floating-point rounding) depends neither on the order in
        which replies arrived nor on the node ids a runtime happened to assign: the same
        agents give bit-identical aggregates on every engine.
    rejected : list[tuple[int, str]]
        ``(node_id, reason)`` for every rejected reply, in arrival order. A second reply
        from a node that already has a valid update is rejected too (it would double its
        weight in the average).
    """
    by_node: dict[int, ClientUpdate] = {}
    rejected: list[tuple[int, str]] = []
    for message in replies:
        node_id = message.metadata.src_node_id
        try:
            update = parse_reply(message, specs, value_bound)
        except InvalidReply as exc:
            rejected.append((node_id, str(exc)))
            continue
        if node_id in by_node:
            rejected.append((node_id, "duplicate reply from this node"))
            continue
        by_node[node_id] = update

    def order(node_id: int) -> tuple[float, int]:
        return (float(by_node[node_id].metrics.get(PARTITION_ID, node_id)), node_id)

    return [by_node[node_id] for node_id in sorted(by_node, key=order)], rejected
