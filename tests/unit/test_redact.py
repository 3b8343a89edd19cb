"""redact.py: the password of every URL in a free-text message masked, the rest of the message kept."""

from __future__ import annotations

import pytest

from celery_redis_stream.redact import redact


def test_every_url_password_in_a_message_is_masked_and_the_sentence_kept() -> None:
    message = (
        "Error 111 connecting to redis://:s3cret@127.0.0.1:6379/0. Connection refused; "
        "broker amqp://guest:hunter2@rabbit:5672// is up"
    )
    assert redact(message) == (
        "Error 111 connecting to redis://:**@127.0.0.1:6379/0. Connection refused; "
        "broker amqp://guest:**@rabbit:5672// is up"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rediss://user:p@ss:w0rd@host:6380/1", "rediss://user:**@host:6380/1"),  # '@' and ':' in the password
        ("sentinel://:a1@h1:26379;sentinel://:b2@h2:26379", "sentinel://:**@h1:26379;sentinel://:**@h2:26379"),
        ("redis+socket://:pw@/tmp/redis.sock", "redis+socket://:**@/tmp/redis.sock"),
        ("url='REDIS://:pw@host',", "url='REDIS://:**@host',"),
        # an unencoded '/' ends the URL's host part, but the text still holds the whole password
        ("redis://:pa/ss@host:6379/0", "redis://:**@host:6379/0"),
        ("redis://user:p4/ss@host/0 refused", "redis://user:**@host/0 refused"),
        ("redis://:a/b@h1;redis://:c/d@h2", "redis://:**@h1;redis://:**@h2"),
    ],
)
def test_passwords_with_separators_in_them_and_url_lists_are_masked(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_urls_without_a_password_are_left_as_they_are() -> None:
    message = "redis://user@host:1/0 and redis://host:6379/0, see http://example.com:8080/a@b, mail a@b"
    assert redact(message) == message
