"""A sample user test: the project's stream mapping, checked with celery_redis_stream.testing (no server, no worker)."""

import logging

import pytest
from shop.celery import app

from celery_redis_stream.testing import DeadLettered, preview, run


def test_an_order_entry_becomes_a_handle_order_task() -> None:
    shown = preview(app, "orders", {"order_id": "42", "amount": "9.90"}, entry_id="1700000000000-0")
    assert shown.task == "orders.tasks.handle_order"
    assert shown.args == [{"order_id": "42", "amount": "9.90"}]
    assert shown.headers["redis_stream_id"] == "1700000000000-0"
    assert shown.queue == "celery"


def test_payments_go_to_the_billing_queue_as_keyword_arguments() -> None:
    shown = preview(app, "payments", {"order_id": "42", "amount": "9.90", "method": "card"})
    assert shown.task == "orders.tasks.capture_payment"
    assert shown.kwargs == {"order_id": "42", "amount": "9.90", "method": "card"}
    assert shown.queue == "billing"
    assert shown.options == {"expires": 3600}


def test_a_producer_trace_travels_in_the_headers_not_the_arguments() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    shown = preview(app, "orders", {"order_id": "42", "traceparent": traceparent})
    assert shown.args == [{"order_id": "42"}]
    assert shown.headers["traceparent"] == traceparent


def test_a_shipment_without_an_order_id_is_dead_lettered() -> None:
    shown = preview(app, "shipments", {"carrier": "ups"})
    assert shown.dead_letter is not None
    assert shown.dead_letter.reason == "converter_error"
    assert "order_id" in shown.dead_letter.error
    with pytest.raises(DeadLettered):
        run(app, "shipments", {"carrier": "ups"})


def test_ship_order_runs_with_the_converted_arguments(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="orders.tasks"):
        result = run(app, "shipments", {"order_id": "42", "carrier": "ups"}, entry_id="5-0")
    assert result.successful()
    assert "ship_order stream=shipments id=5-0" in caplog.text
    assert "received {'order_id': 42, 'carrier': 'ups'}" in caplog.text  # the converter made it an int


def test_an_audit_event_gets_the_entry_shape_from_its_tracker_stream() -> None:
    result = run(app, "audit", {"event": "order_created"}, entry_id="9-1")
    assert result.successful()
    assert preview(app, "audit", {"event": "order_created"}, entry_id="9-1").args == [
        "audit",
        "9-1",
        {"event": "order_created"},
    ]
