"""Settings of the example `shop` project: streams mapped to Celery tasks with CELERY_STREAM_TASKS.

Redis comes from the environment variable REDIS_URL (default redis://localhost:6379/0);
the streams and the Celery broker share it here, which is the simplest set-up.
"""

import os

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["orders"]
DATABASES: dict[str, dict[str, str]] = {}  # the example needs no database
USE_TZ = True
TIME_ZONE = "UTC"

# Celery: every CELERY_* setting here is read by shop/celery.py.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"

# celery-redis-stream: where the streams live (defaults to the broker URL when it is redis://).
CELERY_STREAM_URL = REDIS_URL
# stream key -> task name, or -> a dict of per-stream options.
CELERY_STREAM_TASKS = {
    # Default call shape: handle_order({"order_id": "42", "amount": "9.90"}).
    "orders": "orders.tasks.handle_order",
    # Fields as keyword arguments, sent to the "billing" queue with extra send_task options.
    # (Not a queue named "payments": with a Redis broker on the same database a
    # queue is a list key, and the stream "payments" already owns that key.)
    # A payment whose task fails for good (here: an amount that is not a positive number)
    # is added to the dead-letter stream payments:dead with reason task_failed, for an
    # operator to list and requeue: `celery -A shop redis-stream dead-letters payments`.
    "payments": {
        "task": "orders.tasks.capture_payment",
        "call": "kwargs",
        "queue": "billing",
        "options": {"expires": 3600},
        "dead_letter_failed_tasks": True,
    },
    # A converter turns the entry into (args, kwargs): ship_order(42, carrier="ups").
    "shipments": {
        "task": "orders.tasks.ship_order",
        "converter": "orders.converters:to_shipment",
    },
    # Redix.Stream's handler shape, audit_event(stream, entry_id, fields), with the
    # position kept in the tracker key stream_tracker:{audit} instead of a consumer group.
    "audit": {
        "task": "orders.tasks.audit_event",
        "call": "entry",
        "mode": "tracker",
    },
}
# Consumer groups and trackers created for the first time start at new entries ("$").
CELERY_STREAM_START = "$"
CELERY_STREAM_BATCH_SIZE = 100
