"""A small loopback TCP proxy for fault tests: pass, refuse, hang, or cut a reply.

Modes:

- ``pass``: bytes flow both ways (connections opened while hanging start flowing).
- ``hang``: connections are accepted but nothing is forwarded or answered, on
  new and existing connections alike (a broker that stopped answering).
  When the proxy passes again, the connections that hung are reset, as a
  healed network or a failed-over server would: their buffered requests are
  never replayed.
- ``refuse``: nothing listens; existing connections are reset.

``cut_reply_when(predicate)`` arms a one-shot fault: the first server reply
chunk for which ``predicate(data)`` is true is dropped and both sides of that
connection are closed, so the request was executed by the server but its
reply never arrives (a lost reply). ``cut_request_when(predicate)`` does the
same to the first client request chunk: the server never sees that request.

``reset_randomly(min_bytes, max_bytes, limit)`` arms resets at random byte
counts: every connection gets a budget drawn between ``min_bytes`` and
``max_bytes``; the chunk that exhausts it is forwarded only up to the budget
(a request or reply cut mid-command) and both sides are reset, in either
direction, until ``limit`` resets have happened (``resets`` counts them).
"""

from __future__ import annotations

import random
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Literal

Mode = Literal["pass", "hang", "refuse"]

_POLL = 0.05


class _Pair:
    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.hung = False
        self.closed = threading.Event()
        self.budget: int | None = None  # bytes left before a random reset (reset_randomly)

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass
                try:
                    sock.close()
                except OSError:
                    pass


class Proxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>; see the module docstring."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.mode: Mode = "pass"
        self.pairs: list[_Pair] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self._cut: Callable[[bytes], bool] | None = None
        self._cut_request: Callable[[bytes], bool] | None = None
        self.cuts = 0
        self._chaos: tuple[int, int, int] | None = None
        self.resets = 0
        self._random = random.Random()
        self.listener: socket.socket | None = None
        self.port = port or 0
        self._listen()
        self.thread = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        self.thread.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    # -- control ----------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        with self.lock:
            previous, self.mode = self.mode, mode
            pairs = list(self.pairs)
        if mode == "hang":
            for pair in pairs:
                pair.hung = True
        elif mode == "refuse":
            self._close_listener()
            for pair in pairs:
                pair.close()
        elif mode == "pass":
            if previous == "refuse":
                self._listen()
            for pair in pairs:
                if pair.hung and pair.upstream is not None:
                    pair.close()  # a healed network resets what hung
                else:
                    pair.hung = False

    def cut_reply_when(self, predicate: Callable[[bytes], bool]) -> None:
        self._cut = predicate

    def cut_request_when(self, predicate: Callable[[bytes], bool]) -> None:
        self._cut_request = predicate

    def reset_randomly(self, min_bytes: int, max_bytes: int, limit: int, seed: int | None = None) -> None:
        """Reset connections after random byte counts (see the module docstring), at most ``limit`` times."""
        if seed is not None:
            self._random.seed(seed)
        with self.lock:
            self._chaos = (min_bytes, max_bytes, limit)
            pairs = list(self.pairs)
        for pair in pairs:
            pair.budget = self._random.randint(min_bytes, max_bytes)

    def _budget(self) -> int | None:
        chaos = self._chaos
        return None if chaos is None else self._random.randint(chaos[0], chaos[1])

    def _spend(self, pair: _Pair, data: bytes) -> bytes | None:
        """``data`` if the budget allows it, else the part of it to forward before resetting."""
        if pair.budget is None or self._chaos is None:
            return data
        with self.lock:
            if self._chaos is None or self.resets >= self._chaos[2]:
                pair.budget = None
                return data
            if len(data) < pair.budget:
                pair.budget -= len(data)
                return data
            self.resets += 1
            cut = pair.budget
        return data[:cut]

    def drop_all(self) -> None:
        """Reset every open connection now."""
        with self.lock:
            pairs = list(self.pairs)
        for pair in pairs:
            pair.close()

    def stop(self) -> None:
        self.stopped.set()
        self._close_listener()
        self.drop_all()
        self.thread.join(2)

    # -- machinery --------------------------------------------------------

    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(_POLL)
        self.port = sock.getsockname()[1]
        with self.lock:
            self.listener = sock

    def _close_listener(self) -> None:
        with self.lock:
            sock, self.listener = self.listener, None
        if sock is not None:
            sock.close()

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            sock = self.listener
            if sock is None:
                time.sleep(_POLL)
                continue
            try:
                client, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            pair = _Pair(client)
            pair.hung = self.mode == "hang"
            pair.budget = self._budget()
            with self.lock:
                self.pairs = [p for p in self.pairs if not p.closed.is_set()]
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), name="proxy-pump", daemon=True).start()

    def _pump(self, pair: _Pair) -> None:
        try:
            while not pair.closed.is_set() and not self.stopped.is_set():
                if pair.hung:
                    time.sleep(_POLL)  # accept, read nothing, answer nothing
                    continue
                if pair.upstream is None:
                    pair.upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                readable, _, _ = select.select([pair.client, pair.upstream], [], [], _POLL)
                for sock in readable:
                    if pair.hung:
                        break
                    data = sock.recv(65536)
                    if not data:
                        return
                    allowed = self._spend(pair, data)
                    if allowed is not data:
                        target = pair.upstream if sock is pair.client else pair.client
                        if allowed:
                            target.sendall(allowed)
                        return  # reset both sides mid-command (pair.close sets SO_LINGER 0)
                    if sock is pair.client:
                        cut_request = self._cut_request
                        if cut_request is not None and cut_request(data):
                            self._cut_request = None
                            self.cuts += 1
                            return  # the request is lost: the server never runs it
                        pair.upstream.sendall(data)
                        continue
                    cut = self._cut
                    if cut is not None and cut(data):
                        self._cut = None
                        self.cuts += 1
                        return  # the reply is lost: close both sides without forwarding it
                    pair.client.sendall(data)
        except OSError:
            pass
        finally:
            pair.close()
