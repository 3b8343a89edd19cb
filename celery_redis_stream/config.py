"""Settings, read once from ``app.conf`` into frozen dataclasses; the only reader of app.conf."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast
from urllib.parse import urlparse

from kombu.utils.url import maybe_sanitize_url

from .entry import CallShape, Converter
from .exceptions import StreamConfigError
from .redact import redact

__all__ = ["BridgeConfig", "Mode", "StreamConfig", "load_config"]

Mode = Literal["group", "tracker"]
MODES = ("group", "tracker")
CALLS = ("fields", "kwargs", "entry")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
STREAM_SCHEMES = (*REDIS_SCHEMES, "redis+cluster://", "rediss+cluster://", "sentinel://")
GLOB_CHARS = frozenset("*?[")

STREAM_KEYS = frozenset(
    {
        "task", "queue", "options", "call", "converter", "mode", "group", "start",
        "tracker", "batch_size", "registered", "max_queue_length",
        "retention_ms",
        "max_deliveries", "dead_letter_failed_tasks",
    }
)  # fmt: skip

DEFAULTS: dict[str, Any] = {
    "stream_tasks": {},
    "stream_url": None,
    "stream_mode": "group",
    "stream_group": "celery",
    "stream_consumer": None,
    "stream_start": "$",
    "stream_batch_size": 100,
    "stream_block_ms": 1000,
    "stream_claim_idle_ms": 60000,
    "stream_dead_letter": "{stream}:dead",
    "stream_max_entry_bytes": 1048576,
    "stream_max_queue_length": None,
    "stream_tracker_prefix": "stream_tracker:",
    "stream_transport_options": {},
    "stream_discovery_interval": 30.0,
    "stream_metrics_port": None,
    "stream_metrics_addr": "127.0.0.1",  # loopback unless configured: metrics name streams and groups
    "stream_fast_path": True,
    "stream_reap_idle_ms": 3600000,
    "stream_retention_ms": None,
    "stream_max_deliveries": 5,
    "stream_dead_letter_failed_tasks": False,
    "stream_trace_fields": ["traceparent", "tracestate"],
}

# Celery's own protocol-2 message headers and the bridge's: an entry field
# cannot replace them.
RESERVED_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
        "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting",
        "stamped_headers", "stamps", "redis_stream", "redis_stream_id",
    }
)  # fmt: skip


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

    dead_letter_template: str = "{stream}:dead"
    tracker_prefix: str = "stream_tracker:"
    tracker_option: str | None = None
    retention_ms: int | None = None
    max_deliveries: int | None = 5
    dead_letter_failed_tasks: bool = False
    trace_fields: tuple[str, ...] = ("traceparent", "tracestate")

    @property
    def is_pattern(self) -> bool:
        """A stream name with glob characters maps every stream it matches (found by SCAN)."""
        return not GLOB_CHARS.isdisjoint(self.stream)

    def for_stream(self, name: str, *, cluster: bool) -> StreamConfig:
        """This mapping applied to ``name``, a stream that a pattern matched."""
        return replace(
            self,
            stream=name,
            tracker_key=tracker_key_for(name, self.tracker_prefix, self.tracker_option),
            dead_letter=dead_letter_for(name, self.dead_letter_template, cluster=cluster),
        )

    @property
    def lease_key(self) -> str:
        return f"{self.tracker_key}:lease"

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
        return self.url.split("://", 1)[0].endswith("+cluster")

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
    where = f" for stream {stream!r}" if stream is not None else ""
    return StreamConfigError(f"celery-redis-stream: setting {setting}{where}: {problem}")


def _int(value: Any, setting: str, stream: str | None = None, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(setting, f"expected an integer, got {value!r}", stream)
    if value < minimum:
        raise _fail(setting, f"must be at least {minimum}, got {value}", stream)
    return value


def _str(value: Any, setting: str, stream: str | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(setting, f"expected a non-empty string, got {value!r}", stream)
    return value


def _start(value: Any, setting: str, stream: str | None = None) -> str:
    text = _str(str(value) if isinstance(value, int) and not isinstance(value, bool) else value, setting, stream)
    if text in ("$", "0"):
        return text
    ms, _, seq = text.partition("-")
    if not ms.isdigit() or (seq and not seq.isdigit()):
        raise _fail(setting, f"expected '$', '0' or an entry id like '1700000000000-0', got {text!r}", stream)
    return text


def _retention(value: Any, stream: str) -> int | None:
    return None if value is None else _int(value, "stream_tasks 'retention_ms'", stream, minimum=1)


def import_converter(path: str, stream: str) -> Converter:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise _fail("stream_tasks", f"converter must look like 'package.module:function', got {path!r}", stream)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise _fail("stream_tasks", f"converter {path!r} does not import: {exc}", stream) from exc
    if not callable(obj):
        raise _fail("stream_tasks", f"converter {path!r} is not callable", stream)
    return cast(Converter, obj)


def _broker_url(conf: Any) -> str | None:
    # The property, not conf.get(): Celery takes CELERY_BROKER_URL from the environment first.
    try:
        url = conf.broker_url
    except AttributeError:
        url = conf.get("broker_url")
    return url if isinstance(url, str) else None


def default_url(conf: Any) -> str:
    broker = _broker_url(conf) or ""
    if isinstance(broker, str):
        if broker.strip().startswith("sentinel://"):
            return broker.strip()  # kombu's ';'-joined sentinels: all of them, not just the first
        first = broker.split(";")[0].strip()
        if first.startswith(REDIS_SCHEMES):
            return first
    return "redis://localhost:6379/0"


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes (``{...}``), or None when it has no hash tag."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if start >= 0 and end > start + 1 else None


def tracker_key_for(stream: str, prefix: str, option: str | None) -> str:
    """``stream_tracker:{orders}`` for ``orders``; a stream that has a hash tag keeps its own name."""
    if option is not None:
        return f"{prefix}{option}"
    return f"{prefix}{stream}" if hash_tag(stream) is not None else f"{prefix}{{{stream}}}"


def dead_letter_for(stream: str, template: str, *, cluster: bool) -> str:
    """The dead-letter stream of ``stream``; on a cluster it shares the stream's slot when it can."""
    if cluster and hash_tag(stream) is None and hash_tag(template.replace("{stream}", "")) is None:
        return template.replace("{stream}", f"{{{stream}}}")
    return template.replace("{stream}", stream)


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


def _check_queue_names(conf: Any, url: str, streams: list[StreamConfig]) -> None:
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


def _trace_fields(value: Any) -> tuple[str, ...]:
    setting = "stream_trace_fields"
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _fail(setting, f"expected a list of entry field names, got {value!r}")
    names = tuple(_str(name, setting) for name in value)
    if len(set(names)) != len(names):
        raise _fail(setting, f"names a field twice: {list(names)!r}")
    reserved = sorted(RESERVED_HEADERS.intersection(names))
    if reserved:
        raise _fail(setting, f"{', '.join(map(repr, reserved))} would replace a Celery or bridge message header")
    return names


def _setting(conf: Any, name: str) -> Any:
    value = conf.get(name)
    return DEFAULTS[name] if value is None else value


def _refuse_unknown_settings(app: Any) -> None:
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
        if name not in DEFAULTS:
            known = ", ".join(sorted(DEFAULTS))
            raise _fail(key, f"is not a celery-redis-stream setting (known: {known})")


def load_config(app: Any, *, only: tuple[str, ...] | None = None, check_registered: bool = True) -> BridgeConfig:
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
        if " for stream " in str(exc) or not isinstance(tasks, Mapping) or not tasks:
            raise
        names = ", ".join(repr(name) for name in tasks)
        raise StreamConfigError(f"{exc} (affects streams {names})") from None


def _load_config(app: Any, *, only: tuple[str, ...] | None, check_registered: bool) -> BridgeConfig:
    conf = app.conf
    _refuse_unknown_settings(app)
    tasks = _setting(conf, "stream_tasks")
    if not isinstance(tasks, Mapping):
        raise _fail("stream_tasks", f"expected a mapping of stream name to task, got {type(tasks).__name__}")
    mode = _setting(conf, "stream_mode")
    if mode not in MODES:
        raise _fail("stream_mode", f"expected one of {MODES}, got {mode!r}")
    group = _str(_setting(conf, "stream_group"), "stream_group")
    start = _start(_setting(conf, "stream_start"), "stream_start")
    batch_size = _int(_setting(conf, "stream_batch_size"), "stream_batch_size", minimum=1)
    block_ms = _int(_setting(conf, "stream_block_ms"), "stream_block_ms", minimum=1)
    claim_idle_ms = _int(_setting(conf, "stream_claim_idle_ms"), "stream_claim_idle_ms", minimum=1)
    max_entry_bytes = _int(_setting(conf, "stream_max_entry_bytes"), "stream_max_entry_bytes", minimum=1)
    dead_letter = _str(_setting(conf, "stream_dead_letter"), "stream_dead_letter")
    if "{stream}" not in dead_letter:
        raise _fail("stream_dead_letter", f"must contain '{{stream}}', got {dead_letter!r}")
    prefix = _str(_setting(conf, "stream_tracker_prefix"), "stream_tracker_prefix")
    max_queue = conf.get("stream_max_queue_length")
    if max_queue is not None:
        max_queue = _int(max_queue, "stream_max_queue_length", minimum=0)
    url = conf.get("stream_url") or default_url(conf)
    if not isinstance(url, str):
        raise _fail("stream_url", "expected a URL string")
    if not url.startswith(STREAM_SCHEMES):
        raise _fail(
            "stream_url",
            f"expected a redis://, rediss://, unix://, redis+cluster:// or sentinel:// URL, got {redact(url)!r}",
        )
    transport_options = _setting(conf, "stream_transport_options")
    if not isinstance(transport_options, Mapping):
        raise _fail(
            "stream_transport_options", f"expected a dict of redis-py client options, got {transport_options!r}"
        )
    transport_options = dict(transport_options)
    if url.startswith("sentinel://") and "master_name" not in transport_options and "master_name=" not in url:
        broker_options = conf.get("broker_transport_options") or {}
        if conf.get("stream_url") is None and broker_options.get("master_name"):
            transport_options["master_name"] = broker_options["master_name"]
            if broker_options.get("sentinel_kwargs") and "sentinel_kwargs" not in transport_options:
                transport_options["sentinel_kwargs"] = broker_options["sentinel_kwargs"]
        else:
            raise _fail(
                "stream_transport_options", "a sentinel:// URL needs a master_name (option or URL ?master_name=)"
            )
    cluster = url.split("://", 1)[0].endswith("+cluster")
    discovery_interval = _setting(conf, "stream_discovery_interval")
    if (
        isinstance(discovery_interval, bool)
        or not isinstance(discovery_interval, (int, float))
        or discovery_interval <= 0
    ):
        raise _fail("stream_discovery_interval", f"expected a positive number of seconds, got {discovery_interval!r}")
    metrics_port = conf.get("stream_metrics_port")
    if metrics_port is not None:
        metrics_port = _int(metrics_port, "stream_metrics_port", minimum=1)
    metrics_addr = _str(_setting(conf, "stream_metrics_addr"), "stream_metrics_addr")
    fast_path = _setting(conf, "stream_fast_path")
    if not isinstance(fast_path, bool):
        raise _fail("stream_fast_path", f"expected True or False, got {fast_path!r}")
    trace_fields = _trace_fields(_setting(conf, "stream_trace_fields"))
    consumer = conf.get("stream_consumer")
    if consumer is not None:
        consumer = _str(consumer, "stream_consumer")
    reap_idle_ms = _int(_setting(conf, "stream_reap_idle_ms"), "stream_reap_idle_ms", minimum=1)
    retention_ms = conf.get("stream_retention_ms")
    if retention_ms is not None:
        retention_ms = _int(retention_ms, "stream_retention_ms", minimum=1)
    # None is a value here (never give up), so a missing setting is told apart from it.
    max_deliveries = conf.get("stream_max_deliveries", DEFAULTS["stream_max_deliveries"])
    if max_deliveries is not None:
        max_deliveries = _int(max_deliveries, "stream_max_deliveries", minimum=1)
    dead_letter_failed = _setting(conf, "stream_dead_letter_failed_tasks")
    if not isinstance(dead_letter_failed, bool):
        raise _fail("stream_dead_letter_failed_tasks", f"expected True or False, got {dead_letter_failed!r}")

    if only is not None:
        unknown = sorted(set(only) - set(tasks))
        if unknown:
            raise _fail("--redis-streams", f"names streams that stream_tasks does not map: {', '.join(unknown)}")

    streams = []
    for stream, spec in tasks.items():
        if not isinstance(stream, str) or not stream:
            raise _fail("stream_tasks", f"stream names must be non-empty strings, got {stream!r}")
        if only is not None and stream not in only:
            continue
        if isinstance(spec, str):
            spec = {"task": spec}
        elif not isinstance(spec, Mapping):
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
        task = _str(spec["task"], "stream_tasks 'task'", stream).strip()
        if not task:
            raise _fail("stream_tasks", "the task name is empty", stream)
        registered = spec.get("registered", True)
        if not isinstance(registered, bool):
            raise _fail("stream_tasks 'registered'", f"expected True or False, got {registered!r}", stream)
        if registered and check_registered and task not in app.tasks:
            raise _fail(
                "stream_tasks",
                f"task {task!r} is not registered in this app (import it, or set 'registered': False "
                "if another worker runs it)",
                stream,
            )
        call = spec.get("call", "fields")
        if call not in CALLS:
            raise _fail("stream_tasks 'call'", f"expected one of {CALLS}, got {call!r}", stream)
        converter_path = spec.get("converter")
        converter = None
        if converter_path is not None:
            converter = import_converter(_str(converter_path, "stream_tasks 'converter'", stream), stream)
        stream_mode = spec.get("mode", mode)
        if stream_mode not in MODES:
            raise _fail("stream_tasks 'mode'", f"expected one of {MODES}, got {stream_mode!r}", stream)
        queue = spec.get("queue")
        if queue is not None:
            queue = _str(queue, "stream_tasks 'queue'", stream)
        options = spec.get("options", {})
        if not isinstance(options, Mapping):
            raise _fail("stream_tasks 'options'", f"expected a dict of send_task options, got {options!r}", stream)
        reserved = sorted({"task_id", "args", "kwargs", "producer", "name"} & set(options))
        if reserved:
            raise _fail("stream_tasks 'options'", f"{', '.join(reserved)} cannot be set per stream", stream)
        options = dict(options)
        if "queue" in options:
            # send_task's own queue argument: the same as the stream's queue option.
            if queue is not None and options["queue"] != queue:
                raise _fail("stream_tasks 'options'", "'queue' is given twice, as an option and in options", stream)
            queue = _str(options.pop("queue"), "stream_tasks 'options' 'queue'", stream)
        tracker_option = spec.get("tracker")
        if tracker_option is not None:
            tracker_option = _str(tracker_option, "stream_tasks 'tracker'", stream)
        stream_max_queue = spec.get("max_queue_length", max_queue)
        if stream_max_queue is not None:
            stream_max_queue = _int(stream_max_queue, "stream_tasks 'max_queue_length'", stream, minimum=0)
        stream_max_deliveries = spec.get("max_deliveries", max_deliveries)
        if stream_max_deliveries is not None:
            stream_max_deliveries = _int(stream_max_deliveries, "stream_tasks 'max_deliveries'", stream, minimum=1)
        stream_dead_letter_failed = spec.get("dead_letter_failed_tasks", dead_letter_failed)
        if not isinstance(stream_dead_letter_failed, bool):
            raise _fail(
                "stream_tasks 'dead_letter_failed_tasks'",
                f"expected True or False, got {stream_dead_letter_failed!r}",
                stream,
            )
        streams.append(
            StreamConfig(
                stream=stream,
                task=task,
                mode=stream_mode,
                group=_str(spec.get("group", group), "stream_tasks 'group'", stream),
                start=_start(spec.get("start", start), "stream_tasks 'start'", stream),
                tracker_key=tracker_key_for(stream, prefix, tracker_option),
                batch_size=_int(spec.get("batch_size", batch_size), "stream_tasks 'batch_size'", stream, minimum=1),
                dead_letter=dead_letter_for(stream, dead_letter, cluster=cluster),
                dead_letter_template=dead_letter,
                tracker_prefix=prefix,
                tracker_option=tracker_option,
                call=call,
                converter=converter,
                converter_path=converter_path,
                queue=queue,
                options=options,
                registered=registered,
                max_queue_length=stream_max_queue,
                fast_path=fast_path,
                retention_ms=_retention(spec.get("retention_ms", retention_ms), stream),
                max_deliveries=stream_max_deliveries,
                dead_letter_failed_tasks=stream_dead_letter_failed,
                trace_fields=trace_fields,
            )
        )
    _check_queue_names(conf, url, streams)
    if cluster:
        for sc in streams:
            if not sc.is_pattern:
                check_slots(sc)
    return BridgeConfig(
        url=url,
        consumer=consumer,
        block_ms=block_ms,
        claim_idle_ms=claim_idle_ms,
        max_entry_bytes=max_entry_bytes,
        streams=tuple(streams),
        transport_options=transport_options,
        discovery_interval=float(discovery_interval),
        metrics_port=metrics_port,
        metrics_addr=metrics_addr,
        reap_idle_ms=reap_idle_ms,
    )
