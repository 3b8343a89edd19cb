"""A converter: a StreamEntry in, the task's (args, kwargs) out."""

from typing import Any

from celery_redis_stream import StreamEntry


def to_shipment(entry: StreamEntry) -> tuple[list[Any], dict[str, Any]]:
    """The order id as an int argument, the other fields as keyword arguments.

    An exception here (a missing or non-numeric order_id) sends the entry to
    the dead-letter stream `shipments:dead` instead of blocking the stream.
    """
    fields = dict(entry.fields)
    return [int(fields.pop("order_id"))], fields
