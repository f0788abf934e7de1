"""Reply validation: turn Flower reply messages into checked NumPy arrays.

A federated server must survive a misbehaving client. Every strategy in this package
runs each reply through `parse_reply` before anything is averaged, so one bad table
(wrong shape, wrong dtype, NaN, a Flower error) is rejected with a one-line reason
instead of silently poisoning the global Q-table or crashing the round.

Who may reply and which agent a reply stands for is decided by :mod:`.identity`
(``screen_replies``), which calls `parse_reply` on every reply it keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from .protocol import ARRAYS as ARRAYS_KEY
from .protocol import METRICS as METRICS_KEY

if TYPE_CHECKING:
    from .identity import Sent

ARRAY_KINDS = ("float", "count")
#: Largest ``|value|`` of a reply metric; beyond it (or NaN/Inf, or an int too large for a
#: float) the reply is corrupt: rejected, so that no metric can crash the round's arithmetic.
MAX_METRIC = 1e15


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
    low : float, optional
        ``"float"`` only: every entry must be ``>= low`` (a one-sided bound where the theory
        gives one, e.g. ``0`` for Q-learning iterates from 0 with rewards in ``[0, 1]``).
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    low: float | None = None

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
    partition : int, optional
        The agent the server recorded for the node (:class:`PartitionMap`); None until
        :func:`screen_replies` has assigned it.
    sent : Sent, optional
        The instruction this reply answers (:class:`Outbox`), once matched.
    """

    node_id: int
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float | int]
    num_bytes: int
    partition: int | None = None
    sent: Sent | None = None


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
        # max |value| as max(max, -min) of the finite values: no |array| temporary
        if value_bound is not None and array.size and max(
                array.max(), -array.min()) > value_bound:
            raise InvalidReply(
                f"array {spec.name!r} has |value| {np.max(np.abs(array)):.6g} > bound {value_bound}"
            )
        if spec.low is not None and array.size and np.min(array) < spec.low:
            raise InvalidReply(
                f"array {spec.name!r} has value {np.min(array):.6g} < lower bound {spec.low}"
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
        `value_bound` (or below an array's ``low``), negative counts, an absurd metric
        (:func:`check_metrics`).
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
        metrics = check_metrics(
            {k: v for k, v in metric_record.items() if isinstance(v, int | float)}
        )

    return ClientUpdate(
        node_id=message.metadata.src_node_id,
        arrays=arrays,
        metrics=metrics,
        num_bytes=payload_bytes(message),
    )


def check_metrics(metrics: Mapping[str, float | int]) -> dict[str, float | int]:
    """The reply's numeric metrics, or InvalidReply if one is absurd.

    Absurd: NaN or Inf, ``|value| > MAX_METRIC``, or an int too large for a float (e.g.
    ``10**400``, which a MetricRecord holds in-process and which would crash any mean).
    """
    for name, value in metrics.items():
        try:
            number = float(value)
        except OverflowError:
            raise InvalidReply(f"metric {name!r} is an integer too large for a float") from None
        if not (math.isfinite(number) and abs(number) <= MAX_METRIC):
            raise InvalidReply(
                f"metric {name!r} = {number:.6g} is not a finite number with |x| <= {MAX_METRIC:g}"
            )
    return dict(metrics)


def split_replies(
    replies: Iterable[Message], specs: Sequence[ArraySpec], value_bound: float | None = None
) -> tuple[list[ClientUpdate], list[tuple[int, str]]]:
    """Split replies into valid updates and rejections (payload checks only).

    Parameters
    ----------
    replies : Iterable[Message]
        Replies of one round.
    specs, value_bound
        Passed to `parse_reply`.

    Returns
    -------
    updates : list[ClientUpdate]
        Valid updates sorted by node id. (Who the replies may come from and which agent each
        stands for is :func:`screen_replies`' business; it sorts by the server's partitions.)
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
    return [by_node[node_id] for node_id in sorted(by_node)], rejected
