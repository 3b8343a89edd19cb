"""Tracker mode's position: an entry id in a key, moved under the lease by a fenced script; its status, retention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from redis.typing import EncodableT

from ..client.connection import Client, escaped, is_cluster, optional_text
from ..client.streams import as_entry_id
from ..config import StreamConfig
from ..deadletters import DeadLetter, write_oversized
from ..exceptions import LeaseLost
from ..rows import StreamInfo, StreamRow, put_lag
from .lag import id_key, lag_fields
from .lease import Lease

__all__ = ["TrackerPosition"]


class TrackerPosition:
    """Where the one reader of a tracked stream stands: the tracker key, written only by the lease holder."""

    mode: Literal["tracker"] = "tracker"
    #: Only the lease holder reads a tracked stream: all its counts are its own to know.
    shared = False

    def __init__(self, sc: StreamConfig) -> None:
        self.sc = sc

    @property
    def name(self) -> str:
        """The tracker key: what metrics label and the start-up line name the position by."""
        return self.sc.tracker_key

    def acked(self, ids: Sequence[str], trimmed: Sequence[str]) -> list[str]:
        """A tracker moves past the batch's last id; trimmed entries need nothing."""
        return list(ids)

    def commit(
        self, client: Client, ids: Sequence[str], dead: Sequence[DeadLetter], *,
        lease: Lease | None, forget: Mapping[str, Sequence[str]],
    ) -> None:  # fmt: skip
        """The fenced move (ADVANCE_TRACKER) with the batch's dead letters, then the forgotten records.

        LeaseLost if the lease is gone: then nothing was written, so the new holder's dead letters are the
        only ones. A dead letter too long for one script command is written before it, at least once.
        """
        sc = self.sc
        assert lease is not None, "tracker mode commits under a lease"
        fence = [sc.tracker_key, sc.lease_key]
        args: list[EncodableT] = [lease.owner, ids[-1], str(lease.ttl_ms), sc.dead_letter]
        for pairs in write_oversized(client, sc.dead_letter, dead):
            args += [len(pairs), *pairs]
        if is_cluster(client):
            # redis-py's cluster pipeline refuses scripts: the fenced move alone, then the forgotten records.
            advanced = lease.advance(keys=fence, args=args, client=client)
            if advanced and forget:
                pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
                for key, fields in forget.items():
                    pipe.hdel(key, *fields)
                pipe.execute()
        else:
            pipe = client.pipeline(transaction=False)
            lease.advance(keys=fence, args=args, client=pipe)
            for key, fields in forget.items():
                pipe.hdel(key, *fields)
            advanced = pipe.execute()[-1 - len(forget)]
        if not advanced:
            raise LeaseLost(f"lost the lease on {sc.stream!r}; another worker reads it now")

    def retention(self) -> tuple[list[str], str]:
        """Extra keys and the own group that the retention script checks: the tracker, no group."""
        return [self.sc.tracker_key], ""

    def waiting(self, client: Client) -> tuple[str, str | None] | None:
        """The tracker's position (nothing is pending in tracker mode); None while the key does not exist."""
        stored = optional_text(client.get(self.sc.tracker_key))
        return None if stored is None else (stored, None)

    def status(self, client: Client, info: StreamInfo, *, limit: int, now_ms: int) -> StreamRow:
        """The tracker's fields of a status row: its key, position, lease holder and lag."""
        sc = self.sc
        position = optional_text(client.get(sc.tracker_key))
        out: StreamRow = {
            "tracker_key": sc.tracker_key,
            "position": position,
            "lease_key": sc.lease_key,
            "lease_holder": escaped(client.get(sc.lease_key)),  # a worker name, shown: not-UTF-8 bytes escaped
        }
        try:
            start = position if position is not None else as_entry_id(sc.start, lambda: info.get("last_id") or "0-0")
            id_key(start)
        except ValueError:
            put_lag(out, {"lag": None, "lag_exact": False, "lag_at_least": None, "lag_seconds": None})
            out["error"] = f"tracker key {sc.tracker_key} holds {position!r}, not an entry id"
            return out
        put_lag(out, lag_fields(client, sc.stream, start, info, limit=limit, now_ms=now_ms))
        return out
