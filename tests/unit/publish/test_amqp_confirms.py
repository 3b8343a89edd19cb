"""Confirms settle a batch at once: acked and routed is dispatched; a nack, a return or silence is not.

A stand-in channel plays RabbitMQ's side (acks, nacks, returns, a blocked connection) so that the rules are
checked without a broker; tests/e2e/test_amqp_confirms.py runs them against the real one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
from amqp import Message
from amqp.exceptions import AMQPError, RecoverableConnectionError

from celery_redis_stream.publish.amqp_confirms import (
    CONFIRM_TIMEOUT,
    BatchOutcome,
    Confirms,
    confirm_timeout,
    transport_options,
)


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    @contextlib.contextmanager
    def having_timeout(self, timeout: float | None) -> Iterator[None]:
        yield

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Connection:
    """Replays RabbitMQ's answers, one list of events per drain_events call."""

    def __init__(self) -> None:
        self.transport = Transport()
        self.bytes_sent = 0
        self.answers: list[Callable[[], None]] = []
        self.on_blocked: Callable[[str], None] | None = None
        self.on_unblocked: Callable[[], None] | None = None

    def __bool__(self) -> bool:
        return True

    def drain_events(self, timeout: float) -> None:
        if not self.answers:
            raise TimeoutError
        self.answers.pop(0)()


class Channel:
    def __init__(self) -> None:
        self.connection = Connection()
        self.events: dict[str, set[Callable[..., None]]] = {
            "basic_ack": set(),
            "basic_nack": set(),
            "basic_return": set(),
        }
        self.selected = False
        self.sent: list[tuple[object, ...]] = []

    def confirm_select(self) -> None:
        self.selected = True

    def send_method(self, method: object, fmt: str, args: tuple[object, ...], msg: Message) -> None:
        self.sent.append(args)

    def fire(self, event: str, *args: object) -> Callable[[], None]:
        return lambda: [handler(*args) for handler in list(self.events[event])] and None


def message(entry_id: str) -> Message:
    return Message(b"{}", application_headers={"redis_stream_id": entry_id})


@pytest.fixture
def channel() -> Channel:
    return Channel()


@pytest.fixture
def confirms(channel: Channel) -> Confirms:
    return Confirms(channel, key_header="redis_stream_id")  # type: ignore[arg-type]


def publish(channel: Channel, *entry_ids: str) -> None:
    for entry_id in entry_ids:
        channel.basic_publish(message(entry_id), exchange="", routing_key="celery")  # type: ignore[attr-defined]


def test_every_publish_is_mandatory_and_a_multiple_ack_settles_the_batch(channel: Channel, confirms: Confirms) -> None:
    assert channel.selected
    confirms.begin()
    publish(channel, "1-0", "2-0", "3-0")
    assert all(args[3] is True for args in channel.sent)  # the mandatory bit
    channel.connection.answers = [channel.fire("basic_ack", 3, True)]
    outcome = confirms.settle(1.0)
    assert outcome.confirmed == ["1-0", "2-0", "3-0"] and outcome.complete


def test_a_nacked_message_leaves_the_batch_incomplete(channel: Channel, confirms: Confirms) -> None:
    confirms.begin()
    publish(channel, "1-0", "2-0")
    channel.connection.answers = [channel.fire("basic_ack", 1, False), channel.fire("basic_nack", 2, False)]
    outcome = confirms.settle(1.0)
    assert outcome.confirmed == ["1-0"] and outcome.nacked == ["2-0"] and not outcome.complete
    assert "nacked 1 of 2" in outcome.describe(1.0)


def test_a_returned_message_is_not_confirmed_though_acked(channel: Channel, confirms: Confirms) -> None:
    confirms.begin()
    publish(channel, "1-0", "2-0")
    returned = AMQPError("NO_ROUTE")
    returned.reply_text = "NO_ROUTE"
    channel.connection.answers = [
        channel.fire("basic_return", returned, "", "nowhere", message("2-0")),
        channel.fire("basic_ack", 2, True),
    ]
    outcome = confirms.settle(1.0)
    assert outcome.confirmed == ["1-0"] and not outcome.complete
    assert "unroutable" in outcome.describe(1.0) and "nowhere" in outcome.describe(1.0)


def test_silence_until_the_deadline_leaves_the_rest_unsettled_and_says_why(
    channel: Channel, confirms: Confirms
) -> None:
    confirms.begin()
    publish(channel, "1-0", "2-0")
    channel.connection.on_blocked("low on memory")  # type: ignore[misc]
    channel.connection.answers = [channel.fire("basic_ack", 1, False)]
    outcome = confirms.settle(0.2)
    assert outcome.confirmed == ["1-0"] and outcome.unsettled == ["2-0"] and not outcome.complete
    assert "confirmed 1 of 2" in outcome.describe(0.2) and "low on memory" in outcome.describe(0.2)


def test_written_frames_are_settled_like_publishes(channel: Channel, confirms: Confirms) -> None:
    confirms.begin()
    confirms.write([b"frame-a", b"frame-b"], ["1-0", "2-0"])
    assert channel.connection.transport.written == [b"frame-aframe-b"]  # one write for the batch
    channel.connection.answers = [channel.fire("basic_ack", 2, True)]
    assert confirms.settle(1.0).confirmed == ["1-0", "2-0"]


def test_a_closed_connection_refuses_to_publish(channel: Channel, confirms: Confirms) -> None:
    channel.connection = None  # type: ignore[assignment]
    with pytest.raises(RecoverableConnectionError):
        publish(channel, "1-0")


def test_the_confirm_timeout_comes_from_the_stream_then_the_transport_then_the_default() -> None:
    assert confirm_timeout({}, {}) == CONFIRM_TIMEOUT
    assert confirm_timeout({"confirm_timeout": 3}, {}) == 3.0
    assert confirm_timeout({"confirm_timeout": 3}, {"confirm_timeout": "1.5"}) == 1.5


def test_the_bridges_connection_never_confirms_per_message_and_keeps_socket_timeouts() -> None:
    assert transport_options({"confirm_publish": True})["confirm_publish"] is False
    options = transport_options({"read_timeout": 2})
    assert "read_timeout" not in options and options["write_timeout"] == 10.0


def test_an_empty_outcome_is_complete() -> None:
    assert BatchOutcome().complete and BatchOutcome().confirmed == []
