"""A sample integration test: entries XADDed to a private redis-server, run by an in-process worker of the project.

In your own project, enable the plugin in the top-level conftest.py with
``pytest_plugins = ["celery_redis_stream.pytest_plugin"]``; this repository
runs these tests together with its own suite, so it imports the fixtures.
"""

import pytest
from shop.celery import app

from celery_redis_stream.pytest_plugin import (  # noqa: F401 - the plugin's fixtures
    StreamWorker,
    redis_stream_server,
    redis_stream_worker,
)
from celery_redis_stream.testing import DeadLettered


@pytest.fixture
def redis_stream_app() -> object:
    return app


def test_orders_and_payments_run_in_a_worker(redis_stream_worker: StreamWorker) -> None:  # noqa: F811
    order = redis_stream_worker.add("orders", {"order_id": "42", "amount": "9.90"})
    assert order.state == "SUCCESS"
    # payments go to the "billing" queue; the test worker consumes every mapped stream's queue
    payment = redis_stream_worker.add("payments", {"order_id": "42", "amount": "9.90", "method": "card"})
    assert payment.state == "SUCCESS"
    with pytest.raises(DeadLettered, match="converter_error"):
        redis_stream_worker.add("shipments", {"carrier": "ups"})
