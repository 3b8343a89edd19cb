"""Upkeep of the reading loops: removing idle consumers and trimming under retention, a few times a minute at most.

A worker may read thousands of streams (a pattern such as ``tenant:*``): the
scripts of many streams go in pipelines (one round trip per PIPELINE_CHUNK
streams), and a group reader's round over its streams is spread over the
round's interval (Spread), a few chunks between two reads, so reading never
waits for a whole round.
"""

from __future__ import annotations

import time
from collections.abc import Container, Iterable, Mapping, Sequence

from celery.utils.log import get_logger
from redis.exceptions import ResponseError

from ..client.capabilities import XTRIM_ACKED, in_use, probe
from ..client.connection import PIPELINE_CHUNK, Client
from ..config import StreamConfig
from ..position.rule import position_of
from ..redact import redact
from ..stats import StreamStats
from .consumers import REAP_BATCH, Removed, reap_consumers, reap_many, remove_own_many
from .retention import Trim, trim_many, trim_passed

__all__ = ["Spread", "Upkeep", "cadence"]

logger = get_logger(__name__)

#: The longest and the shortest pause between two rounds of one kind of upkeep
#: on a stream, in seconds: a few times a minute at most, whatever the settings.
MAX_INTERVAL = 30.0
MIN_INTERVAL = 5.0
#: One retention round calls the script again while it trims (each call frees at
#: most 100 radix nodes, ``XTRIM ~``'s own limit), up to this many calls or seconds,
#: so that a busy stream is kept up with while Redis serves others in between;
#: removing consumers likewise, REAP_BATCH a call.
TRIM_CALLS = 100
TRIM_SECONDS = 1.0
#: Removed consumers named one by one at INFO per round; the rest are counted in one line.
LOG_REMOVALS = 20
#: Streams one turn of a spread round looks at, at most (a few pipelines: tens of milliseconds).
TURN_MAX = 4 * PIPELINE_CHUNK
#: Streams a quiet reader lets pile up for one turn during a round, by waiting longer in its read:
#: two pipelines a turn, fewer reads (each read costs Redis about 1.5 us per stream it names).
TURN_WAIT = 2 * PIPELINE_CHUNK
#: A spread round aims to end within this share of its interval.
ROUND_SHARE = 0.8
#: A stream's next reap or trim is due a little before its interval has passed: a spread round
#: may come to the stream a turn earlier than the last one did, and must not skip it for a whole round.
SLACK = 0.9


def cadence(ms: int, block_ms: int) -> float:
    """Seconds between rounds for a threshold of ``ms``: half of it, at least a read, within the bounds above."""
    return min(max(ms / 2000, block_ms / 1000, MIN_INTERVAL), MAX_INTERVAL)


class Spread:
    """One round of per-stream upkeep spread over its interval, a share of the streams per turn of the loop.

    ``take`` is called once per turn of the reading loop (between two reads).
    A round starts every ``every`` seconds; until it ends, each turn takes
    the streams that keep it on pace to end within ROUND_SHARE of the
    interval, plus one PIPELINE_CHUNK ahead, at most TURN_MAX: a reader of
    fewer streams than a chunk does its whole round in one turn, as a single
    round; one of 10,000 does it in short turns, reading in between.
    """

    def __init__(self, every: float) -> None:
        self.every = every
        self.todo: list[str] = []
        self.done = 0
        self.started = 0.0
        self.next_round = 0.0

    @property
    def under_way(self) -> bool:
        return self.done < len(self.todo)

    def until_next(self, now: float) -> float:
        """Seconds until a turn has upkeep to do: the round's share of TURN_WAIT streams while one is under way."""
        if self.under_way:
            return self.every * ROUND_SHARE * TURN_WAIT / len(self.todo)
        return max(0.0, self.next_round - now)

    def take(self, streams: Iterable[str], now: float) -> list[str]:
        """The streams this turn looks at (none between rounds)."""
        if not self.under_way:
            if now < self.next_round:
                return []
            # Streams that join during a round wait for the next one.
            self.todo, self.done = list(streams), 0
            self.started, self.next_round = now, now + self.every
        total = len(self.todo)
        span = self.every * ROUND_SHARE
        on_pace = total if span <= 0 else int(total * min(1.0, (now - self.started) / span))
        n = max(0, min(on_pace + PIPELINE_CHUNK - self.done, TURN_MAX))
        part = self.todo[self.done : self.done + n]
        self.done += len(part)
        if not self.under_way:
            self.todo, self.done = [], 0
        return part


class Upkeep:
    """What one loop does besides reading, on its own client, between reads.

    A Redis refusal here (an ACL without XGROUP DELCONSUMER, XTRIM or EVAL)
    is logged and tried again next round: it never stops the reading. Lost
    connections propagate, as they would from the next read anyway. Each
    method takes many streams and pipelines their scripts.
    """

    def __init__(self, *, block_ms: int, reap_idle_ms: int) -> None:
        self.block_ms = block_ms
        self.reap_idle_ms = reap_idle_ms
        self.reap_every = cadence(reap_idle_ms, block_ms)
        self.next_reap: dict[str, float] = {}
        self.next_trim: dict[str, float] = {}
        self.capabilities: frozenset[str] | None = None  # of the server, probed at the first trim
        self.warned: set[tuple[str, str]] = set()

    def refused(self, what: str, sc: StreamConfig, exc: ResponseError) -> None:
        """Redis refused ``what`` on ``sc``: a WARNING the first time, DEBUG after; reading goes on."""
        loud = (what, sc.stream) not in self.warned
        self.warned.add((what, sc.stream))
        (logger.warning if loud else logger.debug)(
            "redis-stream: cannot %s on stream=%s, reading goes on: %s", what, sc.stream, redact(str(exc))
        )

    def reap(
        self, client: Client, streams: Iterable[StreamConfig], own: str, stats: Mapping[str, StreamStats],
        crowded: Container[str] | None = None,
    ) -> None:  # fmt: skip
        """Group mode: delete other consumers idle past stream_reap_idle_ms with nothing pending.

        ``crowded``, when given, names the streams whose group has more than
        one consumer (XINFO GROUPS): on the others there is nobody to remove
        but ourselves, and no script is sent.
        """
        now = time.monotonic()
        due: list[StreamConfig] = []
        for sc in streams:
            if now >= self.next_reap.get(sc.stream, 0.0):
                self.next_reap[sc.stream] = now + self.reap_every * SLACK
                if crowded is None or sc.stream in crowded:
                    due.append(sc)
        if not due:
            return
        removed: list[tuple[StreamConfig, Removed]] = []
        try:
            more: list[StreamConfig] = []
            for sc, reply in zip(due, reap_many(client, due, own, min_idle_ms=self.reap_idle_ms), strict=True):
                if isinstance(reply, ResponseError):
                    self.refused("remove idle consumers", sc, reply)
                    continue
                removed += [(sc, consumer) for consumer in reply]
                if len(reply) >= REAP_BATCH:
                    more.append(sc)
            for sc in more:
                removed += [(sc, consumer) for consumer in self._reap_more(client, sc, own)]
        finally:
            self._removed(removed, stats)

    def _reap_more(self, client: Client, sc: StreamConfig, own: str) -> list[Removed]:
        """A stream with more idle consumers than one call removes: calls again, a while."""
        begun = time.monotonic()
        removed: list[Removed] = []
        try:
            for _ in range(TRIM_CALLS - 1):
                batch = reap_consumers(client, sc, own, min_idle_ms=self.reap_idle_ms)
                removed += batch
                if len(batch) < REAP_BATCH or time.monotonic() - begun > TRIM_SECONDS:
                    break
        except ResponseError as exc:
            self.refused("remove idle consumers", sc, exc)
        return removed

    def _removed(self, removed: Sequence[tuple[StreamConfig, Removed]], stats: Mapping[str, StreamStats]) -> None:
        # After years of rollouts (or across thousands of streams) a round may remove
        # thousands: name the first ones, count the rest in one line.
        for i, (sc, consumer) in enumerate(removed):
            (logger.info if i < LOG_REMOVALS else logger.debug)(
                "redis-stream: removed consumer %s from group=%s stream=%s: idle %.0fs, nothing pending",
                consumer.name, sc.group, sc.stream, consumer.idle_ms / 1000,
            )  # fmt: skip
            stats[sc.stream].consumers_removed += 1
        rest = removed[LOG_REMOVALS:]
        if not rest:
            return
        streams = {sc.stream for sc, _ in rest}
        sc = rest[0][0]
        where = f"stream={sc.stream}" if len(streams) == 1 else f"{len(streams)} streams"
        logger.info(
            "redis-stream: removed %d more idle consumers with nothing pending from group=%s %s",
            len(rest), sc.group, where,
        )  # fmt: skip

    def leave(
        self, client: Client, streams: Iterable[StreamConfig], own: str, stats: Mapping[str, StreamStats]
    ) -> None:
        """Warm stop, after the last commit: delete our own consumer where nothing is pending on it (pipelined)."""
        streams = list(streams)
        try:
            replies = remove_own_many(client, streams, own)
        except Exception as exc:  # stopping: a failure only leaves the consumers for the reaper
            logger.debug("redis-stream: consumer %s stays in its groups: %s", own, type(exc).__name__)
            return
        gone: list[StreamConfig] = []
        for sc, reply in zip(streams, replies, strict=True):
            if isinstance(reply, ResponseError):
                logger.debug("redis-stream: consumer %s stays in group=%s: %s", own, sc.group, redact(str(reply)))
            elif reply:
                gone.append(sc)
                stats[sc.stream].consumers_removed += 1
        for i, sc in enumerate(gone):
            (logger.info if i < LOG_REMOVALS else logger.debug)(
                "redis-stream: removed own consumer %s from group=%s stream=%s: stopped with nothing pending",
                own, sc.group, sc.stream,
            )  # fmt: skip
        if len(gone) > LOG_REMOVALS:
            logger.info(
                "redis-stream: removed own consumer %s from %d more streams of group=%s: stopped with nothing pending",
                own, len(gone) - LOG_REMOVALS, gone[0].group,
            )  # fmt: skip

    def trim(self, client: Client, streams: Iterable[StreamConfig], stats: Mapping[str, StreamStats]) -> None:
        """Trim what every group (and the tracker) passed, older than the stream's retention (pipelined)."""
        now = time.monotonic()
        due: list[tuple[StreamConfig, int, int]] = []
        for sc in streams:
            if sc.retention_ms is None or now < self.next_trim.get(sc.stream, 0.0):
                continue
            every = cadence(sc.retention_ms, self.block_ms)
            self.next_trim[sc.stream] = now + every * SLACK
            # About the same interval on the server: a fleet of readers of one stream
            # trims it about once per interval (a little less, so clock skew between
            # this worker and Redis does not make a lone reader skip every other round).
            due.append((sc, sc.retention_ms, int(every * 900)))
        if not due:
            return
        if self.capabilities is None:
            try:
                self.capabilities = probe(client)
            except ResponseError as exc:
                self.refused("trim under retention", due[0][0], exc)
                return
            logger.debug("redis-stream: server capabilities: %s", ",".join(sorted(self.capabilities)) or "-")
        acked = XTRIM_ACKED in self.capabilities
        for sc, _, _ in due:
            stats[sc.stream].capabilities = in_use(self.capabilities, retention=True)
        for (sc, retention_ms, _), done in zip(due, trim_many(client, due, acked=acked), strict=True):
            if isinstance(done, ResponseError):
                self.refused("trim under retention", sc, done)
            else:
                self._trim_more(client, sc, retention_ms, done, stats, acked=acked)

    def _trim_more(
        self, client: Client, sc: StreamConfig, retention_ms: int, done: Trim, stats: Mapping[str, StreamStats],
        *, acked: bool,
    ) -> None:  # fmt: skip
        """After a first call that trimmed: call again while it trims, a while; then log the total."""
        begun = time.monotonic()
        trimmed, calls = done.trimmed, 1
        try:
            while done.trimmed and calls < TRIM_CALLS and time.monotonic() - begun < TRIM_SECONDS:
                done = trim_passed(client, sc, retention_ms=retention_ms, interval_ms=0, acked=acked)
                trimmed, calls = trimmed + done.trimmed, calls + 1
        except ResponseError as exc:
            self.refused("trim under retention", sc, exc)
            return
        if trimmed:
            logger.info(
                "redis-stream: trimmed %d entr%s of stream=%s before %s (retention %dms, passed by every group%s)",
                trimmed, "y" if trimmed == 1 else "ies", sc.stream, done.minid, retention_ms,
                "" if position_of(sc).shared else " and the tracker",
            )  # fmt: skip
            stats[sc.stream].retention_trimmed += trimmed
