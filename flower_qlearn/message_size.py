"""What a Flower message costs on the wire, measured with Flower's own serializers.

Why: the strategies report ``bytes_up`` / ``bytes_down`` per round as the array payload of the
messages (the ``.npy`` bytes of every ``Array``: :func:`~flower_qlearn.strategies.validation.
payload_bytes`). A real message carries more: the ``ConfigRecord`` of the task (every
``mdp.*`` / ``client.*`` key, and for average reward the period's step sizes), the reply's
``MetricRecord``, the metadata, and the framing of each object. This module measures a
:class:`flwr.app.Message` three ways:

- ``payload``: the array bytes alone (what the strategies count);
- ``proto``: ``len(message_to_proto(message).SerializeToString())``, the whole message as one
  protobuf through ``flwr.common.serde`` (records, metadata and framing);
- ``objects``: what Flower 1.42 actually transfers. A message is pushed and pulled as a tree
  of inflatable objects (Message -> RecordDict -> records -> Arrays -> ArrayChunks), each
  sent as its ``deflate()`` bytes (a header ``"<type> <children> <length>"`` plus body) and
  deduplicated by object id, plus the message's content-free protobuf that announces it
  (``PushMessages`` / ``PullMessages``). gRPC/HTTP framing is not included.

:class:`MeteredClientApp` wraps any ClientApp and records these sizes for every instruction it
receives and every reply it returns, so a run through :func:`~flower_qlearn.inprocess.
run_inprocess` yields the per-round traffic of the real messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.app.message import remove_content_from_message
from flwr.common import serde
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

__all__ = [
    "MessageSize",
    "MeteredClientApp",
    "measure",
    "object_bytes",
    "payload_bytes",
    "proto_bytes",
    "record_bytes",
]


def payload_bytes(message: Message) -> int:
    """Array bytes of every ``ArrayRecord`` in the message's content (0 without content)."""
    if not message.has_content():
        return 0
    return sum(
        len(array.data)
        for record in message.content.values()
        if isinstance(record, ArrayRecord)
        for array in record.values()
    )


def record_bytes(record: ArrayRecord | ConfigRecord | MetricRecord) -> int:
    """One record's protobuf size through Flower's serde (``*_record_to_proto``)."""
    if isinstance(record, ArrayRecord):
        proto = serde.array_record_to_proto(record)
    elif isinstance(record, ConfigRecord):
        proto = serde.config_record_to_proto(record)
    elif isinstance(record, MetricRecord):
        proto = serde.metric_record_to_proto(record)
    else:
        raise TypeError(f"not a Flower record: {type(record).__name__}")
    return len(proto.SerializeToString())


def proto_bytes(message: Message) -> int:
    """The whole message as one protobuf: ``message_to_proto(message).SerializeToString()``."""
    return len(serde.message_to_proto(message).SerializeToString())


def object_bytes(message: Message) -> int:
    """Bytes Flower 1.42 transfers for the message: its content-free protobuf plus the
    ``deflate()`` bytes of every distinct object of its tree (``get_all_nested_objects``)."""
    announce = len(serde.message_to_proto(remove_content_from_message(message)).SerializeToString())
    return announce + sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


@dataclass(frozen=True)
class MessageSize:
    """Sizes of one message (bytes): see the module docstring for what each one counts."""

    payload: int
    proto: int
    objects: int
    records: dict[str, int] = field(default_factory=dict)  # record name -> serde size


def measure(message: Message) -> MessageSize:
    """All sizes of ``message`` (records by name; an error reply has none)."""
    records = (
        {name: record_bytes(record) for name, record in message.content.items()}
        if message.has_content()
        else {}
    )
    return MessageSize(payload_bytes(message), proto_bytes(message), object_bytes(message), records)


@dataclass
class MeteredClientApp:
    """A ClientApp stand-in that measures every instruction and reply of the wrapped app.

    ``log`` gets one ``(group_id, direction, MessageSize)`` per message, ``direction`` being
    ``"down"`` (instruction) or ``"up"`` (reply); Flower's group id is the server round for
    the round-based strategies. Pass it wherever a ClientApp is called as
    ``app(message=..., context=...)`` (e.g. :func:`~flower_qlearn.inprocess.run_inprocess`).
    """

    app: Callable[..., Message]
    log: list[tuple[str, str, MessageSize]] = field(default_factory=list)

    def __call__(self, message: Message, context: Context) -> Message:
        self.log.append((message.metadata.group_id, "down", measure(message)))
        reply = self.app(message=message, context=context)
        if isinstance(reply, Message):
            self.log.append((message.metadata.group_id, "up", measure(reply)))
        return reply
