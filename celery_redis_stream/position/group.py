"""Group mode's position: the consumer group's pending list, moved by XACK; its status and retention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from ..client.connection import Client, escaped, items, mapping, number, text
from ..client.streams import as_entry_id
from ..config import StreamConfig
from ..deadletters import DeadLetter
from ..rows import ConsumerRow, StreamInfo, StreamRow, put_lag
from .lag import lag_fields, pending_min
from .lease import Lease

__all__ = ["GroupPosition"]


class GroupPosition:
    """Where a consumer group of a stream stands; several workers share it, each as its own consumer."""

    mode: Literal["group"] = "group"
    #: Other consumers settle entries too (claimed and acknowledged): counts must be checked against XPENDING.
    shared = True

    def __init__(self, sc: StreamConfig) -> None:
        self.sc = sc

    @property
    def name(self) -> str:
        """The group: what metrics label and the start-up line name the position by."""
        return self.sc.group

    def acked(self, ids: Sequence[str], trimmed: Sequence[str]) -> list[str]:
        """What the commit of a batch acknowledges: trimmed pending entries too, or they stay pending forever."""
        return [*ids, *trimmed]

    def commit(
        self, client: Client, ids: Sequence[str], dead: Sequence[DeadLetter], *,
        lease: Lease | None, forget: Mapping[str, Sequence[str]],
    ) -> None:  # fmt: skip
        """Dead letters, XACK and the forgotten delivery records, in one pipeline."""
        sc = self.sc
        pipe = client.pipeline(transaction=False)
        for letter in dead:
            pipe.execute_command("XADD", sc.dead_letter, "*", *letter.pairs())
        pipe.xack(sc.stream, sc.group, *ids)
        for key, fields in forget.items():
            pipe.hdel(key, *fields)
        pipe.execute()

    def retention(self) -> tuple[list[str], str]:
        """Extra keys and the own group that the retention script checks (see retention.TRIM_PASSED)."""
        return [], self.sc.group

    def _find(self, client: Client) -> dict[str, object] | None:
        for row in items(client.xinfo_groups(self.sc.stream)):
            found = mapping(row)
            if text(found.get("name")) == self.sc.group:
                return found
        return None

    def waiting(self, client: Client) -> tuple[str, str | None] | None:
        """The group's last-delivered id and its oldest pending id; None while the group does not exist."""
        found = self._find(client)
        if found is None:
            return None
        oldest = pending_min(client, self.sc.stream, self.sc.group) if number(found.get("pending")) else None
        return text(found.get("last-delivered-id") or "0-0"), oldest

    def status(self, client: Client, info: StreamInfo, *, limit: int, now_ms: int) -> StreamRow:
        """The group's fields of a status row: its position, pending count, consumers and lag."""
        sc = self.sc
        out: StreamRow = {"group": sc.group, "group_exists": False, "last_delivered_id": None, "pending": 0}
        out["consumers"] = []
        found = self._find(client) if info.get("exists") else None
        if found is None:
            # The first worker creates the group at stream_start; report the lag it will see.
            start = as_entry_id(sc.start, lambda: info.get("last_id") or "0-0")
            put_lag(out, lag_fields(client, sc.stream, start, info, limit=limit, now_ms=now_ms))
            return out
        delivered = text(found.get("last-delivered-id") or "0-0")
        out["group_exists"], out["last_delivered_id"], out["pending"] = True, delivered, number(found.get("pending"))
        # Redis 6.2 has no lag; Redis 7 reports nil after deletions or XGROUP SETID.
        meta = {"lag": found.get("lag"), "entries_read": found.get("entries-read")}
        oldest = pending_min(client, sc.stream, sc.group) if out["pending"] else None
        put_lag(out, lag_fields(
            client, sc.stream, delivered, info, limit=limit, now_ms=now_ms, group=meta, pending_from=oldest
        ))  # fmt: skip
        for row in items(client.xinfo_consumers(sc.stream, sc.group)):
            consumer = mapping(row)
            out["consumers"].append(_consumer(consumer))
        return out


def _consumer(consumer: Mapping[str, object]) -> ConsumerRow:
    return {
        "name": escaped(consumer.get("name")) or "",  # shown to operators: not-UTF-8 bytes escaped
        "pending": number(consumer.get("pending")),
        "idle_ms": number(consumer.get("idle")),
    }
