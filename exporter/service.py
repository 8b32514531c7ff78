"""Running the server side: database set-up, then the ingest (and API) servers in one process."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import math
import signal
import socket
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import uvicorn
from starlette.types import ASGIApp

from exporter.core.connection_limits import (
    WS_MAX_MESSAGE_BYTES,
    ConnectionLimits,
    guarded_protocols,
)
from exporter.core.db import EmbeddedPostgres, ensure_partitions_around, migrate, resolve_database
from exporter.core.settings import Settings
from exporter.core.zones import ZoneUnknownToDatabase, check_zone_in_database
from exporter.ingest.app import create_ingest_app
from exporter.ingest.metrics import ExporterMetrics

log = logging.getLogger(__name__)
PARTITION_CHECK_SECONDS = 6 * 3600
RETENTION_CHECK_SECONDS = 24 * 3600
RETENTION_FIRST_DELAY_SECONDS = 600
GC_GEN0_THRESHOLD = 50_000
# glibc's mallopt parameters (malloc.h); the block size from which it maps memory apart (its
# own ceiling for that threshold on 64-bit systems); how often freed memory goes back.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_SECONDS = 1.0
# File descriptors besides client connections: database pools, decode workers' pipes, logs.
_OTHER_FILES = 256


@dataclass
class Database:
    url: str
    embedded: EmbeddedPostgres | None

    def close(self) -> None:
        if self.embedded:
            self.embedded.stop()


def open_database(settings: Settings) -> Database:
    """Resolves (starting the embedded server if needed) and migrates the database."""
    url, embedded = resolve_database(settings.database_url, settings.data_dir)
    try:
        migrate(url)
        with psycopg.connect(url) as conn:
            check_zone_in_database(conn, settings.timezone)
    except ZoneUnknownToDatabase as exc:
        if embedded:
            embedded.stop()
        raise ZoneUnknownToDatabase(f"NEXUS_TIMEZONE: {exc}") from None
    return Database(url, embedded)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `run_servers`, so several can share it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class Served:
    name: str
    app: ASGIApp
    port: int
    sock: socket.socket | None = None  # bound before start-up (`bind_port`), else uvicorn binds


async def run_servers(
    host: str,
    served: Sequence[Served],
    database_url: str,
    limits: ConnectionLimits,
    retention_days: int = 0,
    background: Sequence[Coroutine[Any, Any, None]] = (),
) -> None:
    """Runs the servers until SIGINT/SIGTERM; with `retention_days`, applies retention daily;
    `background` jobs (the daily digest, giving freed memory back) run alongside."""
    servers = [_Server(_server_config(s, host, limits)) for s in served]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stop_all, servers)
    maintenance = [asyncio.create_task(_maintain_partitions(database_url))]
    maintenance += [asyncio.create_task(job) for job in background]
    if retention_days:
        maintenance.append(
            asyncio.create_task(_apply_retention_daily(database_url, retention_days))
        )
    try:
        await asyncio.gather(
            *(
                server.serve([s.sock] if s.sock else None)
                for server, s in zip(servers, served, strict=True)
            )
        )
    finally:
        for task in maintenance:
            task.cancel()


def _server_config(served: Served, host: str, limits: ConnectionLimits) -> uvicorn.Config:
    """uvicorn's h11 server with the deadlines and cap of `limits` (see connection_limits).
    An idle connection stays open as long as a request's head may take to come (10 s by
    default), not uvicorn's 5 s: that is also the Retry-After of a 503 by default, so a sender
    waiting it out and sending on the same connection met the server closing it, and lost the
    request to the race."""
    http, ws = guarded_protocols(limits)
    return uvicorn.Config(
        served.app,
        host=host,
        port=served.port,
        log_level="warning",
        lifespan="on",
        http=http,
        ws=ws,
        timeout_keep_alive=math.ceil(limits.header_timeout),
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        # The live feed encodes each call once for all its clients; compressing it would cost
        # each client its own deflate of every call (and a compressor's memory), on the event
        # loop that also takes ingest: with 200 dashboards open, a 500-call request took 1 s.
        ws_per_message_deflate=False,
    )


def _raise_file_limit(ports: int, limits: ConnectionLimits) -> None:
    """Lets the process hold the connections the cap allows on every port, and its own files
    and database connections: the soft limit (often 1,024) goes up to the hard one if needed."""
    import resource

    needed = ports * limits.max_connections + _OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning(
            "open files are limited to %d: fewer than the %d connections per port allowed"
            " (--max-connections) may be served",
            target,
            limits.max_connections,
        )


def _stop_all(servers: list[_Server]) -> None:
    for server in servers:
        server.should_exit = True


async def _maintain_partitions(url: str) -> None:
    """Keeps next months' partitions created ahead of time while the service runs."""
    while True:
        await asyncio.sleep(PARTITION_CHECK_SECONDS)
        try:
            await asyncio.to_thread(_create_partitions_ahead, url)
        except psycopg.Error as exc:
            log.warning("creating partitions ahead failed: %s", exc)


async def _apply_retention_daily(url: str, retention_days: int) -> None:
    """Drops partitions past retention once a day, the first time a while after start-up (a
    restart loop must not turn into a drop loop)."""
    from exporter.usage.retention import apply_retention

    await asyncio.sleep(RETENTION_FIRST_DELAY_SECONDS)
    while True:
        try:
            await asyncio.to_thread(apply_retention, url, retention_days, datetime.now(UTC))
        except psycopg.Error as exc:
            log.warning("applying retention failed: %s", exc)
        await asyncio.sleep(RETENTION_CHECK_SECONDS)


def _create_partitions_ahead(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_partitions_around(conn, datetime.now(UTC).date())


def _keep_buffers_in_heap() -> Callable[[], object] | None:
    """Makes glibc serve large buffers (OTLP bodies, COPY data: up to a few MB, each copied
    several times per request) from its heap, where a freed one is reused, and returns its
    malloc_trim, which gives what the heap holds freed back to the system (None on other C
    libraries). Mapped apart and unmapped at each free instead, every copy page-faulted into
    fresh memory: 40 % of the exporter process's CPU on bodies of 1.8 MB. Left to itself, glibc
    keeps them in the heap after the first ones too, but never gives a burst's memory back."""
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # no such functions, or no C library to open
        return None
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    return functools.partial(malloc_trim, 0)


async def _give_back_freed_memory(malloc_trim: Callable[[], object]) -> None:
    """What the heap holds freed goes back every TRIM_SECONDS: the exporter's memory follows
    what it holds, not the largest burst so far, and buffers are reused between two trims."""
    while True:
        await asyncio.sleep(TRIM_SECONDS)
        malloc_trim()


# uvicorn's default; it calls listen() again with its own, which only sets the backlog.
_LISTEN_BACKLOG = 2048


def bind_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` as uvicorn binds one, listening already: the command line
    binds the ports before anything starts, so a port in use is one clear error. Listening at
    once matters: with SO_REUSEADDR two sockets may bind one port until either listens, so two
    servers given the same port would otherwise both bind and the second die at start-up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(_LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def serve(
    settings: Settings, database: Database, socks: dict[str, socket.socket] | None = None
) -> None:
    """The ingest port (with /metrics, budget gauges included) and the API port, listening on
    `socks` (by name: ingest, api) where given."""
    from exporter.api import create_api_app
    from exporter.usage.budgets import BudgetCollector
    from exporter.usage.revisions import RevisionGauge

    metrics = ExporterMetrics(max_series=settings.metrics_max_series)
    metrics.expositions.append(
        BudgetCollector(database.url, max_budgets=settings.metrics_max_budgets, read_now=True)
    )
    metrics.expositions.append(RevisionGauge(database.url))
    socks = socks or {}
    served = [
        Served("ingest", create_ingest_app(settings, database.url, metrics), settings.otlp_port),
        Served("api", create_api_app(settings, database.url), settings.api_port),
    ]
    for each in served:
        each.sock = socks.get(each.name)
    # Ingest allocates many short-lived containers per span and few reference cycles:
    # collect cyclic garbage less often, and never re-scan the objects built at start-up.
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
    background = []
    malloc_trim = _keep_buffers_in_heap()
    if malloc_trim is not None:
        background.append(_give_back_freed_memory(malloc_trim))
    if settings.telegram_bot_token and settings.telegram_chat_id is not None:
        from exporter.usage.digest import run_daily_digest

        background.append(run_daily_digest(settings, database.url))
    limits = ConnectionLimits.from_settings(settings)
    _raise_file_limit(len(served), limits)
    asyncio.run(
        run_servers(
            settings.host, served, database.url, limits, settings.retention_days, background
        )
    )


def serve_api(settings: Settings, database: Database, sock: socket.socket | None = None) -> None:
    """The API alone (its live feed listens to the database, wherever ingest runs)."""
    from exporter.api import create_api_app

    served = [Served("api", create_api_app(settings, database.url), settings.api_port, sock)]
    limits = ConnectionLimits.from_settings(settings)
    _raise_file_limit(len(served), limits)
    asyncio.run(run_servers(settings.host, served, database.url, limits))
