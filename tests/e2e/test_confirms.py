"""Confirms without a broker: delivery tags, multiple acks, nacks, returns and the deadline.

A stand-in channel records what the bridge publishes and lets the test play
RabbitMQ's side (`drain_events` delivers the frames the test queued). The
real-server behaviour is in tests/e2e/test_amqp_confirms.py.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from amqp import Message

from celery_redis_stream.publish.amqp_confirms import CONFIRM_TIMEOUT, Confirms, confirm_timeout, transport_options


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    @contextlib.contextmanager
    def having_timeout(self, timeout: float | None) -> Iterator[None]:
        yield


class FakeConnection:
    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.frames: list[Callable[[], None]] = []
        self.on_blocked: Any = None
        self.on_unblocked: Any = None
        self.bytes_sent = 0

    def __bool__(self) -> bool:
        return True

    def drain_events(self, timeout: float | None = None) -> None:
        if not self.frames:
            raise TimeoutError("timed out")
        self.frames.pop(0)()


class FakeChannel:
    def __init__(self) -> None:
        self.connection = FakeConnection()
        self.events: dict[str, set[Any]] = defaultdict(set)
        self.selected = False
        self.sent: list[tuple[Any, ...]] = []
        self.basic_publish: Any = None

    def confirm_select(self) -> None:
        self.selected = True

    def send_method(self, sig: Any, argsig: str, args: tuple[Any, ...], content: Any) -> None:
        self.sent.append((args, content))

    def ack(self, tag: int, multiple: bool = False) -> None:
        self.connection.frames.append(lambda: [cb(tag, multiple) for cb in self.events["basic_ack"]])

    def nack(self, tag: int, multiple: bool = False) -> None:
        self.connection.frames.append(lambda: [cb(tag, multiple) for cb in self.events["basic_nack"]])

    def returned(self, message: Any) -> None:
        exc = type("NoRoute", (Exception,), {"reply_text": "NO_ROUTE"})()
        self.connection.frames.append(lambda: [cb(exc, "x", "orders", message) for cb in self.events["basic_return"]])


def message(entry_id: str) -> Message:
    return Message(b"{}", application_headers={"redis_stream_id": entry_id})


@pytest.fixture
def channel() -> FakeChannel:
    return FakeChannel()


def publish(channel: FakeChannel, *ids: str) -> list[Message]:
    messages = [message(i) for i in ids]
    for m in messages:
        channel.basic_publish(m, exchange="", routing_key="q", mandatory=False, immediate=False)
    return messages


def test_confirm_mode_is_selected_and_every_publish_is_mandatory(channel: FakeChannel) -> None:
    Confirms(channel, key_header="redis_stream_id")
    assert channel.selected
    publish(channel, "1-0", "2-0")
    assert [args for args, _ in channel.sent] == [(0, "", "q", True, False)] * 2


def test_one_multiple_ack_settles_a_whole_batch(channel: FakeChannel) -> None:
    confirms = Confirms(channel, key_header="redis_stream_id")
    confirms.begin()
    publish(channel, "1-0", "2-0", "3-0")
    channel.ack(3, multiple=True)
    outcome = confirms.settle(1.0)
    assert outcome.complete
    assert outcome.confirmed == ["1-0", "2-0", "3-0"]


def test_delivery_tags_continue_across_batches(channel: FakeChannel) -> None:
    confirms = Confirms(channel, key_header="redis_stream_id")
    confirms.begin()
    publish(channel, "1-0", "2-0")
    channel.ack(2, multiple=True)
    assert confirms.settle(1.0).complete
    confirms.begin()
    publish(channel, "3-0", "4-0")
    channel.ack(3)
    channel.ack(4)
    assert confirms.settle(1.0).confirmed == ["3-0", "4-0"]


def test_a_nack_and_a_missing_confirm_leave_the_batch_incomplete(channel: FakeChannel) -> None:
    confirms = Confirms(channel, key_header="redis_stream_id")
    confirms.begin()
    publish(channel, "1-0", "2-0", "3-0", "4-0")
    channel.ack(1)
    channel.nack(3, multiple=True)  # tags 2 and 3
    outcome = confirms.settle(1.0)  # tag 4 never settles: the fake connection times out
    assert not outcome.complete
    assert outcome.confirmed == ["1-0"]
    assert outcome.nacked == ["2-0", "3-0"]
    assert outcome.unsettled == ["4-0"]
    text = outcome.describe(1.0)
    assert "nacked 2 of 4" in text and "confirmed 3 of 4 messages within 1s" in text


def test_a_returned_message_is_acked_but_not_confirmed(channel: FakeChannel) -> None:
    confirms = Confirms(channel, key_header="redis_stream_id")
    confirms.begin()
    sent = publish(channel, "1-0", "2-0")
    channel.returned(sent[1])  # RabbitMQ returns before it acks
    channel.ack(2, multiple=True)
    outcome = confirms.settle(1.0)
    assert not outcome.complete
    assert outcome.confirmed == ["1-0"]
    assert [key for key, _ in outcome.returned] == ["2-0"]
    assert "NO_ROUTE exchange='x' routing_key='orders'" in outcome.describe(1.0)


def test_frames_written_at_once_take_the_next_delivery_tags(channel: FakeChannel) -> None:
    confirms = Confirms(channel, key_header="redis_stream_id")
    confirms.begin()
    publish(channel, "1-0")
    confirms.write([b"frames of 2-0", b"frames of 3-0"], ["2-0", "3-0"])
    assert channel.connection.transport.written == [b"frames of 2-0frames of 3-0"]  # one write
    assert channel.connection.bytes_sent == 2
    channel.ack(1)
    channel.nack(3, multiple=True)
    outcome = confirms.settle(1.0)
    assert outcome.confirmed == ["1-0"]
    assert outcome.nacked == ["2-0", "3-0"]


def test_a_blocked_connection_is_named_when_confirms_time_out(channel: FakeChannel) -> None:
    confirms = Confirms(channel, key_header="redis_stream_id")
    channel.connection.on_blocked("low on memory")
    confirms.begin()
    publish(channel, "1-0")
    assert "blocked by RabbitMQ: low on memory" in confirms.settle(0.1).describe(0.1)


def test_transport_options_turn_off_per_message_confirms_and_keep_the_users_timeouts() -> None:
    assert transport_options({}) == {"read_timeout": 10.0, "write_timeout": 10.0, "confirm_publish": False}
    assert transport_options({"read_timeout": 30, "confirm_publish": True}) == {
        "write_timeout": 10.0,
        "confirm_publish": False,
    }
    assert confirm_timeout({}, {}) == CONFIRM_TIMEOUT == 10.0
    assert confirm_timeout({"confirm_timeout": 3}, {}) == 3.0
    assert confirm_timeout({"confirm_timeout": 3}, {"confirm_timeout": 1.5}) == 1.5
