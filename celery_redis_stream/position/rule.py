"""The one place that moves a position forward, after dispatch; the position of each mode as a type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from ..client.connection import Client
from ..config import Mode, StreamConfig
from ..deadletters import DeadLetter
from ..rows import StreamInfo, StreamRow
from .group import GroupPosition
from .lease import Lease
from .tracker import TrackerPosition

__all__ = ["Position", "commit", "position_of"]


class Position(Protocol):
    """What differs between the modes: how a batch is committed, reported, and kept from retention."""

    @property
    def mode(self) -> Mode: ...

    #: True when other consumers settle entries too (group mode), False for the lease holder alone (tracker).
    shared: bool

    @property
    def name(self) -> str: ...

    def acked(self, ids: Sequence[str], trimmed: Sequence[str]) -> list[str]: ...

    def commit(
        self, client: Client, ids: Sequence[str], dead: Sequence[DeadLetter], *,
        lease: Lease | None, forget: Mapping[str, Sequence[str]],
    ) -> None: ...  # fmt: skip

    def retention(self) -> tuple[list[str], str]: ...

    def waiting(self, client: Client) -> tuple[str, str | None] | None: ...

    def status(self, client: Client, info: StreamInfo, *, limit: int, now_ms: int) -> StreamRow: ...


def position_of(sc: StreamConfig) -> Position:
    """The position of ``sc``'s mode: its consumer group, or its tracker key."""
    return GroupPosition(sc) if sc.mode == "group" else TrackerPosition(sc)


def commit(
    client: Client,
    sc: StreamConfig,
    ids: Sequence[str],
    dead: Sequence[DeadLetter],
    *,
    lease: Lease | None = None,
    forget: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Record dead letters, then move the position of ``sc`` past ``ids``.

    THE DELIVERY RULE: this runs only after every task of the batch was
    accepted by the broker. Moving first (as celery beat does for schedules)
    would be at-most-once: a crash between the move and the publish would
    lose the entry. Moving after makes a crash re-dispatch at most this batch,
    with the same task ids. Dead letters are written before the move so a
    bad entry is never acknowledged without leaving a trace. ``forget``
    (hash key -> fields: the batch's in-flight record and the failure counts
    of its entries, see batch/deliveries.py) is deleted with the move, in the same
    pipeline. Group mode acknowledges with XACK; tracker mode moves its key
    under the lease (LeaseLost when another worker holds it).
    """
    if not ids:
        return
    position_of(sc).commit(client, ids, dead, lease=lease, forget=forget or {})
