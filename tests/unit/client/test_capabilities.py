"""client.capabilities: COMMAND DOCS read for argument tokens, parsed or raw; no answer means nothing newer."""

from __future__ import annotations

from unittest.mock import Mock

from redis.exceptions import ResponseError

from celery_redis_stream.client.capabilities import XACKDEL, XREADGROUP_CLAIM, XTRIM_ACKED, in_use, probe

# Shaped as Redis 8.6 answers (abridged): ACKED and CLAIM are argument tokens; their names also appear in text.
PARSED = {
    b"xtrim": {
        b"summary": b"Deletes messages from the beginning of a stream.",
        b"history": [[b"8.2.0", b"Added the `KEEPREF`, `DELREF` and `ACKED` options."]],
        b"arguments": [{b"name": b"condition", b"arguments": [{b"name": b"acked", b"token": b"ACKED"}]}],
    },
    b"xreadgroup": {b"arguments": [{b"name": b"min-idle-time", b"token": b"CLAIM", b"type": b"integer"}]},
    b"xackdel": {b"summary": b"Acknowledges and deletes one or multiple messages for a stream consumer group."},
}


def test_the_tokens_of_each_command_say_what_the_server_takes() -> None:
    client = Mock()
    client.execute_command.return_value = PARSED
    assert probe(client) == {XTRIM_ACKED, XREADGROUP_CLAIM, XACKDEL}
    client.execute_command.assert_called_once_with("COMMAND DOCS", "xackdel", "xreadgroup", "xtrim")


def test_a_raw_reply_is_read_the_same_and_a_word_in_a_text_is_no_token() -> None:
    client = Mock()
    client.execute_command.return_value = [
        b"xtrim", [b"summary", b"Trims, with ACKED since 8.2", b"arguments", [[b"name", b"key", b"type", b"key"]]],
        b"xreadgroup", [b"arguments", [[b"name", b"min-idle-time", b"token", b"CLAIM"]]],
    ]  # fmt: skip
    assert probe(client) == {XREADGROUP_CLAIM}


def test_a_server_that_cannot_say_gets_nothing_newer() -> None:
    client = Mock()
    client.execute_command.side_effect = ResponseError("unknown subcommand 'DOCS'")
    assert probe(client) == frozenset()
    assert in_use(frozenset(), retention=True) == []
    assert in_use(frozenset({XTRIM_ACKED, XREADGROUP_CLAIM}), retention=True) == [XTRIM_ACKED]
    assert in_use(frozenset({XTRIM_ACKED}), retention=False) == []
