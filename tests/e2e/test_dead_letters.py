"""Bad entries go to the dead-letter stream, the position moves on, the worker keeps going.

End to end with a real `celery worker` in both modes, plus a property-based test
that drives the Service in-process against a private Redis with random entries.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_redis_stream import keys
from celery_redis_stream.config import load_config
from celery_redis_stream.service import Service

from ..support import RedisServer, Worker, executed, wait_for, worker_env

DLQ_KEYS = (b"dlq_source_stream", b"dlq_source_id", b"dlq_reason", b"dlq_error")


def raw_client(server: RedisServer, db: int = 0) -> redis.Redis:
    """A client whose stream replies keep duplicate field names and bytes as they are."""
    client = server.client(db)
    for command in ("XRANGE", "XREAD"):
        client.set_response_callback(command, lambda response, **options: response)
    return client


def xadd_pairs(client: redis.Redis, stream: str, pairs: list[bytes]) -> str:
    """XADD with field/value pairs exactly as given (duplicates and non-UTF-8 bytes allowed)."""
    entry_id = client.execute_command("XADD", stream, "*", *pairs)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def dead_letters(client: redis.Redis, stream: str) -> dict[str, tuple[list[bytes], dict[bytes, bytes]]]:
    """Dead letters by source id: (the original pairs, the dlq_* fields)."""
    out = {}
    for _, pairs in client.execute_command("XRANGE", stream, "-", "+"):
        pairs = list(pairs)
        # the dlq_* fields are appended after the original ones
        tail = pairs[-8:]
        meta = dict(zip(tail[::2], tail[1::2], strict=True))
        assert tuple(meta) == DLQ_KEYS, pairs
        out[meta[b"dlq_source_id"].decode()] = (pairs[:-8], meta)
    return out


@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_bad_entries_are_dead_lettered_and_the_stream_moves_on(redis_server: RedisServer, mode: str) -> None:
    client = raw_client(redis_server)
    ledger = redis_server.client(2)
    tasks = {
        "events": "tests.record",
        "conv": {"task": "tests.record", "converter": "tests.workerapp:broken_converter"},
    }
    env = worker_env(
        redis_server.url, redis_server.url_db(1), redis_server.url_db(2), tasks,
        stream_mode=mode, stream_start="0", stream_max_entry_bytes=200, stream_block_ms=200,
    )  # fmt: skip
    worker = Worker(env, f"dead-{mode}").start()
    try:
        good = [xadd_pairs(client, "events", [b"n", b"1"])]
        bad = {
            xadd_pairs(client, "events", [b"v", b"\xff\xfe caf\xe9"]): ([b"v", b"\xff\xfe caf\xe9"], b"not_utf8"),
            xadd_pairs(client, "events", [b"\xc3\x28", b"ok"]): ([b"\xc3\x28", b"ok"], b"not_utf8"),
            xadd_pairs(client, "events", [b"a", b"1", b"a", b"2"]): ([b"a", b"1", b"a", b"2"], b"duplicate_field"),
            xadd_pairs(client, "events", [b"big", b"x" * 300]): ([b"big", b"x" * 300], b"too_large"),
        }
        # a field cannot choose the task: celery.map would run any signature it is given
        good.append(xadd_pairs(client, "events", [b"n", b"2", b"empty", b"", b"task", b"celery.map"]))
        conv_good = [xadd_pairs(client, "conv", [b"ok", b"1"])]
        conv_bad = xadd_pairs(client, "conv", [b"bad", b"yes"])
        conv_good.append(xadd_pairs(client, "conv", [b"ok", b"2"]))

        wait_for(lambda: len(executed(ledger)) >= 4, 60, "the good entries to run")
        wait_for(lambda: client.xlen("events:dead") >= 4 and client.xlen("conv:dead") >= 1, 30, "dead letters")

        letters = dead_letters(client, "events:dead")
        assert set(letters) == set(bad)
        for entry_id, (pairs, reason) in bad.items():
            original, meta = letters[entry_id]
            assert original == pairs  # every byte and every duplicate kept
            assert meta[b"dlq_source_stream"] == b"events"
            assert meta[b"dlq_reason"] == reason
            assert meta[b"dlq_error"]
        conv_letters = dead_letters(client, "conv:dead")
        assert set(conv_letters) == {conv_bad}
        original, meta = conv_letters[conv_bad]
        assert original == [b"bad", b"yes"]
        assert meta[b"dlq_reason"] == b"converter_error"
        assert b"ValueError: bad entry" in meta[b"dlq_error"]

        # The worker is still reading: a later entry runs too.
        good.append(xadd_pairs(client, "events", [b"n", b"3"]))
        wait_for(lambda: len(executed(ledger)) >= 5, 60, "an entry after the dead letters to run")

        runs = executed(ledger)
        assert sorted(r["stream_id"] for r in runs if r["stream"] == "events") == sorted(good)
        assert sorted(r["stream_id"] for r in runs if r["stream"] == "conv") == sorted(conv_good)
        by_id = {(r["stream"], r["stream_id"]): r for r in runs}
        assert by_id["events", good[1]]["args"] == [{"n": "2", "empty": "", "task": "celery.map"}]
        assert by_id["conv", conv_good[0]]["args"] == [{"ok": "1"}]

        def moved_on() -> bool:
            if mode == "group":
                groups = {s: redis_server.client().xinfo_groups(s)[0] for s in ("events", "conv")}
                return all(g["pending"] == 0 and g["lag"] == 0 for g in groups.values())
            tracker = redis_server.client()
            return (
                tracker.get("stream_tracker:{events}") == good[-1].encode()
                and tracker.get("stream_tracker:{conv}") == conv_good[-1].encode()
            )

        wait_for(moved_on, 30, "the position to move past every entry")
        assert worker.proc is not None and worker.proc.poll() is None
        log = worker.output().splitlines()
        for stream, entry_id in [*(("events", i) for i in bad), ("conv", conv_bad)]:
            lines = [line for line in log if f"dead-lettered stream={stream} id={entry_id} " in line]
            assert len(lines) == 1 and "ERROR" in lines[0], lines
    finally:
        worker.stop()


# --- property: every entry is either dispatched with faithful fields or dead-lettered ---

MAX_BYTES = 4096
PROP_STREAMS = {"pg": "group", "pt": "tracker"}


class InProcessBridge:
    """A Service running in this process against a private Redis (streams db 0, broker db 1)."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.streams = raw_client(server)
        self.broker = server.client(1)
        app = Celery("prop", broker=server.url_db(1), set_as_current=False)
        app.conf.update(
            stream_url=server.url,
            stream_tasks={s: {"task": "prop.record", "registered": False, "mode": m} for s, m in PROP_STREAMS.items()},
            stream_start="0",
            stream_block_ms=100,
            stream_max_entry_bytes=MAX_BYTES,
        )
        self.service = Service(app, load_config(app), consumer="t")

    def messages(self) -> list[tuple[str, str, Any]]:
        """(stream, entry id, args) of every task message in the broker queue."""
        out = []
        for raw in self.broker.lrange("celery", 0, -1):
            message = json.loads(raw)
            assert message["headers"]["task"] == "prop.record"
            args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            assert kwargs == {}
            out.append((message["headers"]["redis_stream"], message["headers"]["redis_stream_id"], args))
        return out

    def letters(self, stream: str) -> dict[str, tuple[list[bytes], dict[bytes, bytes]]]:
        return dead_letters(self.streams, f"{stream}:dead")

    def settled(self, produced: dict[str, list[str]]) -> bool:
        seen = {(s, i) for s, i, _ in self.messages()}
        for stream, ids in produced.items():
            seen |= {(stream, i) for i in self.letters(stream)}
            if PROP_STREAMS[stream] == "group":
                group = self.server.client().xinfo_groups(stream)[0]
                if group["pending"] or group["lag"]:
                    return False
            elif self.server.client().get(keys.tracker(stream)) != ids[-1].encode():
                return False
        return all((s, i) in seen for s, ids in produced.items() for i in ids)

    def clear(self) -> None:
        self.broker.delete("celery")
        self.streams.delete(*(f"{s}:dead" for s in PROP_STREAMS))


@pytest.fixture(scope="module")
def bridge() -> Iterator[InProcessBridge]:
    server = RedisServer().start()
    try:
        bridge = InProcessBridge(server)
        bridge.service.start()
        try:
            yield bridge
        finally:
            bridge.service.stop()
            assert not bridge.service.alive
    finally:
        server.stop()


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def verdict(pairs: list[tuple[str | bytes, str | bytes]]) -> set[str] | list[tuple[str, str]]:
    """What must happen to an entry: its decoded fields in order, or the possible dead-letter reasons."""
    flat = [_bytes(x) for pair in pairs for x in pair]
    if sum(len(x) for x in flat) > MAX_BYTES:
        return {"too_large"}
    reasons = set()
    names = [n for n, _ in pairs]
    if len({_bytes(n) for n in names}) < len(names):
        reasons.add("duplicate_field")
    try:
        decoded = [(_bytes(n).decode("utf-8"), _bytes(v).decode("utf-8")) for n, v in pairs]
    except UnicodeDecodeError:
        reasons.add("not_utf8")
    return reasons or decoded


names = st.one_of(st.text(max_size=6), st.binary(max_size=6), st.sampled_from(["id", "", "dlq_reason", "task"]))
values = st.one_of(
    st.text(max_size=30),
    st.binary(max_size=30),
    st.sampled_from(["", "celery.map"]),
    st.sampled_from([MAX_BYTES - 20, MAX_BYTES + 1, 200_000]).map(lambda n: b"v" * n),
)


@st.composite
def entries(draw: Any) -> list[tuple[str | bytes, str | bytes]]:
    pairs = draw(st.lists(st.tuples(names, values), min_size=1, max_size=5))
    if draw(st.integers(0, 9)) == 0:  # now and then, a duplicate field name on purpose
        pairs.append((pairs[0][0], draw(values)))
    return pairs


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(entries(), min_size=1, max_size=8))
def test_every_random_entry_is_dispatched_faithfully_or_dead_lettered_never_both(
    bridge: InProcessBridge, batch: list[list[tuple[str | bytes, str | bytes]]]
) -> None:
    bridge.clear()
    produced: dict[str, list[str]] = {s: [] for s in PROP_STREAMS}
    expected: dict[tuple[str, str], Any] = {}
    for pairs in batch:
        for stream in PROP_STREAMS:
            entry_id = xadd_pairs(bridge.streams, stream, [_bytes(x) for pair in pairs for x in pair])
            produced[stream].append(entry_id)
            expected[stream, entry_id] = (pairs, verdict(pairs))

    wait_for(lambda: bridge.settled(produced), 30, "every entry to be dispatched or dead-lettered", interval=0.02)

    sent: dict[tuple[str, str], list[Any]] = {}
    for stream, entry_id, args in bridge.messages():
        sent.setdefault((stream, entry_id), []).append(args)
    dead = {(s, i): letter for s in PROP_STREAMS for i, letter in bridge.letters(s).items()}
    assert set(sent) | set(dead) == set(expected)  # never neither, nothing invented
    assert not set(sent) & set(dead)  # never both
    for key, (pairs, outcome) in expected.items():
        if isinstance(outcome, list):
            assert sent[key] == [[dict(outcome)]], (key, pairs)
            assert list(sent[key][0][0].items()) == outcome  # field order kept too
        else:
            original, meta = dead[key]
            assert original == [_bytes(x) for pair in pairs for x in pair]
            assert meta[b"dlq_source_stream"].decode() == key[0]
            assert meta[b"dlq_reason"].decode() in outcome, (pairs, meta)
    assert all(bridge.service.loops[i].is_alive() for i in range(len(bridge.service.loops)))
