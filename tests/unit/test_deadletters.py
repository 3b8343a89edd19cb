"""Dead-letter streams: list, fetch by id, filter by reason, requeue and purge, raw bytes kept."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from celery_redis_stream import deadletters
from celery_redis_stream.client.connection import connect
from celery_redis_stream.config import BridgeConfig, StreamConfig, load_config

from ..support import RedisServer, make_app


@pytest.fixture
def setup(unit_redis: RedisServer) -> Iterator[tuple[redis.Redis, StreamConfig]]:
    stream = f"dl-{uuid.uuid4().hex[:8]}"
    config: BridgeConfig = load_config(
        make_app("dl", stream_url=unit_redis.url_db(6), stream_tasks={stream: "shop.handle"})
    )
    client = connect(config)  # raw replies, as the CLI reads them
    try:
        yield client, config.streams[0]
    finally:
        client.delete(stream, config.streams[0].dead_letter)
        client.close()


def letter(client: redis.Redis, sc: StreamConfig, reason: str, *own: bytes) -> str:
    pairs = [*own, b"dlq_source_stream", sc.stream.encode(), b"dlq_source_id", b"1-0", b"dlq_reason", reason.encode(),
             b"dlq_error", b"why"]  # fmt: skip
    return str(client.execute_command("XADD", sc.dead_letter, "*", *pairs).decode())


def test_read_keeps_the_entrys_own_pairs_in_order_duplicates_and_bad_bytes_included(
    setup: tuple[redis.Redis, StreamConfig],
) -> None:
    client, sc = setup
    entry_id = letter(client, sc, "duplicate_field", b"a", b"1", b"a", b"2", b"bin", b"\xff")
    (entry,) = deadletters.read(client, sc)
    assert entry.id == entry_id
    assert entry.original == (b"a", b"1", b"a", b"2", b"bin", b"\xff")
    assert entry.meta("dlq_reason") == b"duplicate_field" and entry.meta("nothing") is None


def test_batches_are_bounded_and_fetch_names_the_missing_ids(setup: tuple[redis.Redis, StreamConfig]) -> None:
    client, sc = setup
    ids = [letter(client, sc, "too_large", b"n", str(i).encode()) for i in range(7)]
    assert [[e.id for e in b] for b in deadletters.batches(client, sc, 5, batch=2)] == [ids[0:2], ids[2:4], ids[4:5]]
    found, missing = deadletters.fetch(client, sc, [ids[3], "9-9", ids[0]])
    assert [e.id for e in found] == [ids[3], ids[0]] and missing == ["9-9"]
    assert deadletters.fetch(client, sc, []) == ([], [])


def test_matching_chooses_by_reason_at_most_limit(setup: tuple[redis.Redis, StreamConfig]) -> None:
    client, sc = setup
    ids = [letter(client, sc, "not_utf8" if i % 2 else "too_large", b"n", str(i).encode()) for i in range(6)]
    seen: list[int] = []
    chosen = [e.id for b in deadletters.matching(client, sc, "not_utf8", limit=2, progress=seen.append) for e in b]
    assert chosen == [ids[1], ids[3]] and sum(seen) >= 4


def test_a_requeue_cut_short_before_its_xdel_and_run_again_adds_each_letter_once(
    setup: tuple[redis.Redis, StreamConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, sc = setup
    for n in range(3):
        pairs = [b"n", str(n).encode(), b"dlq_source_stream", sc.stream.encode(), b"dlq_source_id", f"{n}-1".encode(),
                 b"dlq_reason", b"decode", b"dlq_error", b"why"]  # fmt: skip
        client.execute_command("XADD", sc.dead_letter, "*", *pairs)

    def cut(*args: object) -> None:
        raise ConnectionError("the requeue was interrupted here")

    with monkeypatch.context() as patch:
        patch.setattr(client, "xdel", cut)
        with pytest.raises(ConnectionError):
            deadletters.requeue(client, sc, 10)
    assert len(client.execute_command("XRANGE", sc.stream, "-", "+")) == 3
    assert deadletters.requeue(client, sc, 10) == (3, 0)  # run again: letters deleted, nothing added twice
    entries = client.execute_command("XRANGE", sc.stream, "-", "+")
    assert [fields for _, fields in entries] == [[b"n", b"0"], [b"n", b"1"], [b"n", b"2"]]
    assert deadletters.read(client, sc) == []


def test_requeue_appends_the_own_fields_to_the_stream_then_deletes(setup: tuple[redis.Redis, StreamConfig]) -> None:
    client, sc = setup
    letter(client, sc, "converter_error", b"order_id", b"42")
    letter(client, sc, "too_large")  # no fields of its own: cannot be XADDed, kept
    assert deadletters.requeue(client, sc, 10) == (1, 1)
    ((_, fields),) = client.execute_command("XRANGE", sc.stream, "-", "+")
    assert list(fields) == [b"order_id", b"42"]
    assert [e.original for e in deadletters.read(client, sc)] == [()]


def test_purge_deletes_only_the_oldest_total(setup: tuple[redis.Redis, StreamConfig]) -> None:
    client, sc = setup
    ids = [letter(client, sc, "too_large", b"n", str(i).encode()) for i in range(4)]
    assert deadletters.purge(client, sc, 3) == 3
    assert [e.id for e in deadletters.read(client, sc)] == ids[3:]
    assert deadletters.purge_entries(client, sc, []) == 0


def test_a_letter_with_more_fields_than_an_idempotent_xadd_takes_is_kept_and_the_others_requeued(
    setup: tuple[redis.Redis, StreamConfig],
) -> None:
    client, sc = setup
    big = [part for n in range(4000) for part in (f"f{n}".encode(), b"v")]  # a valid entry, too big for the script
    for n, own in enumerate([[b"order_id", b"1"], big, [b"order_id", b"3"]]):
        meta = [b"dlq_source_stream", sc.stream.encode(), b"dlq_source_id", f"{n}-1".encode(), b"dlq_reason",
                b"task_failed", b"dlq_error", b"why"]  # fmt: skip
        client.execute_command("XADD", sc.dead_letter, "*", *own, *meta)
    assert deadletters.requeue(client, sc, 10) == (2, 1)
    entries = client.execute_command("XRANGE", sc.stream, "-", "+")
    assert [list(fields) for _, fields in entries] == [[b"order_id", b"1"], [b"order_id", b"3"]]
    assert [len(e.original) for e in deadletters.read(client, sc)] == [len(big)]  # kept, nothing half done
