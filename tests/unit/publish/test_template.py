"""What both fast paths share: reprs equal to Celery's, bodies equal to kombu's, the reasons for send_task."""

from __future__ import annotations

import pytest
from celery import signals
from celery.utils.saferepr import saferepr
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import serialization

from celery_redis_stream.publish.template import (
    TEMPLATE_ID,
    Recorder,
    argument_repr,
    batch_encoder,
    celery_reason,
    encode_body,
    repr_limits,
)

from ...support import make_app

TEXT = st.text(max_size=30)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(value=st.one_of(st.lists(VALUES, max_size=3), st.dictionaries(TEXT, VALUES, max_size=5)))
def test_argument_repr_is_what_celery_saferepr_shows(value: object) -> None:
    for maxsize, maxlevels in ((1024, 3), (20, 3), (1024, 1)):
        assert argument_repr(value, maxsize, maxlevels) == saferepr(value, maxsize, maxlevels=maxlevels)


def test_argument_repr_of_the_common_call_shape_equals_saferepr() -> None:
    fields = [{"order_id": "42", "note": "it's \\ here", "emoji": "\u00e9\u2603"}]
    assert argument_repr(fields, 1024, 3) == saferepr(fields, 1024, maxlevels=3)


@settings(max_examples=40, deadline=None)
@given(args=st.lists(VALUES, max_size=3), kwargs=st.dictionaries(TEXT, VALUES, max_size=3))
def test_a_spliced_body_is_the_text_kombu_serializes(args: list[object], kwargs: dict[str, object]) -> None:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    expected = serialization.dumps((args, kwargs, embed), serializer="json")[2]
    tail = ", " + serialization.dumps(embed, serializer="json")[2] + "]"
    assert encode_body(args, kwargs, embed, "json", tail, batch_encoder()) == expected
    assert encode_body(args, kwargs, embed, "json", None) == expected


def test_a_body_the_splice_cannot_encode_raises_kombus_own_error() -> None:
    embed = {"callbacks": None}
    with pytest.raises(Exception, match=r"not JSON serializable"):
        encode_body([object()], {}, embed, "json", ", {}]", batch_encoder())


def test_the_batch_encoder_encodes_as_kombus_json() -> None:
    from kombu.utils import json as kombu_json

    encode = batch_encoder()
    for value in (["a", {"b": 1.5, "c": [None, True]}], "plain", {"\u00e9": "\u2603"}):
        assert encode(value) == kombu_json.dumps(value)


def test_celery_reason_names_each_setting_that_needs_send_task() -> None:
    app = make_app("template")
    assert celery_reason(app) is None
    app.conf.task_protocol = 1
    assert "task_protocol" in str(celery_reason(app))
    app.conf.task_protocol = 2
    app.conf.task_send_sent_event = True
    assert "task_send_sent_event" in str(celery_reason(app))
    app.conf.task_send_sent_event = False

    def receiver(**kwargs: object) -> None:
        return None

    signals.before_task_publish.connect(receiver, weak=False)
    try:
        assert "before_task_publish" in str(celery_reason(app))
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert celery_reason(app) is None


def test_the_recorder_keeps_what_send_task_would_publish_and_sends_nothing() -> None:
    app = make_app("template")

    class Producer:
        serializer = "json"
        sent: list[object] = []

        def publish(self, *args: object, **kwargs: object) -> None:
            self.sent.append(args)

    producer = Producer()
    recorder = Recorder(producer)  # type: ignore[arg-type]
    assert recorder.serializer == "json"  # everything else is the producer's
    recorder.publish({"body": 1}, routing_key="celery", headers={"id": TEMPLATE_ID})
    assert recorder.published == ({"body": 1}, {"routing_key": "celery", "headers": {"id": TEMPLATE_ID}})
    assert producer.sent == []
    assert repr_limits(app)[2] >= 1
