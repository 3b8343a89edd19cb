"""The Celery worker step, install(app), the worker options and the inspect command: thin glue."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import click
from celery import bootsteps, signals
from celery.app import utils as app_utils
from celery.utils.log import get_logger
from celery.worker.control import inspect_command

from .config import load_config
from .exceptions import StreamConfigError
from .failed_tasks import connect_receivers
from .service import Service
from .status import worker_extras

if TYPE_CHECKING:
    from celery import Celery
    from celery.utils.collections import AttributeDict
    from celery.worker import WorkController

__all__ = ["RedisStreamStep", "ShutdownWatch", "install"]

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
    thread exists, so each worker process has exactly one reader. Shaped like
    Celery's ``Beat`` component: ``create()`` returns the :class:`Service`,
    which StartStopStep starts, stops and terminates.
    """

    label = "RedisStream"
    # Optional, like Beat: Step.include_if includes it when self.enabled (no
    # --without-redis-stream); `celery graph bootsteps` marks it as such.
    conditional = True
    requires = ("celery.worker.components:Pool",)

    def __init__(
        self,
        parent: WorkController,
        without_redis_stream: bool = False,
        redis_streams: str | None = None,
        **options: object,
    ) -> None:
        self.enabled = not without_redis_stream
        self.only = tuple(s.strip() for s in redis_streams.split(",") if s.strip()) if redis_streams else None
        self.watch: ShutdownWatch | None = None
        parent.redis_stream = None
        super().__init__(parent, **options)

    def create(self, parent: WorkController) -> Service | None:
        # Raising here stops the worker before the pool starts and before anything is read.
        try:
            config = load_config(parent.app, only=self.only)
        except StreamConfigError as exc:
            logger.critical("redis-stream: %s", str(exc).removeprefix("celery-redis-stream: "))
            raise WorkerConfigError(f"{exc}\n(the worker did not start; nothing was read)") from exc
        if not config.streams:
            logger.info("redis-stream: no streams mapped (stream_tasks is empty); not reading")
            return None
        service = parent.redis_stream = Service(parent.app, config, consumer=parent.hostname)
        self.watch = ShutdownWatch(parent, service.halt)
        return service

    def stop(self, parent: WorkController) -> None:
        self._unwatch()
        super().stop(parent)

    def terminate(self, parent: WorkController) -> None:
        self._unwatch()
        super().terminate(parent)

    def _unwatch(self) -> None:
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.close()

    def info(self, parent: WorkController) -> dict[str, object]:
        service: Service | None = self.obj
        return {"redis_stream": service.info() if service is not None else {"streams": []}}


class ShutdownWatch:
    """Calls ``halt`` the moment ``worker`` begins any shutdown, long before Celery stops the step.

    Celery stops the steps only after its consumer stopped: with
    ``worker_soft_shutdown_timeout`` that is the whole soft-shutdown window
    later, and the readers would go on loading the broker while the worker
    drains. Two hooks cover every shutdown of Celery 5.3 to 5.7:

    - ``worker_shutting_down``, sent from the worker's signal handler: warm
      (SIGTERM, first SIGINT), and cold (SIGQUIT) before 5.5.
    - ``WorkController.wait_for_soft_shutdown``: from 5.5 the cold handler
      (SIGQUIT, or SIGTERM with ``REMAP_SIGTERM=SIGQUIT``) calls it first and
      sleeps the soft-shutdown window in it, before it sends
      ``worker_shutting_down``. No signal is sent earlier, so the worker's
      own method is wrapped (on this instance only).

    ``halt`` runs in a signal handler: it must only set an event.
    """

    def __init__(self, worker: WorkController, halt: Callable[[], None]) -> None:
        self.hostname = worker.hostname
        self.halt = halt
        signals.worker_shutting_down.connect(self.shutting_down, weak=False)
        soft_wait = getattr(worker, "wait_for_soft_shutdown", None)
        if callable(soft_wait):

            @functools.wraps(soft_wait)
            def wait_for_soft_shutdown(*args: object, **kwargs: object) -> object:
                halt()
                return soft_wait(*args, **kwargs)

            # setattr: an instance attribute shadowing the method, for this worker only.
            setattr(worker, "wait_for_soft_shutdown", wait_for_soft_shutdown)  # noqa: B010

    def shutting_down(self, sender: object = None, **kwargs: object) -> None:
        # Sent with the hostname of the worker that shuts down; other workers of this process read on.
        if sender == self.hostname:
            self.halt()

    def close(self) -> None:
        signals.worker_shutting_down.disconnect(self.shutting_down)


@inspect_command(name="redis_stream")  # type: ignore[untyped-decorator]
def inspect_redis_stream(state: AttributeDict, **kwargs: object) -> dict[str, object]:
    """Readers of this worker: streams, mode, server, counts, last id, paused, last error."""
    service: Service | None = getattr(state.consumer.controller, "redis_stream", None)
    if service is None:
        return {"enabled": False, "streams": []}
    info = service.info()
    extras = worker_extras(service.config, list(service.configs.values()))
    unknown = {"lag_seconds": None, "server": None}
    streams = [{**stream, **extras.get(str(stream["stream"]), unknown)} for stream in info["streams"]]
    return {**info, "streams": streams, "enabled": True, "alive": service.alive}


def _hide_stream_url() -> None:
    # `celery inspect conf` and `celery report` mask settings by name only
    # (broker_url, *PASS*, *KEY*...): stream_url would be shown with its password.
    # Celery has no public hook for this: filter_hidden_settings() reads the
    # module global HIDDEN_SETTINGS at call time, and there is no setting or
    # API to add names to it (celery/celery#5657 asks for one, still open; 5.7
    # has none). So the global is rebound, once per process, with our names
    # added and Celery's kept. It can go when Celery grows such a setting, or
    # if our settings were renamed to match (e.g. a *_KEY suffix), which would
    # break every user's configuration and is not worth it.
    if not app_utils.HIDDEN_SETTINGS.search("stream_url"):
        app_utils.HIDDEN_SETTINGS = re.compile(
            f"{app_utils.HIDDEN_SETTINGS.pattern}|STREAM_URL|STREAM_TRANSPORT_OPTIONS", re.IGNORECASE
        )


def install(app: Celery) -> Celery:
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
