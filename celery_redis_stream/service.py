"""Service: all stream readers of one worker; start() returns at once, stop() is prompt; runs without a worker."""

from __future__ import annotations

import fnmatch
import re
import threading
import time
from dataclasses import asdict
from typing import Any

from redis.crc import key_slot

from .config import BridgeConfig, StreamConfig, check_slots
from .loops import Discovery, GroupLoop, StreamStats, TrackerLoop, _Loop

__all__ = ["Service", "StreamStats"]


class Service:
    """All readers of one worker: start() returns at once, stop() is idempotent and prompt.

    Streams are read by as few threads as possible: one blocking read per
    group (per hash slot on a cluster, where one command cannot span slots)
    and one for the tracked streams.
    """

    def __init__(self, app: Any, config: BridgeConfig, *, consumer: str) -> None:
        self.app = app
        self.config = config
        self.consumer = config.consumer or consumer
        self.stop_event = threading.Event()
        self.stats: dict[str, StreamStats] = {}
        self.configs: dict[str, StreamConfig] = {}
        self._loops: dict[tuple[Any, ...], _Loop] = {}
        self._lock = threading.Lock()
        self._started = False
        patterns = [sc for sc in config.streams if sc.is_pattern]
        for sc in config.streams:
            if not sc.is_pattern:
                self.add(sc)
        self.discovery = Discovery(self, patterns) if patterns else None
        self._dead_letter_patterns = [
            re.compile(re.escape(t).replace(re.escape("{stream}"), r"\{?(.+?)\}?") + "$")
            for t in {sc.dead_letter_template for sc in config.streams}
        ]

    @property
    def loops(self) -> list[_Loop]:
        with self._lock:
            loops = list(self._loops.values())
        return [*loops, self.discovery] if self.discovery is not None else loops

    def _loop_key(self, sc: StreamConfig) -> tuple[Any, ...]:
        slot = key_slot(sc.stream.encode()) if self.config.cluster else None
        return (sc.mode, sc.group if sc.mode == "group" else None, sc.batch_size, slot)

    def add(self, sc: StreamConfig) -> None:
        """Read ``sc``: join the loop that reads its group (or trackers), or start one."""
        self.configs[sc.stream] = sc
        self.stats[sc.stream] = StreamStats(
            stream=sc.stream,
            mode=sc.mode,
            task=sc.task,
            group=sc.group if sc.mode == "group" else None,
            tracker=sc.tracker_key if sc.mode == "tracker" else None,
        )
        key = self._loop_key(sc)
        with self._lock:
            loop = self._loops.get(key)
            if loop is None:
                loop = (
                    GroupLoop(self, [], sc.batch_size, sc.group)
                    if sc.mode == "group"
                    else TrackerLoop(self, [], sc.batch_size)
                )
                self._loops[key] = loop
                if self._started and not self.stop_event.is_set():
                    loop.start()
            loop.add(sc)

    def check(self, sc: StreamConfig) -> None:
        """Refuse a discovered stream whose keys cannot live in its cluster slot."""
        if self.config.cluster:
            check_slots(sc)

    def is_dead_letter(self, name: str) -> bool:
        for pattern in self._dead_letter_patterns:
            match = pattern.match(name)
            if match and (match.group(1) in self.stats or any(
                fnmatch.fnmatchcase(match.group(1), sc.stream) for sc in self.config.streams if sc.is_pattern
            )):  # fmt: skip
                return True
        return False

    def start(self) -> None:
        with self._lock:
            self._started = True
        for loop in self.loops:
            loop.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the batch in flight, then stop; waits at most about one read."""
        self.stop_event.set()
        if timeout is None:
            timeout = self.config.block_ms / 1000 + 5
        deadline = time.monotonic() + timeout
        for loop in self.loops:
            if loop.is_alive() and loop is not threading.current_thread():
                loop.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        return any(loop.is_alive() for loop in self.loops)

    def info(self) -> dict[str, Any]:
        return {
            "url": self.config.safe_url,
            "consumer": self.consumer,
            "streams": [asdict(stats) for stats in list(self.stats.values())],
        }
