"""Exactly once into a Redis broker on the streams' own server: a batch's messages and its position in one script."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis
from celery import Celery
from celery.utils.log import get_logger
from kombu.messaging import Producer
from redis.commands.core import Script
from redis.exceptions import ResponseError
from redis.typing import EncodableT

from ..client.connection import MAX_COMMAND_ARGS, Client, connect, is_denied
from ..config import PUBLISH_TIMEOUTS, BridgeConfig, StreamConfig
from ..deadletters import DeadLetter, write_oversized
from ..exceptions import LeaseLost, StreamError
from ..position.lease import Lease
from .redis_fast import LPUSH_CHUNK, Built, FastPath

__all__ = [
    "AT_LEAST_ONCE",
    "EXACTLY_ONCE",
    "AtomicStepRefused",
    "ExactlyOnce",
    "Guarantee",
    "PositionMoved",
    "Step",
    "assess",
]

logger = get_logger(__name__)

EXACTLY_ONCE = "exactly-once"
AT_LEAST_ONCE = "at-least-once"

# The fence, then the writes, in one script: Redis runs it without
# interleaving, so either all of it happened or none of it did.
#
# KEYS: group fence: stream. Tracker fence: tracker, lease.
# ARGV[1] the fence: 'group' or 'tracker'.
#   group:   ARGV[2] group, ARGV[3] consumer, ARGV[4] first id, ARGV[5] last id,
#            ARGV[6] n, then n ids that must all still be pending on this consumer.
#   tracker: ARGV[2] lease owner, ARGV[3] the tracker value the batch was read
#            after, ARGV[4] and ARGV[5] unused, ARGV[6] 0.
# Then: the database the script starts in; m, then m type checks (db, key,
# type): a key of another type is an error before anything was written;
# then commands until the end, each as db, argc, argv..., where a negative
# argc means -argc arguments followed by the group fence's n ids (an XACK of
# the batch without sending its ids twice). A SELECT inside a script lasts for
# the rest of the script only (Redis >= 2.8.12).
# Every refusal and error comes before the first write, and the first write
# is where a script without flags meets maxmemory, so a refused or failed
# step has changed nothing. Returns {1}, or {0, why}: 'lease' (another worker
# holds it), 'taken' (an entry is no longer pending here: acknowledged
# already, or claimed by another consumer), 'moved' (the tracker is no longer
# where the batch was read from).
STEP = """
local i
if ARGV[1] == 'group' then
  local n = tonumber(ARGV[6])
  local j = 7
  if n > 0 then
    -- The ids come in stream order, as XPENDING lists them: one merge pass.
    for _, row in ipairs(redis.call('xpending', KEYS[1], ARGV[2], ARGV[4], ARGV[5], n, ARGV[3])) do
      if row[1] == ARGV[j] then j = j + 1 end
    end
  end
  -- Ids the pass did not meet (another order, other entries of this consumer in the range): one by one.
  for k = j, 6 + n do
    if #redis.call('xpending', KEYS[1], ARGV[2], ARGV[k], ARGV[k], 1, ARGV[3]) == 0 then
      return {0, 'taken'}
    end
  end
  i = 7 + n
else
  if redis.call('get', KEYS[2]) ~= ARGV[2] then return {0, 'lease'} end
  local cur = redis.call('get', KEYS[1])
  if cur and cur ~= ARGV[3] then return {0, 'moved'} end
  i = 7
end
local current = ARGV[i]
local function use(db)
  if db ~= current then
    redis.call('select', db)
    current = db
  end
end
local checks = tonumber(ARGV[i + 1])
i = i + 2
for _ = 1, checks do
  use(ARGV[i])
  local found = redis.call('type', ARGV[i + 1]).ok
  if found ~= 'none' and found ~= ARGV[i + 2] then
    return redis.error_reply('WRONGTYPE ' .. ARGV[i + 1] .. ' holds a ' .. found .. ', not a ' .. ARGV[i + 2])
  end
  i = i + 3
end
local last = #ARGV
while i <= last do
  local argc = tonumber(ARGV[i + 1])
  use(ARGV[i])
  if argc >= 0 then
    redis.call(unpack(ARGV, i + 2, i + 1 + argc))
  else
    argc = -argc
    local command = {unpack(ARGV, i + 2, i + 1 + argc)}
    for k = 7, 6 + tonumber(ARGV[6]) do command[#command + 1] = ARGV[k] end
    redis.call(unpack(command))
  end
  i = i + 2 + argc
end
return {1}
"""


class PositionMoved(LeaseLost):
    """The fence refused a batch that is no longer this reader's to send; the reader reloads its position."""


class AtomicStepRefused(StreamError):
    """The streams Redis user may not run the atomic step (NOPERM); the batch is retried, at least once."""


class _Shown(Protocol):
    guarantee: str | None
    guarantee_reason: str | None


@dataclass(frozen=True, slots=True)
class Guarantee:
    """What a stream's batches get, and why: shown by the start-up line and ``inspect redis_stream``."""

    kind: str  # EXACTLY_ONCE or AT_LEAST_ONCE
    reason: str

    def show(self, stats: _Shown) -> None:
        stats.guarantee, stats.guarantee_reason = self.kind, self.reason


@dataclass(frozen=True, slots=True)
class Server:
    """One side of the comparison: which Redis server process, and which database on it."""

    run_id: str
    db: int


ON_CLUSTER = "the streams are on a Redis Cluster, where one script cannot reach the broker's database"


def config_reason(config: BridgeConfig, sc: StreamConfig) -> str | None:
    """Why the settings alone keep ``sc`` at least once, or None."""
    if config.cluster:
        return ON_CLUSTER
    if config.sentinel:
        return "the streams are behind Sentinel, which this step does not follow to the broker"
    if not sc.fast_path:
        return "stream_fast_path is off: only the fast path's messages can go into the atomic step"
    return None


def server_of(client: redis.Redis) -> Server:
    """The run_id of the server behind ``client`` (INFO server) and the database it uses."""
    info = client.info("server")
    return Server(str(info["run_id"]), int(client.connection_pool.connection_kwargs.get("db") or 0))


def _user(client: redis.Redis) -> str | None:
    return client.connection_pool.connection_kwargs.get("username") or None  # None and "": the default user


class _NoInfo(StreamError):
    """The Redis user may not run INFO: the servers cannot be compared (for good, in this worker)."""


def judge(fast_path: FastPath, client: Client, producer: Producer) -> tuple[Guarantee, int, str]:
    """The guarantee of batches read on ``client`` and published by ``producer``; the broker's db and key prefix.

    Exactly once needs the fast path's messages, one Redis user for both sides
    (the script runs the broker's writes as the streams' user) and one server
    (the same INFO run_id: the server itself says so, whatever the URLs say).
    """
    transport = type(producer.connection.transport)
    reason = None
    if transport.__module__ != "kombu.transport.redis":  # known without connecting to an AMQP broker
        reason = f"the broker transport is {transport.__module__}.{transport.__name__}, not kombu's Redis transport"
    reason = reason or fast_path.unsupported(producer)
    if reason is not None:
        return Guarantee(AT_LEAST_ONCE, f"the fast path steps aside: {reason}"), 0, ""
    if not isinstance(client, redis.Redis):
        return Guarantee(AT_LEAST_ONCE, ON_CLUSTER), 0, ""
    channel = producer.channel
    with channel.conn_or_acquire() as broker:
        if _user(broker) != _user(client):
            why = "the streams and the broker connect as different Redis users (one script would write both)"
            return Guarantee(AT_LEAST_ONCE, why), 0, ""
        try:
            streams, other = server_of(client), server_of(broker)
        except ResponseError as exc:
            if is_denied(exc):
                raise _NoInfo("the Redis user may not run INFO, which tells whether both are one server") from exc
            raise
    if streams.run_id != other.run_id:
        return Guarantee(AT_LEAST_ONCE, "the streams and the broker are different Redis servers (INFO run_id)"), 0, ""
    where = f"database {streams.db}" if streams.db == other.db else f"databases {streams.db} and {other.db}"
    prefix = str(getattr(channel, "global_keyprefix", "") or "")
    return Guarantee(EXACTLY_ONCE, f"the streams and the broker share one Redis server ({where})"), other.db, prefix


def assess(app: Celery, config: BridgeConfig) -> dict[str, Guarantee]:
    """The guarantee of each mapped stream as far as can be told before a batch: for the start-up line.

    Asks both servers for their run_id once (short timeouts). Later batches can
    still fall back (a fast-path fallback for one batch, a server that changed);
    ``inspect redis_stream`` shows the guarantee of each stream's last batch.
    """
    out: dict[str, Guarantee] = {}
    open_streams = []
    for sc in config.streams:
        reason = config_reason(config, sc)
        if reason is None:
            open_streams.append(sc)
        else:
            out[sc.stream] = Guarantee(AT_LEAST_ONCE, reason)
    if not open_streams:
        return out
    try:
        client = connect(config, socket_timeout=3, socket_connect_timeout=3)
        # One attempt, short timeouts: a broker that is down must not hold up the worker's start.
        options = {**PUBLISH_TIMEOUTS, "max_retries": 0}
        connection = app.connection_for_write(connect_timeout=3, transport_options=options)
        try:
            verdict = judge(FastPath(app), client, app.amqp.Producer(connection, auto_declare=False))[0]
        finally:
            connection.release()
            client.close()
    except _NoInfo as exc:
        verdict = Guarantee(AT_LEAST_ONCE, str(exc))
    except Exception as exc:  # a server that is down now: the readers compare again before their first batch
        verdict = Guarantee(AT_LEAST_ONCE, f"the servers could not be compared yet ({type(exc).__name__}); "
                            "they are compared again before the first batch")  # fmt: skip
    for sc in open_streams:
        out[sc.stream] = verdict
    return out


class ExactlyOnce:
    """One reader thread's atomic steps: it compares the servers once (again after any error) and runs the script."""

    def __init__(self, config: BridgeConfig, fast_path: FastPath, consumer: str) -> None:
        self.config = config
        self.fast_path = fast_path
        self.consumer = consumer
        self.script: Script | None = None
        self._verdict: tuple[Guarantee, int, str] | None = None  # the guarantee, the broker's db, its key prefix
        self.refused: str | None = None  # set for good when the streams user may not run the script

    def forget(self) -> None:
        """After an error: the servers are compared again before the next batch."""
        self._verdict = None

    def step(
        self,
        client: Client,
        sc: StreamConfig,
        ids: Sequence[str],
        trimmed: Sequence[str],
        *,
        stats: _Shown,
        lease: Lease | None = None,
        after: str | None = None,
    ) -> Step | None:
        """The atomic step for one batch, or None (and the reason shown) when ``sc`` stays at least once."""
        reason = config_reason(self.config, sc) or self.refused
        if reason is None and sc.mode == "tracker" and (lease is None or after is None):
            reason = "the tracker position the batch was read after is unknown"
        if reason is not None or not isinstance(client, redis.Redis):
            Guarantee(AT_LEAST_ONCE, reason or ON_CLUSTER).show(stats)
            return None
        if self.script is None:
            self.script = client.register_script(STEP)
        return Step(self, client, sc, ids, trimmed, stats=stats, lease=lease, after=after)

    def verdict(self, client: redis.Redis, producer: Producer) -> tuple[Guarantee, int, str]:
        if self._verdict is None:
            try:
                self._verdict = judge(self.fast_path, client, producer)
            except _NoInfo as exc:
                self.refused = str(exc)
                self._verdict = (Guarantee(AT_LEAST_ONCE, self.refused), 0, "")
        return self._verdict


class Step:
    """One batch: the dispatcher hands it the built messages (take), then the reader runs it (commit)."""

    def __init__(
        self,
        owner: ExactlyOnce,
        client: redis.Redis,
        sc: StreamConfig,
        ids: Sequence[str],
        trimmed: Sequence[str],
        *,
        stats: _Shown,
        lease: Lease | None,
        after: str | None,
    ) -> None:
        self.owner, self.client, self.sc, self.ids, self.trimmed = owner, client, sc, ids, trimmed
        self.stats, self.lease, self.after = stats, lease, after
        self.built: Built | None = None
        self.guarantee: Guarantee | None = None
        self.extra: list[tuple[EncodableT, ...]] = []
        self.target: tuple[str, str] = ("0", "")  # the broker's db and key prefix, set by take()

    def add(self, *command: EncodableT) -> None:
        """Run ``command`` (in the streams database) in the same step, after the position move.

        For what must change with the position and nothing else (a record of
        the batch in flight, per-entry counters): it happens exactly when the
        batch is committed, and not at all when the fence refuses it.
        """
        if not command or len(command) > MAX_COMMAND_ARGS:
            raise ValueError(f"a command of 1 to {MAX_COMMAND_ARGS} arguments, got {len(command)}")
        self.extra.append(command)

    def take(self, producer: Producer, built: Built) -> bool:
        """Keep ``built`` for the atomic step (True), or leave it to the dispatcher to push (False)."""
        guarantee, db, prefix = self.owner.verdict(self.client, producer)
        self.guarantee = guarantee
        if guarantee.kind != EXACTLY_ONCE:
            return False
        self.built, self.target = built, (str(db), prefix)
        return True

    def commit(self, dead: Sequence[DeadLetter], *, passed_over: int = 0) -> bool:
        """Run the step if it holds the batch; False: nothing was done, the caller commits as usual.

        A batch of dead letters and ``passed_over`` deduplicated entries only (batch/dedupe.py), with
        nothing to publish, is committed here too: its fenced step touches the streams database alone.
        """
        nothing_to_send = self.built is None and bool(self.ids) and len(dead) + passed_over == len(self.ids)
        if self.built is None and not nothing_to_send:
            declined = self.guarantee or Guarantee(
                AT_LEAST_ONCE, f"the fast path steps aside: {self.owner.fast_path.reason}"
            )
            declined.show(self.stats)
            return False
        self._run(dead)
        if self.guarantee is not None:
            self.guarantee.show(self.stats)
        return True

    def _run(self, dead: Sequence[DeadLetter]) -> None:
        """Build the script's arguments (the fence, the type checks, the writes) and run it once."""
        sc = self.sc
        streams_db = str(int(self.client.connection_pool.connection_kwargs.get("db") or 0))
        argv = _Argv()
        # The pushes come first: the first write is where maxmemory refuses a script.
        self._pushes(argv)
        self._dead_letters(argv, streams_db, dead)
        if sc.mode == "group":
            fence, keys = self._group(argv, streams_db)
        else:
            fence, keys = self._tracker(argv, streams_db)
        for command in self.extra:
            argv.write(streams_db, *command)
        script = self.owner.script
        assert script is not None  # registered by ExactlyOnce.step
        try:
            reply = script(keys=keys, args=argv.args(fence, streams_db), client=self.client)
        except ResponseError as exc:
            if not is_denied(exc):
                raise
            self.owner.refused = f"the streams Redis user may not run the atomic step ({str(exc)[:200]})"
            logger.warning("redis-stream: stream=%s: %s; retrying the batch, at least once", sc.stream, exc)
            raise AtomicStepRefused(self.owner.refused) from exc
        if int(reply[0]) != 1:
            self._refused(reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1]))

    def _pushes(self, argv: _Argv) -> None:
        if self.built is None or not self.built.payloads:
            return
        broker_db, prefix = self.target
        key = prefix + self.built.key
        argv.check(broker_db, key, "list")
        payloads = self.built.payloads
        for i in range(0, len(payloads), LPUSH_CHUNK):
            argv.write(broker_db, "LPUSH", key, *payloads[i : i + LPUSH_CHUNK])

    def _dead_letters(self, argv: _Argv, streams_db: str, dead: Sequence[DeadLetter]) -> None:
        sc = self.sc
        letters = write_oversized(self.client, sc.dead_letter, dead)
        if letters:
            argv.check(streams_db, sc.dead_letter, "stream")
        for pairs in letters:
            argv.write(streams_db, "XADD", sc.dead_letter, "*", *pairs)

    def _group(self, argv: _Argv, streams_db: str) -> tuple[list[EncodableT], list[str]]:
        """The XACK of the batch (its ids sent once, in the fence) and the group fence."""
        sc, ids = self.sc, self.ids
        acks = list(self.trimmed)
        if len(ids) + 3 <= MAX_COMMAND_ARGS:
            argv.writes.extend((streams_db, -3, "XACK", sc.stream, sc.group))  # + the fence's ids
        else:
            acks = [*ids, *acks]
        for i in range(0, len(acks), MAX_COMMAND_ARGS):
            argv.write(streams_db, "XACK", sc.stream, sc.group, *acks[i : i + MAX_COMMAND_ARGS])
        first = min(ids, key=_id_key, default="0-0")
        last = max(ids, key=_id_key, default="0-0")
        return ["group", sc.group, self.owner.consumer, first, last, len(ids), *ids], [sc.stream]

    def _tracker(self, argv: _Argv, streams_db: str) -> tuple[list[EncodableT], list[str]]:
        """The tracker's move and the lease's renewal, fenced by both."""
        sc, lease = self.sc, self.lease
        assert lease is not None and self.after is not None
        argv.write(streams_db, "SET", sc.tracker_key, self.ids[-1])
        argv.write(streams_db, "PEXPIRE", sc.lease_key, lease.ttl_ms)
        return ["tracker", lease.owner, self.after, "", "", 0], [sc.tracker_key, sc.lease_key]

    def _refused(self, why: str) -> None:
        sc = self.sc
        if why == "lease":
            raise LeaseLost(f"lost the lease on {sc.stream!r}; another worker reads it now")
        if why == "taken":
            raise PositionMoved(
                f"a batch of {sc.stream!r} is no longer pending on this consumer (acknowledged already, or claimed "
                "by another consumer): nothing of it was sent; re-reading the consumer's own pending entries"
            )
        raise PositionMoved(
            f"the tracker of {sc.stream!r} is no longer where the batch was read from: nothing of it was sent; "
            "reloading the tracker"
        )


class _Argv:
    """The script's ARGV after the fence: type checks (db, key, type) and writes (db, argc, argv...)."""

    __slots__ = ("checks", "writes")

    def __init__(self) -> None:
        self.checks: list[EncodableT] = []
        self.writes: list[EncodableT] = []

    def check(self, db: str, key: str, kind: str) -> None:
        self.checks += (db, key, kind)

    def write(self, db: str, *args: EncodableT) -> None:
        self.writes.extend((db, len(args), *args))

    def args(self, fence: list[EncodableT], streams_db: str) -> list[EncodableT]:
        return [*fence, streams_db, len(self.checks) // 3, *self.checks, *self.writes]


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
