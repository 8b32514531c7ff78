"""HTTP clients whose requests name a provider's real host but reach the provider simulator.

The URL, and so the host the instrumentation reads, stays the real one (`https://api.x.ai/v1/...`);
only the connection under it goes to the simulator on loopback, in plain HTTP: the network backend
of the transport's connection pool connects there whatever the host, and starts no TLS.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore2
import httpx2

from exporter.simulator import ProviderSimulator


class _PlainStream(httpcore2.NetworkStream):
    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, timeout)

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.NetworkStream:
        return self  # the simulator speaks plain HTTP

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _ToSimulator(httpcore2.NetworkBackend):
    def __init__(self, port: int) -> None:
        self.port = port
        self.backend = httpcore2.SyncBackend()
        self.hosts: list[tuple[str, int]] = []  # where the client meant to connect

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        self.hosts.append((host, port))
        inner = self.backend.connect_tcp("127.0.0.1", self.port, timeout, local_address,
                                         socket_options)  # fmt: skip
        return _PlainStream(inner)

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


def routed_client(sim: ProviderSimulator) -> tuple[httpx2.Client, list[tuple[str, int]]]:
    """An httpx2 client (the one the openai SDK takes as `http_client`) whose connections all go
    to `sim`; and the list of the hosts and ports it meant to connect to."""
    port = int(sim.base_url.rsplit(":", 1)[1])
    backend = _ToSimulator(port)
    transport = httpx2.HTTPTransport()
    transport._pool = httpcore2.ConnectionPool(network_backend=backend)  # test-only re-plumbing
    return httpx2.Client(transport=transport), backend.hosts
