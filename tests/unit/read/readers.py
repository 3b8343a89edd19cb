"""What the reader tests of read/ share: a wiring of two streams (group and tracker mode), the ids sent."""

from __future__ import annotations

import threading
from unittest.mock import Mock

from celery import Celery

from celery_redis_stream.read.base import Wiring
from celery_redis_stream.stats import StreamStats

from ..streams import bridge_config, stream_config

GROUP = stream_config("orders", fast_path=False)
TRACKED = stream_config("events", mode="tracker", fast_path=False)


def wiring(url: str, sender: object = None) -> Wiring:
    stats = {
        "orders": StreamStats(stream="orders", mode="group", task="t", group="celery", tracker=None),
        "events": StreamStats(stream="events", mode="tracker", task="t", group=None, tracker=TRACKED.tracker_key),
    }
    app = Celery(broker="memory://", set_as_current=False)
    return Wiring(app, bridge_config(url, GROUP, TRACKED), "c1", threading.Event(), stats, sender=sender)


def sent(send: Mock) -> list[str]:
    return [e.id for call in send.call_args_list for e in call.args[1]]
