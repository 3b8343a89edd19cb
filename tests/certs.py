"""Test helpers for TLS: certificates made by trustme and a TLS-only private redis-server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import trustme

from .support import RedisServer


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not sign the server certificate


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    certs = Certs(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "other-ca.pem")
    ca.cert_pem.write_to_path(str(certs.ca))
    server.cert_chain_pems[0].write_to_path(str(certs.cert))
    server.private_key_pem.write_to_path(str(certs.key))
    trustme.CA().cert_pem.write_to_path(str(certs.other_ca))
    return certs


class TLSRedisServer(RedisServer):
    """A private redis-server that only listens for TLS (``--port 0``) on its port."""

    def __init__(self, certs: Certs) -> None:
        super().__init__()
        self.certs = certs
        self.args = [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(certs.cert), "--tls-key-file", str(certs.key),
            "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={self.certs.ca}"

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, ssl=True, ssl_ca_certs=str(self.certs.ca), **kwargs)

    def _ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"TLS redis-server exited; see {self.dir}/redis.log")
        try:
            return bool(self.client(socket_timeout=1).ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False
