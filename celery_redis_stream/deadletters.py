"""Dead letters: the format written (DeadLetter, its reasons) and the dead-letter stream: list, requeue, purge.

A dead letter is the entry's own field/value pairs, as they were, then
``dlq_source_stream``, ``dlq_source_id``, ``dlq_reason`` (one of REASONS),
``dlq_error`` and, for a failed task, ``dlq_task_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from . import keys as _keys
from .client.connection import MAX_COMMAND_ARGS
from .config import StreamConfig
from .entry import DECODE_ERROR, DEDUPE_KEY, RawEntry
from .producer import MAX_IDEMPOTENT_FIELDS, idempotent_xadd_command

if TYPE_CHECKING:
    from redis.typing import EncodableT

__all__ = [
    "BATCH",
    "DLQ_FIELDS",
    "MAX_DELIVERIES",
    "PUBLISH_ERROR",
    "REASONS",
    "TASK_FAILED",
    "DeadEntry",
    "DeadLetter",
    "batches",
    "fetch",
    "matching",
    "purge",
    "purge_entries",
    "read",
    "requeue",
    "requeue_entries",
    "write_oversized",
]  # fmt: skip

#: The fields a dead letter carries besides the entry's own (see DeadLetter).
DLQ_FIELDS = frozenset({b"dlq_source_stream", b"dlq_source_id", b"dlq_reason", b"dlq_error", b"dlq_task_id"})
BATCH = 500
#: How long a requeued letter's idempotency record is kept: a requeue run again within a day adds nothing twice.
REQUEUE_IDEMPOTENCY_TTL_S = 86400


class DeadLetterClient(Protocol):
    """The commands dead letters need (redis.Redis and RedisCluster have them), raw replies kept (reader.connect)."""

    def execute_command(self, *args: object) -> object: ...

    def pipeline(self, transaction: bool = True) -> Pipeline: ...

    def xlen(self, name: str) -> object: ...

    def xdel(self, name: str, *ids: str) -> object: ...


class Pipeline(Protocol):
    def execute_command(self, *args: object) -> object: ...

    def execute(self) -> list[object]: ...


def _int(reply: object) -> int:
    if isinstance(reply, (int, str, bytes)):
        return int(reply)
    raise TypeError(f"expected an integer reply, got {reply!r}")


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass(frozen=True, slots=True)
class DeadEntry:
    """One entry of a dead-letter stream, as the raw pairs Redis returned."""

    id: str
    pairs: tuple[bytes, ...]

    def meta(self, name: str) -> bytes | None:
        key = name.encode()
        for i in range(0, len(self.pairs) - 1, 2):
            if self.pairs[i] == key:
                return self.pairs[i + 1]
        return None

    @property
    def original(self) -> tuple[bytes, ...]:
        """The entry's own fields, in order, duplicates and undecodable bytes included."""
        out: list[bytes] = []
        for i in range(0, len(self.pairs) - 1, 2):
            if self.pairs[i] not in DLQ_FIELDS:
                out += [self.pairs[i], self.pairs[i + 1]]
        return tuple(out)


def _parse(reply: object) -> list[DeadEntry]:
    entries = []
    for item in _items(reply):
        raw_id, pairs = _items(item)
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        entries.append(DeadEntry(entry_id, tuple(_bytes(p) for p in _items(pairs))))
    return entries


def _items(reply: object) -> tuple[object, ...]:
    """A list reply (XRANGE's entries, an entry's id and pairs); nil is empty."""
    return tuple(reply) if isinstance(reply, (list, tuple)) else ()


def read(client: DeadLetterClient, sc: StreamConfig, *, start: str = "-", count: int = BATCH) -> list[DeadEntry]:
    """XRANGE of the dead-letter stream from ``start`` (``"(id"`` excludes ``id``), oldest first.

    ``client`` must keep XRANGE replies raw (``reader.connect``), so nothing is decoded here.
    """
    return _parse(client.execute_command("XRANGE", sc.dead_letter, start, "+", "COUNT", count))


def batches(client: DeadLetterClient, sc: StreamConfig, total: int, batch: int = BATCH) -> Iterator[list[DeadEntry]]:
    """The oldest ``total`` dead letters in batches of at most ``batch``; bounded however the stream changes."""
    start, left = "-", total
    for _ in range(total // max(batch, 1) + 2):
        if left <= 0:
            return
        entries = read(client, sc, start=start, count=min(batch, left))
        if not entries:
            return
        yield entries
        left -= len(entries)
        start = "(" + entries[-1].id


def fetch(client: DeadLetterClient, sc: StreamConfig, ids: Sequence[str]) -> tuple[list[DeadEntry], list[str]]:
    """The dead letters with these ids, in the order given (one XRANGE id id each, pipelined); and the ids not found."""
    if not ids:
        return [], []
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.execute_command("XRANGE", sc.dead_letter, entry_id, entry_id, "COUNT", 1)
    found: list[DeadEntry] = []
    missing: list[str] = []
    for entry_id, reply in zip(ids, pipe.execute(), strict=True):
        entries = _parse(reply)
        if entries:
            found += entries
        else:
            missing.append(entry_id)
    return found, missing


def matching(
    client: DeadLetterClient, sc: StreamConfig, reason: str, *, limit: int | None = None, scan: int | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> Iterator[list[DeadEntry]]:  # fmt: skip
    """Batches of the dead letters whose ``dlq_reason`` is ``reason``, oldest first, at most ``limit`` of them.

    Reads at most ``scan`` dead letters (default: the stream's length when it starts).
    """
    want = reason.encode()
    left = limit
    total = _int(client.xlen(sc.dead_letter)) if scan is None else scan
    for entries in batches(client, sc, total):
        progress(len(entries))
        chosen = [e for e in entries if e.meta("dlq_reason") == want]
        if left is not None:
            chosen, left = chosen[:left], left - min(left, len(chosen))
        if chosen:
            yield chosen
        if left == 0:
            return


def requeue_entries(client: DeadLetterClient, sc: StreamConfig, entries: Sequence[DeadEntry]) -> tuple[int, int]:
    """Append these dead letters' own fields to the source stream (one MULTI), then XDEL them.

    Each is produced with an idempotency key made of its ``dlq_source_stream``
    and ``dlq_source_id`` (producer.produce's script), so a requeue cut short
    between the XADD and the XDEL and run again adds each letter back once:
    the second run finds the first one's entry and only deletes the letter.
    A dead letter with no fields of its own cannot be XADDed and stays, and so
    does one with more than MAX_IDEMPOTENT_FIELDS (its EVAL would fail inside
    the MULTI, after the others were added but before any XDEL).
    Returns (requeued, skipped).
    """
    movable = [e for e in entries if e.original and len(e.original) <= 2 * MAX_IDEMPOTENT_FIELDS]
    if movable:
        pipe = client.pipeline(transaction=True)
        for entry in movable:
            pipe.execute_command(*_requeue_command(sc, entry))
        pipe.execute()
        client.xdel(sc.dead_letter, *(e.id for e in movable))
    return len(movable), len(entries) - len(movable)


def _requeue_command(sc: StreamConfig, entry: DeadEntry) -> list[EncodableT]:
    source, source_id = entry.meta("dlq_source_stream"), entry.meta("dlq_source_id")
    if source is None or source_id is None:  # not written by the bridge: nothing to know it by
        return ["XADD", sc.stream, "*", *entry.original]
    key = _keys.requeue_idempotency_key(source.decode("utf-8", "replace"), source_id.decode("utf-8", "replace"))
    return idempotent_xadd_command(sc.stream, entry.original, key, REQUEUE_IDEMPOTENCY_TTL_S)


def requeue(
    client: DeadLetterClient, sc: StreamConfig, total: int, *, progress: Callable[[int], None] = lambda n: None
) -> tuple[int, int]:
    """Requeue the oldest ``total`` dead letters in batches (see ``requeue_entries``). Returns (requeued, skipped)."""
    requeued = skipped = 0
    for entries in batches(client, sc, total):
        moved, kept = requeue_entries(client, sc, entries)
        requeued, skipped = requeued + moved, skipped + kept
        progress(len(entries))
    return requeued, skipped


def purge_entries(client: DeadLetterClient, sc: StreamConfig, entries: Sequence[DeadEntry]) -> int:
    """XDEL these dead letters; returns how many were still there."""
    return _int(client.xdel(sc.dead_letter, *(e.id for e in entries))) if entries else 0


def purge(
    client: DeadLetterClient, sc: StreamConfig, total: int, *, progress: Callable[[int], None] = lambda n: None
) -> int:
    """XDEL the oldest ``total`` dead letters; entries added meanwhile are kept."""
    purged = 0
    for entries in batches(client, sc, total):
        purged += purge_entries(client, sc, entries)
        progress(len(entries))
    return purged


#: Every dlq_reason: entry.py and publish/redis_envelope.py raise EntryError with the conversion ones
#: (``decode`` and ``dedupe_key`` among them), publish/dispatch.py gives ``publish_error``, batch/deliveries.py
#: ``max_deliveries``, failed_tasks.py ``task_failed``.
PUBLISH_ERROR = "publish_error"
MAX_DELIVERIES = "max_deliveries"
TASK_FAILED = "task_failed"
REASONS = (
    "too_large", "duplicate_field", "not_utf8", DECODE_ERROR, DEDUPE_KEY, "converter_error", PUBLISH_ERROR,
    MAX_DELIVERIES, TASK_FAILED,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry that cannot become a task, and why: written by position.commit (or the atomic step)."""

    raw: RawEntry
    reason: str
    error: str

    def pairs(self) -> list[bytes | str]:
        """The original field/value pairs, as they were (a dict would merge duplicate names), then dlq_*."""
        return [
            *(self.raw.pairs or ()),
            "dlq_source_stream", self.raw.stream,
            "dlq_source_id", self.raw.id,
            "dlq_reason", self.reason,
            "dlq_error", self.error[:1000],
        ]  # fmt: skip


def write_oversized(client: DeadLetterClient, stream: str, dead: Sequence[DeadLetter]) -> list[list[bytes | str]]:
    """XADD now the dead letters too long for one command inside a script; the pairs of the others.

    A script hands each command to Lua's unpack(), which gives up near 8,000 values, so a dead letter
    with more fields is written before the script that moves the position: at least once (a retry of
    the batch may repeat it). The rest go inside the script, with the move.
    """
    letters = [letter.pairs() for letter in dead]
    huge = [pairs for pairs in letters if len(pairs) + 3 > MAX_COMMAND_ARGS]
    if huge:
        pipe = client.pipeline(transaction=False)
        for pairs in huge:
            pipe.execute_command("XADD", stream, "*", *pairs)
        pipe.execute()
    return [pairs for pairs in letters if len(pairs) + 3 <= MAX_COMMAND_ARGS]
