"""The fleet-wide rate limit: a token bucket per stream in the stream's own Redis, taken from before each read.

Every worker reading a stream takes tokens from the same bucket
(``stream_rate:{orders}``, in the stream's cluster slot) in one script, so
however many workers read it, together they read (and so dispatch) at most
what the bucket gives. A reader reads at most as many entries as it was
granted; what it was granted and did not read goes back. Tokens taken by a
worker that is then killed are lost, never doubled: a crash can only make the
fleet slower than the limit, never faster.
"""

from __future__ import annotations

from collections.abc import Callable

from celery.utils.log import get_logger
from redis.commands.core import Script
from redis.typing import EncodableT

from .. import keys
from ..client.connection import Client, number
from ..config import Rate
from ..stats import StreamStats

__all__ = ["MAX_WAIT_MS", "MIN_WAIT_MS", "RECENT_MS", "TAKE", "Limiter", "bucket_state"]

logger = get_logger(__name__)

#: A reader with no token waits at least this long before asking again (no busy loop on Redis) ...
MIN_WAIT_MS = 20
#: ... and at most this long, so that a slow rate (``"10/h"``) still shows as waiting and stops promptly.
MAX_WAIT_MS = 1000
#: status says ``rate_limited`` while a reader was refused a token this recently.
RECENT_MS = 2 * MAX_WAIT_MS

# KEYS[1] the bucket (hash: tokens, at = server ms of the last refill, limited_at).
# ARGV: capacity, tokens per ms, want (> 0 take up to that many; < 0 give back
# that many), ttl ms. The server's TIME, so that workers' clocks do not matter.
# A new bucket starts empty: a fleet that starts (or restarts) never begins
# with a burst. Returns {granted, ms until the next token when none was granted}.
TAKE = """
local cap = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('hmget', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = 0
  at = now
end
if now > at then
  tokens = math.min(cap, tokens + (now - at) * per_ms)
  at = now
end
local got = 0
local wait = 0
if want > 0 then
  got = math.min(want, math.floor(tokens))
  tokens = tokens - got
  if got == 0 then
    wait = math.ceil((1 - tokens) / per_ms)
    redis.call('hset', KEYS[1], 'limited_at', now)
  end
else
  tokens = math.min(cap, tokens - want)
end
redis.call('hset', KEYS[1], 'tokens', tostring(tokens), 'at', at)
redis.call('pexpire', KEYS[1], ARGV[4])
return {got, wait}
"""


class Limiter:
    """One reader's side of a stream's bucket: take before a read, give back what was not read, wait when empty.

    ``wait(seconds)`` is the stop event's wait: it returns at once on shutdown.
    """

    def __init__(self, stream: str, rate: Rate, stats: StreamStats, wait: Callable[[float], bool]) -> None:
        self.stream, self.rate, self.stats, self.wait = stream, rate, stats, wait
        self.key = keys.rate_bucket(stream)
        # An idle bucket is a full one: it may go, and comes back empty (a short delay, never a burst).
        self.ttl_ms = max(2 * rate.interval_ms, 60_000)
        self.script: Script | None = None

    def _run(self, client: Client, want: int) -> tuple[int, int]:
        if self.script is None:
            self.script = client.register_script(TAKE)
        args: list[EncodableT] = [self.rate.capacity, repr(self.rate.per_ms), want, self.ttl_ms]
        reply = self.script(keys=[self.key], args=args, client=client)
        return int(reply[0]), int(reply[1])

    def take(self, client: Client, want: int) -> int:
        """Up to ``want`` tokens (EVALSHA of TAKE); 0 after waiting until the next one is due (or a stop)."""
        got, wait_ms = self._run(client, want)
        if got:
            if got == want:
                self.stats.rate_limited = False
            return got
        if not self.stats.rate_limited:
            # DEBUG: a bursty stream meets its limit at every burst; inspect, status and metrics show the state.
            logger.debug("redis-stream: stream=%s rate limited (%s for the fleet); waiting", self.stream, self.rate)
        self.stats.rate_limited = True
        self.stats.rate_limit_waits += 1
        self.wait(min(max(wait_ms, MIN_WAIT_MS), MAX_WAIT_MS) / 1000)
        return 0

    def give_back(self, client: Client, unused: int) -> None:
        """Return tokens taken but not used (fewer entries than granted were read); capped at the bucket's size."""
        if unused > 0:
            self._run(client, -unused)


def bucket_state(client: Client, stream: str, now_ms: int) -> bool:
    """Whether a reader of ``stream`` was refused a token in the last RECENT_MS (HGET of the bucket)."""
    limited_at = client.hget(keys.rate_bucket(stream), "limited_at")
    return limited_at is not None and now_ms - number(limited_at) <= RECENT_MS
