"""loops.ReaderThread: runs a reader's rounds, backs off and retries, stops for good on a fatal error, cleans up."""

from __future__ import annotations

import threading
import time
from unittest.mock import Mock

from redis.exceptions import ConnectionError, NoPermissionError

from celery_redis_stream.client.connection import Client
from celery_redis_stream.exceptions import BrokerUnavailable
from celery_redis_stream.read.base import Reader
from celery_redis_stream.stats import StreamStats
from celery_redis_stream.thread import BACKOFF_MAX, ReaderThread, backoff


class Scripted(Reader):
    """A reader whose rounds raise the given errors in turn, then stop the thread."""

    label = "scripted"

    def __init__(self, stop: threading.Event, *errors: BaseException) -> None:
        self.stop = stop
        self.errors = list(errors)
        self.rounds = 0
        self.forgotten: list[BaseException] = []
        self.closed: list[tuple[object, bool]] = []
        self.one = StreamStats(stream="orders", mode="group", task="t", group="celery", tracker=None)

    def step(self, client: Client) -> None:
        self.rounds += 1
        if self.errors:
            raise self.errors.pop(0)
        self.stop.set()

    def stats(self) -> list[StreamStats]:
        return [self.one]

    def on_error(self, exc: BaseException) -> None:
        self.forgotten.append(exc)

    def close(self, client: Client | None, *, warm: bool) -> None:
        self.closed.append((client, warm))


def run(reader: Scripted, stop: threading.Event) -> tuple[ReaderThread, Mock, Mock]:
    client, release = Mock(name="client"), Mock(name="release")
    thread = ReaderThread(reader, connect=lambda: client, release=release, stop_event=stop)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    return thread, client, release


def test_a_round_that_fails_is_retried_and_the_reader_told_to_forget() -> None:
    stop = threading.Event()
    lost = ConnectionError("Connection reset by peer")
    reader = Scripted(stop, lost, BrokerUnavailable("broker down"))
    thread, client, release = run(reader, stop)
    assert reader.rounds == 3 and reader.forgotten == [lost, reader.forgotten[1]]
    assert isinstance(reader.forgotten[1], BrokerUnavailable)
    assert reader.one.broker_retries == 1
    assert reader.one.last_error is None  # cleared on recovery
    assert thread.failures == 0
    # Stopped after a good round: a warm close, then the client goes back.
    assert reader.closed == [(client, True)]
    release.assert_called_once_with(client)


def test_a_fatal_error_stops_the_reader_and_shows_why() -> None:
    stop = threading.Event()
    reader = Scripted(stop, NoPermissionError("NOPERM no permissions to run XREADGROUP"))
    _, client, release = run(reader, stop)
    assert reader.rounds == 1 and reader.forgotten == []
    assert not reader.one.reading and reader.one.last_error is not None
    assert reader.one.last_error.startswith("NoPermissionError: ")
    assert not stop.is_set()  # only this reader stopped
    assert reader.closed == [(client, False)]
    release.assert_called_once_with(client)


def test_stop_during_backoff_is_prompt_and_the_close_is_cold() -> None:
    stop = threading.Event()
    reader = Scripted(stop, *[ConnectionError("refused")] * 50)
    client, release = Mock(name="client"), Mock(name="release")
    thread = ReaderThread(reader, connect=lambda: client, release=release, stop_event=stop)
    thread.start()
    deadline = time.monotonic() + 10
    while reader.rounds < 5 and time.monotonic() < deadline:  # the fifth failure backs off 1.6-3.2 s
        time.sleep(0.01)
    assert reader.rounds >= 5
    stop.set()
    thread.join(1)
    assert not thread.is_alive()  # woken from the backoff, not at its end
    assert thread.failures >= 5
    assert reader.closed == [(client, False)]  # stopped while failing: a cold close
    release.assert_called_once_with(client)


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    assert 0.1 <= backoff(1) <= 0.2
    assert 0.2 <= backoff(2) <= 0.4
    assert BACKOFF_MAX / 2 <= backoff(40) <= BACKOFF_MAX


def test_a_halted_reader_reads_no_more_but_keeps_its_client_until_closing() -> None:
    stop, closing = threading.Event(), threading.Event()
    reader = Scripted(stop)  # its first round ends with the stop event set: a shutdown began
    client, release = Mock(name="client"), Mock(name="release")
    thread = ReaderThread(reader, connect=lambda: client, release=release, stop_event=stop, closing=closing)
    thread.start()
    time.sleep(0.3)
    assert reader.rounds == 1  # no round after the halt
    assert thread.is_alive() and reader.closed == [] and not release.called  # consumer and lease kept
    closing.set()
    thread.join(5)
    assert not thread.is_alive()
    assert reader.closed == [(client, True)]  # then the warm close, after the last round
    release.assert_called_once_with(client)
