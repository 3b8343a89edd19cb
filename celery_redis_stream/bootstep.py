"""The Celery worker step, install(app), the worker options and the inspect command: thin glue."""

from __future__ import annotations

import re
from typing import Any

import click
from celery import bootsteps
from celery.app import utils as app_utils
from celery.utils.log import get_logger
from celery.worker.control import inspect_command

from .atomic import assess
from .config import load_config
from .exceptions import StreamConfigError
from .failed import connect_receivers
from .metrics import MetricsServer
from .service import Service
from .status import worker_time_lags

__all__ = ["RedisStreamStep", "install"]

logger = get_logger(__name__)


class WorkerConfigError(StreamConfigError, click.ClickException):
    """A configuration error that stops ``celery worker`` at start-up.

    Celery's worker command lets any exception from a step's ``create()`` end
    in a 40-line traceback, with the message on its last line. As a
    ClickException too, click prints it as one ``Error: ...`` line on stderr
    and exits 1, as it does for a bad command-line option; code that builds a
    WorkController itself still gets an ImproperlyConfigured.
    """

    def __init__(self, message: str) -> None:
        StreamConfigError.__init__(self, message)
        click.ClickException.__init__(self, message)


class RedisStreamStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs the stream readers in the worker's main process, after the pool started.

    Requiring the pool means prefork children are forked before the reader
    thread exists, so each worker process has exactly one reader.
    """

    label = "RedisStream"
    requires = ("celery.worker.components:Pool",)

    def __init__(
        self,
        parent: Any,
        without_redis_stream: bool = False,
        redis_streams: str | None = None,
        **options: Any,
    ) -> None:
        self.enabled = not without_redis_stream
        self.only = tuple(s.strip() for s in redis_streams.split(",") if s.strip()) if redis_streams else None
        self.service: Service | None = None
        self.metrics: MetricsServer | None = None
        parent.redis_stream = None
        super().__init__(parent, **options)

    def include_if(self, parent: Any) -> bool:
        return self.enabled

    def create(self, parent: Any) -> Service | None:
        app = parent.app
        # Raising here stops the worker before the pool starts and before anything is read.
        try:
            config = load_config(app, only=self.only)
        except StreamConfigError as exc:
            logger.critical("redis-stream: %s", str(exc).removeprefix("celery-redis-stream: "))
            raise WorkerConfigError(f"{exc}\n(the worker did not start; nothing was read)") from exc
        if not config.streams:
            logger.info("redis-stream: no streams mapped (stream_tasks is empty); not reading")
            return None
        self.service = Service(app, config, consumer=parent.hostname)
        if config.metrics_port is not None:
            self.metrics = MetricsServer(self.service, port=config.metrics_port, addr=config.metrics_addr)
        parent.redis_stream = self.service
        return self.service

    def start(self, parent: Any) -> None:
        service = self.service
        if service is None:
            return
        guarantees = assess(service.app, service.config)
        for stream, guarantee in guarantees.items():
            if stream in service.stats:
                guarantee.show(service.stats[stream])
        described = ", ".join(
            f"{sc.stream}->{sc.task} ({sc.mode} {sc.group if sc.mode == 'group' else sc.tracker_key}; "
            f"{guarantees[sc.stream].kind}: {guarantees[sc.stream].reason})"
            for sc in service.config.streams
        )
        logger.info(
            "redis-stream: reading %s from %s as consumer %s", described, service.config.safe_url, service.consumer
        )
        service.start()
        if self.metrics is not None:
            self.metrics.start()

    def stop(self, parent: Any) -> None:
        self._shutdown()

    def terminate(self, parent: Any) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        metrics, self.metrics = self.metrics, None
        if metrics is not None:
            metrics.stop()
        service = self.service
        if service is not None and not service.stop_event.is_set():
            service.stop()
            logger.info("redis-stream: stopped")

    def info(self, parent: Any) -> dict[str, Any]:
        service = self.service
        return {"redis_stream": service.info() if service is not None else {"streams": []}}


@inspect_command()  # type: ignore[untyped-decorator]
def redis_stream(state: Any, **kwargs: Any) -> dict[str, Any]:
    """Readers of this worker: streams, mode, counts, last id, paused, last error."""
    service = getattr(state.consumer.controller, "redis_stream", None)
    if service is None:
        return {"enabled": False, "streams": []}
    info: dict[str, Any] = service.info()
    info["enabled"] = True
    info["alive"] = service.alive
    ages = worker_time_lags(service.config, list(service.configs.values()))
    for stream in info["streams"]:
        stream["lag_seconds"] = ages.get(stream["stream"])
    return info


def _hide_stream_url() -> None:
    # `celery inspect conf` and `celery report` mask settings by name only
    # (broker_url, *PASS*, *KEY*...): stream_url would be shown with its password.
    if not app_utils.HIDDEN_SETTINGS.search("stream_url"):
        app_utils.HIDDEN_SETTINGS = re.compile(
            f"{app_utils.HIDDEN_SETTINGS.pattern}|STREAM_URL|STREAM_TRANSPORT_OPTIONS", re.IGNORECASE
        )


def install(app: Any) -> Any:
    """Add the step, the worker options and the inspect command to ``app``. Idempotent."""
    _hide_stream_url()
    connect_receivers(app)
    steps = app.steps["worker"]
    if RedisStreamStep not in steps:
        steps.add(RedisStreamStep)
    options = app.user_options["worker"]
    names = {getattr(o, "name", None) for o in options}
    if "without_redis_stream" not in names:
        options.add(
            click.Option(
                ["--without-redis-stream"],
                is_flag=True,
                default=False,
                help="Do not read Redis streams in this worker.",
            )
        )
    if "redis_streams" not in names:
        options.add(
            click.Option(
                ["--redis-streams"],
                default=None,
                help="Comma-separated stream names: read only these of the mapped streams.",
            )
        )
    return app
