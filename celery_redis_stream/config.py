"""Settings, read once from ``app.conf`` into frozen dataclasses; the only reader of app.conf."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlparse, urlsplit

from kombu.utils.url import maybe_sanitize_url

from . import keys as _keys
from .entry import CallShape, Converter, DecodeKind, DedupeRule, parse_dedupe
from .exceptions import StreamConfigError
from .redact import redact

if TYPE_CHECKING:
    from celery import Celery
    from celery.app.utils import Settings as CelerySettings

__all__ = [
    "OPTIONS", "STREAM_OPTIONS", "BridgeConfig", "Mode", "Option", "Rate", "StreamConfig", "load_config", "parse_rate",
]  # fmt: skip

Mode = Literal["group", "tracker"]
MODES = ("group", "tracker")
CALLS = ("fields", "kwargs", "entry")
DECODERS = ("utf-8", "raw", "faststream")  # and "json:<field>"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
STREAM_SCHEMES = (*REDIS_SCHEMES, "redis+cluster://", "rediss+cluster://", "sentinel://")
GLOB_CHARS = frozenset("*?[")

# Seconds; kombu's Redis transport options for the bridge's publishing connection
# only (the user's own broker_transport_options win).
PUBLISH_TIMEOUTS = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}

# Celery's own protocol-2 message headers and the bridge's: an entry field
# cannot replace them.
RESERVED_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
        "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting",
        "stamped_headers", "stamps", "redis_stream", "redis_stream_id",
    }
)  # fmt: skip


#: Celery's rate notation (celery.utils.time.rate): the unit after the slash, in milliseconds.
UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000}

#: The bucket holds what this many milliseconds of the rate bring (at least one token, at most one interval's
#: worth): an even flow as Celery's own rate_limit gives (a bucket of one), in batches a busy stream can use.
BURST_MS = 100


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` entries per ``interval_ms``, for the whole fleet; ``text`` as configured.

    The bucket refills ``count / interval_ms`` tokens per millisecond and holds
    ``capacity``: a tenth of a second's worth (BURST_MS), never more than one
    interval's worth, at least one token (so ``"0.5/s"`` still lets an entry
    through every two seconds). However long the stream was idle, any window
    of T ms then sees at most ``per_ms * T + capacity`` entries.
    """

    count: float
    interval_ms: int
    text: str

    @property
    def capacity(self) -> int:
        return max(1, math.floor(min(self.count, self.per_ms * BURST_MS)))

    @property
    def per_ms(self) -> float:
        return self.count / self.interval_ms

    def __str__(self) -> str:
        return self.text


def parse_rate(value: object) -> Rate:
    """``"100/s"``, ``"600/m"``, ``"1000/h"``, ``"5"`` or a number (per second), as Celery's ``rate_limit``.

    Raises ValueError with the reason; zero or less is refused (no limit is None, not 0).
    A Rate is returned as it is (a stream's ``rate_limit`` inherits the checked ``stream_rate_limit``).
    """
    if isinstance(value, Rate):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a rate like '100/s', '600/m', '1000/h' or a number per second, got {value!r}")
    if isinstance(value, str):
        amount, _, unit = value.strip().partition("/")
        unit = unit.strip() or "s"
        if unit not in UNITS_MS:
            raise ValueError(f"the unit after '/' must be s, m or h, got {value!r}")
        try:
            count = float(amount)
        except ValueError:
            raise ValueError(f"expected a number before '/', got {value!r}") from None
        interval = UNITS_MS[unit]
        text = f"{amount.strip()}/{unit}"
    else:
        count, interval, text = float(value), 1000, f"{value}/s"
    if not math.isfinite(count) or count <= 0:
        raise ValueError(f"must be more than zero (None means no limit), got {value!r}")
    return Rate(count, interval, text)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """How one stream maps to one task."""

    stream: str
    task: str
    mode: Mode
    group: str
    start: str
    tracker_key: str
    batch_size: int
    dead_letter: str
    call: CallShape = "fields"
    converter: Converter | None = None
    converter_path: str | None = None
    queue: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    registered: bool = True
    max_queue_length: int | None = None
    fast_path: bool = True

    dead_letter_template: str = _keys.DEAD_LETTER_TEMPLATE
    tracker_prefix: str = _keys.TRACKER_PREFIX
    tracker_option: str | None = None
    retention_ms: int | None = None
    max_deliveries: int | None = 5
    dead_letter_failed_tasks: bool = False
    trace_fields: tuple[str, ...] = ("traceparent", "tracestate")
    decode: str = "utf-8"

    @property
    def decode_kind(self) -> DecodeKind:
        """``decode`` without its argument: ``"json:payload"`` is ``"json"``."""
        return cast(DecodeKind, self.decode.partition(":")[0])

    rate_limit: Rate | None = None
    dedupe: DedupeRule | None = None

    @property
    def is_pattern(self) -> bool:
        """A stream name with glob characters maps every stream it matches (found by SCAN)."""
        return not GLOB_CHARS.isdisjoint(self.stream)

    def for_stream(self, name: str, *, cluster: bool) -> StreamConfig:
        """This mapping applied to ``name``, a stream that a pattern matched."""
        return replace(
            self,
            stream=name,
            tracker_key=_keys.tracker(name, self.tracker_prefix, self.tracker_option),
            dead_letter=_keys.dead_letter(name, self.dead_letter_template, cluster=cluster),
        )

    @property
    def lease_key(self) -> str:
        return _keys.lease(self.tracker_key)

    @property
    def position_name(self) -> str:
        """What a task id is derived from besides the entry: the group or the tracker."""
        return f"group:{self.group}" if self.mode == "group" else f"tracker:{self.tracker_key}"


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """All settings of one worker's bridge."""

    url: str
    consumer: str | None
    block_ms: int
    claim_idle_ms: int
    max_entry_bytes: int
    streams: tuple[StreamConfig, ...]
    transport_options: Mapping[str, Any] = field(default_factory=dict)
    discovery_interval: float = 30.0
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    reap_idle_ms: int = 3600000

    @property
    def cluster(self) -> bool:
        return _is_cluster(self.url)

    @property
    def sentinel(self) -> bool:
        return self.url.startswith("sentinel://")

    @property
    def safe_url(self) -> str:
        if self.cluster or self.sentinel:
            # kombu parses one URL: a host list or ';'-joined sentinels break it (or keep a password).
            return redact(self.url)
        return str(maybe_sanitize_url(self.url))

    def __repr__(self) -> str:
        return f"<BridgeConfig url={self.safe_url!r} streams={[s.stream for s in self.streams]!r}>"


def _fail(setting: str, problem: str, stream: str | None = None) -> StreamConfigError:
    return StreamConfigError(setting=setting, stream=stream, problem=problem)


# The checks: each takes the value, the setting's name as the message shows it and
# the stream (None for a global setting), and returns the parsed value or raises.
Check = Callable[[object, str, str | None], object]


def _int(value: object, setting: str, stream: str | None = None, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(setting, f"expected an integer, got {value!r}", stream)
    if value < minimum:
        raise _fail(setting, f"must be at least {minimum}, got {value}", stream)
    return value


def _positive(value: object, setting: str, stream: str | None = None) -> int:
    return _int(value, setting, stream, minimum=1)


def _count(value: object, setting: str, stream: str | None = None) -> int:
    return _int(value, setting, stream, minimum=0)


def _str(value: object, setting: str, stream: str | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(setting, f"expected a non-empty string, got {value!r}", stream)
    return value


def _flag(value: object, setting: str, stream: str | None = None) -> bool:
    if not isinstance(value, bool):
        raise _fail(setting, f"expected True or False, got {value!r}", stream)
    return value


def _mode(value: object, setting: str, stream: str | None = None) -> Mode:
    if value not in MODES:
        raise _fail(setting, f"expected one of {MODES}, got {value!r}", stream)
    return cast(Mode, value)


def _call(value: object, setting: str, stream: str | None = None) -> CallShape:
    if value not in CALLS:
        raise _fail(setting, f"expected one of {CALLS}, got {value!r}", stream)
    return cast(CallShape, value)


def _start(value: object, setting: str, stream: str | None = None) -> str:
    text = _str(str(value) if isinstance(value, int) and not isinstance(value, bool) else value, setting, stream)
    if text in ("$", "0"):
        return text
    ms, dash, seq = text.partition("-")
    if not _id_part(ms) or (dash and not _id_part(seq)):
        raise _fail(setting, f"expected '$', '0' or an entry id like '1700000000000-0', got {text!r}", stream)
    return text


def _id_part(text: str) -> bool:
    # Redis takes ASCII digits up to 2**64 - 1 in each part of an id; anything else fails every read, not start-up.
    return text.isascii() and text.isdigit() and int(text) < 2**64


def _tasks(value: object, setting: str, stream: str | None = None) -> Mapping[object, object]:
    if not isinstance(value, Mapping):
        raise _fail(setting, f"expected a mapping of stream name to task, got {type(value).__name__}")
    return value


def _dead_letter(value: object, setting: str, stream: str | None = None) -> str:
    template = _str(value, setting)
    if "{stream}" not in template:
        raise _fail(setting, f"must contain '{{stream}}', got {template!r}")
    return template


def _url(value: object, setting: str, stream: str | None = None) -> str:
    if not isinstance(value, str):
        raise _fail(setting, "expected a URL string")
    if not value.startswith(STREAM_SCHEMES):
        raise _fail(
            setting,
            f"expected a redis://, rediss://, unix://, redis+cluster:// or sentinel:// URL, got {redact(value)!r}",
        )
    for one in value.split(";"):  # kombu's ';'-joined sentinels
        parts = urlsplit(one.strip())
        if parts.scheme != "unix" and "@" not in parts.netloc and "@" in one.partition("://")[2]:
            # redis-py would read the password's head as the host or port, and echo it in its error
            raise _fail(
                setting,
                f"the user name or password in {redact(one.strip())!r} holds a '/', '?' or '#', which ends a "
                "URL's host part: percent-encode it (%2F, %3F, %23)",
            )
    return value


def _transport_options(value: object, setting: str, stream: str | None = None) -> dict[str, object]:
    if not isinstance(value, Mapping):
        raise _fail(setting, f"expected a dict of redis-py client options, got {value!r}")
    return dict(value)


def _seconds(value: object, setting: str, stream: str | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _fail(setting, f"expected a positive number of seconds, got {value!r}")
    return float(value)


def _trace_fields(value: object, setting: str, stream: str | None = None) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _fail(setting, f"expected a list of entry field names, got {value!r}")
    names = tuple(_str(name, setting) for name in value)
    if len(set(names)) != len(names):
        raise _fail(setting, f"names a field twice: {list(names)!r}")
    reserved = sorted(RESERVED_HEADERS.intersection(names))
    if reserved:
        raise _fail(setting, f"{', '.join(map(repr, reserved))} would replace a Celery or bridge message header")
    return names


def _decode(value: object, setting: str, stream: str | None = None) -> str:
    text = _str(value, setting, stream)
    kind, colon, name = text.partition(":")
    if kind in DECODERS and not colon:
        return text
    if kind == "json" and colon:
        if not name:
            raise _fail(
                setting, "'json:' needs the name of the field that holds the JSON, as in 'json:payload'", stream
            )
        return text
    choices = ", ".join(repr(d) for d in (*DECODERS, "json:<field>"))
    raise _fail(setting, f"expected one of {choices}, got {text!r}", stream)


def _rate(value: object, setting: str, stream: str | None = None) -> Rate:
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise _fail(setting, str(exc), stream) from None


def _dedupe(value: object, setting: str, stream: str | None = None) -> DedupeRule:
    try:
        return parse_dedupe(value)
    except ValueError as exc:
        raise _fail(setting, str(exc), stream) from None


def _task_name(value: object, setting: str, stream: str | None = None) -> str:
    task = _str(value, setting, stream).strip()
    if not task:
        raise _fail("stream_tasks", "the task name is empty", stream)
    return task


def _converter(value: object, setting: str, stream: str | None = None) -> Converter:
    return import_converter(_str(value, setting, stream), cast(str, stream))


def _send_options(value: object, setting: str, stream: str | None = None) -> dict[str, object]:
    if not isinstance(value, Mapping):
        raise _fail(setting, f"expected a dict of send_task options, got {value!r}", stream)
    reserved = sorted({"task_id", "args", "kwargs", "producer", "name"} & set(value))
    if reserved:
        raise _fail(setting, f"{', '.join(reserved)} cannot be set per stream", stream)
    return dict(value)


@dataclass(frozen=True, slots=True)
class Option:
    """One setting, as Celery's ``app/defaults.py`` declares its own: default, type, check.

    ``type`` is what the generated settings reference (docs/settings.md) shows.
    ``nullable``: None is a value of its own ("no limit", "never"), not "the
    default". ``inherits``: a per-stream key whose default is that global
    setting. ``computed``: a default derived from ``app.conf`` (an empty value
    takes it too). ``doc``: the default as the settings reference writes it, where
    it is not a plain value. ``meaning``: one line for the settings reference,
    which the docs build generates from these tables (docs/hooks/reference.py).
    """

    default: object
    type: str
    check: Check
    nullable: bool = False
    inherits: str | None = None
    computed: Callable[[CelerySettings], str] | None = None
    doc: str | None = None
    meaning: str = ""


def import_converter(path: str, stream: str) -> Converter:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise _fail("stream_tasks", f"converter must look like 'package.module:function', got {path!r}", stream)
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise _fail("stream_tasks", f"converter {path!r} does not import: {exc}", stream) from exc
    if not callable(obj):
        raise _fail("stream_tasks", f"converter {path!r} is not callable", stream)
    return cast(Converter, obj)


def _broker_url(conf: CelerySettings) -> str | None:
    # The property, not conf.get(): Celery takes CELERY_BROKER_URL from the environment first.
    try:
        url = conf.broker_url
    except AttributeError:
        url = conf.get("broker_url")
    return url if isinstance(url, str) else None


def default_url(conf: CelerySettings) -> str:
    broker = _broker_url(conf) or ""
    if isinstance(broker, str):
        if broker.strip().startswith("sentinel://"):
            return broker.strip()  # kombu's ';'-joined sentinels: all of them, not just the first
        first = broker.split(";")[0].strip()
        if first.startswith(REDIS_SCHEMES):
            return first
    return "redis://localhost:6379/0"


def check_slots(sc: StreamConfig) -> None:
    from redis.crc import key_slot

    slot = key_slot(sc.stream.encode())
    for what, key in (("dead-letter stream", sc.dead_letter), ("tracker", sc.tracker_key), ("lease", sc.lease_key)):
        if key_slot(key.encode()) != slot:
            raise _fail(
                "stream_tasks",
                f"on Redis Cluster the {what} key {key!r} must hash to the stream's slot: "
                "give them a common hash tag (e.g. stream '{orders}', tracker option 'orders')",
                sc.stream,
            )


def _redis_db(url: str) -> tuple[str, int, str] | None:
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        return None
    db = parsed.path.strip("/") or "0"
    return (parsed.hostname or "localhost", parsed.port or 6379, db)


def _check_queue_names(conf: CelerySettings, url: str, streams: list[StreamConfig]) -> None:
    """Refuse a stream whose name is also a Redis-broker queue list in the same database.

    The broker would LPUSH/BRPOP a key that holds a stream: WRONGTYPE in the
    worker's consumer, and a worker that cannot start.
    """
    broker = _broker_url(conf)
    if not isinstance(broker, str) or _redis_db(url) is None:
        return
    if _redis_db(broker.split(";")[0].strip()) != _redis_db(url):
        return
    names = {sc.stream for sc in streams}
    for sc in streams:
        queue = sc.queue or conf.get("task_default_queue") or "celery"
        if queue in names:
            raise _fail(
                "stream_tasks 'queue'",
                f"queue {queue!r} is also a stream name in the same Redis database as the broker; "
                "rename the queue or keep the streams in another database (stream_url)",
                sc.stream,
            )


# The settings reference's default where it is not a plain value.
_URL_DEFAULT = (
    "the broker URL when it is `redis://`, `rediss://`, `unix://` or `sentinel://` "
    "(then with the broker's `master_name`), else `redis://localhost:6379/0`"
)
_TRACKER_DEFAULT = '`"{<stream>}"` (the stream name itself when it already has a hash tag, e.g. `{t1}:orders`)'

_DECODE_TYPE = '"utf-8" | "raw" | "json:<field>" | "faststream"'

# The global settings, in the order they are checked (the first bad one is reported).
OPTIONS: dict[str, Option] = {
    "stream_tasks": Option(
        {},
        "dict[str, str | dict]",
        _tasks,
        meaning=(
            "stream key (or glob pattern) -> task name, or -> a dict of per-stream keys; empty: the worker "
            "reads nothing"
        ),
    ),
    "stream_mode": Option(
        "group",
        '"group" | "tracker"',
        _mode,
        meaning='`"group"`: XREADGROUP + XACK; `"tracker"`: XREAD + a tracker key holding the last dispatched id',
    ),
    "stream_group": Option(
        "celery",
        "str",
        _str,
        meaning="consumer group name (group mode)",
    ),
    "stream_start": Option(
        "$",
        "str",
        _start,
        meaning=(
            'where a new group or tracker starts: `"$"` (new entries only), `"0"` (the whole stream) or an entry id'
        ),
    ),
    "stream_batch_size": Option(
        100,
        "int >= 1",
        _positive,
        meaning="entries per read, and so per publish batch and per XACK / tracker SET",
    ),
    "stream_block_ms": Option(
        1000,
        "int >= 1",
        _positive,
        meaning="read block time; the reader's socket timeout is this plus 10 s, and a warm stop waits about this long",
    ),
    "stream_claim_idle_ms": Option(
        60000,
        "int >= 1",
        _positive,
        meaning=(
            "group mode: entries pending this long on another consumer are claimed (XAUTOCLAIM); also the "
            "tracker lease time"
        ),
    ),
    "stream_max_entry_bytes": Option(
        1048576,
        "int >= 1",
        _positive,
        meaning="entries whose field names and values add up to more bytes are dead-lettered (`too_large`)",
    ),
    "stream_dead_letter": Option(
        _keys.DEAD_LETTER_TEMPLATE,
        "str containing {stream}",
        _dead_letter,
        meaning="dead-letter stream name template",
    ),
    "stream_tracker_prefix": Option(
        _keys.TRACKER_PREFIX,
        "str",
        _str,
        meaning="tracker key prefix (tracker mode)",
    ),
    "stream_max_queue_length": Option(
        None,
        "int >= 0 | None",
        _count,
        nullable=True,
        meaning="backpressure: pause reading a stream while its target Celery queue holds more messages than this",
    ),
    "stream_url": Option(
        None,
        "str",
        _url,
        computed=default_url,
        doc=_URL_DEFAULT,
        meaning=(
            "where the streams live: `redis://`, `rediss://`, `unix://`, `redis+cluster://h:p[,h:p]` or "
            "`sentinel://h:p[;sentinel://...]`; a `/`, `?` or `#` in the password is percent-encoded (`%2F`)"
        ),
    ),
    "stream_transport_options": Option(
        {},
        "dict",
        _transport_options,
        meaning="extra redis-py client options for the streams Redis (`master_name` for Sentinel, `ssl_*`, timeouts)",
    ),
    "stream_discovery_interval": Option(
        30.0,
        "seconds",
        _seconds,
        meaning='how often streams matching a pattern key of `stream_tasks` (`"orders:*"`) are looked for (SCAN)',
    ),
    "stream_metrics_port": Option(
        None,
        "int | None",
        _positive,
        nullable=True,
        meaning="serve Prometheus metrics on this port from the worker's main process (`prometheus` extra)",
    ),
    # loopback unless configured: metrics name streams and groups
    "stream_metrics_addr": Option(
        "127.0.0.1",
        "str",
        _str,
        meaning='address the metrics endpoint binds to; `"0.0.0.0"` for a Prometheus outside the host',
    ),
    "stream_fast_path": Option(
        True,
        "bool",
        _flag,
        meaning=(
            "build a batch's Redis or RabbitMQ task messages from one template (byte-identical to "
            "`send_task`'s), falling back to `send_task` where it cannot; needed for exactly once"
        ),
    ),
    "stream_trace_fields": Option(
        ["traceparent", "tracestate"],
        "list[str]",
        _trace_fields,
        meaning=(
            "entry fields moved from the task's arguments into its message headers (W3C trace context); `[]` "
            "keeps them arguments"
        ),
    ),
    "stream_consumer": Option(
        None,
        "str | None",
        _str,
        doc="the worker's nodename (`-n`)",
        meaning="consumer name (group mode) and lease owner (tracker mode); keep it stable across restarts",
    ),
    "stream_reap_idle_ms": Option(
        3600000,
        "int >= 1",
        _positive,
        meaning="group mode: consumers idle this long with nothing pending are removed from the group",
    ),
    "stream_retention_ms": Option(
        None,
        "int >= 1 | None",
        _positive,
        nullable=True,
        meaning=(
            "trim entries older than this that every group has acknowledged (and the tracker has passed); "
            "`None` never trims"
        ),
    ),
    "stream_max_deliveries": Option(
        5,
        "int >= 1 | None",
        _positive,
        nullable=True,
        meaning=(
            "an entry read this many times by workers that died holding it is dead-lettered "
            "(`max_deliveries`); `None` never gives up"
        ),
    ),
    "stream_dead_letter_failed_tasks": Option(
        False,
        "bool",
        _flag,
        meaning=(
            "an entry whose task fails for good (no retry left, or rejected) is dead-lettered with reason `task_failed`"
        ),
    ),
    "stream_decode": Option(
        "utf-8",
        _DECODE_TYPE,
        _decode,
        meaning=(
            'how entries are decoded before they become arguments: `"utf-8"` text fields; `"raw"` no decoding, '
            'the stream needs a `converter`, which reads `entry.raw_fields`; `"json:<field>"` that field\'s JSON '
            'value is the argument; `"faststream"` the body of a message FastStream\'s Redis publisher wrote '
            "(0.5 or 0.6+), its `correlation_id` a message header. An entry the decoder cannot read is "
            "dead-lettered with reason `decode` (see [Producers](producers.md))"
        ),
    ),
    "stream_rate_limit": Option(
        None,
        "str | number | None",
        _rate,
        nullable=True,
        meaning=(
            "the most entries of each stream read and dispatched per interval by the whole fleet: "
            '`"100/s"`, `"600/m"`, `"1000/h"` or a number per second (see Traffic control)'
        ),
    ),
}

# The keys of a stream's dict in stream_tasks, in the order they are checked.
STREAM_OPTIONS: dict[str, Option] = {
    "task": Option(
        None,
        "str",
        _task_name,
        doc="required",
        meaning="the task name; the task name never comes from the entry",
    ),
    "registered": Option(
        True,
        "bool",
        _flag,
        meaning="`False` when another app's workers run the task: its name is then not checked at start-up",
    ),
    "call": Option(
        "fields",
        '"fields" | "kwargs" | "entry"',
        _call,
        meaning="call shape: `task(fields)`, `task(**fields)` or `task(stream, entry_id, fields)`",
    ),
    "converter": Option(
        None,
        '"package.module:function"',
        _converter,
        nullable=True,
        doc="none",
        meaning="a function `StreamEntry -> (args, kwargs)`; overrides `call`",
    ),
    "mode": Option(
        None,
        '"group" | "tracker"',
        _mode,
        inherits="stream_mode",
        meaning="position kind for this stream",
    ),
    "queue": Option(
        None,
        "str",
        _str,
        nullable=True,
        doc="the task's routing",
        meaning="the queue this stream's tasks are sent to",
    ),
    "options": Option(
        {},
        "dict",
        _send_options,
        meaning="extra `send_task` options (`priority`, `expires`, `headers`, ...)",
    ),
    "tracker": Option(
        None,
        "str",
        _str,
        nullable=True,
        doc=_TRACKER_DEFAULT,
        meaning="tracker name; the key is `stream_tracker_prefix` + tracker",
    ),
    "max_queue_length": Option(
        None,
        "int >= 0 | None",
        _count,
        nullable=True,
        inherits="stream_max_queue_length",
        meaning="backpressure limit for this stream; `None` turns it off for the stream",
    ),
    "max_deliveries": Option(
        None,
        "int >= 1 | None",
        _positive,
        nullable=True,
        inherits="stream_max_deliveries",
        meaning="poison-entry limit for this stream",
    ),
    "dead_letter_failed_tasks": Option(
        None,
        "bool",
        _flag,
        inherits="stream_dead_letter_failed_tasks",
        meaning="dead-letter the entries of this stream's tasks that fail for good",
    ),
    "group": Option(
        None,
        "str",
        _str,
        inherits="stream_group",
        meaning="consumer group for this stream",
    ),
    "start": Option(
        None,
        "str",
        _start,
        inherits="stream_start",
        meaning="start position of a new group or tracker for this stream",
    ),
    "batch_size": Option(
        None,
        "int >= 1",
        _positive,
        inherits="stream_batch_size",
        meaning="entries per read for this stream",
    ),
    "retention_ms": Option(
        None,
        "int >= 1 | None",
        _positive,
        nullable=True,
        inherits="stream_retention_ms",
        meaning="retention of this stream; `None` never trims it",
    ),
    "decode": Option(
        None,
        _DECODE_TYPE,
        _decode,
        inherits="stream_decode",
        meaning="how this stream's entries are decoded",
    ),
    "rate_limit": Option(
        None,
        "str | number | None",
        _rate,
        nullable=True,
        inherits="stream_rate_limit",
        meaning='the fleet-wide rate limit of this stream (`"20/s"`); `None` turns it off for the stream',
    ),
    "dedupe": Option(
        None,
        "dict | None",
        _dedupe,
        nullable=True,
        meaning=(
            'business-key deduplication: `{"key": "{tenant}:{order_id}", "ttl_ms": 3600000}` (`ttl_ms` '
            "defaults to one day; see Traffic control)"
        ),
    ),
}

DEFAULTS: dict[str, object] = {name: option.default for name, option in OPTIONS.items()}

# The global settings' checked values, by name, as _load_config hands them on.
Settings = dict[str, Any]
STREAM_KEYS = frozenset(STREAM_OPTIONS)


def _refuse_unknown_settings(app: Celery) -> None:
    """A misspelt setting (``stream_batchsize``) would silently leave the default in force."""
    namespace = (getattr(app, "namespace", None) or "").upper()
    for key in list(app.conf.keys()):
        if not isinstance(key, str):
            continue
        if namespace:
            # Django-style settings: only CELERY_STREAM_* is ours; a project's own STREAM_* is not.
            if not key.upper().startswith(f"{namespace}_STREAM_"):
                continue
            name = key[len(namespace) + 1 :].lower()
        elif key.startswith("stream_"):
            name = key
        else:
            continue
        if name not in OPTIONS:
            known = ", ".join(sorted(OPTIONS))
            raise _fail(key, f"is not a celery-redis-stream setting (known: {known})")


def load_config(app: Celery, *, only: tuple[str, ...] | None = None, check_registered: bool = True) -> BridgeConfig:
    """Read and check every ``stream_*`` setting of ``app`` once.

    Raises :class:`StreamConfigError` (an ``ImproperlyConfigured``) naming the
    setting and the stream (for a global setting, the streams it affects).
    ``only`` keeps a subset of the mapped streams (the worker's
    ``--redis-streams`` option); naming an unmapped stream is an error.
    """
    try:
        return _load_config(app, only=only, check_registered=check_registered)
    except StreamConfigError as exc:
        tasks = app.conf.get("stream_tasks")
        if exc.stream is not None or not isinstance(tasks, Mapping) or not tasks:
            raise
        raise exc.affecting(tuple(tasks)) from None


def _load_config(app: Celery, *, only: tuple[str, ...] | None, check_registered: bool) -> BridgeConfig:
    conf = app.conf
    _refuse_unknown_settings(app)
    settings = _read_settings(conf)
    url: str = settings["stream_url"]
    streams = _stream_configs(app, settings, only=only, check_registered=check_registered)
    _check_queue_names(conf, url, streams)
    cluster = _is_cluster(url)
    if cluster:
        for sc in streams:
            if not sc.is_pattern:
                check_slots(sc)
    return BridgeConfig(
        url=url,
        consumer=settings["stream_consumer"],
        block_ms=settings["stream_block_ms"],
        claim_idle_ms=settings["stream_claim_idle_ms"],
        max_entry_bytes=settings["stream_max_entry_bytes"],
        streams=tuple(streams),
        transport_options=settings["stream_transport_options"],
        discovery_interval=settings["stream_discovery_interval"],
        metrics_port=settings["stream_metrics_port"],
        metrics_addr=settings["stream_metrics_addr"],
        reap_idle_ms=settings["stream_reap_idle_ms"],
    )


def _is_cluster(url: str) -> bool:
    return url.split("://", 1)[0].endswith("+cluster")


def _read_settings(conf: CelerySettings) -> Settings:
    settings: Settings = {}
    for name, option in OPTIONS.items():
        settings[name] = _read_setting(conf, name, option)
        if name == "stream_transport_options":
            # The one check of two settings (the URL is read before); here, so the first bad setting is reported.
            settings[name] = _sentinel_options(conf, settings["stream_url"], settings[name])
    return settings


def _read_setting(conf: CelerySettings, name: str, option: Option) -> object:
    """One global setting, checked; unset (or None) is its default, unless None is a value of its own."""
    # For a nullable setting, a missing one is told apart from None ("never").
    value = conf.get(name, option.default) if option.nullable else conf.get(name)
    if option.computed is not None and not value:
        value = option.computed(conf)
    elif value is None and not option.nullable:
        value = option.default
    return None if value is None else option.check(value, name, None)


def _sentinel_options(conf: CelerySettings, url: str, options: dict[str, object]) -> dict[str, object]:
    """A sentinel:// URL needs a master_name: its own, or the broker's when the streams follow the broker."""
    if not url.startswith("sentinel://") or "master_name" in options or "master_name=" in url:
        return options
    broker_options = conf.get("broker_transport_options") or {}
    if conf.get("stream_url") is not None or not broker_options.get("master_name"):
        raise _fail("stream_transport_options", "a sentinel:// URL needs a master_name (option or URL ?master_name=)")
    options["master_name"] = broker_options["master_name"]
    if broker_options.get("sentinel_kwargs") and "sentinel_kwargs" not in options:
        options["sentinel_kwargs"] = broker_options["sentinel_kwargs"]
    return options


def _stream_configs(
    app: Celery, settings: Settings, *, only: tuple[str, ...] | None, check_registered: bool
) -> list[StreamConfig]:
    tasks: Mapping[object, object] = settings["stream_tasks"]
    if only is not None:
        unknown = sorted(set(only) - set(tasks))
        if unknown:
            raise _fail("--redis-streams", f"names streams that stream_tasks does not map: {', '.join(unknown)}")
    streams = []
    for stream, spec in tasks.items():
        if not isinstance(stream, str) or not stream:
            raise _fail("stream_tasks", f"stream names must be non-empty strings, got {stream!r}")
        if only is None or stream in only:
            streams.append(_stream_config(app, stream, spec, settings, check_registered=check_registered))
    return streams


def _stream_spec(stream: str, spec: object) -> Mapping[str, object]:
    """A stream's value in stream_tasks as a dict of known keys, with its task."""
    if isinstance(spec, str):
        return {"task": spec}
    if not isinstance(spec, Mapping):
        raise _fail("stream_tasks", f"expected a task name or a dict of options, got {spec!r}", stream)
    unknown_keys = sorted(set(spec) - STREAM_KEYS)
    if unknown_keys:
        raise _fail(
            "stream_tasks",
            f"unknown option(s) {', '.join(map(repr, unknown_keys))}; allowed: {', '.join(sorted(STREAM_KEYS))}",
            stream,
        )
    if "task" not in spec:
        raise _fail("stream_tasks", "the 'task' option is required", stream)
    return spec


def _read_key(spec: Mapping[str, object], key: str, settings: Settings, stream: str) -> object:
    """One per-stream key, checked; unset, it is its global setting (or its own default)."""
    option = STREAM_OPTIONS[key]
    value = spec.get(key, settings[option.inherits] if option.inherits else option.default)
    if value is None and option.nullable:
        return None
    return option.check(value, f"stream_tasks {key!r}", stream)


def _queue(queue: str | None, options: dict[str, object], stream: str) -> str | None:
    """send_task's own queue argument in ``options`` is the same as the stream's queue key."""
    if "queue" not in options:
        return queue
    if queue is not None and options["queue"] != queue:
        raise _fail("stream_tasks 'options'", "'queue' is given twice, as an option and in options", stream)
    return _str(options.pop("queue"), "stream_tasks 'options' 'queue'", stream)


def _read_keys(app: Celery, stream: str, spec: Mapping[str, object], settings: Settings, *, check: bool) -> Settings:
    """A stream's keys, checked in the table's order, each with what depends on it right after it."""
    keys: Settings = {}
    for key in STREAM_OPTIONS:
        keys[key] = _read_key(spec, key, settings, stream)
        if key == "registered" and keys[key] and check and keys["task"] not in app.tasks:
            raise _fail(
                "stream_tasks",
                f"task {keys['task']!r} is not registered in this app (import it, or set 'registered': False "
                "if another worker runs it)",
                stream,
            )
        if key == "options":
            keys["queue"] = _queue(keys["queue"], keys[key], stream)  # may move a queue out of options
    return keys


def _stream_config(
    app: Celery, stream: str, raw: object, settings: Settings, *, check_registered: bool
) -> StreamConfig:
    spec = _stream_spec(stream, raw)
    keys = _read_keys(app, stream, spec, settings, check=check_registered)
    prefix, dead_letter = settings["stream_tracker_prefix"], settings["stream_dead_letter"]
    return StreamConfig(
        stream=stream,
        task=keys["task"],
        mode=keys["mode"],
        group=keys["group"],
        start=keys["start"],
        tracker_key=_keys.tracker(stream, prefix, keys["tracker"]),
        batch_size=keys["batch_size"],
        dead_letter=_keys.dead_letter(stream, dead_letter, cluster=_is_cluster(settings["stream_url"])),
        dead_letter_template=dead_letter,
        tracker_prefix=prefix,
        tracker_option=keys["tracker"],
        call=keys["call"],
        converter=keys["converter"],
        converter_path=cast("str | None", spec.get("converter")),  # checked above, as the converter
        queue=keys["queue"],
        options=keys["options"],
        registered=keys["registered"],
        max_queue_length=keys["max_queue_length"],
        fast_path=settings["stream_fast_path"],
        retention_ms=keys["retention_ms"],
        max_deliveries=keys["max_deliveries"],
        dead_letter_failed_tasks=keys["dead_letter_failed_tasks"],
        trace_fields=settings["stream_trace_fields"],
        decode=_checked_decode(keys, stream, inherited="decode" not in spec),
        rate_limit=keys["rate_limit"],
        dedupe=keys["dedupe"],
    )


def _checked_decode(keys: Settings, stream: str, *, inherited: bool) -> str:
    """The stream's decoder; ``"raw"`` leaves the bytes to a converter, so it needs one."""
    decode: str = keys["decode"]
    if decode == "raw" and keys["converter"] is None:
        raise _fail(
            "stream_decode" if inherited else "stream_tasks 'decode'",
            "decode 'raw' leaves the entry's bytes to a converter, and this stream has none: "
            "add 'converter': 'package.module:function' (it reads entry.raw_fields)",
            stream,
        )
    return decode
