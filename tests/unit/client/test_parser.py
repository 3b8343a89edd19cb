"""resp.StreamReplyParser gives redis-py's RESP2 values for any reply, however it arrives on the socket."""

from __future__ import annotations

import random
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis._parsers import Encoder, _RESP2Parser
from redis.exceptions import ResponseError

from celery_redis_stream.client.parser import StreamReplyParser

Reply = None | int | bytes | list  # type: ignore[type-arg]


def encode(value: object) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(encode(v) for v in value)
    raise TypeError(value)


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.socket_timeout = 5
        self.encoder = Encoder("utf-8", "strict", False)


def parse(parser_class: type, payload: bytes, chunks: list[int]) -> list[object]:
    """Every reply in ``payload``, sent in pieces of the given sizes."""
    ours, theirs = socket.socketpair()
    try:
        parser = parser_class(socket_read_size=65536)
        parser.on_connect(_Connection(ours))
        at = 0
        for size in chunks:
            theirs.sendall(payload[at : at + size])
            at += size
        theirs.sendall(payload[at:])
        out: list[object] = []
        while parser._buffer.unread_bytes() or not out or len(out) < 3:
            out.append(parser.read_response())
            if len(out) == 3:
                break
        return out
    finally:
        ours.close()
        theirs.close()


awkward = st.sampled_from([b"\r\n", b"a\r\nb", b"$3\r\n", b""])
values = st.recursive(
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=40) | awkward,
    lambda children: st.lists(children, max_size=8) | st.just(None),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=3, max_size=3), st.randoms(use_true_random=False))
def test_the_same_values_as_redis_py_however_the_bytes_arrive(replies: list[object], rnd: random.Random) -> None:
    payload = b"".join(encode(r) for r in replies)
    chunks = [rnd.randint(1, 40) for _ in range(rnd.randint(0, 6))]
    assert parse(StreamReplyParser, payload, chunks) == parse(_RESP2Parser, payload, chunks) == replies


def test_errors_status_replies_and_nil_arrays_are_redis_py_s() -> None:
    payload = b"-ERR boom\r\n+OK\r\n*3\r\n+QUEUED\r\n*-1\r\n-NOSCRIPT nope\r\n"
    got = parse(StreamReplyParser, payload, [3, 7])
    assert isinstance(got[0], ResponseError) and str(got[0]) == "boom"
    assert got[1] == b"OK"
    assert got[2][:2] == [b"QUEUED", None] and isinstance(got[2][2], ResponseError)


def test_a_stream_read_reply() -> None:
    entries = [[b"%d-0" % i, [b"a", b"1", b"b", b"hello", b"n", b"%d" % i]] for i in range(100)]
    reply = [[b"bench", entries]]
    got = parse(StreamReplyParser, encode(reply) * 3, [100, 5000])
    assert got == [reply] * 3


@pytest.mark.parametrize("hiredis", [True, False])
def test_parser_options_leave_hiredis_in_place(monkeypatch: pytest.MonkeyPatch, hiredis: bool) -> None:
    from celery_redis_stream.client import parser as resp

    monkeypatch.setattr(resp, "HIREDIS_AVAILABLE", hiredis)
    assert resp.parser_options() == ({} if hiredis else {"parser_class": StreamReplyParser})


def sized_read_reply(total: int) -> list[object]:
    """An XREAD reply of one entry whose encoding is exactly ``total`` bytes."""
    for n in range(total, 0, -1):
        reply: list[object] = [[b"s", [[b"1-0", [b"f", b"x" * n]]]]]
        if len(encode(reply)) == total:
            return reply
    raise AssertionError(total)


@pytest.mark.parametrize("total", [65536 + 2, 2 * 65536 + 2, 65536 + 1, 65536 + 3])
def test_a_socket_read_that_ends_just_before_the_reply_s_last_crlf(total: int) -> None:
    # A 64 KiB socket read that stops two bytes short of the reply leaves its
    # last value whole but not the CRLF after it: the reply is not complete yet.
    reply = sized_read_reply(total)
    payload = encode(reply) + encode([b"next"]) * 2
    assert parse(StreamReplyParser, payload, []) == [reply, [b"next"], [b"next"]]


def test_the_rest_of_a_reply_arriving_later_is_waited_for() -> None:
    import threading

    reply = [[b"s", [[b"1-0", [b"f", b"v" * 100]]]]]
    payload = encode(reply)
    for cut in (1, 2, 3, 50):
        ours, theirs = socket.socketpair()
        try:
            parser = StreamReplyParser(socket_read_size=65536)
            parser.on_connect(_Connection(ours))
            theirs.sendall(payload[:-cut])
            later = threading.Timer(0.05, theirs.sendall, (payload[-cut:] + encode([b"after"]),))
            later.start()
            assert parser.read_response() == reply
            assert parser.read_response() == [b"after"]  # the buffer's position is right after the first reply
            later.join()
        finally:
            ours.close()
            theirs.close()
