"""Publisher confirms for the bridge's AMQP channel, settled a whole batch at a time (one round trip)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import SupportsFloat

from amqp import Channel, Message, spec
from amqp.exceptions import AMQPError, RecoverableConnectionError
from kombu.connection import Connection

__all__ = ["CONFIRM_TIMEOUT", "BatchOutcome", "Confirms", "is_py_amqp", "transport_options"]

# Seconds a batch may wait for RabbitMQ's confirms before the broker counts as unavailable.
CONFIRM_TIMEOUT = 10.0
# py-amqp socket options of the publishing connection (SO_RCVTIMEO / SO_SNDTIMEO): without them a
# broker that stops answering blocks a channel open or a full send buffer forever.
SOCKET_TIMEOUTS = {"read_timeout": 10.0, "write_timeout": 10.0}


def is_py_amqp(connection: Connection) -> bool:
    """Whether a kombu connection uses the py-amqp transport (``amqp://``, ``pyamqp://``, ``amqps://``)."""
    return getattr(connection.transport, "driver_name", None) == "py-amqp"


def transport_options(configured: Mapping[str, object]) -> dict[str, object]:
    """Transport options for the bridge's own py-amqp connection; the user's values win, except one.

    ``confirm_publish`` is always off on this connection: it would make py-amqp
    wait for a confirm after each message. The bridge selects confirms on its
    channel itself and waits once per batch (:class:`Confirms`).
    """
    options: dict[str, object] = {k: v for k, v in SOCKET_TIMEOUTS.items() if k not in configured}
    options["confirm_publish"] = False
    return options


def confirm_timeout(configured: Mapping[str, object], stream_options: Mapping[str, object]) -> float:
    """The stream's ``confirm_timeout`` send option, else the transport option, else 10 s."""
    for source in (stream_options, configured):
        value = source.get("confirm_timeout")
        if value and isinstance(value, (str, SupportsFloat)):
            return float(value)
    return CONFIRM_TIMEOUT


@dataclass
class BatchOutcome:
    """What RabbitMQ said about one batch, by message key (the bridge uses the entry id)."""

    acked: list[str] = field(default_factory=list)
    nacked: list[str] = field(default_factory=list)
    returned: list[tuple[str, str]] = field(default_factory=list)  # key, reason
    unsettled: list[str] = field(default_factory=list)
    blocked: str | None = None  # RabbitMQ's connection.blocked reason while the batch waited

    @property
    def confirmed(self) -> list[str]:
        """Acked and routed to a queue: in RabbitMQ's hands."""
        returned = {key for key, _ in self.returned}
        return [key for key in self.acked if key not in returned]

    @property
    def complete(self) -> bool:
        return not (self.nacked or self.returned or self.unsettled)

    def describe(self, timeout: float) -> str:
        total = len(self.acked) + len(self.nacked) + len(self.unsettled)
        parts = []
        if self.nacked:
            parts.append(f"RabbitMQ nacked {len(self.nacked)} of {total} messages (a full queue, or a broker error)")
        if self.returned:
            reasons = sorted({reason for _, reason in self.returned})
            parts.append(
                f"RabbitMQ returned {len(self.returned)} of {total} messages as unroutable, no queue is bound: "
                + "; ".join(reasons[:3])
            )
        if self.unsettled:
            parts.append(f"RabbitMQ confirmed {total - len(self.unsettled)} of {total} messages within {timeout:g}s")
            if self.blocked:
                parts.append(f"the connection is blocked by RabbitMQ: {self.blocked}")
        return "; ".join(parts)


class Confirms:
    """Puts one py-amqp channel in confirm mode and settles what it published, a batch at a time.

    Every ``basic_publish`` on the channel goes out at once with ``mandatory``
    set (so a message no queue receives comes back instead of vanishing) and
    gets the next delivery tag. :meth:`settle` then reads the connection until
    each tag of the batch is acked, nacked or returned, or the deadline passes:
    a single wait for the whole batch instead of kombu's ``confirm_publish``
    wait after every message.
    """

    def __init__(self, channel: Channel, *, key_header: str) -> None:
        self.channel = channel
        self.key_header = key_header
        self.blocked: str | None = None
        self._tag = 0
        self._keys: dict[int, str] = {}  # delivery tag -> key, for the batch being settled
        self._outcome = BatchOutcome()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        # py-amqp looks publish up on the instance (it swaps in its own
        # confirming publish the same way): every publish of this channel,
        # whoever builds the message, is counted.
        channel.basic_publish = self._publish
        connection = channel.connection
        connection.on_blocked = self._on_blocked
        connection.on_unblocked = self._on_unblocked

    def begin(self) -> None:
        """Start a batch: what is published from now on is settled by the next :meth:`settle`."""
        self._keys = {}
        self._outcome = BatchOutcome()

    def settle(self, timeout: float) -> BatchOutcome:
        """Read the connection until every message of the batch is settled, for at most ``timeout`` seconds.

        Connection and channel errors propagate (the batch is then not
        confirmed either); a deadline that passes leaves the rest in
        ``unsettled``.
        """
        deadline = time.monotonic() + timeout
        connection = self.channel.connection
        while self._keys:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                connection.drain_events(timeout=remaining)
            except TimeoutError:
                break
        outcome, self._outcome = self._outcome, BatchOutcome()
        outcome.unsettled = list(self._keys.values())
        outcome.blocked = self.blocked
        self._keys = {}
        return outcome

    def _publish(
        self,
        msg: Message,
        exchange: str = "",
        routing_key: str = "",
        mandatory: bool = False,
        immediate: bool = False,
        timeout: float | None = None,
        confirm_timeout: float | None = None,
    ) -> object:
        # Always mandatory: "dispatched" means a queue holds the message. The
        # confirm wait is per batch, in settle(), whatever confirm_timeout says.
        # py-amqp's own basic_publish also polls the socket before every message
        # for a connection.blocked notice; settle() reads those with the confirms.
        connection = self.channel.connection
        if not connection:
            raise RecoverableConnectionError("basic_publish: connection closed")
        try:
            with connection.transport.having_timeout(timeout):
                result = self.channel.send_method(
                    spec.Basic.Publish, "Bssbb", (0, exchange, routing_key, True, immediate), msg
                )
        except TimeoutError as exc:  # a write timeout leaves the socket unusable, as py-amqp says
            raise RecoverableConnectionError("basic_publish: timed out") from exc
        self._tag += 1
        headers = msg.properties.get("application_headers") or {}
        self._keys[self._tag] = str(headers.get(self.key_header, self._tag))
        return result

    def write(self, frames: Sequence[bytes], keys: Sequence[str], timeout: float | None = None) -> None:
        """Send ready-made ``basic.publish`` frames (amqp_frames.Publisher), one message per key, in one write.

        The same messages and delivery tags as one :meth:`_publish` each;
        settled with the batch in the same way.
        """
        connection = self.channel.connection
        if not connection:
            raise RecoverableConnectionError("basic_publish: connection closed")
        try:
            with connection.transport.having_timeout(timeout):
                connection.transport.write(b"".join(frames))
        except TimeoutError as exc:  # a write timeout leaves the socket unusable, as py-amqp says
            raise RecoverableConnectionError("basic_publish: timed out") from exc
        connection.bytes_sent += len(keys)  # py-amqp counts a publish so; its heartbeat check reads it
        for key in keys:
            self._tag += 1
            self._keys[self._tag] = key

    def _settled(self, delivery_tag: int, multiple: bool) -> Iterable[str]:
        if multiple:
            tags = [tag for tag in self._keys if tag <= delivery_tag]
        else:
            tags = [delivery_tag] if delivery_tag in self._keys else []
        return [self._keys.pop(tag) for tag in tags]

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._outcome.acked.extend(self._settled(delivery_tag, multiple))

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._outcome.nacked.extend(self._settled(delivery_tag, multiple))

    def _on_return(self, exc: AMQPError, exchange: str, routing_key: str, message: Message) -> None:
        # RabbitMQ sends basic.return before the basic.ack of the same message.
        headers = message.properties.get("application_headers") or {}
        reason = f"{exc.reply_text} exchange={exchange!r} routing_key={routing_key!r}"
        self._outcome.returned.append((str(headers.get(self.key_header)), reason))

    def _on_blocked(self, reason: str) -> None:
        self.blocked = reason

    def _on_unblocked(self) -> None:
        self.blocked = None
